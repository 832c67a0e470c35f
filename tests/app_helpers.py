"""Helpers for the tests that run the Hydra application (compose, run, read outputs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import DictConfig

FAST = [
    "pair.teacher.recipe.max_epochs=1",
    "pair.student.recipe.max_epochs=3",
    "+trainer.limit_train_batches=8",
    "callbacks.progress_bar=null",
]
"""Overrides that keep a digits run to a few seconds."""


def compose_train(overrides: list[str], tmp_path: Path) -> DictConfig:
    """Compose ``train.yaml`` as ``cskd-train`` would, with outputs and cache under tmp_path."""
    with initialize_config_module(config_module="cskd_lightning.conf", version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                f"paths.output_dir={tmp_path / 'run'}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                *overrides,
            ],
        )


def run_cli(
    args: list[str], cwd: Path, timeout: int = 300, **env: str
) -> subprocess.CompletedProcess:
    """Run a console script (``cskd-train ...``) through this Python, capturing its output."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    module = {
        "cskd-train": "cskd_lightning.app.train",
        "cskd-eval": "cskd_lightning.app.eval",
        "cskd-export": "cskd_lightning.app.export",
    }[args[0]]
    return subprocess.run(
        [sys.executable, "-m", module, *args[1:]],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())
