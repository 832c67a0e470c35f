"""Batched augmentation kernels: a whole batch of raw images augmented in a few tensor ops.

The device pipeline (:class:`~cskd_lightning.data.DeviceDataModule`) makes its batches with
:class:`BatchAugment`:

1. one ``gather`` for the random crop (zero padding) and horizontal flip of every sample
   (:func:`batch_crop_flip`);
2. the conversion to ``float32`` and the normalisation ``(x / scale - mean) / std``;
3. in two-view mode, for the strong view: its own crop/flip, :func:`batch_rand_augment`
   (RandAugment-style, ``num_ops`` random ops per sample) and :func:`batch_cutout`.

Every kernel takes its random numbers from a
:class:`~cskd_lightning.data.sample_random.SampleRandom` of the batch's samples (counter-based:
a sample's numbers depend on ``(seed, epoch, index)`` only, so its views do not depend on its
batch), or from a plain ``torch.Generator``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .sample_random import SampleRandom

__all__ = [
    "RAND_AUGMENT_OPS",
    "BatchAugment",
    "RandomSource",
    "batch_crop_flip",
    "batch_cutout",
    "batch_rand_augment",
]

#: The colour ops of :func:`batch_rand_augment` (the others are geometric).
_COLOUR_OPS = (
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "autocontrast",
)
#: The strong view's per-sample ops (torchvision RandAugment's list minus ``Equalize``, which
#: needs a per-image histogram and has no cheap batched form).
RAND_AUGMENT_OPS: tuple[str, ...] = (
    "identity",
    *_COLOUR_OPS,
    "rotate",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)


# ------------------------------------------------------------------------------- batched ops
#: The streams of :class:`SampleRandom` (one per use, so no two uses share numbers; the weak
#: view's stream is the same with and without ``two_view``).
STREAM_WEAK_CROP, STREAM_STRONG_CROP, STREAM_RAND_AUGMENT, STREAM_CUTOUT = 1, 2, 3, 4

RandomSource = torch.Generator | SampleRandom


@functools.lru_cache(maxsize=16)
def _positions(n: int, device: torch.device) -> Tensor:
    """``arange(n)`` on ``device``, made once (not a kernel launch per batch); never written to."""
    return torch.arange(n, device=device)


def _sample_random(source: RandomSource, batch: int) -> SampleRandom:
    """``source`` itself, or per-sample numbers under a seed drawn from a plain generator."""
    if isinstance(source, SampleRandom):
        if source.batch != batch:
            raise ValueError(f"SampleRandom of {source.batch} samples for a batch of {batch}")
        return source
    return SampleRandom.from_generator(source, batch)


def batch_crop_flip(
    images: Tensor,
    padding: int,
    flip: bool,
    generator: RandomSource,
    stream: int = STREAM_WEAK_CROP,
) -> Tensor:
    """Per-sample random crop (zero padding ``padding``) and horizontal flip, in one gather.

    ``images``: ``(B, C, H, W)``, any dtype, on the generator's device. Each sample gets its own
    offset in ``0..2 * padding`` along both axes (``RandomCrop(H, padding)``) and, with ``flip``,
    is mirrored with probability 1/2. ``generator``: a :class:`SampleRandom` of the batch's
    samples (draws of ``stream``: top, left, mirror), or a ``torch.Generator``. Returns a new
    ``(B, C, H, W)`` tensor of the input dtype.
    """
    if padding == 0 and not flip:
        return images
    b, c, h, w = images.shape
    rand = _sample_random(generator, b)
    padded = F.pad(images, (padding,) * 4) if padding else images
    hp, wp = h + 2 * padding, w + 2 * padding
    dev = images.device
    offsets = rand.randint(0, 2 * padding + 1, stream, 2)  # (B, 2)
    top, left = offsets[:, 0:1], offsets[:, 1:2]
    rows = top + _positions(h, dev)  # (B, H)
    cols = left + _positions(w, dev)  # (B, W)
    if flip:
        mirror = rand.uniform(stream, 3)[:, 2:3] < 0.5  # (B, 1): draw 2 of the stream
        cols = torch.where(mirror, cols.flip(1), cols)
    index = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, hp * wp).gather(2, index).reshape(b, c, h, w)


def _grayscale(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, 1, H, W)`` luma (ITU-R 601-2, as PIL) or the single channel."""
    if x.shape[1] == 3:
        return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).to(x.dtype)
    return x.mean(dim=1, keepdim=True)


