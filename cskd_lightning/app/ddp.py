"""Where this process stands: rank 0 or not, in a multirun or not; and the DDP relaunch that
keeps every rank of a sweep's job in that job's run directory."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict, read_write

DDP_ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not inside a Hydra app
        return False


def is_global_zero() -> bool:
    """Rank 0 of a (possibly not yet started) distributed run: the process that writes files."""
    return all(
        int(os.environ.get(k, 0)) == 0 for k in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")
    )


def relaunch_this_job_in_ddp_children() -> None:
    """Make Lightning's DDP launcher re-run exactly this job, in this run directory.

    Lightning starts the other local ranks by re-running the command line with
    ``hydra.run.dir=<HydraConfig run.dir>``; in a multirun that is the whole sweep and a fresh
    directory. The command line becomes this job's overrides and ``run.dir`` its directory."""
    if not HydraConfig.initialized() or "LOCAL_RANK" in os.environ:
        return
    hydra_cfg = HydraConfig.get()
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with open_dict(hydra_cfg), read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


def end_distributed_job(env_before: Mapping[str, str]) -> None:
    """Close the process group and restore the DDP variables a job's launcher set, so that a
    sweep's next job launches its own processes rather than wait for the last job's."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key in DDP_ENV_KEYS:
        if key in env_before:
            os.environ[key] = env_before[key]
        else:
            os.environ.pop(key, None)
