"""Checks run before any training, so that a bad input fails in one clear line, early.

Each raises one of :data:`cskd_lightning.app.USER_ERRORS` (``ValueError``, ``PermissionError``,
...) with what is wrong, where (the config key) and how to fix it; ``cskd-train`` prints it as
``Error: <message>`` without a traceback. ``docs/errors.md`` lists them all.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from cskd_lightning.app import USER_ERRORS


# --------------------------------------------------------------------------- output dir
def output_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as a run directory (``None`` if it can), without creating it.

    Walks up to the nearest existing ancestor: it must be a writable directory.
    """
    path = Path(os.path.abspath(path))
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return f"none of its parent directories exist ({probe})"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    return None


def _dir_error(path: Path, problem: str, key: str) -> PermissionError:
    return PermissionError(
        f"Output directory {path} cannot be written: {problem}. Choose a writable location "
        f"with {key}=<dir> (or paths.log_dir=<dir>)."
    )


def check_output_dir(path: Path, key: str = "hydra.run.dir") -> None:
    """Create ``path`` if needed and prove it writable (a temporary file); else PermissionError."""
    problem = output_dir_problem(path)
    if problem is None:
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as err:
            problem = f"{type(err).__name__}: {err.strerror or err}"
    if problem is not None:
        raise _dir_error(path, problem, key)


class OutputDirCheck(HydraCallback):
    """Hydra callback: refuse an unwritable ``hydra.run.dir`` / ``hydra.sweep.dir`` before Hydra
    creates it (Hydra's own failure is a traceback)."""

    def _check(self, config: DictConfig, key: str) -> None:
        try:
            value = OmegaConf.select(config, key)
        except Exception:  # noqa: BLE001 - an unresolvable dir is Hydra's to report
            return
        if not value:
            return
        path = Path(str(value))
        problem = output_dir_problem(path)
        if problem is None:
            return
        err = _dir_error(path, problem, key)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise err
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(1)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")


# --------------------------------------------------------------------------- instantiate
@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """Turn Hydra's ``InstantiationException`` around a user error (unknown model, bad loss
    argument, ...) back into that error, naming the config key: no traceback for it."""
    try:
        yield
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if not isinstance(cause, USER_ERRORS):
            raise
        match = re.search(r"full_key:\s*(\S+)", str(err))
        where = f" (config: {match.group(1)})" if match else ""
        message = cause.args[0] if isinstance(cause, KeyError) and cause.args else str(cause)
        raise type(cause)(f"{message}{where}") from err


# --------------------------------------------------------------------------- class counts
def _declared_classes(model_cfg: DictConfig) -> int | None:
    value = model_cfg.get("num_classes") if isinstance(model_cfg, DictConfig) else None
    return int(value) if isinstance(value, int) else None


def check_class_counts(cfg: DictConfig, datamodule: Any, student: Any) -> None:
    """``data.num_classes``, the datamodule's, the teacher's and the student's must agree.

    The student is a built model (its real output size); the teacher's count is read from its
    config (``pair.teacher.model.num_classes``) so that nothing is trained before the check.
    """
    from cskd_lightning.module import infer_num_classes

    counts: dict[str, int | None] = {
        "data.num_classes": int(cfg.data.num_classes),
        f"the datamodule ({type(datamodule).__name__}).num_classes": getattr(
            datamodule, "num_classes", None
        )
        or None,
        f"the teacher (pair.teacher.model: {cfg.pair.teacher.model.get('name')})": (
            _declared_classes(cfg.pair.teacher.model)
        ),
        f"the student (pair.student.model: {cfg.pair.student.model.get('name')})": (
            infer_num_classes(student)
        ),
    }
    known = {k: v for k, v in counts.items() if v is not None}
    if len(set(known.values())) > 1:
        listed = ", ".join(f"{k} = {v}" for k, v in known.items())
        raise ValueError(
            f"Class counts disagree: {listed}. They must all be equal: build both models with "
            "num_classes=${data.num_classes} (the pairs' default) and set data.num_classes to "
            "the dataset's class count."
        )


# --------------------------------------------------------------------------- batch size
def _batch_level_error(loss: Any, where: str, cfg: DictConfig) -> ValueError:
    name = type(loss).__name__
    return ValueError(
        f"{where}, but {name} (distill={cfg.distill.get('name')}) has batch-level terms "
        "(batch_level=True): it compares predictions across the samples of a batch, and with "
        "one sample per batch those terms are constant and teach nothing. Use "
        "data.datamodule.batch_size=2 or more (the recipes use 64), or a per-sample method "
        "such as distill=kd."
    )


def check_batch_for_loss(cfg: DictConfig, loss: Any) -> None:
    """A batch-level loss needs a global batch of at least 2 samples (checked before training)."""
    if getattr(loss, "batch_level", False) and int(cfg.data.datamodule.batch_size) < 2:
        raise _batch_level_error(loss, "data.datamodule.batch_size=1", cfg)


def check_per_process_batch(cfg: DictConfig, loss: Any, world_size: int) -> None:
    """Without gathering (``gather=false``) each process's own batch must hold 2 samples."""
    batch = int(cfg.data.datamodule.batch_size)
    if (
        getattr(loss, "batch_level", False)
        and not getattr(loss, "gather", True)
        and world_size > 1
        and batch // world_size < 2
    ):
        raise _batch_level_error(
            loss,
            f"data.datamodule.batch_size={batch} over {world_size} processes is "
            f"{batch // world_size} sample per process and distill.loss.gather=false",
            cfg,
        )


def instantiate_model(model_cfg: DictConfig) -> Any:
    """``hydra.utils.instantiate`` for a model config (user errors unwrapped)."""
    with config_errors():
        return hydra.utils.instantiate(model_cfg)
