"""What a failed job leaves: its traceback in ``error.txt`` and, in a sweep, its exit record
``exit.json`` (``{"attempt", "status", "error"}``), written with a random attempt id when the
job starts (``running``) and again when it ends (``ok`` or ``failed``). The end-of-multirun
list and ``cskd-report`` read the records, never file times: clocks differ across machines."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from cskd_lightning.app.ddp import is_global_zero
from cskd_lightning.app.run_dir import ERROR, EXIT, PREVIOUS_ERROR
from cskd_lightning.files import write_text_atomically

log = logging.getLogger("cskd_lightning")

NOT_FINISHED = "did not finish (killed, or still running)"


def record_failure(output_dir: Path) -> None:
    """Write the traceback of the exception being handled to ``<output_dir>/error.txt``."""
    if is_global_zero():
        try:
            write_text_atomically(output_dir / ERROR, traceback.format_exc())
        except OSError:  # e.g. the unwritable output directory the error is about
            pass


def retire_old_failure(output_dir: Path) -> None:
    """A job that now succeeded keeps an earlier attempt's error as ``error.previous.txt``."""
    if is_global_zero() and (output_dir / ERROR).is_file():
        os.replace(output_dir / ERROR, output_dir / PREVIOUS_ERROR)


def write_exit_record(output_dir: Path, attempt: str, status: str, error: str = "") -> None:
    """Write the job's exit record (rank 0); ``status``: ``running``, ``ok`` or ``failed``."""
    if is_global_zero():
        record = json.dumps({"attempt": attempt, "status": status, "error": error})
        try:
            write_text_atomically(output_dir / EXIT, record + "\n", shared=True)
        except OSError:
            pass


def read_exit_record(output_dir: Path) -> dict[str, Any] | None:
    """The job's exit record (``None``: none, or unreadable)."""
    try:
        record = json.loads((output_dir / EXIT).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def failure(record: dict[str, Any]) -> str | None:
    """The last line of the failure an exit record tells of (:data:`NOT_FINISHED` for a job
    that never ended); ``None`` for a job that ended well."""
    if record.get("status") == "ok":
        return None
    lines = str(record.get("error") or "").strip().splitlines()
    return lines[-1] if lines else NOT_FINISHED


def failed_job_value() -> float:
    """What a failed sweep job returns: the worst value for the sweeper's direction (-inf to
    maximize, +inf to minimize; NaN for a grid). An optimising sweeper (Optuna) refuses NaN and
    would end the whole search."""
    try:
        direction = HydraConfig.get().sweeper.get("direction")
    except ValueError:
        direction = None
    if OmegaConf.is_list(direction):  # multi-objective: the first objective decides
        direction = direction[0] if len(direction) else None
    if direction is None:
        return float("nan")
    return float("inf") if str(direction).lower().endswith("minimize") else float("-inf")


class FailedJobsReport(HydraCallback):
    """After a multirun, list the jobs of this multirun that failed and exit with status 1.

    A record whose attempt was not there when the multirun started is this multirun's; a rerun
    into the same sweep directory does not report an earlier attempt's failure."""

    def __init__(self) -> None:
        self.before: dict[Path, str] = {}

    @staticmethod
    def _records(config: DictConfig) -> dict[Path, dict[str, Any]]:
        jobs = (p.parent for p in sorted(Path(config.hydra.sweep.dir).glob(f"*/{EXIT}")))
        return {job: r for job in jobs if (r := read_exit_record(job)) is not None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.before = {job: str(r.get("attempt")) for job, r in self._records(config).items()}

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = [
            (job, reason)
            for job, record in self._records(config).items()
            if self.before.get(job) != str(record.get("attempt"))
            and (reason := failure(record)) is not None
        ]
        if failed:
            log.error("%d job(s) of the multirun failed:", len(failed))
            for job, reason in failed:
                log.error("  %s: %s", job, reason)
            sys.exit(1)
