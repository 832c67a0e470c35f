"""Train the digits teacher (``digits_teacher``, 98k parameters) on the labels and save it as
``teacher.ckpt`` for ``config.yaml``: ``python make_teacher.py [--epochs 10] [--out FILE]``."""

from __future__ import annotations

import argparse
from functools import partial

import lightning as L
import torch

from cskd_lightning import CELoss, DistillationModule
from cskd_lightning.data import DigitsDataModule
from cskd_lightning.models import create_model


def main(epochs: int = 10, out: str = "teacher.ckpt") -> float:
    """Train, save the teacher's ``state_dict`` to ``out``; return its validation accuracy."""
    L.seed_everything(0, workers=True)
    teacher = create_model("digits_teacher", num_classes=10, in_channels=1)
    module = DistillationModule(
        teacher, None, CELoss(), optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9)
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    datamodule = DigitsDataModule(batch_size=64, val_split=0.1)
    trainer.fit(module, datamodule=datamodule)
    torch.save(teacher.state_dict(), out)
    accuracy = float(trainer.callback_metrics["val/acc"])
    print(f"teacher validation accuracy {100 * accuracy:.2f}%; weights in {out}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="teacher.ckpt")
    options = parser.parse_args()
    main(options.epochs, options.out)
