"""Fashion-MNIST read straight from the idx files (gzip + numpy, no torchvision parsing)."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cskd_lightning.errors import InputError, MissingInputError

from .base import BaseDataModule, TensorImageDataset

__all__ = ["FashionMNISTDataModule", "read_idx", "find_fashion_mnist_files"]

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dims
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dim
#: mean / std of the 60,000 training images scaled to [0, 1].
MEAN = (0.2860,)
STD = (0.3530,)
#: the names of labels 0..9.
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def read_idx(path: str | os.PathLike, kind: str) -> np.ndarray:
    """Parse an idx file (``.gz`` or uncompressed) of ``kind`` ``"images"`` or ``"labels"``.

    Returns ``uint8`` ``(N, rows, cols)`` for images, ``(N,)`` for labels. Raises
    ``ValueError`` naming the file if it is truncated, not gzip, or has a wrong magic
    number or size.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise InputError(
            f"cannot read Fashion-MNIST file {path}: corrupt or truncated ({err})"
        ) from err

    expected_magic, header = (IMAGES_MAGIC, 16) if kind == "images" else (LABELS_MAGIC, 8)
    if len(raw) < header:
        raise InputError(f"Fashion-MNIST file {path} is truncated ({len(raw)} bytes of header)")
    fields = np.frombuffer(raw, dtype=">u4", count=header // 4)
    magic, n = int(fields[0]), int(fields[1])
    if magic != expected_magic:
        raise InputError(
            f"Fashion-MNIST file {path} has magic number {magic:#010x}, expected "
            f"{expected_magic:#010x} for idx {kind}"
        )
    shape: tuple[int, ...] = (n,) if kind == "labels" else (n, int(fields[2]), int(fields[3]))
    size = int(np.prod(shape))
    if len(raw) != header + size:
        raise InputError(
            f"Fashion-MNIST file {path} has {len(raw) - header} data bytes, expected {size} "
            f"for shape {shape} (truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _missing_message(data_dir: Path) -> str:
    return (
        f"Fashion-MNIST not found in {data_dir} (looked for {', '.join(FILES.values())} "
        f"[.gz] there and in {data_dir / 'FashionMNIST' / 'raw'}). Get it with "
        f"`apt-get install dataset-fashion-mnist` (Debian; installs into {DEFAULT_DIR}) and "
        "point data_dir at it, or let torchvision download it with download=True."
    )


def find_fashion_mnist_files(data_dir: str | os.PathLike) -> dict[str, Path]:
    """Locate the four idx files (gzip or not) in ``data_dir`` (Debian layout) or
    ``data_dir/FashionMNIST/raw`` (torchvision layout). Raises ``FileNotFoundError`` naming
    the directory and how to get the data.
    """
    data_dir = Path(data_dir)
    for folder in (data_dir, data_dir / "FashionMNIST" / "raw"):
        found: dict[str, Path] = {}
        for key, name in FILES.items():
            for candidate in (folder / f"{name}.gz", folder / name):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(FILES):
            return found
    raise MissingInputError(_missing_message(data_dir), key="data_dir")


class FashionMNISTDataModule(BaseDataModule):
    """Fashion-MNIST: 60,000 training / 10,000 test grey 28x28 images, 10 classes.

    Data: the four idx files (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
    ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``, or uncompressed) directly in
    ``data_dir`` (Debian's ``dataset-fashion-mnist`` layout) or in ``data_dir/FashionMNIST/raw``
    (torchvision layout). ``download=True`` fetches them with torchvision into ``data_dir``.

    Images are kept as ``uint8`` tensors in memory. Training augmentation: random crop 28 with
    zero padding 2 + horizontal flip, on tensors. ``val_split`` (default 5000) is held out of
    the training set, stratified by ``seed``; 0 validates on the test set.

    Batches: ``x`` ``float32`` ``(B, 1, 28, 28)``, ``y`` ``int64`` ``(B,)``. Other arguments:
    those of :class:`~cskd_lightning.data.base.BaseDataModule`.
    """

    num_classes: int = len(CLASSES)
    in_channels: int = 1
    image_size: int = 28
    crop_padding: int = 2
    flip: bool = True
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD
    classes: tuple[str, ...] = CLASSES
    val_split: float | int = 5000

    def __init__(self, data_dir: str = DEFAULT_DIR, download: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_dir = str(data_dir)
        self.download = bool(download)

    def prepare_data(self) -> None:
        """Download with torchvision (rank 0 only) if ``download`` and the files are missing."""
        if not self.download:
            return
        try:
            find_fashion_mnist_files(self.data_dir)
            return
        except FileNotFoundError:
            pass
        from torchvision.datasets import FashionMNIST

        for train in (True, False):
            FashionMNIST(self.data_dir, train=train, download=True)

    def load_raw(self) -> tuple[TensorImageDataset, torch.Tensor, TensorImageDataset]:
        if self.download and self.world_size == 1:
            self.prepare_data()  # no-op when the files are there (Lightning calls it on rank 0)
        files = find_fashion_mnist_files(self.data_dir)
        splits = []
        for part in ("train", "test"):
            images = read_idx(files[f"{part}_images"], "images")
            labels = read_idx(files[f"{part}_labels"], "labels")
            if images.shape[0] != labels.shape[0]:
                raise InputError(
                    f"{files[f'{part}_images']} has {images.shape[0]} images but "
                    f"{files[f'{part}_labels']} has {labels.shape[0]} labels"
                )
            if images.shape[1:] != (28, 28):
                raise InputError(
                    f"{files[f'{part}_images']}: expected 28x28 images, got {images.shape[1:]}"
                )
            if labels.size and int(labels.max()) >= len(CLASSES):
                raise InputError(f"{files[f'{part}_labels']}: label {int(labels.max())} >= 10")
            splits.append(
                TensorImageDataset(
                    torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
                )
            )
        train, test = splits
        return train, train.targets, test
