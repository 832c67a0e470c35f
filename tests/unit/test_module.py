"""DistillationModule under a real Lightning Trainer on CPU (tiny MLPs on sklearn digits)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import quiet_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cskd_lightning import CELoss, CSKDLoss, DistillationLoss, DistillationModule, KDLoss
from cskd_lightning.losses.functional import cross_entropy

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:.*but have no `val_dataloader`"),
]

CLASSES, FEATURES, BATCH = 10, 64, 32


# --- data and models ----------------------------------------------------------------------------


@functools.cache
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    x = torch.tensor(data.data[:384], dtype=torch.float32) / 16.0
    y = torch.tensor(data.target[:384], dtype=torch.long)
    return x, y


def _loader(start: int, stop: int, shuffle: bool = False) -> DataLoader:
    x, y = _digits()
    dataset = TensorDataset(x[start:stop], y[start:stop])
    return DataLoader(dataset, batch_size=BATCH, shuffle=shuffle)


def make_student(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, CLASSES))


def make_teacher(classes: int = CLASSES, seed: int = 1) -> nn.Module:
    """An MLP with BatchNorm whose running statistics are already away from their defaults."""
    torch.manual_seed(seed)
    teacher = nn.Sequential(
        nn.Linear(FEATURES, 48), nn.BatchNorm1d(48), nn.ReLU(), nn.Linear(48, classes)
    )
    with torch.no_grad():
        teacher.train()
        teacher(_digits()[0][:128])
    return teacher.eval()


class WithFeatures(nn.Module):
    """Returns ``(logits, features)`` like the model zoo's networks."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        feats = self.body[:-1](x)
        return self.body[-1](feats), feats


def make_trainer(tmp_path: Path, callbacks=(), **kwargs) -> L.Trainer:
    options = dict(
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=2,
        limit_test_batches=2,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )
    return quiet_trainer(**{**options, **kwargs})


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class ModeProbe(Callback):
    """Records the teacher's and student's mode at every training batch."""

    def __init__(self) -> None:
        self.modes: list[tuple[bool, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.modes.append((pl_module.teacher.training, pl_module.student.training))


# --- one shared training run ------------------------------------------------------------------


@dataclass
class Run:
    module: DistillationModule
    trainer: L.Trainer
    teacher_before: dict
    student_before: dict
    probe: ModeProbe
    ckpt: Path
    best_ckpt: Path
    fit_metrics: dict
    test_metrics: dict


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    """Two epochs of CSKD+CSWT with an Adam partial and a StepLR partial, then validate/test."""
    tmp = tmp_path_factory.mktemp("run")
    teacher, student = make_teacher(), make_student()
    teacher_before, student_before = _state(teacher), _state(student)
    module = DistillationModule(
        student,
        teacher,
        CSKDLoss(),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
    )
    probe = ModeProbe()
    checkpoint = ModelCheckpoint(dirpath=tmp / "ckpt", monitor="val/acc", mode="max")
    trainer = make_trainer(
        tmp, callbacks=[probe, checkpoint], max_epochs=2, enable_checkpointing=True
    )
    trainer.fit(module, _loader(0, 256, shuffle=True), _loader(256, 384))
    fit_metrics = dict(trainer.callback_metrics)  # trainer.test replaces callback_metrics
    ckpt = tmp / "final.ckpt"
    trainer.save_checkpoint(ckpt)
    test_metrics = trainer.test(module, _loader(256, 384), verbose=False)[0]
    return Run(
        module,
        trainer,
        teacher_before,
        student_before,
        probe,
        ckpt,
        Path(checkpoint.best_model_path),
        fit_metrics,
        test_metrics,
    )


def test_teacher_weights_and_batchnorm_stats_unchanged(run):
    assert run.trainer.global_step == 8
    teacher_after = _state(run.module.teacher)
    assert any("running_mean" in k for k in teacher_after)
    _assert_state_equal(teacher_after, run.teacher_before)
    # ... while the student did train.
    student_after = _state(run.module.student)
    assert any(not torch.equal(student_after[k], run.student_before[k]) for k in student_after)


def test_teacher_in_eval_mode_throughout_training(run):
    assert len(run.probe.modes) == 8
    assert all(teacher is False and student is True for teacher, student in run.probe.modes)
    assert not run.module.teacher.training
    assert all(not p.requires_grad for p in run.module.teacher.parameters())


def test_optimizer_and_scheduler_partials_are_used(run):
    (optimizer,) = run.trainer.optimizers
    assert isinstance(optimizer, torch.optim.Adam)
    (config,) = run.trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.StepLR)
    assert config.interval == "epoch"
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5**2)  # 2 epochs stepped
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in run.module.student.parameters()}
    assert not optimized & {id(p) for p in run.module.teacher.parameters()}


