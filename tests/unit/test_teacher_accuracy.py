"""The teacher's accuracy as a callback (``TeacherAccuracy``, added by DistillationModule):
measured once against an accuracy computed here, kept across a resume without running the
teacher again, ``test/teacher_acc`` with a logit cache, and checkpoints of the earlier layout
still load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cskd_lightning import CSKDLoss, DistillationModule, KDLoss
from cskd_lightning.data import DeviceDataModule, DigitsDataModule
from cskd_lightning.logit_cache import TeacherLogitCache
from cskd_lightning.models import create_model
from cskd_lightning.teacher_accuracy import TeacherAccuracy

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:.*looks untrained"),
]


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    x = torch.tensor(data.data[:320], dtype=torch.float32) / 16.0
    return x, torch.tensor(data.target[:320], dtype=torch.long)


class CountingTeacher(nn.Module):
    """A fixed random MLP that counts the samples it is run on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return self.net(x)


def _student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_measured_once_and_kept_across_a_resume(tmp_path: Path) -> None:
    x, y = _digits()
    train = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=64)
    val = DataLoader(TensorDataset(x[256:], y[256:]), batch_size=32)
    teacher = CountingTeacher()
    with torch.no_grad():
        expected = float((teacher.net(x[256:]).argmax(1) == y[256:]).float().mean())
    module = DistillationModule(_student(), teacher, CSKDLoss())
    assert [type(c) for c in module.configure_callbacks()] == [TeacherAccuracy]
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    options = dict(num_sanity_val_steps=0, default_root_dir=tmp_path, limit_train_batches=2)
    trainer = quiet_trainer(
        max_epochs=2, callbacks=[checkpoint], enable_checkpointing=True, **options
    )
    trainer.fit(module, train, val)
    assert float(trainer.callback_metrics["val/teacher_acc"]) == pytest.approx(expected)
    # Training saw 4 batches of 64; validation ran the teacher once over its 64 samples.
    assert teacher.seen == 4 * 64 + 64

    teacher.seen = 0
    resumed = DistillationModule(_student(), teacher, CSKDLoss())
    trainer = quiet_trainer(max_epochs=3, **options)
    trainer.fit(resumed, train, val, ckpt_path=str(tmp_path / "last.ckpt"))
    assert float(trainer.callback_metrics["val/teacher_acc"]) == pytest.approx(expected)
    assert teacher.seen == 2 * 64  # the resumed epoch's training only


def test_no_teacher_no_callback() -> None:
    from cskd_lightning import CELoss

    assert DistillationModule(_student(), None, CELoss()).configure_callbacks() == []


def test_test_teacher_acc_with_a_logit_cache(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = create_model("digits_teacher", num_classes=10, in_channels=1)
    student = create_model("digits_student", num_classes=10, in_channels=1)
    dm = DeviceDataModule(DigitsDataModule(batch_size=64))
    module = DistillationModule(student, teacher, KDLoss())
    cache = TeacherLogitCache(tmp_path / "cache")
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, callbacks=[cache])
    trainer.fit(module, datamodule=dm)
    (results,) = trainer.test(module, datamodule=dm, verbose=False)
    hits, count = 0, 0
    with torch.no_grad():
        for x, y in dm.test_dataloader():
            hits += int((teacher(x).argmax(1) == y).sum())
            count += y.numel()
    assert count > 0
    assert results["test/teacher_acc"] == pytest.approx(hits / count, abs=1e-6)


def test_a_checkpoint_of_the_earlier_layout_loads(tmp_path: Path) -> None:
    """Checkpoints written while the module held the teacher's accuracy as a metric (keys
    ``teacher_val_acc.*``) load; the accuracy is measured again."""
    x, y = _digits()
    train = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=64)
    module = DistillationModule(_student(), CountingTeacher(), CSKDLoss())
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(module, train)
    path = tmp_path / "old.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    for name in ("tp", "fp", "tn", "fn"):
        checkpoint["state_dict"][f"teacher_val_acc.{name}"] = torch.tensor(1)
    torch.save(checkpoint, path)
    loaded = DistillationModule.load_from_checkpoint(
        path, student=_student(), teacher=CountingTeacher(), loss=CSKDLoss()
    )
    assert not [k for k in loaded.state_dict() if k.startswith("teacher_val_acc")]
