"""scikit-learn's bundled 8x8 handwritten digits (no download, 1,797 images, 10 classes)."""

from __future__ import annotations

import numpy as np
import torch

from .base import BaseDataModule, TensorImageDataset
from .loading import stratified_split

__all__ = ["DigitsDataModule"]

#: fraction of the 1,797 images kept aside as the fixed test set (split seed always 0).
TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 0


class DigitsDataModule(BaseDataModule):
    """``sklearn.datasets.load_digits``: 1,797 grey 8x8 images with values 0..16, 10 classes.

    Pixels are scaled to ``[0, 1]`` (``/ 16``) then normalised with the mean/std of the
    non-test pool. A fixed stratified 20% test set (360 images, split seed 0 whatever
    ``seed`` is) never changes; ``val_split`` (default 0.1 -> 144 images) is held out of the
    remaining 1,437 stratified by ``seed``; ``val_split=0`` validates on the test set.

    Everything lives in memory as tensors. ``augment`` (default False here: the images are
    tiny) adds a random shift of up to one pixel (zero pad 1 + random 8x8 crop).

    Batches: ``x`` ``float32`` ``(B, 1, 8, 8)``, ``y`` ``int64`` ``(B,)``. Arguments: those of
    :class:`~cskd_lightning.data.base.BaseDataModule`.
    """

    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 8
    crop_padding: int = 1
    #: the mean and std of the non-test pool, set by :meth:`load_raw`; the pixels are already
    #: divided by ``raw_scale`` there, so the normalisation divides by 1.
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    pixel_scale: float = 1.0
    #: ``load_digits`` pixels are ``0..16``; ``load_raw`` divides them by 16 before the transforms.
    raw_scale: float = 16.0
    classes: tuple[str, ...] = tuple(str(d) for d in range(10))
    val_split: float | int = 0.1
    augment: bool = False

    def load_raw(self) -> tuple[TensorImageDataset, torch.Tensor, TensorImageDataset]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / self.raw_scale)
        images = images.unsqueeze(1).contiguous()  # (1797, 1, 8, 8) in [0, 1]
        labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
        n_test = int(np.ceil(TEST_FRACTION * len(labels)))
        pool_idx, test_idx = stratified_split(labels, n_test, TEST_SPLIT_SEED)
        pool = images[pool_idx]
        self.mean = (float(pool.mean()),)
        self.std = (float(pool.std()),)
        train = TensorImageDataset(pool, labels[pool_idx])
        test = TensorImageDataset(images[test_idx], labels[test_idx])
        return train, train.targets, test
