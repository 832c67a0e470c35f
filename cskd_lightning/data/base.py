"""Shared plumbing for the datamodules: per-process batch division, stratified validation
split, two-view (weak/strong) training transform and the dataloaders.

A subclass says how to load its raw samples and describes its images; it states only what
differs from :class:`BaseDataModule`'s class attributes and takes the base class's constructor
arguments through ``**kwargs``:

* :meth:`BaseDataModule.load_raw` (the one method to write) returns the raw training source,
  its integer labels and the raw test source. A *source* is any indexable of ``(raw_image,
  label)`` pairs; raw images are ``uint8``/float ``(C, H, W)`` tensors or PIL images, depending
  on the dataset.
* ``num_classes``, ``in_channels``, ``image_size`` (and ``image_shape`` for non-square images),
  ``mean``/``std``/``pixel_scale`` (the normalisation ``(x / pixel_scale - mean) / std``) and
  ``crop_padding``/``flip`` (the training augmentation: a random crop of the image's size with
  that zero padding, and a horizontal flip) are class attributes; ``val_split`` and ``augment``
  are the dataset's defaults of those arguments.
* :meth:`BaseDataModule.augment_transform` and :meth:`BaseDataModule.eval_geometry` are only
  overridden by a dataset whose augmentation is not a crop and a flip (ImageNet).

The same public hooks serve the device pipeline (:class:`~cskd_lightning.data.DeviceDataModule`:
:meth:`~BaseDataModule.raw_splits`, :meth:`~BaseDataModule.normalization`, ``crop_padding`` and
``flip``) and the student export (:meth:`~BaseDataModule.normalization`,
:meth:`~BaseDataModule.eval_geometry`).

Batches are ``(x, y)`` with ``x`` ``float32`` ``(B, C, H, W)`` and ``y`` ``int64`` ``(B,)``; with
``two_view=True`` the *training* batches are ``((x_weak, x_strong), y)``.

**The training data stream is a pure function of the seed and the epoch.** The order of epoch
``e`` is ``randperm(N)`` of a generator seeded with ``seed + e`` (:class:`EpochSampler`, a
``DistributedSampler``: under DDP rank ``r`` of ``W`` takes every ``W``-th index of it, and
Lightning keeps it instead of swapping in its own), and the transform of training sample ``i``
runs with torch's global generator forked and seeded with ``sample_seed(seed, e, i)``
(:class:`SubsetWithTransform`), so its augmentation is the same whatever the batch size, the
number of worker processes, the batch it falls in or the process that loads it. A run resumed
at an epoch's end therefore sees the data of the uninterrupted run with no state of its own in
the checkpoint (a checkpoint that still holds one, from an older version, loads: Lightning hands
it to ``load_state_dict``, which ignores it). The package's transforms, like torchvision's, draw
from torch's generator; a transform of your own that draws from ``numpy.random`` or Python's
``random`` is not covered.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from cskd_lightning.errors import InputError

from .sample_random import sample_seed
from .transforms import (
    Cutout,
    RandomCropTensor,
    RandomHorizontalFlipTensor,
    TensorRandAugment,
    ToFloatNormalize,
    TwoViewTransform,
)

__all__ = [
    "BaseDataModule",
    "EpochSampler",
    "RawSplits",
    "SubsetWithTransform",
    "TensorImageDataset",
    "fit_epoch",
    "stratified_split",
]

Transform = Callable[[Any], Any]


class TensorImageDataset(Dataset):
    """In-memory images ``(N, C, H, W)`` (any dtype) with labels ``(N,)``.

    ``ds[i]`` returns ``(images[i], int(labels[i]))`` with ``images[i]`` of shape ``(C, H, W)``.
    """

    def __init__(self, images: Tensor, targets: Tensor | Sequence[int]) -> None:
        targets = torch.as_tensor(targets, dtype=torch.int64)
        if images.ndim != 4 or images.shape[0] != targets.shape[0]:
            raise InputError(
                f"expected images (N, C, H, W) and targets (N,), got {tuple(images.shape)} and "
                f"{tuple(targets.shape)}"
            )
        self.images = images
        self.targets = targets

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.targets[index])


class SubsetWithTransform(Dataset):
    """The samples ``source[indices]`` (all of them when ``indices`` is None) with ``transform``
    applied to the image. Items are ``(transform(image), int(label))``.

    With a ``seed`` (the training set) the key is ``(epoch, i)`` (what :class:`EpochSampler`
    yields; a plain ``i`` means epoch 0) and the transform runs with torch's global generator
    forked and seeded with ``sample_seed(seed, epoch, i)``: the augmentation of sample ``i`` in
    ``epoch`` depends on nothing else, and the process's own generator is left as it was.
    """

    def __init__(
        self,
        source: Any,
        indices: Sequence[int] | np.ndarray | None = None,
        transform: Transform | None = None,
        seed: int | None = None,
    ) -> None:
        self.source = source
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.seed = None if seed is None else int(seed)

    def __len__(self) -> int:
        return len(self.source) if self.indices is None else int(self.indices.shape[0])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        j = index if self.indices is None else int(self.indices[index])
        img, label = self.source[j]
        if self.transform is None:
            return img, int(label)
        if self.seed is None:
            return self.transform(img), int(label)
        # Only torch's CPU generator, which the transforms (on the CPU) draw from:
        # torch.manual_seed would also reseed CUDA's, outside the fork.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            return self.transform(img), int(label)


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` whose items are ``(epoch, index)``, for a
    :class:`SubsetWithTransform` with a seed.

    The order is ``DistributedSampler``'s: ``randperm(N)`` of a generator seeded with
    ``seed + epoch`` (with ``shuffle``), padded by repetition to a multiple of
    ``num_replicas``, of which rank ``r`` takes every ``num_replicas``-th index from ``r``.
    Lightning calls :meth:`set_epoch` before every training epoch, and keeps a
    ``DistributedSampler`` under DDP instead of replacing it. The epoch travels with every index,
    so worker processes (persistent or not) need no copy of it.
    """

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        return ((epoch, int(i)) for i in super().__iter__())


