"""``compile_models=True`` (torch.compile of the student and the teacher) trains and keeps the
state_dict (the other speed options: tests/unit/test_speed_options.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import quiet_trainer
from torch import nn

from cskd_lightning import CSKDLoss, DistillationModule
from cskd_lightning.data import DeviceDataModule, DigitsDataModule
from cskd_lightning.models import create_model

pytestmark = pytest.mark.timeout(180)


def _models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = create_model("digits_teacher", num_classes=10, in_channels=1)
    return create_model("digits_student", num_classes=10, in_channels=1), teacher


def test_compile_models_trains_and_keeps_the_state_dict(tmp_path):
    # about 20 s on 2 CPU cores with a cold inductor cache (no validation: one graph per model)
    student, teacher = _models()
    keys = list(DistillationModule(student, teacher, CSKDLoss()).state_dict())
    module = DistillationModule(student, teacher, CSKDLoss(), compile_models=True)
    before = student.classifier.weight.detach().clone()
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=DeviceDataModule(DigitsDataModule(batch_size=64, augment=True)))
    assert not torch.equal(before, student.classifier.weight)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert list(module.state_dict()) == keys
    assert set(module.__dict__["_compiled_models"]) == {"student", "teacher"}
    fresh = DistillationModule(*_models(), CSKDLoss())
    fresh.load_state_dict(module.state_dict())  # loadable without compile
