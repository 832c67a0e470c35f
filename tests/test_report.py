"""cskd-report on a multirun of 2 methods x 2 seeds plus a failed job, and on a real run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import matplotlib.image as mpimg
import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger

from cskd_lightning.app.report import find_runs, generate_report, main, read_run
from cskd_lightning.callbacks import TemperatureMonitor
from cskd_lightning.data import DigitsDataModule
from cskd_lightning.losses import CSKDLoss
from cskd_lightning.models import create_model
from cskd_lightning.module import DistillationModule

CLASSES, EPOCHS = 10, 4
METHODS = ("cskd", "cskd_cswt")
SEEDS = (0, 1)


def _val_curve(method: str, seed: int) -> list[float]:
    """A made-up but plausible validation curve; the best epoch differs between runs."""
    base = 0.80 if method == "cskd" else 0.83
    if seed % 2 == 0:  # peaks at epoch 3
        curve = [base - 0.3, base - 0.05, base + 0.01, base - 0.01]
    else:  # peaks at the last epoch, 4
        curve = [base - 0.25, base - 0.06, base, base + 0.02]
    return [round(v, 6) for v in curve]


def _write_run(path: Path, method: str, seed: int, job: int) -> dict:
    """A run directory as cskd-train writes it: summary, Lightning metrics.csv, overrides."""
    path.mkdir(parents=True)
    (path / ".hydra").mkdir()
    (path / ".hydra" / "overrides.yaml").write_text(
        f"- distill={method}\n- seed={seed}\n- pair.student.recipe.max_epochs={EPOCHS}\n"
    )
    (path / "teacher").mkdir()  # the teacher stage's log: not a run of its own
    (path / "teacher" / "metrics.csv").write_text("epoch,step,val/acc\n0,9,0.5\n")
    val = _val_curve(method, seed)
    monitor = method == "cskd_cswt"
    columns = ["epoch", "step", "test/acc", "train/loss", "val/acc", "val/acc_best"]
    if monitor:
        columns += ["train/cswt_t_mean", "train/cswt_t_min", "train/cswt_t_max"]
        columns += ["monitor/cswt_t_mean", "monitor/cswt_t_q10", "monitor/cswt_t_q50"]
        columns += ["monitor/cswt_t_q90"] + [f"monitor/class_cos/{j}" for j in range(CLASSES)]
    rows = []
    for epoch in range(EPOCHS):
        step = 20 * (epoch + 1) - 1
        rows.append({"epoch": epoch, "step": step, "val/acc": val[epoch],
                     "val/acc_best": max(val[: epoch + 1])})  # fmt: skip
        train = {"epoch": epoch, "step": step, "train/loss": 2.0 / (epoch + 1)}
        if monitor:
            t = 4.5 - 0.4 * epoch + 0.1 * seed
            train.update({"train/cswt_t_mean": t, "train/cswt_t_min": 2.0,
                          "train/cswt_t_max": 6.0, "monitor/cswt_t_mean": t,
                          "monitor/cswt_t_q10": t - 1.5, "monitor/cswt_t_q50": t - 0.2,
                          "monitor/cswt_t_q90": t + 1.2})  # fmt: skip
            for j in range(CLASSES):
                train[f"monitor/class_cos/{j}"] = 0.6 + 0.08 * epoch + 0.01 * j
        rows.append(train)
    test_acc = val[-1] - 0.005 * (seed + 1)
    rows.append({"epoch": EPOCHS, "step": 20 * EPOCHS, "test/acc": test_acc})
    with (path / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "method": method,
        "seed": seed,
        "data": "digits",
        "pair": "digits_cnn",
        "teacher": {
            "model": "digits_teacher",
            "source": "cache.pt",
            "test_acc": 0.97 + 0.005 * seed,
        },
        "student": {
            "model": "digits_student",
            "test_acc": test_acc,
            "val_acc_best": max(val),
            "val_acc_last": val[-1],
            "best_checkpoint": str(path / "checkpoints" / "best.ckpt"),
        },
        "wall_time_s": 30.0 + 7 * job,
        "output_dir": str(path),
    }
    (path / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@pytest.fixture(scope="module")
def multirun(tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    """``<sweep>/0..3``: 2 methods x 2 seeds; ``<sweep>/4``: a failed job."""
    root = tmp_path_factory.mktemp("multirun")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    summaries: dict[str, list[dict]] = {m: [] for m in METHODS}
    job = 0
    for method in METHODS:
        for seed in SEEDS:
            summaries[method].append(_write_run(root / str(job), method, seed, job))
            job += 1
    failed = root / str(job)
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "overrides.yaml").write_text("- distill=kd\n- seed=0\n")
    (failed / "error.txt").write_text(
        "Traceback (most recent call last):\n  File ...\nValueError: temperature must be "
        "a positive number; got -1.0.\n"
    )
    generate_report(root)
    return root, summaries


def _expected(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    """Mean ± sample std, computed here without the report's code."""
    scaled = [scale * v for v in values]
    return f"{np.mean(scaled):.{digits}f} ± {np.std(scaled, ddof=1):.{digits}f}"