def fit_epoch(trainer: Any) -> int:
    """The epoch a training loader made now will serve first: the fit loop's count of
    processed epochs (0 without a trainer).

    Lightning creates the training iterator before its first ``set_epoch`` call, and worker
    processes start loading when it is created; a run resumed at epoch ``e`` must therefore
    start its sampler at ``e`` itself, or its first epoch would take epoch 0's order.
    """
    fit_loop = getattr(trainer, "fit_loop", None)
    return int(fit_loop.epoch_progress.current.processed) if fit_loop is not None else 0


def _as_tuples(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_as_tuples(o) for o in obj)
    return obj


def tuple_collate(batch: list[Any]) -> Any:
    """``default_collate`` but sequences come back as tuples: ``(x, y)`` or ``((xw, xs), y)``."""
    return _as_tuples(default_collate(batch))


class IndexedSamples(Dataset):
    """``dataset``'s items with their key: ``(image, label, index, epoch)`` for a key ``(epoch,
    index)`` (what :class:`EpochSampler` yields) or ``index`` (epoch 0)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, ...]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return (*self.dataset[key], int(index), int(epoch))


def sample_batch_collate(batch: list[Any]) -> Any:
    """Collate :class:`IndexedSamples` items into a
    :class:`~cskd_lightning.data.device.SampleBatch` (unpacks like ``(x, y)``; carries the
    sample indices and the epoch)."""
    from cskd_lightning.data.device import SampleBatch

    x, y, index, epoch = tuple_collate(batch)
    return SampleBatch(x, y, index, index.numpy(), int(epoch[0]), "train")


def resolve_val_count(val_split: float | int, n: int) -> int:
    """Number of samples to hold out of ``n``: ``val_split`` is a fraction in ``[0, 1)`` (rounded
    up, like scikit-learn) or a count in ``[0, n)``; a float with an integral value >= 1 (e.g.
    ``5000.0`` from a config) counts as a count.
    """
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float, np.integer)):
        raise InputError(f"val_split must be a float fraction or an int count, got {val_split!r}")
    if isinstance(val_split, (int, np.integer)):
        count = int(val_split)
    elif 0.0 <= val_split < 1.0:
        count = math.ceil(val_split * n)
    elif float(val_split).is_integer():
        count = int(val_split)
    else:
        raise InputError(
            f"val_split={val_split} is neither a fraction in [0, 1) nor an integer count"
        )
    if count < 0 or count >= n:
        raise InputError(
            f"val_split={val_split} must hold out between 0 and {n - 1} of {n} samples"
        )
    return count


def stratified_split(
    targets: Sequence[int] | np.ndarray | Tensor, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(targets))`` into ``(keep_idx, held_out_idx)`` with ``len(held_out_idx)
    == count``, stratified by label and reproducible for a given ``seed``. Both are sorted.
    """
    from sklearn.model_selection import train_test_split

    y = np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets).astype(np.int64)
    idx = np.arange(y.shape[0])
    if count == 0:
        return idx, idx[:0]
    try:
        keep, held = train_test_split(idx, test_size=count, stratify=y, random_state=seed)
    except ValueError as err:
        raise InputError(
            f"cannot hold out a stratified split of {count} of {len(y)} samples "
            f"({len(np.unique(y))} classes): {err}. Use a larger or smaller val_split "
            "(0 uses the test set for validation)."
        ) from err
    return np.sort(keep), np.sort(held)


