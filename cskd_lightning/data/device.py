"""The device-resident datamodule: the whole dataset lives on the training device.

For datasets that fit in memory (digits, Fashion-MNIST, CIFAR-10/100) the per-sample
``Dataset -> transform -> collate -> DataLoader`` pipeline costs far more than the tiny models
it feeds. Here the raw images are ONE tensor on the training device (``uint8`` ``(N, C, H, W)``,
or ``float32`` in ``[0, 1]`` for the digits) and every batch is made with a handful of batched
tensor ops on that device:

1. an index slice of a per-epoch permutation (seeded by ``seed + epoch``, the same on every
   process; rank ``r`` of ``world`` takes every ``world``-th index, so the shards are disjoint);
2. one ``gather`` for the random crop (zero padding) and horizontal flip of every sample;
3. the conversion to ``float32`` and the normalisation ``(x / scale - mean) / std``;
4. in two-view mode, for the strong view: its own crop/flip, :func:`batch_rand_augment`
   (RandAugment-style, ``num_ops`` random ops per sample) and :func:`batch_cutout`.

Every random number of the augmentation is counter-based (:mod:`.sample_random`): the views
of training sample ``i`` in epoch ``e`` depend only on ``(augment_seed, e, i)`` (``augment_seed``
defaults to ``seed``), not on the batch size, the sample order or the number of processes. A
teacher-logit cache (:mod:`cskd_lightning.logit_cache`) relies on it.

:class:`DeviceDataModule` wraps any regular in-memory datamodule (digits, Fashion-MNIST and
its pairs, CIFAR-10/100, or your own :class:`~cskd_lightning.data.base.BaseDataModule`): its
``_load`` reads the raw tensors, its split (``val_split``, ``seed``), its normalisation
statistics and its crop padding and flip are reused, so the sets are identical; only the
augmentation's random draws differ. Batches are what the regular datamodules yield: ``(x, y)``
with ``x`` ``float32`` ``(B, C, H, W)`` normalised and ``y`` ``int64`` ``(B,)``, or
``((x_weak, x_strong), y)`` for two-view training — already on the device.

The torchvision/DataLoader path stays the default; pick this one with ``data=<name>_device``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cskd_lightning.errors import InputError

from .base import (
    BaseDataModule,
    TensorImageDataset,
    fit_epoch,
    resolve_val_count,
    stratified_split,
)
from .sample_random import SampleRandom
from .transforms import ToFloatNormalize

__all__ = [
    "BatchAugment",
    "DeviceBatchLoader",
    "DeviceDataModule",
    "SampleBatch",
    "SampleRandom",
    "ShardedPermutation",
    "batch_crop_flip",
    "batch_cutout",
    "batch_rand_augment",
    "RAND_AUGMENT_OPS",
]

Batch = tuple[Tensor | tuple[Tensor, Tensor], Tensor]

#: The strong view's per-sample ops (torchvision RandAugment's list minus ``Equalize``, which
#: needs a per-image histogram and has no cheap batched form).
RAND_AUGMENT_OPS: tuple[str, ...] = (
    "identity",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "autocontrast",
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
    rows = top + torch.arange(h, device=dev)  # (B, H)
    cols = left + torch.arange(w, device=dev)  # (B, W)
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


_COLOUR_OPS = (
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "autocontrast",
)


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
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
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


@dataclass
class SampleBatch:
    """A batch that also carries the indices of its samples (what a teacher-logit cache needs).

    It unpacks and indexes like the plain ``(x, y)`` tuple (``x, y = batch``, ``batch[1]``), so
    code written for ``(x, y)`` batches keeps working; Lightning moves it to the device field by
    field (a dataclass). ``index``: ``int64`` ``(B,)`` on the device; ``host_index``: the same
    numbers as a host ``numpy`` array (read without a device sync); ``epoch``: the sampler's
    epoch (``-1`` for evaluation batches); ``split``: ``"train"``, ``"val"`` or ``"test"``.
    """

    x: Tensor | tuple[Tensor, Tensor]
    y: Tensor
    index: Tensor
    host_index: np.ndarray
    epoch: int = -1
    split: str = "train"

    def __iter__(self) -> Iterator[Any]:
        return iter((self.x, self.y))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, item: int) -> Any:
        return (self.x, self.y)[item]


class ShardedPermutation:
    """The sample order of one process, per epoch (a sampler with ``set_epoch``).

    ``shuffle=True``: ``randperm(n)`` from a CPU generator seeded with ``seed + epoch`` (identical
    on every process), truncated to a multiple of ``world_size``; rank ``r`` takes
    ``perm[r::world_size]``. ``shuffle=False``: ``arange(n)`` padded to a multiple of
    ``world_size`` by repeating its start (as ``DistributedSampler``), then ``[r::world_size]``.
    Every rank gets the same count. Lightning calls :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self, n: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world={world_size}")
        self.n, self.shuffle, self.seed = int(n), bool(shuffle), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation :meth:`indices` returns."""
        self.epoch = int(epoch)

    def indices(self) -> Tensor:
        """This rank's sample indices for the current epoch, ``int64`` ``(len(self),)`` (CPU)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g)
            order = order[: self.n - self.n % self.world_size]
        else:
            order = torch.arange(self.n)
            pad = -self.n % self.world_size
            if pad:
                order = torch.cat([order, order[:pad].repeat(math.ceil(pad / max(self.n, 1)))])
                order = order[: self.n + pad]
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        if self.shuffle:
            return self.n // self.world_size
        return math.ceil(self.n / self.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())


