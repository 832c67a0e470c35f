"""The per-sample loading plumbing of the DataLoader pipeline: in-memory and transformed
datasets, the epoch sampler, the collate functions and the stratified validation split.

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

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, default_collate

from cskd_lightning.errors import InputError

from .sample_random import sample_seed

__all__ = [
    "EpochSampler",
    "IndexedSamples",
    "SubsetWithTransform",
    "TensorImageDataset",
    "Transform",
    "fit_epoch",
    "resolve_val_count",
    "sample_batch_collate",
    "stratified_split",
    "tuple_collate",
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
        raise InputError(
            f"val_split must be a float fraction or an int count, got {val_split!r}",
            key="val_split",
        )
    if isinstance(val_split, (int, np.integer)):
        count = int(val_split)
    elif 0.0 <= val_split < 1.0:
        count = math.ceil(val_split * n)
    elif float(val_split).is_integer():
        count = int(val_split)
    else:
        raise InputError(
            f"val_split={val_split} is neither a fraction in [0, 1) nor an integer count",
            key="val_split",
        )
    if count < 0 or count >= n:
        raise InputError(
            f"val_split={val_split} must hold out between 0 and {n - 1} of {n} samples",
            key="val_split",
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
            "(0 uses the test set for validation).",
            key="val_split",
        ) from err
    return np.sort(keep), np.sort(held)
