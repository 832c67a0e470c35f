"""``compile_models=True`` (torch.compile of the student, the teacher and the loss) trains, keeps
the state_dict, and matches eager with no graph break (the other speed options:
tests/unit/test_speed_options.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import quiet_trainer
from torch import nn

from cskd_lightning import CSKDLoss, DistillationModule, DKDLoss
from cskd_lightning.data import DeviceDataModule, DigitsDataModule
from cskd_lightning.models import create_model

pytestmark = pytest.mark.timeout(180)


def _models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = create_model("digits_teacher", num_classes=10, in_channels=1)
    return create_model("digits_student", num_classes=10, in_channels=1), teacher


@pytest.mark.long
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
    # nn.Module.compile: each model's __call__ runs its compiled forward
    assert all(m._compiled_call_impl is not None for m in (student, teacher, module.loss))
    fresh = DistillationModule(*_models(), CSKDLoss())
    fresh.load_state_dict(module.state_dict())  # loadable without compile


@pytest.mark.parametrize("loss", [CSKDLoss(), DKDLoss()], ids=["cskd_cswt", "dkd"])
def test_compiled_step_matches_eager_without_graph_breaks(loss, tmp_path):
    """Inductor on the CPU (a C++ compiler): 2 steps, the student's weights as eager's to float
    tolerance; Dynamo's counters show no graph break and one graph per compiled callable."""
    from torch._dynamo.utils import counters

    weights = {}
    for mode in (False, "default"):
        torch._dynamo.reset()
        counters.clear()
        student, teacher = _models()
        module = DistillationModule(student, teacher, loss, compile_models=mode)
        trainer = quiet_trainer(max_steps=2, limit_val_batches=0, default_root_dir=tmp_path)
        trainer.fit(module, datamodule=DeviceDataModule(DigitsDataModule(batch_size=64)))
        weights[mode] = {k: v.detach().clone() for k, v in student.state_dict().items()}
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 3  # student, teacher, loss: one graph each
    for key, value in weights[False].items():
        torch.testing.assert_close(weights["default"][key], value, rtol=1e-4, atol=1e-6)
