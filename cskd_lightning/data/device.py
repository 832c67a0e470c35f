"""The device-resident datamodule: the whole dataset lives on the training device.

For datasets that fit in memory (digits, Fashion-MNIST, CIFAR-10/100) the per-sample
``Dataset -> transform -> collate -> DataLoader`` pipeline costs far more than the tiny models
it feeds. Here the raw images are ONE tensor on the training device (``uint8`` ``(N, C, H, W)``,
or ``float32`` in ``[0, 1]`` for the digits) and every batch is an index slice of a per-epoch
permutation (seeded by ``seed + epoch``, the same on every process; rank ``r`` of ``world``
takes every ``world``-th index, so the shards are disjoint) augmented by a handful of batched
tensor ops on that device (:class:`~cskd_lightning.data.batch_augment.BatchAugment`: crop/flip
in one gather, normalisation, and for two-view training the strong view's RandAugment-style ops
and Cutout).

Every random number of the augmentation is counter-based (:mod:`.sample_random`): the views
of training sample ``i`` in epoch ``e`` depend only on ``(augment_seed, e, i)`` (``augment_seed``
defaults to ``seed``), not on the batch size, the sample order or the number of processes. A
teacher-logit cache (:mod:`cskd_lightning.logit_cache`) relies on it.

:class:`DeviceDataModule` wraps any regular in-memory datamodule (digits, Fashion-MNIST and
its pairs, CIFAR-10/100, or your own :class:`~cskd_lightning.data.base.BaseDataModule`) through
its public hooks: :meth:`~cskd_lightning.data.base.BaseDataModule.raw_splits` (the raw tensors
and the split of ``val_split`` and ``seed``),
:meth:`~cskd_lightning.data.base.BaseDataModule.normalization` and its ``crop_padding`` and
``flip``, so the sets are identical; only the augmentation's random draws differ. Batches are
what the regular datamodules yield: ``(x, y)`` with ``x`` ``float32`` ``(B, C, H, W)`` normalised
and ``y`` ``int64`` ``(B,)``, or ``((x_weak, x_strong), y)`` for two-view training — already on
the device.

The torchvision/DataLoader path stays the default; pick this one with ``data=<name>_device``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from cskd_lightning.dotted_path import IMPORT_ERRORS, import_object
from cskd_lightning.errors import InputError

from .base import BaseDataModule, TensorImageDataset
from .batch_augment import BatchAugment
from .loading import fit_epoch
from .sample_random import SampleRandom
from .transforms import ToFloatNormalize

__all__ = [
    "DeviceBatchLoader",
    "DeviceDataModule",
    "SampleBatch",
    "ShardedPermutation",
]

Batch = tuple[Tensor | tuple[Tensor, Tensor], Tensor]


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


# ------------------------------------------------------------------------------- datamodule
def _source_class(source: str | type) -> type:
    """The datamodule class ``source`` names (a class, or its ``"module.Class"`` path)."""
    cls: Any = source
    if isinstance(source, str):
        try:
            cls = import_object(source)
        except IMPORT_ERRORS:
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
            ``num_workers`` / ``pin_memory`` are unused. Its
            :meth:`~cskd_lightning.data.base.BaseDataModule.load_raw` must return
            :class:`~cskd_lightning.data.base.TensorImageDataset` sources.
        crop_padding: zero padding of the training random crop (``None``: the source's
            ``crop_padding``, that of its regular augmentation).
        flip: random horizontal flip in training (``None``: the source's ``flip``).
        strong_num_ops, strong_magnitude: ``batch_rand_augment`` of the strong view.
        device: where to put the data when no trainer is attached (e.g. ``"cuda"`` in a bare
            loop); with a trainer it is always ``trainer.strategy.root_device``.
        augment_seed: the seed of the augmentation's random numbers (``None``: the source's
            ``seed``). The split and the sample order stay seeded by ``seed``. Fixing it across
            a sweep over seeds gives every run the same views of each sample in each epoch,
            which lets them share one teacher-logit cache.
        **source_kwargs: the source's constructor arguments, when ``source`` is a class.

    The source keeps the data's settings: the names of :attr:`SOURCE_SETTINGS` (``num_classes``,
    ``batch_size``, ``val_is_test``, ...) read the source's (``dm.batch_size`` is
    ``dm.source.batch_size``).

    Batches: ``x`` ``float32`` ``(B, C, H, W)`` normalised, ``y`` ``int64`` ``(B,)``, on the
    device; two-view training batches ``((x_weak, x_strong), y)``. ``B`` is the per-process
    batch ``batch_size // world_size`` (a ``ValueError`` if it does not divide).

    With ``with_indices = True`` (set by a teacher-logit cache) the loaders yield
    :class:`SampleBatch` (the same batch plus its sample indices).

    Resuming needs no state: the order of an epoch depends only on ``(seed, epoch, rank)`` and
    the augmentation of a sample only on ``(augment_seed, epoch, index)``, so a run resumed at an
    epoch's end sees the data it would have seen.
    """

    #: The source's attributes this datamodule reads through (``dm.seed`` is ``dm.source.seed``).
    SOURCE_SETTINGS = frozenset(
        {
            "num_classes",
            "in_channels",
            "image_size",
            "image_shape",
            "classes",
            "batch_size",
            "eval_batch_size",
            "val_split",
            "two_view",
            "seed",
            "augment",
            "per_process_batch_size",
            "per_process_eval_batch_size",
            "val_is_test",
            "check_world_size",
            "world_size",
            "rank",
        }
    )

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

    def __getattr__(self, name: str) -> Any:
        """The source's ``name`` when it is one of :attr:`SOURCE_SETTINGS`."""
        source = self.__dict__.get("source")
        if source is None or name not in self.SOURCE_SETTINGS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(source, name)

    @property
    def augment_seed(self) -> int:
        """The seed of the augmentation's per-sample random numbers (default: ``seed``)."""
        return self.source.seed if self._augment_seed is None else self._augment_seed

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
        raw = src.raw_splits()
        for name, part in (("training", raw.train), ("test", raw.test)):
            if not isinstance(part, TensorImageDataset):
                raise TypeError(
                    f"{type(src).__name__}: the device pipeline needs in-memory tensor data, but "
                    f"its {name} source is a {type(part).__name__} (use the regular datamodule)."
                )
        self._normalizer = src.normalization()
        train_idx, val_idx = torch.from_numpy(raw.train_indices), torch.from_numpy(raw.val_indices)
        tensors = {
            "train_images": raw.train.images[train_idx].contiguous(),
            "train_labels": raw.train.targets[train_idx].contiguous(),
            "test_images": raw.test.images.contiguous(),
            "test_labels": raw.test.targets.contiguous(),
        }
        if len(val_idx) > 0:
            tensors["val_images"] = raw.train.images[val_idx].contiguous()
            tensors["val_labels"] = raw.train.targets[val_idx].contiguous()
        return tensors

    def setup(self, stage: str | None = None) -> None:
        """Divide the batches by the world size, load the data once and put it on the device."""
        self.source.trainer = self.trainer
        self.source.divide_batches()
        if self._cpu is None:
            self._cpu = self._load_cpu()
        device = self.device
        if not self._tensors or next(iter(self._tensors.values())).device != device:
            self._tensors = {k: v.to(device) for k, v in self._cpu.items()}

    def _ensure_setup(self) -> None:
        if not self._tensors or self.source.trainer is not self.trainer:
            self.setup("fit")

    def _transform(self, train: bool) -> BatchAugment:
        assert self._normalizer is not None
        norm = self._normalizer
        augment = train and self.source.augment
        return BatchAugment(
            norm.mean,
            norm.std,
            norm.scale,
            crop_padding=self.crop_padding if augment else 0,
            flip=self.flip and augment,
            two_view=train and self.source.two_view,
            strong_num_ops=self.strong_num_ops,
            strong_magnitude=self.strong_magnitude,
        )

    def _loader(self, part: str, train: bool) -> DeviceBatchLoader:
        self._ensure_setup()
        src = self.source
        images, labels = self._tensors[f"{part}_images"], self._tensors[f"{part}_labels"]
        n = int(images.shape[0])
        batch = src.per_process_batch_size if train else src.per_process_eval_batch_size
        sampler = ShardedPermutation(n, train, src.seed, src.rank, src.world_size)
        if train:
            sampler.set_epoch(fit_epoch(self.trainer))
        return DeviceBatchLoader(
            images,
            labels,
            batch,
            sampler,
            self._transform(train),
            drop_last=train and n >= src.batch_size,
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

    def augmentation_settings(self) -> dict[str, Any]:
        """Everything that determines a training view besides the image: the seed of the
        per-sample numbers, the crop/flip/strong settings and the normalisation."""
        if self._normalizer is None:
            self._cpu = self._load_cpu()
        t = self._transform(True)
        return {
            "augment_seed": self.augment_seed,
            "augment": self.source.augment,
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
