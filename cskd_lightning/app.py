"""Plumbing shared by the command-line entry points: instantiation, quiet logs, run records."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger("cskd_lightning")

USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, PermissionError, KeyError)
"""Errors caused by the user's input: reported in one clear line, without a traceback."""


def quiet_logs() -> None:
    """Silence the generic notices that bury a run's own output."""
    for pattern in (
        r".*does not have many workers.*",
        r".*isinstance\(treespec, LeafSpec\).*",
        r".*module\(s\) in eval mode.*",
        r".*The number of training batches \(\d+\) is smaller than the logging interval.*",
        r".*Checkpoint directory .* exists and is not empty.*",
        r".*`weights_only` was not set.*",
        r".*Experiment logs directory .* exists and is not empty.*",
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


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


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


def run_task(task: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> float | None:
    """Run ``task(cfg)`` and return its ``optimized_metric`` for a sweeper.

    A failure is recorded in ``<output_dir>/error.txt``. Inside a multirun the error is logged
    and the sweep goes on (the job's metric is NaN); in a single run a user error ends the
    program with one clear message (set ``HYDRA_FULL_ERROR=1`` for the traceback).
    """
    quiet_logs()
    env_before = {k: os.environ[k] for k in DDP_ENV_KEYS if k in os.environ}
    relaunch_this_job_in_ddp_children()
    try:
        metrics = task(cfg)
    except Exception as err:  # noqa: BLE001 - every failure is recorded, then reported
        output_dir = Path(cfg.paths.output_dir)
        if is_global_zero():
            try:
                output_dir.mkdir(parents=True, exist_ok=True)
                (output_dir / "error.txt").write_text(traceback.format_exc())
            except OSError:  # e.g. the unwritable output directory the error is about
                pass
        if is_multirun():
            log.error(
                "Job failed: %s: %s (traceback in %s)",
                type(err).__name__,
                err,
                output_dir / "error.txt",
            )
            return failed_job_value()
        if isinstance(err, USER_ERRORS) and os.environ.get("HYDRA_FULL_ERROR") != "1":
            print(f"Error: {err}", file=sys.stderr)
            sys.exit(1)
        raise
    finally:
        if is_multirun():
            end_distributed_job(env_before)
    metric = cfg.get("optimized_metric")
    return to_float(metrics.get(metric)) if metric else None


class FailedJobsReport(HydraCallback):
    """After a multirun, list the jobs that failed and where their errors are."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = sorted(sweep_dir.glob("*/error.txt"))
        if failed:
            log.error("%d job(s) of the multirun failed:", len(failed))
            for path in failed:
                lines = path.read_text().strip().splitlines()
                log.error("  %s: %s", path.parent, lines[-1] if lines else "")
