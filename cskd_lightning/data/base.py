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

The loading plumbing (datasets, the epoch sampler that makes the training data stream a pure
function of the seed and the epoch, collate, the stratified split) is in :mod:`.loading`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from cskd_lightning.errors import InputError

from .loading import (
    EpochSampler,
    IndexedSamples,
    SubsetWithTransform,
    TensorImageDataset,
    Transform,
    fit_epoch,
    resolve_val_count,
    sample_batch_collate,
    stratified_split,
    tuple_collate,
)
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
    "RawSplits",
    "TensorImageDataset",
    "Transform",
    "signature_with_base_arguments",
]


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
            raise InputError(
                f"batch_size must be a positive integer, got {batch_size!r}", key="batch_size"
            )
        if eval_batch_size is not None and (
            int(eval_batch_size) != eval_batch_size or eval_batch_size < 1
        ):
            raise InputError(
                f"eval_batch_size must be a positive integer, got {eval_batch_size!r}",
                key="eval_batch_size",
            )
        if num_workers < 0:
            raise InputError(f"num_workers must be >= 0, got {num_workers}", key="num_workers")
        if isinstance(val_split, bool) or not isinstance(val_split, (int, float)) or val_split < 0:
            raise InputError(
                f"val_split must be a fraction or count >= 0, got {val_split!r}", key="val_split"
            )
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
                    f"processes ({world}); set {name} to a multiple of {world} "
                    f"(e.g. {lower} or {lower + world}) or change the number of devices/nodes.",
                    key=name,
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
