"""TemperatureMonitor: what it logs on a real (short) Trainer run, its numbers, DDP, config."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import hydra
import lightning as L
import numpy as np
import pytest
import torch
from app_helpers import compose_train
from helpers import quiet_trainer, run_gloo
from lightning.pytorch.loggers import CSVLogger

from cskd_lightning.callbacks import CLASS_COSINE_CSV, TemperatureMonitor
from cskd_lightning.data import DigitsDataModule
from cskd_lightning.losses import CELoss, CSKDFullLoss, CSKDLoss, KDLoss
from cskd_lightning.models import create_model
from cskd_lightning.module import DistillationModule

EPOCHS, TRAIN_BATCHES = 2, 3
QUANTILE_KEYS = ("monitor/cswt_t_q10", "monitor/cswt_t_q50", "monitor/cswt_t_q90")
SUMMARY_KEYS = ("monitor/class_cos_min", "monitor/class_cos_mean", "monitor/class_cos_max")


def _fit(tmp_path: Path, loss, teacher: bool = True, **monitor_kwargs) -> tuple[dict, int]:
    """A 2-epoch digits run with the monitor; ``({column: [per-epoch values]}, forwards)``.

    ``forwards`` counts the student's forward calls in training mode (to show the monitor adds
    none).
    """
    L.seed_everything(0)
    student = create_model("digits_student", 10, 1)
    forwards = []
    student.register_forward_hook(lambda m, i, o: forwards.append(1) if m.training else None)
    module = DistillationModule(
        student, create_model("digits_teacher", 10, 1) if teacher else None, loss
    )
    trainer = quiet_trainer(
        max_epochs=EPOCHS,
        limit_train_batches=TRAIN_BATCHES,
        limit_val_batches=1,
        logger=CSVLogger(tmp_path, name="", version=""),
        callbacks=[TemperatureMonitor(**monitor_kwargs)],
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    columns: dict[str, list[float]] = {}
    with (tmp_path / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value and (key.startswith("monitor/") or key.startswith("train/")):
                    if not key.endswith("_step"):
                        columns.setdefault(key.removesuffix("_epoch"), []).append(float(value))
    return columns, len(forwards)


def test_monitor_logs_every_key_per_epoch_without_extra_forward(tmp_path: Path) -> None:
    columns, forwards = _fit(tmp_path, CSKDLoss(t_low=1.5, t_high=5.0))
    keys = ["monitor/cswt_t_mean", *QUANTILE_KEYS, *SUMMARY_KEYS]
    keys += [f"monitor/class_cos/{j}" for j in range(10)]
    for key in keys:
        assert len(columns.get(key, [])) == EPOCHS, key
    assert forwards == EPOCHS * TRAIN_BATCHES  # the monitor reuses the step's logits
    q10, q50, q90 = (np.array(columns[k]) for k in QUANTILE_KEYS)
    assert np.all((1.5 <= q10) & (q10 <= q50) & (q50 <= q90) & (q90 <= 5.0))
    # The same numbers the loss used: its own per-epoch means (batch-size weighted).
    np.testing.assert_allclose(columns["monitor/cswt_t_mean"], columns["train/cswt_t_mean"], 1e-5)
    np.testing.assert_allclose(columns["monitor/class_cos_mean"], columns["train/cos_mean"], 1e-5)
    per_class = np.array([columns[f"monitor/class_cos/{j}"] for j in range(10)])
    np.testing.assert_allclose(per_class.min(0), columns["monitor/class_cos_min"], 1e-6)
    np.testing.assert_allclose(per_class.max(0), columns["monitor/class_cos_max"], 1e-6)
    assert not (tmp_path / CLASS_COSINE_CSV).exists()


def test_many_classes_go_to_a_csv_and_kd_uses_default_temperatures(tmp_path: Path) -> None:
    columns, _ = _fit(tmp_path, KDLoss(), max_logged_classes=5)
    assert not any(k.startswith("monitor/class_cos/") for k in columns)
    for key in ("monitor/cswt_t_mean", *QUANTILE_KEYS, *SUMMARY_KEYS):
        assert len(columns[key]) == EPOCHS, key
    q10, q90 = np.array(columns[QUANTILE_KEYS[0]]), np.array(columns[QUANTILE_KEYS[2]])
    assert np.all((2.0 <= q10) & (q90 <= 6.0))  # KD has no t_low/t_high: the defaults 2/6
    with (tmp_path / CLASS_COSINE_CSV).open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["epoch"]), int(r["class"])) for r in rows] == [
        (e, j) for e in range(EPOCHS) for j in range(10)
    ]
    for epoch in range(EPOCHS):
        cos = [float(r["cos"]) for r in rows if int(r["epoch"]) == epoch]
        assert min(cos) == pytest.approx(columns["monitor/class_cos_min"][epoch], rel=1e-5)
        assert np.mean(cos) == pytest.approx(columns["monitor/class_cos_mean"][epoch], rel=1e-5)


def test_no_teacher_is_a_no_op(tmp_path: Path) -> None:
    columns, _ = _fit(tmp_path, CELoss(), teacher=False)
    assert "train/ce" in columns
    assert not any(k.startswith("monitor/") for k in columns)


# --- the statistics, against the float64 reference of conftest ------------------------------
def _steps(seed: int = 0, sizes=(16, 16, 9), classes: int = 7) -> list[tuple]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (2 * torch.randn(b, classes, generator=gen), 3 * torch.randn(b, classes, generator=gen))
        for b in sizes
    ]


def _reference(ref, steps, t_low=2.0, t_high=6.0, temperature=4.0) -> dict:
    temps = np.concatenate([ref.cswt(s, t, t_low, t_high) for s, t in steps])
    cos_sum = np.zeros(steps[0][0].shape[1])
    for s, t in steps:
        ps, pt = ref.softmax(s, temperature), ref.softmax(t, temperature)
        cos_sum += s.shape[0] * np.array([ref.cos(ps[:, j], pt[:, j]) for j in range(ps.shape[1])])
    q10, q50, q90 = np.quantile(temps, [0.1, 0.5, 0.9])
    return {
        "t_mean": temps.mean(),
        "t_q10": q10,
        "t_q50": q50,
        "t_q90": q90,
        "class_cos": cos_sum / sum(s.shape[0] for s, _ in steps),
    }


def _assert_stats(got: dict, expected: dict) -> None:
    for key in ("t_mean", "t_q10", "t_q50", "t_q90"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
    np.testing.assert_allclose(got["class_cos"], expected["class_cos"], rtol=1e-5, atol=1e-7)


def test_statistics_match_the_reference(ref) -> None:
    monitor = TemperatureMonitor()
    monitor.t_low, monitor.t_high, monitor.cos_temperature = 1.0, 3.0, 2.0
    steps = _steps()
    assert monitor.compute() is None
    for s, t in steps:
        monitor.update(s, t)
    _assert_stats(monitor.compute(), _reference(ref, steps, 1.0, 3.0, 2.0))
    monitor.reset()
    assert monitor.compute() is None


def test_hook_reads_the_weak_view_only_in_training() -> None:
    """The forward hook takes the tensors a one-view loss is called with, and the weak view of
    a two-view loss's ``(weak, strong)`` pairs; outside training it takes nothing."""
    weak, strong = _steps(sizes=(8, 8))
    expected = TemperatureMonitor()
    expected.update(*weak)
    calls = [
        (CSKDFullLoss(), ((weak[0], strong[0]), (weak[1], strong[1]), None)),
        (CSKDLoss(), (weak[0], weak[1], None)),
    ]
    for loss, args in calls:
        monitor = TemperatureMonitor()
        monitor._trainer = SimpleNamespace(training=False)
        monitor._loss_hook(loss, args, {}, None)
        assert monitor.compute() is None  # validation / test: ignored
        monitor._trainer = SimpleNamespace(training=True)
        monitor._loss_hook(loss, args, {}, None)
        _assert_stats(monitor.compute(), expected.compute())


