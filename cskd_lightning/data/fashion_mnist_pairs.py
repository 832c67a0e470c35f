"""Fashion-MNIST pairs: a 100-class task made of real Fashion-MNIST images, side by side.

Each sample is two Fashion-MNIST images placed next to each other, a ``1 x 28 x 56`` image,
with the label ``10 * a + b`` where ``a`` is the class of the left image and ``b`` that of the
right one (100 classes, ``0..99``). It gives a CPU-sized task with more classes than a small
batch has samples, the regime where CSKD's per-class batch cosine is thinnest (100 classes and
batch 64 is under one sample per class, as on CIFAR-100).

Pairs are drawn with a fixed ``pair_seed`` (the same set for every run, whatever the run's
``seed``), and the official splits stay apart: training pairs are made of training images
only, test pairs of test images only. Within a split the left images are the concatenation of
independent random permutations of the split's images, cut to the number of pairs, and so
are the right images (independently of the left): with ``num_train_pairs=60000`` every
training image appears exactly once on the left and once on the right.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cskd_lightning.errors import InputError

from .base import TensorImageDataset
from .fashion_mnist import FashionMNISTDataModule

__all__ = ["FashionMNISTPairsDataModule", "draw_pair_indices", "make_pairs"]

#: classes of one Fashion-MNIST image; the pair's label is ``SINGLE_CLASSES * a + b``.
SINGLE_CLASSES = 10


def draw_pair_indices(
    n_images: int, n_pairs: int, seed: int | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The ``(left, right)`` source indices of ``n_pairs`` pairs of ``n_images`` images.

    Each side is the concatenation of ``ceil(n_pairs / n_images)`` random permutations of
    ``range(n_images)`` cut to ``n_pairs``, so every image is used ``floor`` or ``ceil`` of
    ``n_pairs / n_images`` times per side; the two sides are independent. Reproducible for a
    given ``seed`` (an int or a sequence of ints, the entropy of a numpy ``SeedSequence``).
    Returns two ``int64`` arrays of shape ``(n_pairs,)``.
    """
    if n_images < 1 or n_pairs < 1:
        raise InputError(f"need at least one image and one pair, got {n_images} and {n_pairs}")
    entropy = int(seed) if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    repeats = -(-n_pairs // n_images)

    def side() -> np.ndarray:
        order = np.concatenate([rng.permutation(n_images) for _ in range(repeats)])
        return order[:n_pairs].astype(np.int64)

    left = side()
    return left, side()


def make_pairs(
    images: Tensor, labels: Tensor, left: np.ndarray, right: np.ndarray
) -> tuple[Tensor, Tensor]:
    """Put ``images[left[i]]`` and ``images[right[i]]`` side by side.

    ``images``: ``(N, C, H, W)``, ``labels``: ``int64`` ``(N,)`` in ``0..9``. Returns the pair
    images ``(P, C, H, 2 W)`` (same dtype) and their labels ``10 * labels[left] +
    labels[right]``, ``int64`` ``(P,)``, with ``P = len(left)``.
    """
    left_t, right_t = torch.from_numpy(left), torch.from_numpy(right)
    pair_images = torch.cat([images[left_t], images[right_t]], dim=-1).contiguous()
    pair_labels = SINGLE_CLASSES * labels[left_t] + labels[right_t]
    return pair_images, pair_labels.to(torch.int64)


class FashionMNISTPairsDataModule(FashionMNISTDataModule):
    """100 classes from real Fashion-MNIST: two images side by side, label ``10 * a + b``.

    Data: the four Fashion-MNIST idx files, found and checked exactly as
    :class:`~cskd_lightning.data.FashionMNISTDataModule` does (``data_dir``, ``download``; a
    missing directory is the same one-line ``FileNotFoundError``). ``num_train_pairs`` pairs
    of training images and ``num_test_pairs`` pairs of test images are drawn with
    ``pair_seed`` (:func:`draw_pair_indices`, one seed stream per split); ``seed`` does not
    change the pairs, only the validation split and the order.

    Images are ``uint8`` ``(1, 28, 56)`` tensors in memory (94 MB for 60,000 pairs).
    Training augmentation: a random crop back to 28 x 56 with zero padding 2. No horizontal
    flip: mirroring the pair swaps its two halves, which changes the label. ``val_split``
    (default 5000) holds out pairs of the training set, stratified over the 100 labels by
    ``seed``; their halves are training images that also occur, in other pairs, in the
    training split (the test pairs share no image with either). 0 validates on the test set.
    Normalisation: Fashion-MNIST's mean and std (every image occurs on each side equally
    often, so the pair images have the same statistics).

    Batches: ``x`` ``float32`` ``(B, 1, 28, 56)``, ``y`` ``int64`` ``(B,)`` in ``0..99``.
    """

    num_classes: int = SINGLE_CLASSES * SINGLE_CLASSES
    #: the side of each half; the images are ``image_shape = (28, 56)``.
    image_shape: tuple[int, int] = (28, 56)
    #: no flip: mirroring a pair swaps its halves, and so its label.
    flip: bool = False
    classes: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        num_train_pairs: int = 60000,
        num_test_pairs: int = 10000,
        pair_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for name, value in (
            ("num_train_pairs", num_train_pairs),
            ("num_test_pairs", num_test_pairs),
        ):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}", key=name)
        self.num_train_pairs = int(num_train_pairs)
        self.num_test_pairs = int(num_test_pairs)
        self.pair_seed = int(pair_seed)
        #: ``{"train": (left, right), "test": (left, right)}``: the source indices of every
        #: pair into the official split's images (set by ``load_raw``).
        self.pair_indices: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def load_raw(self) -> tuple[TensorImageDataset, torch.Tensor, TensorImageDataset]:
        train, _, test = super().load_raw()
        splits = []
        for stream, (part, source, count) in enumerate(
            (("train", train, self.num_train_pairs), ("test", test, self.num_test_pairs))
        ):
            left, right = draw_pair_indices(len(source), count, seed=[self.pair_seed, stream])
            self.pair_indices[part] = (left, right)
            splits.append(
                TensorImageDataset(*make_pairs(source.images, source.targets, left, right))
            )
        train_pairs, test_pairs = splits
        return train_pairs, train_pairs.targets, test_pairs
