"""Running a job of the application: its log held back until its checks pass, and what a
failure does (one ``Error:`` line for a mistake in the input, a traceback in ``error.txt`` for a
bug; in a multirun the sweep goes on, see :mod:`cskd_lightning.app.failed_jobs`)."""

from __future__ import annotations

import logging
import logging.handlers
import math
import os
import sys
import traceback
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cskd_lightning.app.ddp import is_global_zero, is_multirun, one_job
from cskd_lightning.app.exit import exit_with_error
from cskd_lightning.app.failed_jobs import (
    failed_job_value,
    record_failure,
    retire_old_failure,
    write_exit_record,
)
from cskd_lightning.app.run_dir import ERROR
from cskd_lightning.errors import InputError

log = logging.getLogger("cskd_lightning")


def quiet_logs() -> None:
    """Silence the generic notices that bury a run's own output."""
    for pattern in (
        r".*does not have many workers.*",
        r".*isinstance\(treespec, LeafSpec\).*",
        r".*The number of training batches \(\d+\) is smaller than the logging interval.*",
        r".*Checkpoint directory .* exists and is not empty.*",
        r".*`weights_only` was not set.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.fabric.utilities.seed",
        "lightning.pytorch.accelerators.cuda",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def to_float(value: Any) -> float | None:
    """A metric (tensor or number) as a float; ``None`` for a missing or non-finite one."""
    if value is None:
        return None
    value = float(value.item() if hasattr(value, "item") else value)
    return value if math.isfinite(value) else None


class DeferredRunLog:
    """Hold what would go to the job's log file (Hydra's ``<run dir>/<job>.log``) in memory
    until the run's checks pass, so a command that fails them leaves the file as it was."""

    def __init__(self) -> None:
        self.root = logging.getLogger()
        self.handlers = [h for h in self.root.handlers if isinstance(h, logging.FileHandler)]
        self.memory = logging.handlers.MemoryHandler(capacity=1_000_000, flushLevel=100)
        for handler in self.handlers:
            self.root.removeHandler(handler)
        self.root.addHandler(self.memory)
        self.active = True

    def end(self, write: bool = True) -> None:
        """Give the file handlers back; ``write``: the held records go to them first."""
        if not self.active:
            return
        self.active = False
        self.root.removeHandler(self.memory)
        for handler in self.handlers:
            self.root.addHandler(handler)
        records, self.memory.buffer = self.memory.buffer, []
        for record in records if write else []:
            for handler in self.handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)


_run_log: DeferredRunLog | None = None


def checks_passed() -> None:
    """Called by a task once its checks pass: from now on it may write to its run directory
    (the held log records go to the log file)."""
    if _run_log is not None:
        _run_log.end()


def exit_on_input_error(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """``task(cfg)``; an :class:`~cskd_lightning.errors.InputError` ends the program with one
    ``Error:`` line. For the programs without run directories (``cskd-eval``, ``cskd-export``)."""
    try:
        return task(cfg)
    except InputError as err:
        exit_with_error(err)


def run_task(task: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> float | None:
    """Run ``task(cfg)`` and return its ``optimized_metric`` for a sweeper.

    In a single run an :class:`~cskd_lightning.errors.InputError` ends the program with one
    ``Error:`` line, exit status 1 and nothing in the run directory changed; any other
    exception is a bug: its traceback goes to ``error.txt`` and stderr. In a multirun every
    failure is recorded (``error.txt``, ``exit.json``), the job returns the worst value for the
    sweeper and the sweep goes on (:class:`~cskd_lightning.app.failed_jobs.FailedJobsReport`
    then exits 1). ``HYDRA_FULL_ERROR=1``: the exception is raised."""
    global _run_log
    quiet_logs()
    output_dir, multirun, attempt = Path(cfg.paths.output_dir), is_multirun(), uuid.uuid4().hex
    with one_job():
        _run_log = DeferredRunLog()
        if multirun:
            write_exit_record(output_dir, attempt, "running")
        try:
            metrics = task(cfg)
        except Exception as err:  # noqa: BLE001 - every failure is recorded, then reported
            return _failed(err, output_dir, multirun, attempt)
        finally:
            _run_log.end()
            _run_log = None
    retire_old_failure(output_dir)
    if multirun:
        write_exit_record(output_dir, attempt, "ok")
    metric = cfg.get("optimized_metric")
    return to_float(metrics.get(metric)) if metric else None


def _failed(err: Exception, output_dir: Path, multirun: bool, attempt: str) -> float:
    """Handle the failure ``err`` of :func:`run_task`'s task (called while handling it)."""
    if isinstance(err, InputError) and not multirun:
        _run_log.end(write=False)
        if is_global_zero():
            from cskd_lightning.app.checks import remove_created_dirs

            remove_created_dirs()
        exit_with_error(err)
    _run_log.end()
    record_failure(output_dir)
    if multirun:
        write_exit_record(output_dir, attempt, "failed", f"{type(err).__name__}: {err}")
        name, where = type(err).__name__, output_dir / ERROR
        log.error("Job failed: %s: %s (traceback in %s)", name, err, where)
        return failed_job_value()
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    traceback.print_exc()  # a bug: the whole traceback (Hydra would print only its last line)
    print(f"(traceback also in {output_dir / ERROR})", file=sys.stderr)
    sys.exit(1)
