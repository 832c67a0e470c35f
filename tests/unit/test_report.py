"""cskd-report on a multirun of 2 methods x 2 seeds plus a failed job, and on a real run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import matplotlib.image as mpimg
import pytest
from helpers import quiet_trainer
from lightning.pytorch.loggers import CSVLogger

from cskd_lightning.app.report import (
    find_runs,
    generate_report,
    group_runs,
    main,
    published_section,
    read_run,
    runs_table,
)
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


def _row(report: str, label: str) -> list[str]:
    results = report.split("## Results", 1)[1].split("## Runs", 1)[0]
    for line in results.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == f"`{label}`":
            return cells
    raise AssertionError(f"no row for {label} in:\n{results}")


#: The fixture's results rows, worked out by hand from ``_val_curve`` and ``_write_run``
#: (two seeds: mean (a + b) / 2, sample std |a - b| / sqrt(2)). cskd: val curves
#: [50, 75, 81, 79] and [55, 74, 80, 82] %, test acc = last val - 0.5 and - 1.0 points;
#: cskd_cswt: the same + 3 points; teacher 97.0 and 97.5 %; wall time 30 + 7 * job s.
FIXTURE_ROWS = {
    "cskd": ["97.25 ± 0.35", "79.75 ± 1.77", "81.50 ± 0.71", "80.50 ± 2.12", "3.5 ± 0.7",
             "4.0 ± 0.0", "33.5 ± 4.9"],
    "cskd_cswt": ["97.25 ± 0.35", "82.75 ± 1.77", "84.50 ± 0.71", "83.50 ± 2.12", "3.5 ± 0.7",
                  "4.0 ± 0.0", "47.5 ± 4.9"],
}  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_report_table_mean_and_std_over_seeds(multirun, method: str) -> None:
    root, _ = multirun
    cells = _row((root / "report.md").read_text(), method)
    assert cells[1] == "2 (0, 1)"
    assert cells[2] == "unknown"  # these summaries predate "selection"
    assert cells[3:] == FIXTURE_ROWS[method]


def _write_train_run(
    path: Path,
    seed: int,
    val: list[float],
    test_acc: float,
    teacher_acc: float | None,
    wall_time_s: float,
    overrides: list[str],
    stale_epoch: tuple[int, float] | None = None,
) -> None:
    """A run directory laid out as ``cskd-train`` writes it (summary.json, Lightning's
    metrics.csv: per epoch a validation row then a training row, then the test row).
    ``stale_epoch``: that epoch's validation row is first written with another value, as by a
    segment killed before the epoch ended and resumed."""
    path.mkdir(parents=True)
    best = max(val)
    summary = {
        "method": "kd",
        "seed": seed,
        "data": "digits",
        "pair": "digits_cnn",
        "selection": "validation",
        "overrides": [*overrides, f"seed={seed}"],
        "teacher": {"model": "digits_teacher", "source": "t.pt", "test_acc": teacher_acc},
        "student": {
            "model": "digits_student",
            "test_acc": test_acc,
            "val_acc_best": best,
            "val_acc_last": val[-1],
            "best_epoch": val.index(best),
            "best_checkpoint": f"checkpoints/best-epoch{val.index(best):03d}.ckpt",
        },
        "metrics": {"val/acc": val[-1], "test/acc": test_acc},
        "segments": 1 if stale_epoch is None else 2,
        "wall_time_s": wall_time_s,
        "output_dir": str(path),
    }
    (path / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = ["epoch,step,test/acc,train/loss,val/acc,val/acc_best"]
    for epoch, acc in enumerate(val):
        step = 10 * epoch + 9
        if stale_epoch is not None and stale_epoch[0] == epoch:
            lines.append(f"{epoch},{step},,,{stale_epoch[1]},{stale_epoch[1]}")
        lines.append(f"{epoch},{step},,,{acc},{max(val[: epoch + 1])}")
        lines.append(f"{epoch},{step},,{1.5 - 0.1 * epoch},,")
    lines.append(f"{len(val)},{10 * len(val)},{test_acc},,,")
    (path / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_mean_and_std_worked_out_by_hand(tmp_path: Path) -> None:
    """Three seeds of one setting and two of another, with numbers chosen so that the mean and
    the sample standard deviation (n - 1) are easy to work out by hand."""
    sweep = tmp_path / "sweep"
    kd = ["distill=kd", "distill.loss.temperature=4.0"]
    # test acc 90, 92, 97 %: mean 93, deviations -3, -1, +4, sum of squares 26, /2 = 13,
    # std sqrt(13) = 3.606. Best val 86, 88, 90 %: std 2. Last val 84, 88, 87 %: mean 86.333,
    # squares 5.444 + 2.778 + 0.444 = 8.667, /2, std 2.082. Best epoch 2, 3, 1: 2 ± 1 (seed 2's
    # epoch 2 was first logged at 95 % by a killed segment: the resumed 89 % counts). Wall time
    # 10, 20, 60 s: mean 30, squares 400 + 100 + 900, /2 = 700, std 26.458.
    _write_train_run(sweep / "0", 0, [0.80, 0.86, 0.84], 0.90, 0.99, 10.0, kd)
    _write_train_run(sweep / "1", 1, [0.82, 0.85, 0.88], 0.92, 0.99, 20.0, kd)
    _write_train_run(sweep / "2", 2, [0.90, 0.89, 0.87], 0.97, 0.99, 60.0, kd, (1, 0.95))
    # T = 2: the teacher's test accuracy is missing for seed 1, so that cell is seed 0's alone.
    t2 = ["distill=kd", "distill.loss.temperature=2.0"]
    _write_train_run(sweep / "3", 0, [0.70, 0.75], 0.74, 0.98, 5.0, t2)
    _write_train_run(sweep / "4", 1, [0.78, 0.76], 0.77, None, 7.0, t2)
    assert main([str(sweep)]) == 0
    report = (sweep / "report.md").read_text()

    cells = _row(report, "kd distill.loss.temperature=4.0")
    assert cells[1:3] == ["3 (0, 1, 2)", "validation"]
    assert cells[3:] == ["99.00 ± 0.00", "93.00 ± 3.61", "88.00 ± 2.00", "86.33 ± 2.08",
                         "2.0 ± 1.0", "3.0 ± 0.0", "30.0 ± 26.5"]  # fmt: skip
    # Two seeds: std = |a - b| / sqrt(2); 74, 77 -> 2.12; 75, 78 -> 2.12; 75, 76 -> 0.71.
    cells = _row(report, "kd distill.loss.temperature=2.0")
    assert cells[1:3] == ["2 (0, 1)", "validation"]
    assert cells[3:] == ["98.00 (n=1)", "75.50 ± 2.12", "76.50 ± 2.12", "75.50 ± 0.71",
                         "1.5 ± 0.7", "2.0 ± 0.0", "6.0 ± 1.4"]  # fmt: skip
    # One row per run, with its own values and its directory relative to the sweep.
    runs = report.split("## Runs", 1)[1].split("## Failed jobs", 1)[0]
    assert (
        "| `kd distill.loss.temperature=4.0` | 2 | validation | 99.00 | 97.00 | 90.00 | "
        "87.00 | 1 | 3 | 60.0 | 2 |" in runs
    )
    assert "| `kd distill.loss.temperature=2.0` | 1 | validation | – | 77.00 |" in runs


def test_group_by_an_unknown_key_is_a_clear_error(multirun, tmp_path: Path, capsys) -> None:
    root, _ = multirun
    assert main([str(root), "--group-by", "distill.loss.temprature", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: --group-by distill.loss.temprature: no run has this override")
    assert "pair.student.recipe.max_epochs" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "report.md").exists()


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
    assert parsed.class_cosine.loc[1, 29] == pytest.approx(0.5 + 0.29 + 0.1)
    assert [r.path for r in find_runs(run)[0]] == [run]  # DIR may be a run itself


def test_reads_a_real_run_with_the_monitor(tmp_path: Path) -> None:
    """The reader on a real Lightning CSV log written with ``TemperatureMonitor``."""
    run = tmp_path / "run"
    L.seed_everything(0)
    module = DistillationModule(
        create_model("digits_student", 10, 1), create_model("digits_teacher", 10, 1), CSKDLoss()
    )
    trainer = quiet_trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=CSVLogger(run, name="", version=""),
        callbacks=[TemperatureMonitor()],
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    val = {k: float(v) for k, v in trainer.callback_metrics.items()}
    (run / "summary.json").write_text(
        json.dumps({"method": "cskd_cswt", "seed": 0, "student": {}, "teacher": {}})
    )
    parsed = read_run(run)
    assert list(parsed.series("val/acc").index) == [0, 1]
    assert parsed.series("val/acc").loc[1] == pytest.approx(val["val/acc"])
    assert list(parsed.series("monitor/cswt_t_q50").index) == [0, 1]
    assert parsed.class_cosine.shape == (2, 10)
    assert parsed.class_cosine.loc[1, 3] == pytest.approx(val["monitor/class_cos/3"])


def test_published_numbers_beside_a_cifar100_sweep(tmp_path) -> None:
    """Two seeds of dkd and one of cskd_cswt on vgg13 -> vgg8 (CIFAR-100): the dkd group gets
    mdistiller's 74.68 and the difference from its mean; cskd_cswt has no published student
    number but its teacher's comparison shows; a digits-only report has no such section."""
    tests = {("dkd", 0): 0.7400, ("dkd", 1): 0.7500, ("cskd_cswt", 0): 0.7300}
    for job, ((method, seed), acc) in enumerate(tests.items()):
        run = tmp_path / "sweep" / str(job)
        run.mkdir(parents=True)
        summary = {
            "method": method,
            "seed": seed,
            "data": "cifar100",
            "pair": "vgg13_vgg8",
            "teacher": {
                "model": "vgg13",
                "test_acc": 0.7364,
                "published": {"published_acc": 74.64, "gap_pts": -1.0},
            },
            "student": {"model": "vgg8", "test_acc": acc},
        }
        (run / "summary.json").write_text(json.dumps(summary))
    runs, _ = find_runs(tmp_path / "sweep")
    lines = published_section(runs_table(group_runs(runs)))
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines if line[:3] == "| `"]
    rows = {row[0]: row[1:] for row in cells}
    # mdistiller README, the DKD row, VGG13 -> VGG8: 74.68; VGG13 (RepDistiller README): 74.64
    assert rows["`dkd`"] == [
        "cifar100 (vgg13_vgg8)", "74.50 ± 0.71", "74.68", "-0.18", "DKD",
        "73.64 ± 0.00", "74.64", "-1.00",
    ]  # fmt: skip
    assert rows["`cskd_cswt`"] == [
        "cifar100 (vgg13_vgg8)", "73.00", "–", "–", "–", "73.64", "74.64", "-1.00",
    ]  # fmt: skip
    assert any(line.startswith("- DKD: mdistiller README") for line in lines)


