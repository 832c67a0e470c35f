"""The debug group (debug=default, fdr, overfit, limit, profiler): each composes to what it
promises (the runs: tests/integration/test_debug_runs.py)."""

from __future__ import annotations

from pathlib import Path

from app_helpers import compose_train

from cskd_lightning.app.teacher_stage import teacher_cache_key


def test_debug_runs_on_the_cpu_whatever_the_trainer(tmp_path: Path) -> None:
    cfg = compose_train(["trainer=gpu", "logger=tensorboard", "debug=default"], tmp_path)
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision) == (
        "cpu",
        1,
        "32-true",
    )
    assert cfg.trainer.deterministic and cfg.trainer.detect_anomaly
    assert cfg.trainer.max_epochs == 1 and cfg.pair.teacher.recipe.max_epochs == 1
    # The command line still wins over the debug option.
    assert "tensorboard" in cfg.logger
    assert "tensorboard" not in compose_train(["debug=default"], tmp_path).logger


def test_debug_teachers_are_cached_apart(tmp_path: Path) -> None:
    """A teacher trained under fast_dev_run or overfit_batches is not one a normal (or another
    debug) run may reuse; the profiler does not change the teacher."""
    keys = {
        option: teacher_cache_key(compose_train([f"debug={option}"], tmp_path))
        for option in ("default", "fdr", "overfit", "limit", "profiler")
    }
    keys["none"] = teacher_cache_key(compose_train([], tmp_path))
    assert keys["profiler"] == keys["default"]
    del keys["profiler"]
    assert len(set(keys.values())) == len(keys), keys
