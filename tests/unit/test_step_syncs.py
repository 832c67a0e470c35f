"""A training step without host syncs: counted under a dispatch mode in a real Lightning fit;
the once-per-epoch checks that replace the per-step ones; the epoch's random numbers drawn
once and sliced per batch."""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
from helpers import quiet_trainer
from lightning.pytorch.callbacks import Callback
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import cskd_lightning.data.batch_augment as batch_augment
from cskd_lightning import (
    CSKDFullLoss,
    CSKDLoss,
    DistillationLoss,
    DistillationModule,
    DKDLoss,
    KDLoss,
)
from cskd_lightning.data import DeviceDataModule, DigitsDataModule
from cskd_lightning.data.sample_random import SampleRandom
from cskd_lightning.errors import NonFiniteLossError
from cskd_lightning.losses.functional import kd_loss
from cskd_lightning.models import create_model

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:.*but have no `val_dataloader`"),
]

# What makes a CUDA host wait: a scalar read, ops whose output size depends on values, and
# tensors made from host data (copied to the device).
SYNC_OPS = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::equal",
    "aten::lift_fresh",
}


class SyncCounter(TorchDispatchMode):
    """Counts the ops that would sync on CUDA (boolean-mask indexing included), except the
    class-range checks inside ``F.one_hot`` (torchmetrics' top-k accuracy), which ATen runs on
    the CPU only."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []
        self.in_one_hot = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = func._schema.name
        if self.in_one_hot:
            return func(*args, **(kwargs or {}))
        masked = name in ("aten::index", "aten::index_put_", "aten::_index_put_impl_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or [])
        )
        if name in SYNC_OPS or masked:
            self.syncs.append(name)
        return func(*args, **(kwargs or {}))


class OneHotScope(TorchFunctionMode):
    """Tells ``counter`` when an op runs inside ``F.one_hot``."""

    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func is not torch.nn.functional.one_hot:
            return func(*args, **(kwargs or {}))
        self.counter.in_one_hot = True
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.counter.in_one_hot = False


@contextlib.contextmanager
def counting(counter: SyncCounter):  # noqa: ANN201
    with counter, OneHotScope(counter):
        yield


class PerStep(Callback):
    """The counter's sync list at the end of every training step."""

    def __init__(self, counter: SyncCounter) -> None:
        self.counter, self.marks = counter, []

    def on_train_batch_end(self, *args) -> None:  # noqa: ANN002
        self.marks.append(len(self.counter.syncs))


def _digits_device(batch: int = 32, two_view: bool = False) -> DeviceDataModule:
    return DeviceDataModule(DigitsDataModule(batch_size=batch, two_view=two_view))


def _module(loss: DistillationLoss, **kwargs) -> DistillationModule:
    torch.manual_seed(0)
    teacher = create_model("digits_teacher", num_classes=10, in_channels=1)
    student = create_model("digits_student", num_classes=10, in_channels=1)
    return DistillationModule(student, teacher, loss, **kwargs)


@pytest.mark.parametrize("loss", [KDLoss(), DKDLoss(), CSKDLoss()], ids=["kd", "dkd", "cskd_cswt"])
def test_no_host_sync_in_a_training_step_with_the_accelerator_defaults(loss) -> None:
    module = _module(loss)
    module.defer_checks = True  # check_inputs as on an accelerator: read once per epoch
    counter = SyncCounter()
    steps = PerStep(counter)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=3, callbacks=[steps])
    with counting(counter):
        trainer.fit(module, datamodule=_digits_device())
    # Step 0 checks the first batch at once (counted before the first mark); the epoch's last
    # step reads the deferred checks with .tolist() (a host copy that no aten op shows here).
    per_step = [b - a for a, b in zip(steps.marks, steps.marks[1:], strict=False)]
    assert per_step == [0, 0], counter.syncs
    assert steps.marks[0] >= 2, counter.syncs  # the first step's checks


