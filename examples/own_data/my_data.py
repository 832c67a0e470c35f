"""An example datamodule of your own for ``cskd-train`` (see ``conf/data/my_data.yaml``).

Batches are ``(x, y)``: ``x`` ``float32`` ``(B, 1, 8, 8)``, ``y`` ``int64`` ``(B,)`` in
``[0, 4)``. The label says which quadrant of the image is brighter than the rest; the images
are generated from a fixed seed, so every run sees the same data.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class MyDataModule(L.LightningDataModule):
    """Four classes of 8x8 images: the bright quadrant (0 top-left, 1 top-right, 2 bottom-left,
    3 bottom-right) plus Gaussian noise. 60% train, 20% validation, 20% test."""

    num_classes = 4

    def __init__(self, batch_size: int = 64, num_samples: int = 1200) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_samples = num_samples

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(0)
        y = torch.randint(0, 4, (self.num_samples,), generator=generator)
        x = torch.randn(self.num_samples, 1, 8, 8, generator=generator)
        for label in range(4):
            row, col = divmod(label, 2)
            x[y == label, :, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4] += 1.5
        n_train, n_val = int(0.6 * self.num_samples), int(0.2 * self.num_samples)
        self.train_set = TensorDataset(x[:n_train], y[:n_train])
        self.val_set = TensorDataset(x[n_train : n_train + n_val], y[n_train : n_train + n_val])
        self.test_set = TensorDataset(x[n_train + n_val :], y[n_train + n_val :])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)