def _smooth3x3(x: Tensor) -> Tensor:
    """PIL's SMOOTH filter ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13`` on the interior of a
    ``(B, C, H, W)`` batch, borders unchanged (as torchvision's ``adjust_sharpness``). Separable
    sums of slices: far cheaper than a depthwise ``conv2d`` on a CPU."""
    rows = x[..., :, :-2] + x[..., :, 1:-1] + x[..., :, 2:]  # (B, C, H, W - 2)
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]  # (B, C, H - 2, W - 2)
    out = x.clone()
    out[..., 1:-1, 1:-1] = (box + 4.0 * x[..., 1:-1, 1:-1]) / 13.0
    return out


def _blend(x: Tensor, base: Tensor, factor: Tensor) -> Tensor:
    """``base + factor * (x - base)`` clamped to ``[0, 1]`` (PIL's ``ImageEnhance`` blend)."""
    return (base + factor * (x - base)).clamp_(0.0, 1.0)


def _colour_op(name: str, x: Tensor, factor: Tensor, step: float, threshold: float) -> Tensor:
    """One colour op of :func:`batch_rand_augment` on ``x`` ``(n, C, H, W)`` in ``[0, 1]``;
    ``factor`` ``(n, 1, 1, 1)`` is the blend factor ``1 +- strength`` of the enhance ops."""
    if name == "brightness":
        return (x * factor).clamp_(0.0, 1.0)
    if name == "color":
        return _blend(x, _grayscale(x), factor)
    if name == "contrast":
        return _blend(x, _grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)
    if name == "sharpness":
        return _blend(x, _smooth3x3(x), factor) if min(x.shape[-2:]) > 2 else x
    if name == "posterize":
        return torch.floor(torch.round(x * 255.0) / step) * (step / 255.0)
    if name == "solarize":
        return torch.where(x >= threshold, 1.0 - x, x)
    if name == "autocontrast":
        low = x.amin(dim=(2, 3), keepdim=True)
        span = x.amax(dim=(2, 3), keepdim=True) - low
        return torch.where(span > 0, (x - low) / span.clamp_min(1e-12), x)
    raise ValueError(f"unknown colour op {name!r}")


