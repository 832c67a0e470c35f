"""CIFAR-10 / CIFAR-100 from the python pickle batches (torchvision's on-disk layout).

The pickles are read directly (same format and files as ``torchvision.datasets.CIFAR10/100``)
and only their *existence* is checked, not their md5: this keeps loading fast and lets the
tests use small fake files in the real format. The md5 checks do run when ``download=True``
(``prepare_data`` delegates to torchvision, which verifies the archive and every file).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cskd_lightning.errors import InputError, MissingInputError

from .base import BaseDataModule, TensorImageDataset

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule"]


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise InputError(f"cannot read CIFAR file {path}: corrupt or truncated ({err})") from err
    if not isinstance(obj, dict):
        raise InputError(f"CIFAR file {path} does not hold a dict (got {type(obj).__name__})")
    return obj


class _CIFARDataModule(BaseDataModule):
    """Shared CIFAR logic. Subclasses set the file names, label key and statistics."""

    base_folder: str = ""
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    meta_file: str = ""
    label_key: str = ""
    names_key: str = ""
    tv_name: str = ""

    in_channels: int = 3
    image_size: int = 32
    crop_padding: int = 4
    flip: bool = True

    def __init__(self, data_dir: str = "data/", download: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_dir = str(data_dir)
        self.download = bool(download)
        self.classes: list[str] = []

    @property
    def folder(self) -> Path:
        """``data_dir/<base_folder>`` holding the pickles."""
        return Path(self.data_dir) / self.base_folder

    def _missing(self) -> list[Path]:
        names = (*self.train_files, *self.test_files, self.meta_file)
        return [self.folder / n for n in names if not (self.folder / n).is_file()]

    def prepare_data(self) -> None:
        """Download with torchvision (md5-checked) if ``download`` and files are missing."""
        if not self.download or not self._missing():
            return
        import torchvision.datasets as tvd

        for train in (True, False):
            getattr(tvd, self.tv_name)(self.data_dir, train=train, download=True)

    def _read(self, files: tuple[str, ...]) -> TensorImageDataset:
        datas, labels = [], []
        for name in files:
            path = self.folder / name
            entry = _load_pickle(path)
            if "data" not in entry or self.label_key not in entry:
                raise InputError(f"CIFAR file {path} lacks the 'data' or '{self.label_key}' key")
            data = np.asarray(entry["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise InputError(
                    f"CIFAR file {path}: 'data' has shape {data.shape}, want (N, 3072)"
                )
            lab = np.asarray(entry[self.label_key], dtype=np.int64)
            if lab.shape != (data.shape[0],):
                raise InputError(f"CIFAR file {path}: {len(lab)} labels for {data.shape[0]} images")
            if lab.size and (lab.min() < 0 or lab.max() >= self.num_classes):
                raise InputError(f"CIFAR file {path}: labels outside 0..{self.num_classes - 1}")
            datas.append(data)
            labels.append(lab)
        images = torch.from_numpy(np.concatenate(datas).reshape(-1, 3, 32, 32))
        return TensorImageDataset(images, torch.from_numpy(np.concatenate(labels)))

    def load_raw(self) -> tuple[TensorImageDataset, torch.Tensor, TensorImageDataset]:
        if self.download and self.world_size == 1:
            self.prepare_data()  # Lightning already called it on rank 0 otherwise
        missing = self._missing()
        if missing:
            raise MissingInputError(
                f"{type(self).__name__}: CIFAR data not found in {self.folder} (missing "
                f"{', '.join(p.name for p in missing)}). Pass download=True to download it into "
                f"{self.data_dir}, or point data_dir at the folder that contains "
                f"{self.base_folder}/.",
                key="data_dir",
            )
        meta = _load_pickle(self.folder / self.meta_file)
        self.classes = [str(c) for c in meta.get(self.names_key, [])]
        train = self._read(self.train_files)
        test = self._read(self.test_files)
        return train, train.targets, test


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10: 50,000 train / 10,000 test RGB 32x32 images, 10 classes.

    Reads ``data_dir/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
    (``download=True`` fetches them with torchvision). Training augmentation: RandomCrop(32,
    padding=4) + horizontal flip; normalisation mean (0.4914, 0.4822, 0.4465), std (0.2470,
    0.2435, 0.2616). ``val_split`` defaults to 0: validation runs on the test set (the usual
    protocol); pass e.g. 5000 to hold out a stratified part of the training set instead.

    Batches: ``x`` ``float32`` ``(B, 3, 32, 32)``, ``y`` ``int64`` ``(B,)``; two-view training
    batches ``((x_weak, x_strong), y)``.
    """

    num_classes: int = 10
    base_folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"
    label_key = "labels"
    names_key = "label_names"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    tv_name = "CIFAR10"


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100: 50,000 train / 10,000 test RGB 32x32 images, 100 (fine) classes.

    Reads ``data_dir/cifar-100-python/{train, test, meta}`` (``download=True`` fetches them
    with torchvision). Labels are the ``fine_labels``. Training augmentation: RandomCrop(32,
    padding=4) + horizontal flip; normalisation mean (0.5071, 0.4867, 0.4408), std (0.2675,
    0.2565, 0.2761): the constants the released CIFAR-100 teachers were trained with
    (RepDistiller's and mdistiller's ``dataset/cifar100.py``), so that a teacher loaded from
    their checkpoints sees its own input scale. ``val_split`` defaults to 0 (validation on the
    test set).

    Batches: ``x`` ``float32`` ``(B, 3, 32, 32)``, ``y`` ``int64`` ``(B,)``; two-view training
    batches ``((x_weak, x_strong), y)``.
    """

    num_classes: int = 100
    base_folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    label_key = "fine_labels"
    names_key = "fine_label_names"
    mean = (0.5071, 0.4867, 0.4408)  # RepDistiller / mdistiller dataset/cifar100.py
    std = (0.2675, 0.2565, 0.2761)
    tv_name = "CIFAR100"
