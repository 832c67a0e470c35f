"""scikit-learn's bundled 8x8 handwritten digits (no download, 1,797 images, 10 classes)."""

from __future__ import annotations

import numpy as np
import torch

from .base import BaseDataModule, TensorImageDataset, Transform, stratified_split
from .transforms import RandomCropTensor, ToFloatNormalize

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

    Batches: ``x`` ``float32`` ``(B, 1, 8, 8)``, ``y`` ``int64`` ``(B,)``; see
    :class:`~cskd_lightning.data.base.BaseDataModule` for the other arguments.
    """

    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 8
    crop_padding: int = 1
    #: ``load_digits`` pixels are ``0..16``; ``_load`` divides them by 16 before the transforms.
    raw_scale: float = 16.0
    classes: tuple[str, ...] = tuple(str(d) for d in range(10))

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_split: float | int = 0.1,
        two_view: bool = False,
        seed: int = 0,
        pin_memory: bool | None = None,
        augment: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            val_split=val_split,
            two_view=two_view,
            seed=seed,
            pin_memory=pin_memory,
            augment=augment,
        )
        self.mean: tuple[float, ...] = (0.0,)
        self.std: tuple[float, ...] = (1.0,)

    def _load(self) -> tuple[TensorImageDataset, torch.Tensor, TensorImageDataset]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0)
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

    def _augment_transform(self) -> Transform:
        return RandomCropTensor(self.image_size, padding=self.crop_padding)

    def _normalize_transform(self) -> Transform:
        return ToFloatNormalize(self.mean, self.std, scale=1.0)
