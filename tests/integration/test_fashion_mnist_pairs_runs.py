"""A real ``cskd-train data=fashion_mnist_pairs pair=fashion_mnist_pairs`` on the real data (the
datamodule and its models: tests/unit/test_fashion_mnist_pairs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from app_helpers import logged, read_summary, run_cli
from helpers import needs_fmnist


@needs_fmnist
def test_cskd_train_runs_on_the_pairs(tmp_path: Path) -> None:
    result = run_cli(
        [
            "cskd-train",
            "data=fashion_mnist_pairs",
            "pair=fashion_mnist_pairs",
            "pair.teacher.recipe.max_epochs=1",
            "pair.student.recipe.max_epochs=1",
            "+trainer.limit_train_batches=6",
            "+trainer.limit_val_batches=2",
            "+trainer.limit_test_batches=2",
            "callbacks.progress_bar=null",
            f"paths.output_dir={tmp_path / 'run'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(tmp_path / "run")
    assert summary["method"] == "cskd_cswt"
    assert "fashion_mnist_pairs" in (tmp_path / "run" / "config.yaml").read_text()
    run = tmp_path / "run"
    assert summary["student"]["val_acc_best"] == pytest.approx(max(logged(run, "val/acc")))
    assert summary["teacher"]["test_acc"] == pytest.approx(logged(run / "teacher", "test/acc")[-1])
    state = torch.load(tmp_path / "run" / "student.pt", weights_only=True)["state_dict"]
    assert state["classifier.weight"].shape == (100, 32)
