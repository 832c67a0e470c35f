"""Mixed precision and channels_last options of DistillationModule (CPU; torch.compile:
tests/integration/test_speed_options_runs.py)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import quiet_trainer
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import Tensor, nn

from cskd_lightning import CSKDLoss, DistillationModule
from cskd_lightning.data import DeviceDataModule, DigitsDataModule
from cskd_lightning.models import create_model

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.filterwarnings("ignore:.*GradScaler is enabled, but CUDA is not available"),
]


class Recording(DistillationModule):
    """Records the dtypes of the logits and loss terms of every training step."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[dict[str, object]] = []

    def forward_teacher(self, x: Tensor) -> Tensor:
        out = super().forward_teacher(x)
        self._teacher_dtype = out.dtype
        self._autocast = torch.is_autocast_enabled("cpu")
        return out

    def compute_loss(self, batch):
        logits, terms = super().compute_loss(batch)
        if self.training:
            checked = {k: (v.dtype, bool(torch.isfinite(v).all())) for k, v in terms.items()}
            self.seen.append(
                {
                    "student": logits.dtype,
                    "teacher": self._teacher_dtype,
                    "autocast": self._autocast,
                    "terms": checked,
                }
            )
        return logits, terms


def _models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = create_model("digits_teacher", num_classes=10, in_channels=1)
    student = create_model("digits_student", num_classes=10, in_channels=1)
    return student, teacher


def _fit(module: DistillationModule, tmp_path, steps: int = 4, **kwargs) -> L.Trainer:
    trainer = quiet_trainer(
        **{
            "max_steps": steps,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "default_root_dir": tmp_path,
            **kwargs,
        }
    )
    trainer.fit(module, datamodule=DeviceDataModule(DigitsDataModule(batch_size=64, augment=True)))
    return trainer


def _check_low_precision(module: Recording, low: torch.dtype) -> None:
    assert len(module.seen) >= 3
    for step in module.seen:
        assert step["autocast"], "the teacher forward must run inside Lightning's autocast"
        assert step["student"] == low and step["teacher"] == low
        for name, (dtype, finite) in step["terms"].items():
            assert dtype == torch.float32, f"{name} computed in {dtype}"
            assert finite, f"{name} is not finite"


def test_bf16_mixed_computes_every_loss_term_in_float32(tmp_path):
    student, teacher = _models()
    module = Recording(student, teacher, CSKDLoss())
    _fit(module, tmp_path, precision="bf16-mixed")
    _check_low_precision(module, torch.bfloat16)


def test_fp16_mixed_computes_every_loss_term_in_float32(tmp_path):
    # Lightning maps "16-mixed" to bf16 on the CPU; the plugin itself runs fp16 autocast there.
    student, teacher = _models()
    module = Recording(student, teacher, CSKDLoss())
    _fit(module, tmp_path, plugins=[MixedPrecision("16-mixed", "cpu")])
    _check_low_precision(module, torch.float16)


def test_channels_last_trains_and_keeps_the_state_dict(tmp_path):
    student, teacher = _models()
    keys = list(DistillationModule(student, teacher, CSKDLoss()).state_dict())
    module = DistillationModule(student, teacher, CSKDLoss(), channels_last=True)
    formats: list[bool] = []
    student.features[0].register_forward_pre_hook(
        lambda _, args: formats.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    conv = student.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    before = conv.detach().clone()
    _fit(module, tmp_path)
    assert formats and all(formats)
    assert not torch.equal(before, student.features[0].weight)
    assert list(module.state_dict()) == keys
