"""The sweep-wide check through the real ``cskd-train -m``: a bad value in any job, or an Optuna
search that would tune on the test set, ends the sweep in one line before anything trains."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_helpers import FAST, run_cli


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def test_a_bad_value_in_the_second_job_fails_the_sweep_before_the_first_trains(
    tmp_path: Path,
) -> None:
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    done = run_cli(
        [
            "cskd-train",
            "-m",
            "distill.loss.temperature=4,-1",
            *FAST,
            f"hydra.sweep.dir={sweep}",
            f"paths.cache_dir={cache}",
        ],
        tmp_path,
        OMP_NUM_THREADS="1",
    )
    assert done.returncode == 1
    line = _one_error_line(done.stderr)
    assert line.startswith("Error: job 1 (distill.loss.temperature=-1): temperature must be")
    assert line.endswith("Nothing was trained.")
    # Nothing trained, nothing written: no sweep directory, no teacher in the cache.
    assert not sweep.exists() and not cache.exists()
    assert "Epoch" not in done.stdout + done.stderr


def test_an_optuna_search_on_the_test_set_is_refused_once_before_any_trial(
    tmp_path: Path,
) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra")
    sweep = tmp_path / "sweep"
    done = run_cli(
        [
            "cskd-train",
            "-m",
            "hparams_search=optuna",
            "data.datamodule.val_split=0",
            "hydra.sweeper.n_trials=3",
            *FAST,
            f"hydra.sweep.dir={sweep}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        tmp_path,
        OMP_NUM_THREADS="1",
    )
    assert done.returncode == 1
    line = _one_error_line(done.stderr)
    assert "every job of this sweep" in line and "tune_on_test_set=true" in line
    output = done.stdout + done.stderr
    assert output.count("would tune on it") == 1
    assert "Best value" not in output and not sweep.exists()