def _row(report: str, label: str) -> list[str]:
    results = report.split("## Results", 1)[1].split("## Runs", 1)[0]
    for line in results.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == f"`{label}`":
            return cells
    raise AssertionError(f"no row for {label} in:\n{results}")


@pytest.mark.parametrize("method", METHODS)
def test_report_table_mean_and_std_over_seeds(multirun, method: str) -> None:
    root, summaries = multirun
    report = (root / "report.md").read_text()
    cells = _row(report, method)
    runs = summaries[method]
    curves = [_val_curve(method, s["seed"]) for s in runs]
    best_epochs = [float(np.argmax(c) + 1) for c in curves]
    assert cells[1] == "2 (0, 1)"
    assert cells[2] == "unknown"  # these summaries predate "selection"
    assert cells[3] == _expected([s["teacher"]["test_acc"] for s in runs])
    assert cells[4] == _expected([s["student"]["test_acc"] for s in runs])
    assert cells[5] == _expected([max(c) for c in curves])
    assert cells[6] == _expected([c[-1] for c in curves])
    assert cells[7] == _expected(best_epochs, scale=1.0, digits=1)
    assert cells[8] == "4.0 ± 0.0"
    assert cells[9] == _expected([s["wall_time_s"] for s in runs], scale=1.0, digits=1)


def test_report_lists_the_failed_job_and_every_run(multirun) -> None:
    root, _ = multirun
    report = (root / "report.md").read_text()
    failed = report.split("## Failed jobs", 1)[1]
    assert "| 4 |" in failed
    assert "ValueError: temperature must be a positive number; got -1.0." in failed
    assert "`distill=kd`" in failed
    runs = report.split("## Runs", 1)[1].split("## Failed jobs", 1)[0]
    assert sum(line.startswith("| `") for line in runs.splitlines()) == 4
    assert {r.path.name for r in find_runs(root)[0]} == {"0", "1", "2", "3"}


def test_report_plots_are_valid_pngs(multirun) -> None:
    root, _ = multirun
    report = (root / "report.md").read_text()
    for name in ("val_acc.png", "cswt_temperature.png", "class_cosine.png"):
        image = mpimg.imread(root / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200, name
        assert image.std() > 0.01, f"{name} looks blank"
        assert f"]({name})" in report


def test_no_runs_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "No runs under" in err and "summary.json" in err
    assert not (tmp_path / "empty" / "report.md").exists()


def test_class_cosine_csv_for_many_classes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_run(run, "cskd", 0, 0)
    with (run / "class_cosine.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "class", "cos"])
        writer.writerows([e, j, 0.5 + 0.01 * j + 0.1 * e] for e in range(2) for j in range(30))
    parsed = read_run(run)
    assert parsed.class_cosine.shape == (2, 30)
    assert parsed.class_cosine[1, 29] == pytest.approx(0.5 + 0.29 + 0.1)
    assert [r.path for r in find_runs(run)[0]] == [run]  # DIR may be a run itself


def test_reads_a_real_run_with_the_monitor(tmp_path: Path) -> None:
    """The reader on a real Lightning CSV log written with ``TemperatureMonitor``."""
    run = tmp_path / "run"
    L.seed_everything(0)
    module = DistillationModule(
        create_model("digits_student", 10, 1), create_model("digits_teacher", 10, 1), CSKDLoss()
    )
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=CSVLogger(run, name="", version=""),
        callbacks=[TemperatureMonitor()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    val = {k: float(v) for k, v in trainer.callback_metrics.items()}
    (run / "summary.json").write_text(
        json.dumps({"method": "cskd_cswt", "seed": 0, "student": {}, "teacher": {}})
    )
    parsed = read_run(run)
    assert sorted(parsed.series("val/acc")) == [0, 1]
    assert parsed.series("val/acc")[1] == pytest.approx(val["val/acc"])
    assert sorted(parsed.series("monitor/cswt_t_q50")) == [0, 1]
    assert parsed.class_cosine.shape == (2, 10)
    assert parsed.class_cosine[1, 3] == pytest.approx(val["monitor/class_cos/3"])