# --- DDP: two processes over gloo --------------------------------------------------------------
def _ddp_worker(rank: int) -> dict:
    """Rank ``rank``'s monitor statistics and loss values, in a 2-process gloo group."""
    results = {}
    for gather in (True, False):
        monitor = TemperatureMonitor()
        monitor.gather = gather
        for s, t in _steps():  # rank 0 gets the first rows of each batch, rank 1 the rest
            half = (s.shape[0] + 1) // 2
            rows = slice(0, half) if rank == 0 else slice(half, None)
            monitor.update(s[rows], t[rows])
        results[gather] = monitor.compute()
    # What the (gathering) loss itself reports for the same slices, step by step.
    results["loss"] = []
    loss = CSKDLoss()
    loss.gather_same_size = False  # odd batches split unequally
    for s, t in _steps():
        half = (s.shape[0] + 1) // 2
        rows = slice(0, half) if rank == 0 else slice(half, None)
        y = torch.zeros(s[rows].shape[0], dtype=torch.long)
        out = loss(s[rows], t[rows], y)
        results["loss"].append((s.shape[0], float(out["cswt_t_mean"]), float(out["cos_mean"])))
    return results


@pytest.mark.timeout(120)
def test_ddp_gathered_equals_one_process_and_ranks_agree(ref) -> None:
    results = run_gloo(_ddp_worker)
    steps = _steps()
    # gather=True (the loss's default): the global batch, exactly one process's numbers, and
    # the loss's own per-step values under DDP, weighted by the global batch.
    for rank in range(2):
        _assert_stats(results[rank][True], _reference(ref, steps))
        sizes, t_means, cos_means = np.array(results[rank]["loss"]).T
        got = results[rank][True]
        assert got["t_mean"] == pytest.approx(np.average(t_means, weights=sizes), rel=1e-6)
        assert got["class_cos"].mean() == pytest.approx(
            np.average(cos_means, weights=sizes), rel=1e-6
        )
    # gather=False: CSWT per process slice, pooled at the end of the epoch; ranks agree.
    halves = []
    for s, t in steps:
        half = (s.shape[0] + 1) // 2
        halves += [(s[:half], t[:half]), (s[half:], t[half:])]
    for rank in range(2):
        _assert_stats(results[rank][False], _reference(ref, halves))


