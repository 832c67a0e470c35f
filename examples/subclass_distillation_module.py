"""Subclass DistillationModule and override one hook.

Run: python examples/subclass_distillation_module.py   (about half a minute on 2 CPU cores)
"""

from __future__ import annotations

from functools import partial

import lightning as L
import torch

from cskd_lightning import CELoss, CSKDLoss, DistillationModule
from cskd_lightning.data import DigitsDataModule
from cskd_lightning.models import create_model


class WarmupCSKD(DistillationModule):
    """Only CE for the first epoch, then CSKD + CSWT."""

    def compute_loss(self, batch):
        logits, terms = super().compute_loss(batch)
        if self.current_epoch == 0:
            terms["loss"] = terms["ce"]
        return logits, terms


def main(max_epochs: int = 5) -> float:
    L.seed_everything(0)
    data = DigitsDataModule(batch_size=64)
    teacher = create_model("digits_teacher", num_classes=10, in_channels=1)
    L.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False).fit(
        DistillationModule(teacher, None, CELoss()), datamodule=data
    )
    module = WarmupCSKD(
        student=create_model("digits_student", num_classes=10, in_channels=1),
        teacher=teacher,
        loss=CSKDLoss(),
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4),
    )
    trainer = L.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=data)
    accuracy = trainer.test(module, datamodule=data)[0]["test/acc"]
    module.export_student("student.pt")
    return accuracy


if __name__ == "__main__":
    main()
