"""Running a job of the application: where the process stands (rank 0, multirun, DDP), its log
held back until its checks pass, and what a failure leaves: one ``Error:`` line for a mistake
in the input; for a bug its traceback in ``error.txt``; in a sweep an exit record ``exit.json``
(``{"attempt", "status", "error"}``, written when the job starts and ends), read by the
end-of-multirun list and ``cskd-report`` (never file times: clocks differ across machines)."""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import math
import os
import sys
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cskd_lightning.app.run_dir import ERROR, EXIT, PREVIOUS_ERROR
from cskd_lightning.errors import InputError
from cskd_lightning.files import write_text_atomically

log = logging.getLogger("cskd_lightning")

DDP_ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
NOT_FINISHED = "did not finish (killed, or still running)"


def exit_with_error(err: BaseException | str, status: int = 1) -> NoReturn:
    """Print ``Error: <err>`` on stderr and exit; ``HYDRA_FULL_ERROR=1`` raises it instead."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1" and isinstance(err, BaseException):
        raise err
    print(f"Error: {err}", file=sys.stderr)
    sys.exit(status)


def instantiate_group(cfg: Mapping | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a config group (callbacks, loggers)."""
    return [hydra.utils.instantiate(c) for c in (cfg or {}).values() if c and "_target_" in c]


def to_float(value: Any) -> float | None:
    """A metric (tensor or number) as a float; ``None`` for a missing or non-finite one."""
    if value is None:
        return None
    value = float(value)  # a one-element tensor too
    return value if math.isfinite(value) else None


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def is_global_zero() -> bool:
    """Rank 0 of a (possibly not yet started) distributed run: the process that writes files."""
    ranks = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")
    return all(int(os.environ.get(k, 0)) == 0 for k in ranks)


@contextlib.contextmanager
def one_job() -> Iterator[None]:
    """One job, in DDP too: Lightning re-runs the command line for the other local ranks, so it
    becomes this job's overrides and ``run.dir`` its directory (not the sweep's); after a
    multirun's job the process group is closed and the DDP variables restored."""
    env_before = {k: os.environ[k] for k in DDP_ENV_KEYS if k in os.environ}
    if HydraConfig.initialized() and "LOCAL_RANK" not in os.environ:
        hydra_cfg = HydraConfig.get()
        sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
        with open_dict(hydra_cfg), read_write(hydra_cfg):
            hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        if is_multirun():
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
            for key in DDP_ENV_KEYS:
                os.environ.pop(key, None)
            os.environ.update(env_before)


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
    for name in ("pytorch.utilities.rank_zero", "fabric.utilities.rank_zero"):
        logging.getLogger("lightning." + name).setLevel(logging.WARNING)
    for name in ("fabric.utilities.seed", "pytorch.accelerators.cuda"):
        logging.getLogger("lightning." + name).setLevel(logging.WARNING)


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

    def end(self, write: bool = True) -> None:
        """Give the file handlers back; ``write``: the held records go to them first. Ending
        again does nothing (logging adds and removes a handler once)."""
        self.root.removeHandler(self.memory)
        for handler in self.handlers:
            self.root.addHandler(handler)
        records, self.memory.buffer = self.memory.buffer, []
        for record in records if write else []:
            for handler in (h for h in self.handlers if record.levelno >= h.level):
                handler.handle(record)


_run_log: DeferredRunLog | None = None


def checks_passed() -> None:
    """A task's checks passed: it may write to its run directory (the held log goes out)."""
    if _run_log is not None:
        _run_log.end()


def exit_on_input_error(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """``task(cfg)``, an :class:`InputError` ending it with one ``Error:`` line (for the
    programs without run directories: ``cskd-eval``, ``cskd-export``)."""
    try:
        return task(cfg)
    except InputError as err:
        exit_with_error(err)


def run_task(task: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> float | None:
    """Run ``task(cfg)``; its ``optimized_metric`` for a sweeper. A single run's
    :class:`InputError` is one ``Error:`` line, nothing in the run directory changed; a bug's
    traceback goes to ``error.txt`` and stderr; in a multirun every failure is recorded and the
    job returns the worst value (the sweep goes on). ``HYDRA_FULL_ERROR=1`` raises."""
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
    if is_global_zero() and (output_dir / ERROR).is_file():  # an earlier attempt's error
        os.replace(output_dir / ERROR, output_dir / PREVIOUS_ERROR)
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
    _write(output_dir / ERROR, traceback.format_exc())
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


def _write(path: Path, text: str, shared: bool = False) -> None:
    """Rank 0 writes ``path``; failing to (e.g. the unwritable directory the error is about)
    is not the job's failure."""
    if is_global_zero():
        with contextlib.suppress(OSError):
            write_text_atomically(path, text, shared=shared)


def write_exit_record(output_dir: Path, attempt: str, status: str, error: str = "") -> None:
    """Write the job's exit record; ``status``: ``running``, ``ok`` or ``failed``."""
    record = json.dumps({"attempt": attempt, "status": status, "error": error})
    _write(output_dir / EXIT, record + "\n", shared=True)


def read_exit_record(output_dir: Path) -> dict[str, Any] | None:
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


def sweep_direction() -> Any:
    """The running sweep's ``hydra.sweeper.direction`` (``None``: none, or not in Hydra)."""
    try:
        return HydraConfig.get().sweeper.get("direction")
    except ValueError:  # not inside a Hydra app
        return None


def failed_job_value() -> float:
    """What a failed sweep job returns: the worst value for the sweeper's direction (-inf to
    maximize, +inf to minimize, the first objective's; NaN for a grid): Optuna refuses NaN."""
    direction = sweep_direction()
    if OmegaConf.is_list(direction):
        direction = direction[0] if len(direction) else None
    if direction is None:
        return float("nan")
    return float("inf") if str(direction).lower().endswith("minimize") else float("-inf")


class FailedJobsReport(HydraCallback):
    """After a multirun, list the jobs of this multirun that failed and exit with status 1 (a
    record whose attempt was there when the multirun started is an earlier attempt's)."""

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
