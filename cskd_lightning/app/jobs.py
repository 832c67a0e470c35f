"""Running a job of the application: instantiation helpers, quiet logs, what a failure leaves
behind (one `Error:` line, or a traceback in `error.txt`), failed sweep jobs, the DDP relaunch."""

from __future__ import annotations

import json
import logging
import logging.handlers
import math
import os
import sys
import traceback
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cskd_lightning.errors import InputError

log = logging.getLogger("cskd_lightning")

ERROR_FILE = "error.txt"
PREVIOUS_ERROR_FILE = "error.previous.txt"
EXIT_FILE = "exit.json"
"""A sweep job's exit record: ``{"attempt", "status", "error"}`` (see :func:`write_exit_record`)."""


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
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)


def instantiate_group(cfg: Mapping | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a config group (callbacks, loggers)."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c and "_target_" in c]


def optional_instantiate(cfg: Any) -> Any:
    """``instantiate(cfg)``, or ``None`` for a missing or null config."""
    return hydra.utils.instantiate(cfg) if cfg else None


def is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not inside a Hydra app
        return False


def is_global_zero() -> bool:
    """Rank 0 of a (possibly not yet started) distributed run: the process that writes files."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        if int(os.environ.get(key, 0)) != 0:
            return False
    return True


def to_float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value.item() if hasattr(value, "item") else value)
    return value if math.isfinite(value) else None


DDP_ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def relaunch_this_job_in_ddp_children() -> None:
    """Make Lightning's DDP launcher re-run exactly this job, in this run directory.

    Lightning starts the other local DDP processes by re-running the command line with
    ``hydra.run.dir=<HydraConfig run.dir>``. Inside a multirun that command is the whole sweep
    and that directory a fresh one, so every rank would write elsewhere. Here the command line
    becomes this job's overrides alone and ``run.dir`` this job's output directory: one run
    directory per run, whatever the launch mode.
    """
    if not HydraConfig.initialized() or "LOCAL_RANK" in os.environ:
        return
    hydra_cfg = HydraConfig.get()
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with open_dict(hydra_cfg), read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


def end_distributed_job(env_before: Mapping[str, str]) -> None:
    """Close the process group and the DDP variables a job's launcher set in this process.

    A sweep's next job must launch its own processes rather than wait for the last job's.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key in DDP_ENV_KEYS:
        if key in env_before:
            os.environ[key] = env_before[key]
        else:
            os.environ.pop(key, None)


def failed_job_value() -> float:
    """What a failed sweep job returns: the worst value for the sweeper's direction.

    An optimising sweeper (Optuna) refuses NaN and would end the whole search; -inf (maximize)
    or +inf (minimize) records the trial as the worst one and lets the search go on.
    """
    try:
        direction = HydraConfig.get().sweeper.get("direction")
    except ValueError:
        direction = None
    if OmegaConf.is_list(direction):  # multi-objective: the first objective decides
        direction = direction[0] if len(direction) else None
    if direction is None:
        return float("nan")
    return float("inf") if str(direction).lower().endswith("minimize") else float("-inf")


class DeferredRunLog:
    """Hold what would go to the job's log file (Hydra's ``<run dir>/<job>.log``) in memory
    until the run's checks have passed, so a command that fails them leaves the file as it
    was. :meth:`release` writes the held records and lets the file handlers log directly
    again; :meth:`discard` drops them."""

    def __init__(self) -> None:
        self.root = logging.getLogger()
        self.handlers = [h for h in self.root.handlers if isinstance(h, logging.FileHandler)]
        self.memory = logging.handlers.MemoryHandler(capacity=1_000_000, flushLevel=100)
        for handler in self.handlers:
            self.root.removeHandler(handler)
        self.root.addHandler(self.memory)
        self.active = True

    def _restore(self) -> list[logging.LogRecord]:
        if not self.active:
            return []
        self.active = False
        self.root.removeHandler(self.memory)
        for handler in self.handlers:
            self.root.addHandler(handler)
        records, self.memory.buffer = self.memory.buffer, []
        return records

    def release(self) -> None:
        for record in self._restore():
            for handler in self.handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)

    def discard(self) -> None:
        self._restore()


_run_log: DeferredRunLog | None = None


def checks_passed() -> None:
    """Called by a task once its checks pass: from now on it may write to its run directory
    (the held log records go to the log file)."""
    if _run_log is not None:
        _run_log.release()


def _record_failure(output_dir: Path) -> None:
    """Write the traceback of the exception being handled to ``<output_dir>/error.txt``."""
    if not is_global_zero():
        return
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / ERROR_FILE).write_text(traceback.format_exc())
    except OSError:  # e.g. the unwritable output directory the error is about
        pass


def _retire_old_failure(output_dir: Path) -> None:
    """A job that now succeeded keeps an earlier attempt's error as ``error.previous.txt``."""
    old = output_dir / ERROR_FILE
    if is_global_zero() and old.is_file():
        os.replace(old, output_dir / PREVIOUS_ERROR_FILE)


