"""What a run's numbers depend on beyond its config: the CPU threads it uses and the software
and device it ran on (in ``summary.json`` and the cached teacher). PyTorch's thread per core is
very wrong for processes sharing cores (OpenMP threads spin while they wait: several times
slower, docs/benchmarks/threads.md), so the count is chosen here unless given."""

from __future__ import annotations

import logging
import os
import platform
import sys
from dataclasses import dataclass
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cskd_lightning.errors import InputError

log = logging.getLogger("cskd_lightning")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_cores() -> float:
    """The cores other work keeps busy: the larger of the 1-minute load average (slow to rise)
    and the processes runnable now, this one left out (Linux's ``/proc/loadavg``: ``load1 load5
    load15 runnable/total last_pid``); elsewhere the load average alone."""
    try:
        with open("/proc/loadavg") as handle:
            fields = handle.read().split()
    except OSError:  # not Linux: the load average, where the platform has one
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(float(fields[0]), int(fields[3].split("/")[0]) - 1.0)


def sharing_processes(cfg: DictConfig) -> int:
    """The processes of this run or sweep on this machine: the trainer's DDP processes
    (``devices``) times the jobs a parallel launcher (``n_jobs``) runs at once."""
    devices = (cfg.get("trainer") or {}).get("devices", 1)
    devices = devices if isinstance(devices, int) and devices > 0 else 1
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs") if hydra_cfg is not None else None
    return devices * (min(n_jobs, usable_cores()) if isinstance(n_jobs, int) and n_jobs > 1 else 1)


@dataclass
class ThreadChoice:
    """The intra-op thread count of this process and how it was chosen."""

    threads: int
    source: str


_chosen: ThreadChoice | None = None


def given_threads(cfg: DictConfig) -> int | None:
    """``threads=N`` (``None``: not given), refused below 1."""
    given = cfg.get("threads")
    if given is not None and int(given) < 1:
        raise InputError(f"threads={given}: give a thread count of 1 or more (or null: auto).")
    return None if given is None else int(given)


def choose_threads(cfg: DictConfig) -> ThreadChoice:
    """Set and return this process's intra-op thread count: ``threads=N``, else
    ``OMP_NUM_THREADS``, else ``max(1, min(cores // sharing, cores - busy))`` (:func:`busy_cores`
    rounded; 0 with ``trainer.deterministic=true``, whose result must not depend on the load).
    Chosen once per process: a sequential sweep's jobs keep the first job's choice."""
    global _chosen
    given = given_threads(cfg)
    if given is not None:
        choice = ThreadChoice(given, f"threads={given}")
    elif os.environ.get("OMP_NUM_THREADS"):
        source = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
        choice = ThreadChoice(torch.get_num_threads(), source)
    elif _chosen is not None and _chosen.source.startswith("auto"):
        choice = _chosen
    else:
        cores, sharing = usable_cores(), sharing_processes(cfg)
        if (cfg.get("trainer") or {}).get("deterministic", False):
            busy, load = 0, "deterministic: the load not counted"
        else:
            busy = round(busy_cores())
            load = f"{busy} busy with other work"
        choice = ThreadChoice(
            max(1, min(cores // sharing, cores - busy)),
            f"auto: {cores} usable core(s), {sharing} process(es) of this run or sweep on "
            f"them, {load}",
        )
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    _chosen = choice
    return choice


def environment_record(cfg: DictConfig, threads: ThreadChoice | None = None) -> dict[str, Any]:
    """What a result depends on besides its config: the CPU threads (float sums split
    differently), the library versions, the device, deterministic algorithms or not."""
    import lightning

    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    device = _cpu_name()
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    if threads is None and _chosen is not None and _chosen.threads == torch.get_num_threads():
        threads = _chosen
    threads = threads or ThreadChoice(torch.get_num_threads(), "torch default")
    return {
        "threads": threads.threads,
        "threads_source": threads.source,
        "torch": str(torch.__version__),
        "lightning": str(lightning.__version__),
        "python": sys.version.split()[0],
        "accelerator": accelerator,
        "device": device,
        "deterministic": bool(cfg.trainer.get("deterministic", False)),
        "precision": str(cfg.trainer.get("precision", "32-true")),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def log_threads(choice: ThreadChoice) -> None:
    log.info("CPU threads: %d (%s; threads=N sets it)", choice.threads, choice.source)
