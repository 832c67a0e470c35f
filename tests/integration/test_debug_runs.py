"""The debug group (debug=default, fdr, overfit, limit, profiler) runs the default digits setup
to a clean end with its records (what each option composes to: tests/unit/test_debug.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from app_helpers import compose_train, read_summary, run_cli
from helpers import student_pt_accuracy

from cskd_lightning.app.train import train


def epochs_and_last_step(run: Path) -> tuple[int, int]:
    """How many epochs ``metrics.csv`` records and its last step (the test row's)."""
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    trained = {int(r["epoch"]) for r in rows if r.get("train/loss")}
    return len(trained), int(rows[-1]["step"])


@pytest.mark.long
def test_every_debug_option_runs_to_a_clean_end(tmp_path: Path) -> None:
    """debug=default,fdr,limit,profiler through the real command, as one multirun."""
    sweep = tmp_path / "sweep"
    options = ["default", "fdr", "limit", "profiler"]
    done = run_cli(
        [
            "cskd-train",
            "-m",
            f"debug={','.join(options)}",
            f"hydra.sweep.dir={sweep}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {option: sweep / str(i) for i, option in enumerate(options)}
    for option, run in runs.items():
        summary = read_summary(run)
        assert summary["overrides"][0] == f"debug={option}"
        assert (run / "student.pt").is_file() and (run / "config.yaml").is_file(), option
        # This package's debug log lines, the composed config first.
        assert "[DEBUG] Config:" in (run / "train.log").read_text(), option

    assert epochs_and_last_step(runs["default"])[0] == 1
    # A whole test set (default, profiler): the summary's accuracy is the saved student's.
    for option in ("default", "profiler"):
        expected = student_pt_accuracy(runs[option] / "student.pt")
        assert read_summary(runs[option])["student"]["test_acc"] == pytest.approx(expected), option
    assert read_summary(runs["default"])["student"]["best_checkpoint"].startswith("checkpoints/")

    # fast_dev_run: one batch, no checkpoint and no metrics.csv; the log says what was tested.
    fdr = read_summary(runs["fdr"])
    assert fdr["student"]["best_checkpoint"] is None and fdr["student"]["best_epoch"] is None
    assert not (runs["fdr"] / "checkpoints").exists()
    assert "No best checkpoint was saved: testing the final weights" in (
        (runs["fdr"] / "train.log").read_text()
    )
    assert fdr["teacher"]["cached"] is False  # not the debug=default teacher

    # limit: 3 epochs of 5 training batches.
    assert epochs_and_last_step(runs["limit"]) == (3, 15)

    # profiler: the report of every stage in the run directory, naming the training step.
    assert "training_step" in (runs["profiler"] / "fit-profiler.txt").read_text()
    assert (runs["profiler"] / "test-profiler.txt").is_file()
    assert read_summary(runs["profiler"])["teacher"]["cached"] is True  # debug=default's


def test_overfit_trains_on_the_same_few_batches(tmp_path: Path) -> None:
    """debug=overfit, shortened to 4 student epochs: 3 batches an epoch, and the loss falls."""
    epochs = 4
    cfg = compose_train(
        [
            "debug=overfit",
            "pair.teacher.recipe.max_epochs=2",
            f"pair.student.recipe.max_epochs={epochs}",
        ],
        tmp_path,
    )
    train(cfg)
    run = tmp_path / "run"
    assert epochs_and_last_step(run) == (epochs, 3 * epochs)
    rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r.get("train/loss")]
    losses = [float(r["train/loss"]) for r in rows]
    assert losses[-1] < losses[0], losses