def test_default_optimizer_is_the_kd_protocol_sgd():
    """Two steps of the default optimizer are SGD with the KD benchmarks' protocol (CRD, Tian
    et al. 2020): lr 0.05, momentum 0.9, weight decay 5e-4, written out by hand."""
    lr, momentum, weight_decay = 0.05, 0.9, 5e-4
    module = DistillationModule(make_student(), make_teacher(), KDLoss())
    optimizer = module.configure_optimizers()
    params = list(module.student.parameters())
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in params}
    expected = [p.detach().clone() for p in params]
    velocity = [torch.zeros_like(p) for p in params]
    x, y = _digits()
    for step in range(2):
        optimizer.zero_grad()
        rows = slice(16 * step, 16 * (step + 1))
        _, terms = module.compute_loss((x[rows], y[rows]))
        terms["loss"].backward()
        for k, p in enumerate(params):
            grad = p.grad + weight_decay * expected[k]
            velocity[k] = grad if step == 0 else momentum * velocity[k] + grad
            expected[k] = expected[k] - lr * velocity[k]
        optimizer.step()
        for k, p in enumerate(params):
            torch.testing.assert_close(p.detach(), expected[k], rtol=1e-6, atol=1e-7)


class ViewRecorder(DistillationLoss):
    """CE on the first view; records what the module hands to :meth:`forward_views`."""

    def __init__(self, num_views: int) -> None:
        super().__init__()
        self.num_views = num_views
        self.calls: list[tuple] = []

    def forward_views(self, student_views, teacher_views, targets):
        self.calls.append((student_views, teacher_views))
        return super().forward_views(student_views, teacher_views, targets)

    def forward(self, student_logits, teacher_logits, targets):
        first = student_logits[0] if self.num_views > 1 else student_logits
        ce = cross_entropy(first, targets)
        return {"loss": ce, "ce": ce}


@pytest.mark.parametrize("num_views", [1, 2])
def test_the_module_hands_every_loss_one_logit_tensor_per_view(num_views):
    """Whatever the loss, the module calls ``forward_views`` with lists of ``(B, C)`` logits,
    one per view the loss takes, from a two-view batch ``((weak, strong), y)``."""
    loss = ViewRecorder(num_views)
    module = DistillationModule(make_student(), make_teacher(), loss)
    x, y = _digits()
    weak, strong = x[:8], x[8:16]
    logits, terms = module.compute_loss(((weak, strong), y[:8]))
    ((student, teacher),) = loss.calls
    assert isinstance(student, list) and isinstance(teacher, list)
    assert len(student) == len(teacher) == num_views
    inputs = [weak, strong][:num_views]
    for view, student_logits, teacher_logits in zip(inputs, student, teacher, strict=True):
        torch.testing.assert_close(student_logits, module.student(view))
        torch.testing.assert_close(teacher_logits, module.teacher(view))
    torch.testing.assert_close(logits, module.student(weak))
    torch.testing.assert_close(terms["ce"], cross_entropy(module.student(weak), y[:8]))


def test_checkpoints_have_no_teacher_keys(run):
    for path in (run.ckpt, run.best_ckpt):
        assert path.is_file(), path
        state = torch.load(path, weights_only=False, map_location="cpu")["state_dict"]
        assert any(k.startswith("student.") for k in state)
        assert not [k for k in state if k.startswith("teacher.")]


def test_checkpoint_round_trip_restores_the_student(run):
    teacher = make_teacher()
    teacher_state = _state(teacher)
    loaded = DistillationModule.load_from_checkpoint(
        run.ckpt, student=make_student(seed=5), teacher=teacher, loss=CSKDLoss()
    )
    _assert_state_equal(_state(loaded.student), _state(run.module.student))
    _assert_state_equal(_state(loaded.teacher), teacher_state)
    assert not loaded.teacher.training


def test_metrics_are_logged(run):
    metrics = run.fit_metrics
    for key in (
        "train/loss",
        "train/ce",
        "train/cs",
        "train/cs_cswt",
        "train/cswt_t_mean",
        "train/acc",
        "val/acc",
        "val/acc_best",
        "val/teacher_acc",
    ):
        assert key in metrics, key
        assert torch.isfinite(metrics[key]), key
    # test/acc is the student's accuracy on the test loader's 2 batches (64 samples).
    x, y = _digits()
    with torch.no_grad():
        correct = (run.module.student(x[256:320]).argmax(1) == y[256:320]).float().mean()
    assert run.test_metrics["test/acc"] == pytest.approx(float(correct), abs=1e-6)
    assert metrics["val/acc_best"] >= metrics["val/acc"]


def test_export_student_writes_a_plain_state_dict(run, tmp_path):
    path = run.module.export_student(tmp_path / "sub" / "student.pt")
    state = torch.load(path, weights_only=True)
    assert not [k for k in state if k.startswith(("student.", "teacher."))]
    fresh = make_student(seed=7)
    fresh.load_state_dict(state, strict=True)
    _assert_state_equal(_state(fresh), _state(run.module.student))


# --- construction and input checks --------------------------------------------------------------


def test_train_keeps_the_teacher_in_eval_mode():
    teacher = make_teacher()
    teacher.train()
    module = DistillationModule(make_student(), teacher, CSKDLoss())
    assert not teacher.training
    module.train()
    assert module.training and module.student.training and not module.teacher.training
    assert not any(m.training for m in module.teacher.modules())
    module.eval()
    assert not module.student.training and not module.teacher.training