def batch_rand_augment(
    x: Tensor,
    generator: RandomSource,
    num_ops: int = 2,
    magnitude: int = 9,
    sync_free: bool | None = None,
) -> Tensor:
    """RandAugment-style strong augmentation of a whole batch, chosen per sample.

    ``x``: ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` (square images). In each of ``num_ops``
    rounds every sample draws one op of :data:`RAND_AUGMENT_OPS` uniformly and a random sign,
    from its own numbers (``generator``: a :class:`SampleRandom` of the batch's samples, stream
    ``STREAM_RAND_AUGMENT``, or a ``torch.Generator``). Strengths follow torchvision's
    ``RandAugment(num_ops, magnitude, num_magnitude_bins=31)`` (``f = magnitude / 30``; the
    defaults give ``f = 0.3``):

    * brightness / color (saturation) / contrast / sharpness: blend with black / the grey image
      / the grey mean / PIL's 3x3 smoothed image by a factor ``1 +- 0.9 f``;
    * posterize to ``8 - round(magnitude / 7.5)`` bits; solarize above ``1 - f``; autocontrast
      (per-sample, per-channel min/max stretch);
    * rotate ``+-30 f`` degrees, shear x/y ``+-0.3 f``, translate x/y ``+-(150/331) f`` of the
      side; nearest neighbour, zero fill.

    Differences from torchvision, on purpose for speed: the geometric ops of all rounds are
    composed into ONE ``grid_sample`` of the whole batch, applied before the colour ops
    (torchvision keeps the draw order); ``Equalize`` is left out; values stay float (no uint8
    round trip). Each colour op runs on the samples that drew it: with ``sync_free=False``
    (the default on the CPU) on that subset only (``nonzero`` + ``index_select`` /
    ``index_copy_``, whose sizes are read on the host); with ``sync_free=True`` (the default on
    an accelerator) on the whole batch, kept where drawn (``torch.where``: no host sync, as the
    drawn counts are never read). Both give the same values, and every op acts on each sample
    alone, so a sample's output does not depend on the rest of the batch. Returns a new
    ``(B, C, H, W)`` tensor in ``[0, 1]``.
    """
    if num_ops <= 0:
        return x
    b, c, h, w = x.shape
    dev = x.device
    rand = _sample_random(generator, b)
    if sync_free is None:
        sync_free = dev.type != "cpu"
    frac = float(magnitude) / 30.0
    n_ops = len(RAND_AUGMENT_OPS)
    op_ids = {name: i for i, name in enumerate(RAND_AUGMENT_OPS)}
    draws = rand.bits(STREAM_RAND_AUGMENT, 2 * num_ops)  # (B, 2 * num_ops)
    ops = ((draws[:, :num_ops] * n_ops) >> 32).t()  # (num_ops, B) op of each sample per round
    signs = torch.where((draws[:, num_ops:] >> 31).t() == 0, -1.0, 1.0)  # (num_ops, B)

    # geometric ops: one composed affine warp (normalised coordinates, square images).
    theta = torch.eye(3, device=dev).repeat(b, 1, 1)
    for r in range(num_ops):
        op = ops[r]

        def amount(name: str, scale: float, r: int = r, op: Tensor = op) -> Tensor:
            return (op == op_ids[name]).float() * signs[r] * scale

        angle = amount("rotate", math.radians(30.0 * frac))
        shx, shy = amount("shear_x", 0.3 * frac), amount("shear_y", 0.3 * frac)
        tx = amount("translate_x", 2.0 * 150.0 / 331.0 * frac)
        ty = amount("translate_y", 2.0 * 150.0 / 331.0 * frac)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # one of the five is active per sample, so R @ Sx @ Sy @ T reduces to the sum below.
        m = torch.stack(
            [
                torch.stack([cos, shx - sin, tx], dim=1),
                torch.stack([sin + shy, cos, ty], dim=1),
                torch.stack(
                    [torch.zeros_like(cos), torch.zeros_like(cos), torch.ones_like(cos)], 1
                ),
            ],
            dim=1,
        )  # (B, 3, 3)
        theta = (theta[:, :, :, None] * m[:, None, :, :]).sum(dim=2)  # theta @ m, batched
    gx = (2.0 * torch.arange(w, device=dev) + 1.0) / w - 1.0  # pixel centres, align_corners=False
    gy = (2.0 * torch.arange(h, device=dev) + 1.0) / h - 1.0
    t = theta[:, :2, :, None, None].to(x.dtype)  # (B, 2, 3, 1, 1)
    grid = t[:, :, 0] * gx.view(1, 1, 1, w) + t[:, :, 1] * gy.view(1, 1, h, 1) + t[:, :, 2]
    x = F.grid_sample(
        x, grid.permute(0, 2, 3, 1), mode="nearest", padding_mode="zeros", align_corners=False
    )

    strength = 0.9 * frac
    step = float(2 ** round(magnitude / 7.5))  # posterize keeps 8 - round(m / 7.5) bits
    threshold = 1.0 - frac
    for r in range(num_ops):
        factors = (1.0 + strength * signs[r]).view(-1, 1, 1, 1).to(x.dtype)  # (B, 1, 1, 1)
        for name in _COLOUR_OPS:
            if name == "color" and c != 3:
                continue
            drawn = ops[r] == op_ids[name]  # (B,)
            if sync_free:
                out = _colour_op(name, x, factors, step, threshold)
                x = torch.where(drawn.view(-1, 1, 1, 1), out, x)
                continue
            idx = drawn.nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            factor = factors.index_select(0, idx)
            out = _colour_op(name, x.index_select(0, idx), factor, step, threshold)
            x.index_copy_(0, idx, out)
    return x


