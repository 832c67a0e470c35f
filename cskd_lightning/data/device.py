"""Device-resident datamodules: the whole dataset lives on the training device.

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

The datamodules are the regular ones (:mod:`cskd_lightning.data.digits`, ``fashion_mnist``,
``cifar``) underneath: their ``_load`` reads the raw tensors, their split (``val_split``,
``seed``) and their normalisation statistics are reused, so the sets are identical; only the
augmentation's random draws differ. Batches are what the regular datamodules yield: ``(x, y)``
with ``x`` ``float32`` ``(B, C, H, W)`` normalised and ``y`` ``int64`` ``(B,)``, or
``((x_weak, x_strong), y)`` for two-view training — already on the device.

The torchvision/DataLoader path stays the default; pick these with ``data=<name>_device``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cskd_lightning.resume import (
    STATE_FORMAT,
    LoaderStateBox,
    ResumableDataModule,
    capture_rng_state,
    restore_rng_state,
)

from .base import BaseDataModule, TensorImageDataset, resolve_val_count, stratified_split
from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .digits import DigitsDataModule
from .fashion_mnist import FashionMNISTDataModule
from .fashion_mnist_pairs import FashionMNISTPairsDataModule
from .transforms import ToFloatNormalize

__all__ = [
    "BatchAugment",
    "DeviceBatchLoader",
    "DeviceCIFAR10DataModule",
    "DeviceCIFAR100DataModule",
    "DeviceDataModule",
    "DeviceDigitsDataModule",
    "DeviceFashionMNISTDataModule",
    "DeviceFashionMNISTPairsDataModule",
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
def _randint(low: int, high: int, size: tuple[int, ...], g: torch.Generator) -> Tensor:
    return torch.randint(low, high, size, generator=g, device=g.device)


def _rand(size: tuple[int, ...], g: torch.Generator) -> Tensor:
    return torch.rand(size, generator=g, device=g.device)


def batch_crop_flip(images: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Per-sample random crop (zero padding ``padding``) and horizontal flip, in one gather.

    ``images``: ``(B, C, H, W)``, any dtype, on the generator's device. Each sample gets its own
    offset in ``0..2 * padding`` along both axes (``RandomCrop(H, padding)``) and, with ``flip``,
    is mirrored with probability 1/2. Returns a new ``(B, C, H, W)`` tensor of the input dtype.
    """
    if padding == 0 and not flip:
        return images
    b, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4) if padding else images
    hp, wp = h + 2 * padding, w + 2 * padding
    dev = images.device
    top = _randint(0, 2 * padding + 1, (b, 1), generator)
    left = _randint(0, 2 * padding + 1, (b, 1), generator)
    rows = top + torch.arange(h, device=dev)  # (B, H)
    cols = left + torch.arange(w, device=dev)  # (B, W)
    if flip:
        mirror = _rand((b, 1), generator) < 0.5
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
    x: Tensor, generator: torch.Generator, num_ops: int = 2, magnitude: int = 9
) -> Tensor:
    """RandAugment-style strong augmentation of a whole batch, chosen per sample.

    ``x``: ``float32`` ``(B, C, H, W)`` in ``[0, 1]`` (square images). In each of ``num_ops``
    rounds every sample gets one op of :data:`RAND_AUGMENT_OPS` (uniformly at random: a random
    permutation of the batch is cut into ``len(RAND_AUGMENT_OPS)`` near-equal chunks, one per
    op) and a random sign. Strengths follow torchvision's ``RandAugment(num_ops, magnitude,
    num_magnitude_bins=31)`` (``f = magnitude / 30``; the defaults give ``f = 0.3``):

    * brightness / color (saturation) / contrast / sharpness: blend with black / the grey image
      / the grey mean / PIL's 3x3 smoothed image by a factor ``1 +- 0.9 f``;
    * posterize to ``8 - round(magnitude / 7.5)`` bits; solarize above ``1 - f``; autocontrast
      (per-sample, per-channel min/max stretch);
    * rotate ``+-30 f`` degrees, shear x/y ``+-0.3 f``, translate x/y ``+-(150/331) f`` of the
      side; nearest neighbour, zero fill.

    Differences from torchvision, on purpose for speed: the op counts are balanced within a
    batch (each sample's op is still uniform); the geometric ops of all rounds are composed
    into ONE ``grid_sample`` of the whole batch, applied before the colour ops (torchvision
    keeps the draw order); each colour op runs on its chunk only (``index_select`` /
    ``index_copy_``; every size is known from ``B``, so there is no host sync); ``Equalize`` is
    left out; values stay float (no uint8 round trip). Returns a new ``(B, C, H, W)`` tensor in
    ``[0, 1]``.
    """
    if num_ops <= 0:
        return x
    b, c, h, w = x.shape
    dev = x.device
    frac = float(magnitude) / 30.0
    n_ops = len(RAND_AUGMENT_OPS)
    op_ids = {name: i for i, name in enumerate(RAND_AUGMENT_OPS)}
    bounds = [k * b // n_ops for k in range(n_ops + 1)]
    # (B,): the op of each position of the permutation, k for bounds[k] <= j < bounds[k + 1]
    # (computed on the device: a host-to-device copy would wait for the queued GPU work).
    chunk_of = (n_ops * (torch.arange(b, device=dev) + 1) + b - 1) // b - 1
    perms = [torch.randperm(b, generator=generator, device=dev) for _ in range(num_ops)]
    signs = torch.where(_rand((num_ops, b), generator) < 0.5, -1.0, 1.0)

    # geometric ops: one composed affine warp (normalised coordinates, square images).
    theta = torch.eye(3, device=dev).repeat(b, 1, 1)
    for r in range(num_ops):
        op = torch.empty_like(chunk_of).index_copy_(0, perms[r], chunk_of)  # (B,) op per sample

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
        for name in _COLOUR_OPS:
            k = op_ids[name]
            if bounds[k + 1] == bounds[k] or (name == "color" and c != 3):
                continue
            idx = perms[r][bounds[k] : bounds[k + 1]]
            factor = (1.0 + strength * signs[r].index_select(0, idx)).view(-1, 1, 1, 1)
            out = _colour_op(name, x.index_select(0, idx), factor.to(x.dtype), step, threshold)
            x.index_copy_(0, idx, out)
    return x


def batch_cutout(x: Tensor, generator: torch.Generator, max_fraction: float = 0.5) -> Tensor:
    """Zero one random square per sample (batched :class:`~cskd_lightning.data.Cutout`).

    ``x``: normalised ``(B, C, H, W)`` (the patch becomes 0 = the dataset mean). The side is
    uniform in ``1..round(max_fraction * min(H, W))``, the centre uniform over the image, the
    square clipped at the borders. Returns a new tensor of the same shape and dtype.
    """
    b, _, h, w = x.shape
    max_side = round(max_fraction * min(h, w))
    if max_side <= 0:
        return x
    side = _randint(1, max_side + 1, (b, 1), generator)
    cy = _randint(0, h, (b, 1), generator)
    cx = _randint(0, w, (b, 1), generator)
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

    def weak(self, raw: Tensor, g: torch.Generator) -> Tensor:
        """Crop/flip -> normalise. ``(B, C, H, W)`` ``float32``."""
        x = batch_crop_flip(raw, self.crop_padding, self.flip, g)
        return self.normalize(self.to_unit(x))

    def strong(self, raw: Tensor, g: torch.Generator) -> Tensor:
        """Crop/flip -> RandAugment-style ops -> normalise -> Cutout. ``(B, C, H, W)``."""
        x = self.to_unit(batch_crop_flip(raw, self.crop_padding, self.flip, g))
        x = batch_rand_augment(x, g, self.strong_num_ops, self.strong_magnitude)
        return batch_cutout(self.normalize(x), g)

    def __call__(self, raw: Tensor, g: torch.Generator) -> Tensor | tuple[Tensor, Tensor]:
        if self.two_view:
            return self.weak(raw, g), self.strong(raw, g)
        return self.weak(raw, g)


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
        seed: seeds the augmentation generator together with the epoch and rank.
        resume_box: shared with a :class:`~cskd_lightning.resume.ResumableDataModule` (training
            loader only): the loader registers there as the active one, and a state restored
            from a checkpoint is applied when its next iterator is created.

    ``len(loader)`` is the number of batches per epoch. Each ``iter()`` yields
    ``(x, y)`` / ``((x_weak, x_strong), y)`` for the sampler's current epoch; the random draws of
    the augmentation come from a generator on the device seeded with ``(seed, epoch, rank)``, so
    an epoch is reproducible. Its resume state (:meth:`get_resume_state`) is therefore just the
    sampler's epoch and the global RNG states (for dropout and the like; the pipeline itself
    does not use them).
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
        resume_box: LoaderStateBox | None = None,
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images, self.labels = images, labels
        self.batch_size = int(batch_size)
        self.sampler = sampler
        self.transform = transform
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.resume_box = resume_box

    @property
    def device(self) -> torch.device:
        """Where the batches are made."""
        return self.images.device

    def get_resume_state(self, next_epoch: int | None = None) -> dict[str, Any]:
        """``{"format", "rng", "sampler_epoch"}`` (see :class:`~cskd_lightning.resume.
        ResumableDataLoader`); ``next_epoch`` overrides the sampler's current epoch."""
        epoch = next_epoch if next_epoch is not None else self.sampler.epoch
        return {"format": STATE_FORMAT, "rng": capture_rng_state(), "sampler_epoch": int(epoch)}

    def set_resume_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`get_resume_state`."""
        if state.get("format") != STATE_FORMAT:
            return
        if "sampler_epoch" in state:
            self.sampler.set_epoch(int(state["sampler_epoch"]))
        restore_rng_state(state["rng"])

    def set_epoch(self, epoch: int) -> None:
        """Same as ``loader.sampler.set_epoch(epoch)``."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _generator(self) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.sampler.epoch, self.sampler.rank])
        g = torch.Generator(device=self.device)
        g.manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> 1))
        return g

    def __iter__(self) -> Iterator[Batch]:
        box = self.resume_box
        if box is not None:
            box.active = self  # type: ignore[assignment]
            if box.pending is not None:
                state, box.pending = box.pending, None
                self.set_resume_state(state)
        return self._batches()  # lazy: draws nothing before Lightning's set_epoch

    def _batches(self) -> Iterator[Batch]:
        order = self.sampler.indices().to(self.device, non_blocking=True)
        g = self._generator()
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.transform(self.images[idx], g), self.labels[idx]


