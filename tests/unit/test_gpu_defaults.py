"""The GPU defaults: trainer=gpu/ddp benchmark cuDNN, channels_last=auto and pin_memory=None
follow the trainer's device (on a CUDA GPU only), compile_models takes a torch.compile mode."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from app_helpers import compose_train
from helpers import quiet_trainer

from cskd_lightning import CSKDLoss, DistillationModule
from cskd_lightning.data import DigitsDataModule
from cskd_lightning.errors import InputError
from cskd_lightning.models import create_model


def _module(**kwargs) -> DistillationModule:
    torch.manual_seed(0)
    teacher = create_model("digits_teacher", num_classes=10, in_channels=1)
    student = create_model("digits_student", num_classes=10, in_channels=1)
    return DistillationModule(student, teacher, CSKDLoss(), **kwargs)


def _on(device: str) -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))


@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_gpu_trainers_benchmark_cudnn_and_the_module_defaults_follow_the_device(
    trainer: str, tmp_path: Path
) -> None:
    cfg = compose_train([f"trainer={trainer}"], tmp_path)
    assert cfg.trainer.benchmark is True
    assert cfg.module.channels_last == "auto"
    assert "pin_memory" not in cfg.data.datamodule  # the datamodule's None: on with a GPU
    assert compose_train([], tmp_path).trainer.get("benchmark") is None  # the CPU trainer


def test_channels_last_auto_is_decided_by_the_trainers_device() -> None:
    module = _module(channels_last="auto")
    conv = next(m for m in module.student.modules() if isinstance(m, torch.nn.Conv2d))
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=64))
    assert module.channels_last is False  # the CPU
    module = _module(channels_last="auto")
    module.trainer = _on("cuda")  # what setup reads of a GPU trainer
    module.setup("fit")
    conv = next(m for m in module.student.modules() if isinstance(m, torch.nn.Conv2d))
    assert module.channels_last is True
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(InputError, match="channels_last must be true, false or auto"):
        _module(channels_last="yes")


def test_pin_memory_unset_pins_with_a_gpu_only() -> None:
    dm = DigitsDataModule()
    assert dm.pin_memory is None and dm._pin_memory() is False  # no trainer
    dm.trainer = _on("cpu")
    assert dm._pin_memory() is False
    dm.trainer = _on("cuda")
    assert dm._pin_memory() is True
    assert DigitsDataModule(pin_memory=False)._pin_memory() is False


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        (False, None),
        (True, "default"),
        ("reduce-overhead", "reduce-overhead"),
        ("max-autotune", "max-autotune"),
    ],
)
def test_compile_models_takes_a_mode(value, mode) -> None:
    module = _module(compile_models=value)
    assert module.compile_mode == mode and module.compile_models is (mode is not None)


def test_compile_models_refuses_an_unknown_mode() -> None:
    with pytest.raises(InputError, match="compile_models must be true, false or a torch.compile"):
        _module(compile_models="fast")
