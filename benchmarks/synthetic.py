"""Shared pieces of the benchmarks: CIFAR-shaped synthetic data on the device pipeline, an
epoch timer and a plain Lightning trainer.

``SyntheticCIFAR``: ``n`` random ``uint8`` ``(3, 32, 32)`` images with random labels of
``num_classes`` classes (the CIFAR-100 statistics for the normalisation), a test set of
``n_test``, with CIFAR's crop padding 4 and flip; ``DeviceDataModule(SyntheticCIFAR(...))`` puts
it on the device pipeline, as ``data=cifar100_device``.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from cskd_lightning.data import CIFAR100DataModule
from cskd_lightning.data.base import BaseDataModule, TensorImageDataset

CIFAR100_MEAN, CIFAR100_STD = CIFAR100DataModule.mean, CIFAR100DataModule.std


class SyntheticCIFAR(BaseDataModule):
    """Random CIFAR-shaped data (``uint8`` ``(N, 3, 32, 32)``), generated once from ``seed 0``."""

    in_channels = 3
    image_size = 32
    crop_padding = 4
    flip = True
    mean = CIFAR100_MEAN
    std = CIFAR100_STD

    def __init__(self, n: int, n_test: int = 512, num_classes: int = 100, **kwargs: Any):
        super().__init__(**kwargs)
        self.n, self.n_test, self.num_classes = int(n), int(n_test), int(num_classes)

    def load_raw(self) -> tuple[TensorImageDataset, torch.Tensor, TensorImageDataset]:
        g = torch.Generator().manual_seed(0)
        total = self.n + self.n_test
        images = torch.randint(0, 256, (total, 3, 32, 32), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, self.num_classes, (total,), generator=g)
        train = TensorImageDataset(images[: self.n], labels[: self.n])
        test = TensorImageDataset(images[self.n :], labels[self.n :])
        return train, labels[: self.n], test


class EpochTimer(Callback):
    """Wall and process-CPU seconds of each training epoch (start to end hooks; on CUDA the
    device is synchronised at both ends)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def _sync(self, module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(pl_module)
        self._t = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(pl_module)
        self.wall.append(time.perf_counter() - self._t[0])
        self.cpu.append(time.process_time() - self._t[1])


def plain_trainer(callbacks: list[Callback], **kwargs: Any) -> L.Trainer:
    """A quiet trainer: no logger, checkpoints, progress bar or sanity check."""
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "limit_val_batches": 0,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "callbacks": callbacks,
    }
    options.update(kwargs)
    return L.Trainer(**options)