def test_callbacks_monitor_config_adds_the_monitor_to_the_defaults(tmp_path: Path) -> None:
    cfg = compose_train(["callbacks=monitor"], tmp_path)
    assert {"model_checkpoint", "progress_bar", "temperature_monitor"} <= set(cfg.callbacks)
    assert isinstance(
        hydra.utils.instantiate(cfg.callbacks.temperature_monitor), TemperatureMonitor
    )


def test_logit_standardization_is_followed_for_the_class_cosine(tmp_path: Path) -> None:
    columns, _ = _fit(tmp_path, CSKDLoss(logit_standardization=True))
    np.testing.assert_allclose(columns["monitor/class_cos_mean"], columns["train/cos_mean"], 1e-5)
    np.testing.assert_allclose(columns["monitor/cswt_t_mean"], columns["train/cswt_t_mean"], 1e-5)


def test_progress_log_writes_epoch_lines_with_this_epochs_metrics_without_a_terminal(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a terminal (stdout is pytest's capture, not a TTY), ProgressLog logs batch lines
    at its interval and a line per epoch with that epoch's own metrics and the time left; on a
    terminal it stays silent."""
    import logging
    import re
    import sys

    from cskd_lightning.callbacks import ProgressLog

    def fit(callback: ProgressLog) -> L.Trainer:
        torch.manual_seed(0)
        module = DistillationModule(create_model("digits_student", 10, 1), None, CELoss())
        trainer = quiet_trainer(max_epochs=3, limit_train_batches=3, callbacks=[callback])
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
        return trainer

    caplog.set_level(logging.INFO, logger="cskd_lightning")
    assert not sys.stdout.isatty()
    trainer = fit(ProgressLog(interval_s=0.0))
    lines = [r.getMessage() for r in caplog.records if r.name == "cskd_lightning"]
    epochs = [line for line in lines if " done in " in line]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"]
    assert "left" in epochs[0] and "left" not in epochs[-1]
    last_loss = float(re.search(r"train/loss (\S+?),", epochs[-1]).group(1))
    assert last_loss == pytest.approx(float(trainer.callback_metrics["train/loss"]), abs=1e-4)
    assert any(re.match(r"epoch 2/3: batch \d/3 \(\d+%\)", line) for line in lines)

    caplog.clear()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    fit(ProgressLog(interval_s=0.0))
    assert not [r for r in caplog.records if "done in" in r.getMessage()]
