"""Helpers for the tests that run the Hydra application (compose, run, read outputs); also
imported, through tests/error_catalogue.py, by benchmarks/error_catalogue.py."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep
from omegaconf import DictConfig

if TYPE_CHECKING:
    import pytest

FAST = [
    "pair.teacher.recipe.max_epochs=1",
    "pair.student.recipe.max_epochs=3",
    "+trainer.limit_train_batches=8",
    "callbacks.progress_bar=null",
]
"""Overrides that keep a digits run to a few seconds."""


def compose_app(
    config_name: str, overrides: list[str] | None = None, return_hydra_config: bool = False
) -> DictConfig:
    """Compose one of the application's configs (``train``, ``eval``, ``export``, ...) with
    ``overrides``, as its command would (with the ``hydra`` node: ``return_hydra_config``)."""
    with initialize_config_module(config_module="cskd_lightning.conf", version_base="1.3"):
        return compose(
            config_name=config_name,
            overrides=list(overrides or []),
            return_hydra_config=return_hydra_config,
        )


def compose_train(
    overrides: list[str],
    tmp_path: Path | None = None,
    output_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> DictConfig:
    """Compose ``train.yaml`` as ``cskd-train`` would, with the outputs in ``output_dir`` and
    the teacher cache in ``cache_dir`` (``tmp_path/run`` and ``tmp_path/cache`` by default)."""
    if tmp_path is not None:
        output_dir = output_dir or tmp_path / "run"
        cache_dir = cache_dir or tmp_path / "cache"
    if output_dir is None or cache_dir is None:
        raise ValueError("compose_train needs tmp_path, or both output_dir and cache_dir")
    paths = [f"paths.output_dir={output_dir}", f"paths.cache_dir={cache_dir}"]
    return compose_app("train", [*paths, *overrides])


def user_error(cfg: DictConfig, capsys: pytest.CaptureFixture) -> str:
    """Run ``cfg`` as ``cskd-train`` does (``run_task``); expect exit status 1, no traceback and
    one ``Error:`` line on stderr; return that line."""
    import pytest  # here: benchmarks/error_catalogue.py imports this module without pytest

    from cskd_lightning.app.jobs import run_task
    from cskd_lightning.app.train import train

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_task(train, cfg)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def optuna_search(
    overrides: list[str] | None = None,
) -> tuple[DictConfig, dict[str, IntervalSweep]]:
    """The config composed with ``hparams_search=optuna`` (its ``hydra`` node too) and its search
    space, each parameter parsed as Hydra's sweeper parses it."""
    cfg = compose_app(
        "train", ["hparams_search=optuna", *(overrides or [])], return_hydra_config=True
    )
    parser = OverridesParser.create()
    space = {
        key: parser.parse_override(f"{key}={value}").value()
        for key, value in cfg.hydra.sweeper.params.items()
    }
    return cfg, space


CONSOLE_SCRIPTS = {
    "cskd-train": "cskd_lightning.app.train",
    "cskd-eval": "cskd_lightning.app.eval",
    "cskd-export": "cskd_lightning.app.export",
    "cskd-report": "cskd_lightning.app.report",
}
"""The console scripts of pyproject.toml, as the modules this Python runs them from (the
scripts on PATH may belong to another install)."""


def cli_command(args: list[str]) -> list[str]:
    """``["cskd-train", ...]`` as a command line of this Python."""
    return [sys.executable, "-m", CONSOLE_SCRIPTS[args[0]], *args[1:]]


def run_cli(
    args: list[str], cwd: Path, timeout: int = 300, **env: str
) -> subprocess.CompletedProcess:
    """Run a console script (``cskd-train ...``) through this Python, capturing its output."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    return subprocess.run(
        cli_command(args), cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
    )


def start_cli(args: list[str], cwd: Path, log: Path | None = None, **env: str) -> subprocess.Popen:
    """Start a console script without waiting for it (to kill it, or to run several at once);
    its output goes to ``log``, or nowhere."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    out = log.open("w") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            cli_command(args), cwd=cwd, env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    finally:
        if log is not None:
            out.close()  # the child holds its own copy of the file


def logged(run_dir: Path, key: str) -> list[float]:
    """The values of ``key`` in the run's ``metrics.csv``, in the order they were logged."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [float(row[key]) for row in csv.DictReader(handle) if row.get(key)]


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())