def signature_with_base_arguments(cls: type) -> inspect.Signature:
    """``cls``'s constructor signature plus the arguments its ``**kwargs`` hands on to its base
    classes (as keyword-only), so that ``inspect.signature(cls)`` and the argument hints built
    on it list every argument the class takes."""
    params: dict[str, inspect.Parameter] = {}
    for depth, klass in enumerate(k for k in cls.__mro__ if "__init__" in k.__dict__):
        own = list(inspect.signature(klass.__dict__["__init__"]).parameters.values())[1:]
        for p in own:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in params:
                params[p.name] = p if depth == 0 else p.replace(kind=p.KEYWORD_ONLY)
        if not any(p.kind is p.VAR_KEYWORD for p in own):
            break
    ordered = sorted(params.values(), key=lambda p: p.kind)
    return inspect.Signature(ordered, return_annotation=None)


class RawSplits(NamedTuple):
    """The raw samples of a datamodule's three splits (no transform applied).

    ``train`` and ``test`` are the loaded sources (:meth:`BaseDataModule.load_raw`); the training
    split is ``train[train_indices]`` and the validation split ``train[val_indices]`` (empty
    when nothing is held out: the test set then validates). Indices are sorted ``int64``.
    """

    train: Any
    train_indices: np.ndarray
    val_indices: np.ndarray
    test: Any