def test_class_count_mismatch_raises_naming_both_counts():
    with pytest.raises(ValueError, match=r"(?s)9 classes.*10"):
        DistillationModule(make_student(), make_teacher(classes=9), CSKDLoss())


def test_class_count_mismatch_at_runtime_raises():
    class Headless(nn.Module):  # no nn.Linear: the class count cannot be inferred up front
        def forward(self, x):
            return x[:, :9]

    module = DistillationModule(make_student(), Headless(), CSKDLoss())
    x, y = _digits()
    with pytest.raises(ValueError, match=r"(?s)9 classes.*10"):
        module.compute_loss((x[:8], y[:8]))


def test_num_classes_cannot_be_inferred_raises():
    with pytest.raises(ValueError, match="num_classes"):
        DistillationModule(nn.Identity(), None, CELoss())


@pytest.mark.parametrize("bad_label", [CLASSES, -1])
def test_labels_out_of_range_raise(bad_label):
    module = DistillationModule(make_student(), make_teacher(), CSKDLoss())
    x, y = _digits()
    y = y[:8].clone()
    y[3] = bad_label
    with pytest.raises(ValueError, match="Labels out of range"):
        module.compute_loss((x[:8], y))
    with pytest.raises(ValueError, match="Labels out of range"):
        module.validation_step((x[:8], y), 0)


def test_teacher_none_with_a_distillation_loss_raises():
    for loss in (CSKDLoss(), KDLoss()):
        with pytest.raises(ValueError, match="teacher=None"):
            DistillationModule(make_student(), None, loss)


def test_teacher_none_with_ce_trains(tmp_path):
    module = DistillationModule(make_student(), None, CELoss())
    before = _state(module.student)
    trainer = make_trainer(tmp_path)
    trainer.fit(module, _loader(0, 128), _loader(256, 320))
    assert trainer.global_step == 4
    assert "train/ce" in trainer.callback_metrics and "val/acc" in trainer.callback_metrics
    assert "val/teacher_acc" not in trainer.callback_metrics
    after = _state(module.student)
    assert any(not torch.equal(after[k], before[k]) for k in after)


def test_models_returning_logits_and_features(tmp_path):
    teacher = WithFeatures(make_teacher())
    teacher_before = _state(teacher)
    module = DistillationModule(WithFeatures(make_student()), teacher, CSKDLoss())
    trainer = make_trainer(tmp_path, limit_train_batches=2)
    trainer.fit(module, _loader(0, 128), _loader(256, 320))
    assert trainer.global_step == 2
    assert torch.isfinite(trainer.callback_metrics["train/cs"])
    assert "val/teacher_acc" in trainer.callback_metrics
    _assert_state_equal(_state(teacher), teacher_before)
    assert module(_digits()[0][:4]).shape == (4, CLASSES)


# --- non-finite losses --------------------------------------------------------------------------


class NaNAtStep(DistillationLoss):
    """CE plus a term ``bad`` that turns NaN at one global step."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def forward(self, student_logits, teacher_logits, targets):
        ce = cross_entropy(student_logits, targets)
        bad = ce.new_tensor(float("nan") if self.progress.global_step == self.step else 0.0)
        return {"loss": ce + bad, "ce": ce, "bad": bad}


def test_nan_term_raises_naming_step_and_term(tmp_path):
    module = DistillationModule(make_student(), make_teacher(), NaNAtStep(step=2))
    with pytest.raises(FloatingPointError, match=r"(?s)global step 2.*bad=nan") as info:
        make_trainer(tmp_path).fit(module, _loader(0, 256))
    assert "ce=" not in str(info.value)  # only the non-finite terms are named


def test_nan_inputs_raise(tmp_path):
    x, y = _digits()
    x = x[:64].clone()
    x[5, 3] = float("nan")
    module = DistillationModule(make_student(), make_teacher(), CSKDLoss())
    loader = DataLoader(TensorDataset(x, y[:64]), batch_size=BATCH)
    with pytest.raises(FloatingPointError, match=r"(?s)global step 0.*cs=nan"):
        make_trainer(tmp_path).fit(module, loader)


def test_the_frozen_teacher_raises_no_eval_mode_warning_and_stays_in_eval(tmp_path) -> None:
    """Lightning's "Found N module(s) in eval mode" is not raised for the teacher (frozen on
    purpose), with a sanity check before training, and the teacher is in eval mode at every
    batch and its BatchNorm statistics do not move."""
    import warnings

    teacher, probe = make_teacher(), ModeProbe()
    before = _state(teacher)
    module = DistillationModule(make_student(), teacher, CSKDLoss())
    trainer = quiet_trainer(
        default_root_dir=tmp_path, callbacks=[probe], max_epochs=1, num_sanity_val_steps=1
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, _loader(0, 128, shuffle=True), _loader(256, 320))
    assert not [w for w in caught if "in eval mode" in str(w.message)]
    assert probe.modes and all(t is False and s is True for t, s in probe.modes)
    _assert_state_equal(_state(module.teacher), before)
