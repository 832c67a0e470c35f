"""What a run reports, through the real commands: the report's groups of a real sweep, which
split picked the best epoch, and a bug that keeps its traceback (only input mistakes are one
line)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from app_helpers import FAST, read_summary, run_cli

ONE_EPOCH = [*FAST, "pair.student.recipe.max_epochs=1"]


def results_rows(text: str) -> list[str]:
    """The rows of the report's results table."""
    section = text.split("## Results")[1].split("## Runs")[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


@pytest.mark.long
def test_report_groups_a_real_sweep_by_its_swept_values(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = run_cli(
        [
            "cskd-train",
            "-m",
            *ONE_EPOCH,
            "distill.loss.temperature=3.0,4.0",
            "seed=0,1",
            "teacher.seed=0",
            f"hydra.sweep.dir={sweep}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [read_summary(sweep / str(job)) for job in range(4)]
    assert {s["selection"] for s in summaries} == {"validation"}  # digits holds out 10 %

    made = run_cli(["cskd-report", str(sweep)], tmp_path)
    assert made.returncode == 0, made.stderr
    rows = results_rows((sweep / "report.md").read_text())
    # Two settings of the loss, never averaged together: one row each, two seeds each.
    assert len(rows) == 2, rows
    for temperature, row in zip(("3.0", "4.0"), rows, strict=True):
        assert row.startswith(f"| `cskd_cswt distill.loss.temperature={temperature}` | 2 (0, 1) |")
        assert "| validation |" in row

    # --group-by chooses: by method alone, the four runs are one group and the report says
    # that the settings were averaged and that seeds repeat.
    made = run_cli(
        ["cskd-report", str(sweep), "--group-by", "method", "--out", str(tmp_path / "by_method")],
        tmp_path,
    )
    assert made.returncode == 0, made.stderr
    text = (tmp_path / "by_method" / "report.md").read_text()
    assert [r.split(" | ")[:2] for r in results_rows(text)] == [["| `cskd_cswt`", "4 (0, 0, 1, 1)"]]
    assert "Grouped by `method` (`--group-by`)" in text and "**Repeated seeds**" in text


@pytest.mark.long
def test_selection_is_recorded_and_an_optimising_sweep_refuses_the_test_set(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    done = run_cli(
        [
            "cskd-train",
            *ONE_EPOCH,
            "data.datamodule.val_split=0",
            f"hydra.run.dir={run}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_summary(run)["selection"] == "test"

    sweep = tmp_path / "hpo"
    args = [
        "cskd-train",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=1",
        *ONE_EPOCH,
        "data.datamodule.val_split=0",
        f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    refused = run_cli(args, cwd=tmp_path)
    assert refused.returncode == 1, refused.stderr[-3000:]
    # Refused once, before any trial (the sweep-wide check): no trial directory at all.
    (error,) = [line for line in refused.stderr.splitlines() if line.startswith("Error: ")]
    assert "the validation metrics are computed on the TEST set" in error
    assert "data.datamodule.val_split=5000" in error and "tune_on_test_set=true" in error
    assert not sweep.exists()

    allowed = run_cli(
        [*args, "tune_on_test_set=true", f"hydra.sweep.dir={tmp_path / 'hpo2'}"], cwd=tmp_path
    )
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert read_summary(tmp_path / "hpo2" / "0")["selection"] == "test"


BUGGY = textwrap.dedent(
    """
    def make(**kwargs):
        return {}["a key that is not there"]  # a bug, not an input mistake
    """
)


def test_a_bug_keeps_its_traceback(tmp_path: Path) -> None:
    (tmp_path / "buggy_models.py").write_text(BUGGY)
    run = tmp_path / "run"
    done = run_cli(
        [
            "cskd-train",
            *ONE_EPOCH,
            "pair.student.model._target_=buggy_models.make",
            f"hydra.run.dir={run}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=tmp_path,
        PYTHONPATH=str(tmp_path),
    )
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "KeyError" in done.stderr and "a key that is not there" in done.stderr
    assert not any(line.startswith("Error: ") for line in done.stderr.splitlines())
    recorded = (run / "error.txt").read_text()
    assert recorded.startswith("Traceback") and "buggy_models.py" in recorded