class DeviceBatchLoader:
    """Iterable of ready batches cut from device-resident tensors (what Lightning iterates).

    Args:
        images: raw images ``(N, C, H, W)`` (``uint8``, or float in ``[0, 1]``) on the device.
        labels: ``int64`` ``(N,)`` on the same device.
        batch_size: per-process batch size.
        sampler: the per-epoch order (:class:`ShardedPermutation`).
        transform: raw batch -> normalised batch or ``(weak, strong)`` (:class:`BatchAugment`).
        drop_last: drop the last partial batch.
        seed: the augmentation seed: sample ``i`` of epoch ``e`` is augmented with the numbers
            ``SampleRandom(seed, e, i)``, whatever its batch, position or process.
        with_indices: yield :class:`SampleBatch` (the batch plus its sample indices and epoch)
            instead of plain tuples.
        split: the split's name, carried by :class:`SampleBatch`.

    ``len(loader)`` is the number of batches per epoch. Each ``iter()`` yields
    ``(x, y)`` / ``((x_weak, x_strong), y)`` for the sampler's current epoch; the order is a
    function of ``(seed, epoch, rank)`` and the augmentation's numbers are counter-based per
    sample (:class:`SampleRandom` of ``(seed, epoch, index)``), so an epoch is reproducible from
    its number alone and the loader has no other state.
    """

    batch_sampler = None  # Lightning inspects it next to ``sampler``

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        sampler: ShardedPermutation,
        transform: BatchAugment,
        drop_last: bool,
        seed: int = 0,
        with_indices: bool = False,
        split: str = "train",
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images, self.labels = images, labels
        self.batch_size = int(batch_size)
        self.sampler = sampler
        self.transform = transform
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.with_indices = bool(with_indices)
        self.split = str(split)

    @property
    def device(self) -> torch.device:
        """Where the batches are made."""
        return self.images.device

    def set_epoch(self, epoch: int) -> None:
        """Same as ``loader.sampler.set_epoch(epoch)``."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self._batches()  # lazy: draws nothing before Lightning's set_epoch

    def _batches(self) -> Iterator[Batch]:
        host_order = self.sampler.indices()
        order = host_order.to(self.device, non_blocking=True)
        epoch = self.sampler.epoch if self.split == "train" else -1
        host = host_order.numpy()
        # The epoch's random numbers are drawn for all its samples at the first batch and
        # sliced per batch (the same numbers: each depends on its sample only).
        epoch_random = SampleRandom(self.seed, max(epoch, 0), order)
        for i in range(len(self)):
            part = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[part]
            x = self.transform(self.images[idx], epoch_random.rows(part, idx))
            y = self.labels[idx]
            if self.with_indices:
                yield SampleBatch(x, y, idx, host[part], epoch, self.split)
            else:
                yield x, y


# ------------------------------------------------------------------------------- datamodules
def _source_class(source: str | type) -> type:
    """The datamodule class ``source`` names (a class, or its ``"module.Class"`` path)."""
    cls: Any = source
    if isinstance(source, str):
        module_name, _, name = source.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), name) if module_name else None
        except (ImportError, AttributeError):
            cls = None
        if cls is None:
            raise InputError(
                f"DeviceDataModule source={source!r} is not an importable class: give its "
                "dotted path, e.g. source=cskd_lightning.data.DigitsDataModule"
            )
    if not (isinstance(cls, type) and issubclass(cls, BaseDataModule)):
        raise InputError(
            f"DeviceDataModule source={source!r} is not a BaseDataModule: give one of the "
            "in-memory datamodules, e.g. cskd_lightning.data.DigitsDataModule"
        )
    return cls


class DeviceDataModule(L.LightningDataModule):
    """Any in-memory :class:`~cskd_lightning.data.base.BaseDataModule` (``source``) with its data
    on the training device and its batches made there (see the module docstring)::

        DeviceDataModule(DigitsDataModule(batch_size=64))
        DeviceDataModule("cskd_lightning.data.DigitsDataModule", batch_size=64)  # Hydra-friendly

    Args:
        source: the regular datamodule: an instance, or its class (or ``"module.Class"`` path)
            built with ``**source_kwargs``. Its ``batch_size`` (GLOBAL), ``eval_batch_size``,
            ``val_split``, ``two_view``, ``seed`` and ``augment`` apply unchanged; its
            ``num_workers`` / ``pin_memory`` are unused. Its ``_load`` must return
            :class:`~cskd_lightning.data.base.TensorImageDataset` sources and its
            ``_normalize_transform`` a :class:`~cskd_lightning.data.transforms.ToFloatNormalize`.
        crop_padding: zero padding of the training random crop (``None``: the source's
            ``crop_padding``, that of its regular augmentation).
        flip: random horizontal flip in training (``None``: the source's ``flip``).
        strong_num_ops, strong_magnitude: :func:`batch_rand_augment` of the strong view.
        device: where to put the data when no trainer is attached (e.g. ``"cuda"`` in a bare
            loop); with a trainer it is always ``trainer.strategy.root_device``.
        augment_seed: the seed of the augmentation's random numbers (``None``: the source's
            ``seed``). The split and the sample order stay seeded by ``seed``. Fixing it across
            a sweep over seeds gives every run the same views of each sample in each epoch,
            which lets them share one teacher-logit cache.
        **source_kwargs: the source's constructor arguments, when ``source`` is a class.

    Batches: ``x`` ``float32`` ``(B, C, H, W)`` normalised, ``y`` ``int64`` ``(B,)``, on the
    device; two-view training batches ``((x_weak, x_strong), y)``. ``B`` is the per-process
    batch ``batch_size // world_size`` (a ``ValueError`` if it does not divide).

    With ``with_indices = True`` (set by a teacher-logit cache) the loaders yield
    :class:`SampleBatch` (the same batch plus its sample indices).

    Resuming needs no state: the order of an epoch depends only on ``(seed, epoch, rank)`` and
    the augmentation of a sample only on ``(augment_seed, epoch, index)``, so a run resumed at an
    epoch's end sees the data it would have seen.
    """

    def __init__(
        self,
        source: BaseDataModule | type | str,
        crop_padding: int | None = None,
        flip: bool | None = None,
        strong_num_ops: int = 2,
        strong_magnitude: int = 9,
        device: str | torch.device | None = None,
        augment_seed: int | None = None,
        **source_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(source, BaseDataModule):
            if source_kwargs:
                raise InputError(
                    f"DeviceDataModule got a {type(source).__name__} instance and the arguments "
                    f"{sorted(source_kwargs)}: give those to the instance's constructor instead"
                )
        else:
            source = _source_class(source)(**source_kwargs)
        crop_padding = source.crop_padding if crop_padding is None else crop_padding
        if int(crop_padding) != crop_padding or crop_padding < 0:
            raise InputError(f"crop_padding must be an integer >= 0, got {crop_padding!r}")
        self.source = source
        self._augment_seed = None if augment_seed is None else int(augment_seed)
        self.with_indices = False
        self.crop_padding = int(crop_padding)
        self.flip = bool(source.flip if flip is None else flip)
        self.strong_num_ops = int(strong_num_ops)
        self.strong_magnitude = int(strong_magnitude)
        self.default_device = torch.device(device) if device is not None else None
        self._cpu: dict[str, Tensor] | None = None
        self._tensors: dict[str, Tensor] = {}
        self._normalizer: ToFloatNormalize | None = None

    # -------------------------------------------------------------- the source's settings
    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def in_channels(self) -> int:
        return self.source.in_channels

    @property
    def image_size(self) -> int:
        return self.source.image_size

    @property
    def batch_size(self) -> int:
        """The GLOBAL training batch size."""
        return self.source.batch_size

    @property
    def two_view(self) -> bool:
        return self.source.two_view

    @property
    def seed(self) -> int:
        return self.source.seed

    @property
    def augment(self) -> bool:
        return self.source.augment

    @property
    def augment_seed(self) -> int:
        """The seed of the augmentation's per-sample random numbers (default: ``seed``)."""
        return self.seed if self._augment_seed is None else self._augment_seed

    @property
    def per_process_batch_size(self) -> int:
        return self.source.per_process_batch_size

    @property
    def val_is_test(self) -> bool:
        return self.source.val_is_test

    def check_world_size(self, world: int) -> None:
        self.source.check_world_size(world)

    @property
    def per_process_eval_batch_size(self) -> int:
        return self.source.per_process_eval_batch_size

    @property
    def world_size(self) -> int:
        """Number of processes of the attached trainer (1 without a trainer)."""
        return int(self.trainer.world_size) if self.trainer is not None else 1

    @property
    def rank(self) -> int:
        """This process's global rank (0 without a trainer)."""
        return int(getattr(self.trainer, "global_rank", 0)) if self.trainer is not None else 0

    @property
    def device(self) -> torch.device:
        """The training device: ``trainer.strategy.root_device``, else ``device`` or the CPU."""
        strategy = getattr(self.trainer, "strategy", None) if self.trainer is not None else None
        if strategy is not None:
            return torch.device(strategy.root_device)
        return self.default_device or torch.device("cpu")

    # -------------------------------------------------------------- setup
    def prepare_data(self) -> None:
        """The source's ``prepare_data`` (downloads, rank 0 only)."""
        self.source.prepare_data()

    def _load_cpu(self) -> dict[str, Tensor]:
        src = self.source
        train, train_labels, test = src._load()
        for name, part in (("training", train), ("test", test)):
            if not isinstance(part, TensorImageDataset):
                raise TypeError(
                    f"{type(src).__name__}: the device pipeline needs in-memory tensor data, but "
                    f"its {name} source is a {type(part).__name__} (use the regular datamodule)."
                )
        normalizer = src._normalize_transform()
        if not isinstance(normalizer, ToFloatNormalize):
            raise TypeError(
                f"{type(src).__name__}._normalize_transform() must be a ToFloatNormalize for the "
                f"device pipeline, got {type(normalizer).__name__}"
            )
        self._normalizer = normalizer
        count = resolve_val_count(src.val_split, len(train))
        train_idx, val_idx = stratified_split(train_labels, count, src.seed)
        train_idx_t, val_idx_t = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
        tensors = {
            "train_images": train.images[train_idx_t].contiguous(),
            "train_labels": train.targets[train_idx_t].contiguous(),
            "test_images": test.images.contiguous(),
            "test_labels": test.targets.contiguous(),
        }
        if count > 0:
            tensors["val_images"] = train.images[val_idx_t].contiguous()
            tensors["val_labels"] = train.targets[val_idx_t].contiguous()
        return tensors

    def setup(self, stage: str | None = None) -> None:
        """Divide the batches by the world size, load the data once and put it on the device."""
        self.source.trainer = self.trainer
        self.source._divide_batches()
        if self._cpu is None:
            self._cpu = self._load_cpu()
        device = self.device
        if not self._tensors or next(iter(self._tensors.values())).device != device:
            self._tensors = {k: v.to(device) for k, v in self._cpu.items()}

    def _ensure_setup(self) -> None:
        if not self._tensors:
            self.setup("fit")

    def _transform(self, train: bool) -> BatchAugment:
        assert self._normalizer is not None
        norm = self._normalizer
        augment = train and self.augment
        return BatchAugment(
            norm.mean,
            norm.std,
            norm.scale,
            crop_padding=self.crop_padding if augment else 0,
            flip=self.flip and augment,
            two_view=train and self.two_view,
            strong_num_ops=self.strong_num_ops,
            strong_magnitude=self.strong_magnitude,
        )

    def _loader(self, part: str, train: bool) -> DeviceBatchLoader:
        self._ensure_setup()
        images, labels = self._tensors[f"{part}_images"], self._tensors[f"{part}_labels"]
        n = int(images.shape[0])
        batch = self.per_process_batch_size if train else self.per_process_eval_batch_size
        sampler = ShardedPermutation(n, train, self.seed, self.rank, self.world_size)
        if train:
            sampler.set_epoch(fit_epoch(self.trainer))
        return DeviceBatchLoader(
            images,
            labels,
            batch,
            sampler,
            self._transform(train),
            drop_last=train and n >= self.batch_size,
            seed=self.augment_seed,
            with_indices=self.with_indices,
            split=part,
        )

    def split_tensors(self, part: str) -> tuple[Tensor, Tensor] | None:
        """The raw images and labels of ``part`` (``"train"``, ``"val"``, ``"test"``) on the CPU,
        or ``None`` if there is no such split (loads the data if needed)."""
        if self._cpu is None:
            self._cpu = self._load_cpu()
        if f"{part}_images" not in self._cpu:
            return None
        return self._cpu[f"{part}_images"], self._cpu[f"{part}_labels"]

    def eval_split(self) -> str:
        """The split the validation loader iterates: ``"val"``, or ``"test"`` (no hold-out)."""
        return "val" if self.split_tensors("val") is not None else "test"

    def augmentation_settings(self) -> dict[str, Any]:
        """Everything that determines a training view besides the image: the seed of the
        per-sample numbers, the crop/flip/strong settings and the normalisation."""
        if self._normalizer is None:
            self._cpu = self._load_cpu()
        t = self._transform(True)
        return {
            "augment_seed": self.augment_seed,
            "augment": self.augment,
            "crop_padding": t.crop_padding,
            "flip": t.flip,
            "two_view": t.two_view,
            "strong_num_ops": t.strong_num_ops if t.two_view else None,
            "strong_magnitude": t.strong_magnitude if t.two_view else None,
            "mean": [float(v) for v in t.mean.flatten()],
            "std": [float(v) for v in t.std.flatten()],
            "scale": t.scale,
        }

    def train_dataloader(self) -> DeviceBatchLoader:
        """Shuffled (``seed + epoch``), sharded, augmented per-process batches."""
        return self._loader("train", train=True)

    def val_dataloader(self) -> DeviceBatchLoader:
        """The held-out split, or the test set when ``val_split == 0``; in order."""
        self._ensure_setup()
        return self._loader("val" if "val_images" in self._tensors else "test", train=False)

    def test_dataloader(self) -> DeviceBatchLoader:
        """The test set, in order."""
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DeviceBatchLoader:
        """Same as :meth:`test_dataloader`."""
        return self.test_dataloader()
