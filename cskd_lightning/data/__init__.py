"""LightningDataModules for the image-classification benchmarks.

Every datamodule takes a GLOBAL ``batch_size`` (divided by the trainer's world size in
``setup``), yields ``(x, y)`` batches (``x`` float32 ``(B, C, H, W)`` normalised, ``y`` int64
``(B,)``) and, with ``two_view=True``, training batches ``((x_weak, x_strong), y)``.
``num_classes``, ``in_channels`` and ``image_size`` are available right after construction.
``DeviceDataModule(<any in-memory datamodule>)`` keeps the data on the training device and
makes the batches there (the batched augmentation kernels are in :mod:`.batch_augment`). A new
dataset is one :class:`BaseDataModule` subclass: its ``load_raw`` and class attributes
(README, "Your own data, model and teacher"). The training data of every epoch is a function
of the seed and the epoch alone, so resuming needs no data state in the checkpoint.
"""

from .base import BaseDataModule, RawSplits
from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .device import DeviceDataModule
from .digits import DigitsDataModule
from .fashion_mnist import FashionMNISTDataModule
from .fashion_mnist_pairs import FashionMNISTPairsDataModule
from .imagenet import ImageNetDataModule
from .transforms import Cutout, TwoViewTransform

__all__ = [
    "BaseDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "Cutout",
    "DeviceDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "FashionMNISTPairsDataModule",
    "ImageNetDataModule",
    "RawSplits",
    "TwoViewTransform",
]