def batch_cutout(
    x: Tensor,
    generator: RandomSource,
    max_fraction: float = 0.5,
    stream: int = STREAM_CUTOUT,
) -> Tensor:
    """Zero one random square per sample (batched :class:`~cskd_lightning.data.Cutout`).

    ``x``: normalised ``(B, C, H, W)`` (the patch becomes 0 = the dataset mean). The side is
    uniform in ``1..round(max_fraction * min(H, W))``, the centre uniform over the image, the
    square clipped at the borders (``generator``: a :class:`SampleRandom` of the batch's
    samples, or a ``torch.Generator``). Returns a new tensor of the same shape and dtype.
    """
    b, _, h, w = x.shape
    max_side = round(max_fraction * min(h, w))
    if max_side <= 0:
        return x
    draws = _sample_random(generator, b).bits(stream, 3)  # (B, 3): side, centre row, column
    side = 1 + ((draws[:, 0:1] * max_side) >> 32)  # (B, 1) in 1..max_side
    cy, cx = (draws[:, 1:2] * h) >> 32, (draws[:, 2:3] * w) >> 32
    y0, x0 = cy - side // 2, cx - side // 2
    rows, cols = _positions(h, x.device), _positions(w, x.device)
    in_rows = (rows >= y0) & (rows < y0 + side)  # (B, H)
    in_cols = (cols >= x0) & (cols < x0 + side)  # (B, W)
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return x.masked_fill(mask, 0.0)


class BatchAugment:
    """Raw batch ``(B, C, H, W)`` -> normalised ``float32`` batch, or ``(weak, strong)``.

    Args:
        mean, std, scale: the normalisation ``(x / scale - mean) / std`` (per channel).
        crop_padding: zero padding of the random crop (0 and ``flip=False``: no geometry).
        flip: random horizontal flip.
        two_view: return ``(weak, strong)``; strong = its own crop/flip ->
            :func:`batch_rand_augment` -> normalise -> :func:`batch_cutout`.
        strong_num_ops, strong_magnitude: the strong view's RandAugment settings.
    """

    def __init__(
        self,
        mean: Tensor,
        std: Tensor,
        scale: float,
        crop_padding: int = 0,
        flip: bool = False,
        two_view: bool = False,
        strong_num_ops: int = 2,
        strong_magnitude: int = 9,
    ) -> None:
        self.mean = mean.reshape(1, -1, 1, 1).to(torch.float32)
        self.std = std.reshape(1, -1, 1, 1).to(torch.float32)
        self.scale = float(scale)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.two_view = bool(two_view)
        self.strong_num_ops = int(strong_num_ops)
        self.strong_magnitude = int(strong_magnitude)

    def _stats(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self.mean.device != device:
            self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self.mean, self.std

    def to_unit(self, raw: Tensor) -> Tensor:
        """A new ``float32`` tensor in ``[0, 1]`` (``raw / scale``); never aliases ``raw``."""
        if raw.dtype == torch.float32:
            return raw / self.scale if self.scale != 1.0 else raw.clone()
        x = raw.to(torch.float32)
        return x.div_(self.scale) if self.scale != 1.0 else x

    def normalize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` on a ``float32`` ``[0, 1]`` batch (in place when possible)."""
        mean, std = self._stats(x.device)
        return x.sub_(mean).div_(std)

    def weak(self, raw: Tensor, g: RandomSource) -> Tensor:
        """Crop/flip -> normalise. ``(B, C, H, W)`` ``float32``."""
        x = batch_crop_flip(raw, self.crop_padding, self.flip, g, STREAM_WEAK_CROP)
        return self.normalize(self.to_unit(x))

    def strong(self, raw: Tensor, g: RandomSource) -> Tensor:
        """Crop/flip -> RandAugment-style ops -> normalise -> Cutout. ``(B, C, H, W)``."""
        x = batch_crop_flip(raw, self.crop_padding, self.flip, g, STREAM_STRONG_CROP)
        x = batch_rand_augment(self.to_unit(x), g, self.strong_num_ops, self.strong_magnitude)
        return batch_cutout(self.normalize(x), g)

    def __call__(self, raw: Tensor, g: RandomSource) -> Tensor | tuple[Tensor, Tensor]:
        """``g``: a :class:`SampleRandom` of the batch's samples (or a ``torch.Generator``)."""
        g = _sample_random(g, int(raw.shape[0]))
        if self.two_view:
            return self.weak(raw, g), self.strong(raw, g)
        return self.weak(raw, g)