class BaseDataModule(L.LightningDataModule):
    """Common base of the image-classification datamodules.

    Args:
        batch_size: the GLOBAL training batch size; each of the trainer's ``world_size``
            processes loads ``batch_size // world_size`` samples per step (must divide exactly).
        eval_batch_size: global batch size for validation/test (default: ``batch_size``).
        num_workers: DataLoader worker processes per process.
        val_split: fraction (``0 <= f < 1``) or count of the training set held out (stratified,
            seeded by ``seed``) as the validation set. ``0`` means no hold-out: the validation
            loader then iterates the TEST set (the usual protocol for CIFAR/ImageNet KD papers).
            ``None``: the dataset's default (the class attribute ``val_split``).
        two_view: if True, training batches are ``((x_weak, x_strong), y)`` where the weak view
            is the normal training augmentation and the strong one adds ``RandAugment(num_ops=2)``
            and :class:`Cutout`. Validation/test batches stay ``(x, y)``.
        seed: seeds the validation split, the training order of every epoch and the
            per-sample augmentation (see the module docstring).
        pin_memory: passed to the DataLoaders; ``None``: on when the trainer trains on a CUDA
            GPU (page-locked batches copy to the GPU asynchronously), off otherwise.
        augment: apply the dataset's training augmentation (crop/flip...). When False the
            training images go through the evaluation transform. ``None``: the dataset's
            default (the class attribute ``augment``).

    Batches: ``x`` is ``float32`` ``(B, C, H, W)`` normalised, ``y`` is ``int64`` ``(B,)``.
    """

    #: number of classes, input channels and (square) input side, known before ``setup``.
    num_classes: int = 0
    in_channels: int = 0
    image_size: int = 0
    #: ``(height, width)`` of non-square images (``None``: ``image_size`` square).
    image_shape: tuple[int, int] | None = None
    #: the training augmentation: a random crop of the image's size after zero padding
    #: ``crop_padding`` on each side, and a horizontal flip with probability 1/2 (0 / False:
    #: none). The regular pipeline (:meth:`augment_transform`) and the device pipeline
    #: (:class:`~cskd_lightning.data.DeviceDataModule`) both follow it.
    crop_padding: int = 0
    flip: bool = False
    #: the normalisation ``(x / pixel_scale - mean) / std`` per channel (:meth:`normalization`).
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    pixel_scale: float = 255.0
    #: the dataset's defaults of the ``val_split`` and ``augment`` arguments.
    val_split: float | int = 0
    augment: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__signature__ = signature_with_base_arguments(cls)

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_split: float | int | None = None,
        two_view: bool = False,
        seed: int = 0,
        pin_memory: bool | None = None,
        augment: bool | None = None,
    ) -> None:
        super().__init__()
        val_split = type(self).val_split if val_split is None else val_split
        if int(batch_size) != batch_size or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if eval_batch_size is not None and (
            int(eval_batch_size) != eval_batch_size or eval_batch_size < 1
        ):
            raise InputError(f"eval_batch_size must be a positive integer, got {eval_batch_size!r}")
        if num_workers < 0:
            raise InputError(f"num_workers must be >= 0, got {num_workers}")
        if isinstance(val_split, bool) or not isinstance(val_split, (int, float)) or val_split < 0:
            raise InputError(f"val_split must be a fraction or count >= 0, got {val_split!r}")
        self.batch_size = int(batch_size)
        self.eval_batch_size = None if eval_batch_size is None else int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.val_split = val_split
        self.two_view = bool(two_view)
        self.seed = int(seed)
        self.pin_memory = None if pin_memory is None else bool(pin_memory)
        self.augment = bool(type(self).augment if augment is None else augment)

        #: training batches carry their samples' indices (:class:`IndexedSamples`); a loss that
        #: needs them (CRD) switches it on through :class:`~cskd_lightning.DistillationModule`.
        self.with_indices = False
        self.per_process_batch_size: int = self.batch_size
        self.per_process_eval_batch_size: int = self.eval_batch_size or self.batch_size
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # ------------------------------------------------------------------ public hooks
    def load_raw(self) -> tuple[Any, Sequence[int] | np.ndarray | Tensor, Any]:
        """Return ``(train_source, train_labels, test_source)``: raw images, no transform (the
        one method a dataset must write)."""
        raise NotImplementedError(f"{type(self).__name__} must define load_raw()")

    def raw_splits(self) -> RawSplits:
        """Load the raw sources and split off the validation set (``val_split``, stratified by
        label, seeded by ``seed``): what both pipelines train, validate and test on."""
        train, train_labels, test = self.load_raw()
        count = resolve_val_count(self.val_split, len(train))
        train_idx, val_idx = stratified_split(train_labels, count, self.seed)
        return RawSplits(train, train_idx, val_idx, test)

    def normalization(self) -> ToFloatNormalize:
        """The normalisation ``(x / pixel_scale - mean) / std`` of a raw ``(C, H, W)`` tensor
        image, to ``float32`` (from the class attributes; ``mean`` may be set at load time)."""
        if not self.mean or not self.std:
            raise NotImplementedError(
                f"{type(self).__name__} sets no mean and std: give them as class attributes"
            )
        return ToFloatNormalize(self.mean, self.std, scale=self.pixel_scale)

    @property
    def crop_size(self) -> int | tuple[int, int]:
        """The training crop's size: the image's (``image_shape`` or the ``image_size`` side)."""
        return self.image_shape or self.image_size

    def augment_transform(self) -> Transform | None:
        """Raw image -> augmented raw image (the weak view before normalisation): the random
        crop (``crop_padding``) and flip (``flip``) the class describes; None for neither."""
        crop = RandomCropTensor(self.crop_size, self.crop_padding) if self.crop_padding else None
        return self._compose(crop, RandomHorizontalFlipTensor() if self.flip else None)

    def eval_geometry(self) -> Transform | None:
        """Deterministic raw-image ops of evaluation (e.g. resize + centre crop), or None."""
        return None

    # ------------------------------------------------------------------ transforms
    def _normalize_transform(self) -> Transform:
        """Raw image -> normalised ``float32`` tensor ``(C, H, W)`` (:meth:`normalization`)."""
        return self.normalization()

    def _strong_augment(self) -> Transform:
        """Extra raw-image ops of the strong view (before normalisation)."""
        return TensorRandAugment(num_ops=2)

    @staticmethod
    def _compose(*fns: Transform | None) -> Transform | None:
        fns_ = [f for f in fns if f is not None]
        if len(fns_) <= 1:
            return fns_[0] if fns_ else None
        from torchvision.transforms import Compose

        return Compose(fns_)

    def train_transform(self) -> Transform:
        """Training transform: weak pipeline, or :class:`TwoViewTransform` if ``two_view``.

        weak = augmentation (eval geometry if ``augment=False``) -> normalise;
        strong = the same -> ``RandAugment(num_ops=2)`` -> normalise -> :class:`Cutout`.
        """
        geometry = self.augment_transform() if self.augment else self.eval_geometry()
        weak = self._compose(geometry, self._normalize_transform())
        if not self.two_view:
            return weak
        strong = self._compose(
            geometry, self._strong_augment(), self._normalize_transform(), Cutout()
        )
        return TwoViewTransform(weak, strong)

    def eval_transform(self) -> Transform:
        """Validation/test transform: eval geometry -> normalise."""
        return self._compose(self.eval_geometry(), self._normalize_transform())

    # ------------------------------------------------------------------ setup
    @property
    def world_size(self) -> int:
        """Number of processes of the attached trainer (1 without a trainer)."""
        return int(self.trainer.world_size) if self.trainer is not None else 1

    @property
    def val_is_test(self) -> bool:
        """True when no validation split is held out (``val_split == 0``): the validation loader
        then iterates the test set, so ``val/*`` metrics are test-set metrics."""
        return not self.val_split

    def check_world_size(self, world: int) -> None:
        """Raise an :class:`InputError` unless both global batch sizes divide by ``world``."""
        for name, value in (
            ("batch_size", self.batch_size),
            ("eval_batch_size", self.eval_batch_size),
        ):
            if value is not None and value % world != 0:
                lower = max(world, value // world * world)
                raise InputError(
                    f"{name}={value} is the GLOBAL batch and must be divisible by the number of "
                    f"processes ({world}); set data.datamodule.{name} to a multiple of {world} "
                    f"(e.g. {lower} or {lower + world}) or change the number of devices/nodes."
                )

    def _pin_memory(self) -> bool:
        """``pin_memory``, or (``None``) whether the trainer's device is a CUDA GPU."""
        if self.pin_memory is not None:
            return self.pin_memory
        strategy = getattr(self.trainer, "strategy", None) if self.trainer is not None else None
        device = getattr(strategy, "root_device", None)
        return device is not None and torch.device(device).type == "cuda"

    def divide_batches(self) -> None:
        """Set ``per_process_batch_size`` and ``per_process_eval_batch_size``: the global batch
        sizes divided by the attached trainer's world size (an :class:`InputError` if either
        does not divide)."""
        world = self.world_size
        self.check_world_size(world)
        self.per_process_batch_size = self.batch_size // world
        self.per_process_eval_batch_size = (self.eval_batch_size or self.batch_size) // world

    def setup(self, stage: str | None = None) -> None:
        """Compute per-process batch sizes and (once) load the datasets and make the split."""
        self.divide_batches()
        if self.train_set is not None:
            return
        raw = self.raw_splits()
        self.train_set = SubsetWithTransform(
            raw.train, raw.train_indices, self.train_transform(), seed=self.seed
        )
        self.test_set = SubsetWithTransform(raw.test, None, self.eval_transform())
        if len(raw.val_indices) > 0:
            self.val_set = SubsetWithTransform(raw.train, raw.val_indices, self.eval_transform())
        else:
            self.val_set = self.test_set

    # ------------------------------------------------------------------ loaders
    @property
    def rank(self) -> int:
        """This process's global rank (0 without a trainer)."""
        return int(getattr(self.trainer, "global_rank", 0)) if self.trainer is not None else 0

    def _ensure_setup(self) -> None:
        if self.train_set is None:
            self.setup("fit")

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        sampler = None
        collate: Callable[[list[Any]], Any] = tuple_collate
        if train and self.with_indices:
            dataset, collate = IndexedSamples(dataset), sample_batch_collate
        if train:
            sampler = EpochSampler(
                dataset, num_replicas=self.world_size, rank=self.rank, seed=self.seed
            )
            sampler.set_epoch(fit_epoch(self.trainer))
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=train and len(dataset) >= self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self._pin_memory(),
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
            # Only the workers' base seed comes from it (nothing random depends on that): with
            # its own generator, making an iterator draws nothing from the global one.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        """Training loader of per-process batches, in the order of :class:`EpochSampler`."""
        self._ensure_setup()
        return self._loader(self.train_set, self.per_process_batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation loader (the test set when ``val_split == 0``), not shuffled."""
        self._ensure_setup()
        return self._loader(self.val_set, self.per_process_eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        """Test loader, not shuffled."""
        self._ensure_setup()
        return self._loader(self.test_set, self.per_process_eval_batch_size, train=False)

    def predict_dataloader(self) -> DataLoader:
        """Same as :meth:`test_dataloader`."""
        return self.test_dataloader()
