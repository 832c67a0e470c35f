"""Where this process stands (rank 0 or not, in a multirun or not), and one job of a sweep in
DDP: every rank in that job's run directory, the next job launching its own processes."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

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
    ranks = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")
    return all(int(os.environ.get(k, 0)) == 0 for k in ranks)


@contextmanager
def one_job() -> Iterator[None]:
    """Run one job of the application, in DDP too.

    Lightning starts the other local ranks by re-running the command line with
    ``hydra.run.dir=<HydraConfig run.dir>``; in a multirun that is the whole sweep and a fresh
    directory, so the command line becomes this job's overrides and ``run.dir`` its directory
    (:func:`relaunch_this_job_in_ddp_children`). After a multirun's job the process group is
    closed and the DDP variables its launcher set are restored, so that the next job launches
    its own processes rather than wait for the last job's."""
    env_before = {k: os.environ[k] for k in DDP_ENV_KEYS if k in os.environ}
    relaunch_this_job_in_ddp_children()
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


def relaunch_this_job_in_ddp_children() -> None:
    if not HydraConfig.initialized() or "LOCAL_RANK" in os.environ:
        return
    hydra_cfg = HydraConfig.get()
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with open_dict(hydra_cfg), read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
