"""Drop CSKDLoss into an existing LightningModule (no DistillationModule needed).

Run: python examples/loss_in_your_module.py   (about half a minute on 2 CPU cores)
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from cskd_lightning import CSKDLoss
from cskd_lightning.data import DigitsDataModule
from cskd_lightning.models import create_model


class MyStudent(L.LightningModule):
    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student, self.teacher = student, teacher.eval().requires_grad_(False)
        self.kd = CSKDLoss(temperature=4.0, cswt=True)  # CE + L_cs(T) + L_cs(T_i)

    def training_step(self, batch, batch_idx):
        x, y = batch
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        terms = self.kd(self.student(x), teacher_logits, y)  # {"loss", "ce", "cs", ...}
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=False)
        return terms["loss"]

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self.student(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.student.parameters(), lr=0.05, momentum=0.9)


def main(max_epochs: int = 5) -> float:
    L.seed_everything(0)
    data = DigitsDataModule(batch_size=64)
    # A teacher would normally come with trained weights; train it briefly here.
    teacher = create_model("digits_teacher", num_classes=10, in_channels=1)
    from cskd_lightning import CELoss, DistillationModule

    L.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False).fit(
        DistillationModule(teacher, None, CELoss()), datamodule=data
    )
    student = create_model("digits_student", num_classes=10, in_channels=1)
    trainer = L.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False)
    trainer.fit(MyStudent(student, teacher), datamodule=data)
    accuracy = float(trainer.callback_metrics["val/acc"])
    print(f"student val/acc: {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main()