def test_the_cpu_default_checks_every_step() -> None:
    """On the CPU the checks read every step (no device to stall): the counter sees them."""
    counter = SyncCounter()
    steps = PerStep(counter)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=3, callbacks=[steps])
    with counting(counter):
        trainer.fit(_module(DKDLoss()), datamodule=_digits_device())
    assert steps.marks[2] - steps.marks[1] == 2, counter.syncs  # labels and loss


class KDWithoutLabels(DistillationLoss):
    """KD alone (no CE), so bad labels reach only the module's check; NaN from step ``nan_at``."""

    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.nan_at = nan_at

    def forward(self, student_logits, teacher_logits, targets) -> dict[str, torch.Tensor]:  # noqa: ANN001
        kd = kd_loss(student_logits, teacher_logits, 4.0)
        if self.nan_at is not None and self.progress.global_step >= self.nan_at:
            kd = kd * float("nan")
        return {"loss": kd, "kd": kd}


def test_deferred_label_check_keeps_the_range_on_the_device_until_the_epochs_check() -> None:
    module = _module(KDWithoutLabels())
    module.on_train_epoch_start()
    x = torch.randn(8, 1, 8, 8)
    good, bad = torch.arange(8) % 10, torch.tensor([0, 1, 2, 12, 3, 4, 5, 6])
    module.checks.deferred = True  # what training_step sets after an epoch's first step
    module.compute_loss((x, good))
    module.compute_loss((x, bad))  # no error yet: nothing was read
    module.compute_loss((x, good))
    module.checks.deferred = False
    with pytest.raises(ValueError, match=r"Labels out of range: found labels in \[0, 12\]"):
        module.read_deferred_checks()
    module.compute_loss((x, good))  # the range was consumed; a clean epoch reads nothing bad
    module.read_deferred_checks()


def test_deferred_non_finite_check_raises_at_the_epochs_end() -> None:
    module = _module(KDWithoutLabels(nan_at=2))
    module.defer_checks = True
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=4)
    with pytest.raises(NonFiniteLossError, match=r"Non-finite loss in one of the training steps"):
        trainer.fit(module, datamodule=_digits_device())
    assert trainer.global_step == 4
    # The CPU default stops at the bad step itself.
    module = _module(KDWithoutLabels(nan_at=2))
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=4)
    with pytest.raises(NonFiniteLossError, match=r"Non-finite loss at global step 2 .*loss=nan"):
        trainer.fit(module, datamodule=_digits_device())


def test_epoch_random_rows_equal_the_samples_own_numbers() -> None:
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(3))
    epoch = SampleRandom(7, 2, order)
    for part in (slice(0, 64), slice(64, 128), slice(960, 1000)):
        rows, alone = epoch.rows(part), SampleRandom(7, 2, order[part])
        assert torch.equal(rows.bits(4, 3), alone.bits(4, 3))
        assert torch.equal(rows.uniform(1, 3), alone.uniform(1, 3))
        assert torch.equal(rows.randint(0, 9, 2, 2), alone.randint(0, 9, 2, 2))
    assert set(epoch._drawn) == {("bits", 4, 3), ("uniform", 1, 3), ("randint", 0, 9, 2, 2)}
    with pytest.raises(ValueError, match="rows"):
        epoch.rows(slice(0, 4)).rows(slice(0, 2))


def test_the_full_recipe_has_no_host_sync_either(monkeypatch) -> None:
    """CSKD's full recipe (two views) reads nothing on the host in a step: its CSWT
    temperatures are positive by construction and skip the positivity check, which reads the
    host on the CPU (so this CPU count would see it). The strong view's colour ops take their
    accelerator path (``sync_free=True``; the CPU's indexes the samples that drew each op)."""
    sync_free = functools.partial(batch_augment.batch_rand_augment, sync_free=True)
    monkeypatch.setattr(batch_augment, "batch_rand_augment", sync_free)
    module = _module(CSKDFullLoss())
    module.defer_checks = True
    counter = SyncCounter()
    steps = PerStep(counter)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=3, callbacks=[steps])
    with counting(counter):
        trainer.fit(module, datamodule=_digits_device(two_view=True))
    per_step = [b - a for a, b in zip(steps.marks, steps.marks[1:], strict=False)]
    assert per_step == [0, 0], counter.syncs