def test_no_published_section_without_published_numbers(multirun) -> None:
    runs, _ = find_runs(multirun[0])
    assert published_section(runs_table(group_runs(runs))) == []


def test_cswt_temperatures_without_the_monitor_draw_the_mean_and_no_band(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``callbacks=monitor`` only the loss's per-batch mean/min/max of T_i are logged;
    min-max is t_low-t_high by construction, so no band is drawn from it (the monitor's
    quantile band is)."""
    from cskd_lightning.app import report_plots as report

    figures = []
    figure = report._figure
    monkeypatch.setattr(
        report, "_figure", lambda *a, **k: figures.append(figure(*a, **k)) or figures[-1]
    )
    for monitored in (True, False):
        run_dir = tmp_path / f"run_{monitored}"
        _write_run(run_dir, "cskd_cswt", seed=0, job=0)
        if not monitored:
            with (run_dir / "metrics.csv").open(newline="") as f:
                rows = list(csv.DictReader(f))
            keep = [c for c in rows[0] if not c.startswith("monitor/")]
            with (run_dir / "metrics.csv").open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keep, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
        assert report.plot_temperatures({"cskd_cswt": [read_run(run_dir)]}, tmp_path / "t.png")
        ax = figures[-1][1][0]
        assert bool(ax.collections) is monitored  # fill_between's band
        assert "mean alone" in ax.get_title() or monitored