# ------------------------------------------------------------------------------- datamodules
class DeviceDataModule(ResumableDataModule):
    """Wrap an in-memory :class:`~cskd_lightning.data.base.BaseDataModule` (``source``) so that
    its data lives on the training device and batches are made there (see the module docstring).

    Args:
        source: the regular datamodule; its ``batch_size`` (GLOBAL), ``eval_batch_size``,
            ``val_split``, ``two_view``, ``seed`` and ``augment`` apply unchanged; its
            ``num_workers`` / ``pin_memory`` are unused. Its ``_load`` must return
            :class:`~cskd_lightning.data.base.TensorImageDataset` sources and its
            ``_normalize_transform`` a :class:`~cskd_lightning.data.transforms.ToFloatNormalize`.
        crop_padding: zero padding of the training random crop (the regular datamodule's value).
        flip: random horizontal flip in training.
        strong_num_ops, strong_magnitude: :func:`batch_rand_augment` of the strong view.
        device: where to put the data when no trainer is attached (e.g. ``"cuda"`` in a bare
            loop); with a trainer it is always ``trainer.strategy.root_device``.

    Batches: ``x`` ``float32`` ``(B, C, H, W)`` normalised, ``y`` ``int64`` ``(B,)``, on the
    device; two-view training batches ``((x_weak, x_strong), y)``. ``B`` is the per-process
    batch ``batch_size // world_size`` (a ``ValueError`` if it does not divide).

    Resuming (:class:`~cskd_lightning.resume.ResumableDataModule`): the order and augmentation
    of an epoch depend only on ``(seed, epoch, rank)``, so a run resumed at an epoch's end sees
    the data it would have seen; the global RNG states are saved and restored as for the
    regular datamodules.
    """

    def __init__(
        self,
        source: BaseDataModule,
        crop_padding: int = 0,
        flip: bool = False,
        strong_num_ops: int = 2,
        strong_magnitude: int = 9,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        self.source = source
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
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
        return DeviceBatchLoader(
            images,
            labels,
            batch,
            sampler,
            self._transform(train),
            drop_last=train and n >= self.batch_size,
            seed=self.seed,
            resume_box=self._resume_box if train else None,
        )

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


class DeviceDigitsDataModule(DeviceDataModule):
    """:class:`~cskd_lightning.data.DigitsDataModule` on the device (float ``[0, 1]`` images,
    shift of up to 1 pixel when ``augment=True``, no flip). ``**kwargs`` go to the source."""

    def __init__(
        self,
        crop_padding: int = 1,
        flip: bool = False,
        strong_num_ops: int = 2,
        strong_magnitude: int = 9,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            DigitsDataModule(**kwargs),
            crop_padding,
            flip,
            strong_num_ops,
            strong_magnitude,
            device,
        )


class DeviceFashionMNISTDataModule(DeviceDataModule):
    """:class:`~cskd_lightning.data.FashionMNISTDataModule` on the device (``uint8``; crop 28
    with padding 2 + flip). ``**kwargs`` (``data_dir``, ``batch_size``...) go to the source."""

    def __init__(
        self,
        crop_padding: int = 2,
        flip: bool = True,
        strong_num_ops: int = 2,
        strong_magnitude: int = 9,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            FashionMNISTDataModule(**kwargs),
            crop_padding,
            flip,
            strong_num_ops,
            strong_magnitude,
            device,
        )


class DeviceFashionMNISTPairsDataModule(DeviceDataModule):
    """:class:`~cskd_lightning.data.FashionMNISTPairsDataModule` on the device (``uint8``
    ``(1, 28, 56)``; crop with padding 2, no flip: mirroring swaps the halves and so the label).
    ``**kwargs`` (``data_dir``, ``batch_size``, ``num_train_pairs``, ``pair_seed``...) go to the
    source, so the pairs, the split and the normalisation are the regular datamodule's."""

    def __init__(
        self,
        crop_padding: int = 2,
        flip: bool = False,
        strong_num_ops: int = 2,
        strong_magnitude: int = 9,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            FashionMNISTPairsDataModule(**kwargs),
            crop_padding,
            flip,
            strong_num_ops,
            strong_magnitude,
            device,
        )


class DeviceCIFAR10DataModule(DeviceDataModule):
    """:class:`~cskd_lightning.data.CIFAR10DataModule` on the device (``uint8``; crop 32 with
    padding 4 + flip). ``**kwargs`` (``data_dir``, ``batch_size``...) go to the source."""

    def __init__(
        self,
        crop_padding: int = 4,
        flip: bool = True,
        strong_num_ops: int = 2,
        strong_magnitude: int = 9,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            CIFAR10DataModule(**kwargs),
            crop_padding,
            flip,
            strong_num_ops,
            strong_magnitude,
            device,
        )


class DeviceCIFAR100DataModule(DeviceDataModule):
    """:class:`~cskd_lightning.data.CIFAR100DataModule` on the device (``uint8``; crop 32 with
    padding 4 + flip). ``**kwargs`` (``data_dir``, ``batch_size``...) go to the source."""

    def __init__(
        self,
        crop_padding: int = 4,
        flip: bool = True,
        strong_num_ops: int = 2,
        strong_magnitude: int = 9,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            CIFAR100DataModule(**kwargs),
            crop_padding,
            flip,
            strong_num_ops,
            strong_magnitude,
            device,
        )