def write_exit_record(output_dir: Path, attempt: str, status: str, error: str = "") -> None:
    """Write the job's exit record ``<output_dir>/exit.json`` (rank 0; atomically).

    ``attempt``: a random id of this start of the job; ``status``: ``running`` (written when
    the job starts, so a job killed before its end is still seen), ``ok`` or ``failed``;
    ``error``: the failure's one line. The failed-jobs report (:class:`FailedJobsReport`) and
    ``cskd-report`` read these records, never file times (clocks differ across machines).
    """
    if not is_global_zero():
        return
    record = {"attempt": attempt, "status": status, "error": error}
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        tmp = output_dir / f".{EXIT_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, output_dir / EXIT_FILE)
    except OSError:  # e.g. the unwritable output directory the error is about
        pass


def read_exit_record(output_dir: Path) -> dict[str, Any] | None:
    """The job's exit record (``None``: none, or unreadable)."""
    try:
        record = json.loads((output_dir / EXIT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def exit_on_input_error(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """``task(cfg)``; an :class:`~cskd_lightning.errors.InputError` ends the program with one
    ``Error: <message>`` line on stderr and exit status 1 (``HYDRA_FULL_ERROR=1``: the
    traceback). For the programs without run directories (``cskd-eval``, ``cskd-export``)."""
    try:
        return task(cfg)
    except InputError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(1)


def run_task(task: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> float | None:
    """Run ``task(cfg)`` and return its ``optimized_metric`` for a sweeper.

    An :class:`~cskd_lightning.errors.InputError` (a mistake in the input) in a single run ends
    the program with one line on stderr, ``Error: <message>``, exit status 1, and nothing in
    the run directory changed (set ``HYDRA_FULL_ERROR=1`` for the traceback). Any other
    exception is a bug: its traceback goes to ``<output_dir>/error.txt`` and stderr. In a
    multirun every failure is recorded in the job's ``error.txt`` and the sweep goes on (the
    job returns the worst value for the sweeper); the multirun then exits with status 1,
    listing the failed jobs (:class:`FailedJobsReport`).
    """
    global _run_log
    quiet_logs()
    env_before = {k: os.environ[k] for k in DDP_ENV_KEYS if k in os.environ}
    relaunch_this_job_in_ddp_children()
    output_dir = Path(cfg.paths.output_dir)
    _run_log = DeferredRunLog()
    attempt = uuid.uuid4().hex
    if is_multirun():
        write_exit_record(output_dir, attempt, "running")
    try:
        metrics = task(cfg)
    except Exception as err:  # noqa: BLE001 - every failure is recorded, then reported
        input_error = isinstance(err, InputError)
        if input_error and not is_multirun():
            _run_log.discard()
            if is_global_zero():
                from cskd_lightning.app.checks import remove_created_dirs

                remove_created_dirs()
        else:
            _run_log.release()
        if is_multirun():
            _record_failure(output_dir)
            write_exit_record(output_dir, attempt, "failed", f"{type(err).__name__}: {err}")
            log.error(
                "Job failed: %s: %s (traceback in %s)",
                type(err).__name__,
                err,
                output_dir / ERROR_FILE,
            )
            return failed_job_value()
        if not input_error:
            _record_failure(output_dir)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if input_error:
            print(f"Error: {err}", file=sys.stderr)
        else:  # a bug: the whole traceback (Hydra would print only its last line)
            traceback.print_exc()
            print(f"(traceback also in {output_dir / ERROR_FILE})", file=sys.stderr)
        sys.exit(1)
    finally:
        if _run_log is not None:
            _run_log.release()
            _run_log = None
        if is_multirun():
            end_distributed_job(env_before)
    _retire_old_failure(output_dir)
    if is_multirun():
        write_exit_record(output_dir, attempt, "ok")
    metric = cfg.get("optimized_metric")
    return to_float(metrics.get(metric)) if metric else None


class FailedJobsReport(HydraCallback):
    """After a multirun, list the jobs of this multirun that failed and exit with status 1.

    It decides from what the jobs wrote, never from file times: every job writes its exit
    record (``exit.json``, :func:`write_exit_record`) with a random attempt id when it starts
    and again when it ends. A record whose attempt was not there when the multirun started
    belongs to this multirun; its status ``failed`` (or ``running``: the job died before its
    end) counts. A rerun into the same sweep directory therefore does not report an earlier
    attempt's failure, whichever machine's clock wrote what.
    """

    def __init__(self) -> None:
        self.before: dict[Path, str] = {}

    @staticmethod
    def _records(sweep_dir: Path) -> dict[Path, dict[str, Any]]:
        records = {}
        for path in sorted(sweep_dir.glob(f"*/{EXIT_FILE}")):
            record = read_exit_record(path.parent)
            if record is not None:
                records[path.parent] = record
        return records

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        self.before = {job: str(r.get("attempt")) for job, r in self._records(sweep_dir).items()}

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = [
            (job, record)
            for job, record in self._records(sweep_dir).items()
            if self.before.get(job) != str(record.get("attempt")) and record.get("status") != "ok"
        ]
        if not failed:
            return
        log.error("%d job(s) of the multirun failed:", len(failed))
        for job, record in failed:
            reason = record.get("error") or "did not finish (killed, or still running)"
            lines = str(reason).strip().splitlines()
            log.error("  %s: %s", job, lines[-1] if lines else "")
        sys.exit(1)
