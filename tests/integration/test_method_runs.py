"""Every method beside CSKD trains through the real ``cskd-train`` (their losses against the
float64 references: tests/unit/test_methods.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from app_helpers import run_cli

NEW_METHODS = ["dkd", "dist", "kd_ls", "dkd_ls", "cskd_cswt_ls", "mlkd", "cskd_full"]


def test_every_new_method_trains_through_the_real_command(tmp_path: Path) -> None:
    """One multirun process trains each method for 3 steps; teachers are cached and shared."""
    sweep = tmp_path / "sweep"
    done = run_cli(
        [
            "cskd-train",
            "-m",
            f"distill={','.join(NEW_METHODS)}",
            "pair.teacher.recipe.max_epochs=1",
            "pair.student.recipe.max_epochs=1",
            "+trainer.limit_train_batches=3",
            "+trainer.limit_val_batches=1",
            "+trainer.limit_test_batches=1",
            "callbacks.progress_bar=null",
            f"hydra.sweep.dir={sweep}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=tmp_path,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    errors = [p.read_text()[-2000:] for p in sweep.glob("*/error.txt")]
    assert not errors, errors
    for job, name in enumerate(NEW_METHODS):
        summary = json.loads((sweep / str(job) / "summary.json").read_text())
        assert summary["method"] == name
        assert summary["student"]["test_acc"] is not None, name
    # The module fed DKD its progress: the first (0-based) epoch trains at 1/20.
    with open(sweep / str(NEW_METHODS.index("dkd")) / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/dkd_warmup")]
    assert rows and float(rows[-1]["train/dkd_warmup"]) == pytest.approx(0.05)
