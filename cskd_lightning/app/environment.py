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
from omegaconf import DictConfig

from cskd_lightning.errors import InputError

log = logging.getLogger("cskd_lightning")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def busy_cores() -> float:
    """The cores other work keeps busy: the larger of the 1-minute load average (slow to rise)
    and the processes runnable now (``/proc/loadavg``, this one left out)."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return 0.0
    try:
        with open("/proc/loadavg") as handle:
            running = int(handle.read().split()[3].split("/")[0]) - 1
    except (OSError, ValueError, IndexError):
        running = 0
    return max(load, float(running))


def sharing_processes(cfg: DictConfig) -> int:
    """The processes of this run or sweep on this machine: the trainer's DDP processes
    (``devices``) times the jobs a parallel launcher (``n_jobs``) runs at once."""
    devices = (cfg.get("trainer") or {}).get("devices", 1)
    devices = devices if isinstance(devices, int) and devices > 0 else 1
    launcher = HydraConfig.get().get("launcher") or {} if HydraConfig.initialized() else {}
    n_jobs = launcher.get("n_jobs") if hasattr(launcher, "get") else None
    return devices * (min(n_jobs, usable_cores()) if isinstance(n_jobs, int) and n_jobs > 1 else 1)


@dataclass
class ThreadChoice:
    """The intra-op thread count of this process and how it was chosen."""

    threads: int
    source: str

    def as_record(self) -> dict[str, Any]:
        return {"threads": self.threads, "threads_source": self.source}


_chosen: ThreadChoice | None = None


def choose_threads(cfg: DictConfig) -> ThreadChoice:
    """Set and return this process's intra-op thread count: ``threads=N``, else
    ``OMP_NUM_THREADS``, else ``max(1, min(cores // sharing, cores - busy))`` (:func:`busy_cores`
    rounded; 0 with ``trainer.deterministic=true``, whose result must not depend on the load).
    Chosen once per process: a sequential sweep's jobs keep the first job's choice."""
    global _chosen
    given = cfg.get("threads")
    if given is not None:
        if int(given) < 1:
            raise InputError(f"threads={given}: give a thread count of 1 or more (or null: auto).")
        choice = ThreadChoice(int(given), "threads=" + str(int(given)))
    elif os.environ.get("OMP_NUM_THREADS"):
        source = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
        choice = ThreadChoice(torch.get_num_threads(), source)
    elif _chosen is not None and _chosen.source.startswith("auto"):
        choice = _chosen
    else:
        cores = usable_cores()
        sharing = sharing_processes(cfg)
        deterministic = bool((cfg.get("trainer") or {}).get("deterministic", False))
        busy = 0 if deterministic else round(busy_cores())
        load = (
            "deterministic: the load not counted"
            if deterministic
            else f"{busy} busy with other work"
        )
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

    trainer = cfg.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "cpu"))
    device = _cpu_name()
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    if threads is None and _chosen is not None and _chosen.threads == torch.get_num_threads():
        threads = _chosen
    return {
        **(threads or ThreadChoice(torch.get_num_threads(), "torch default")).as_record(),
        "torch": str(torch.__version__),
        "lightning": str(lightning.__version__),
        "python": sys.version.split()[0],
        "accelerator": accelerator,
        "device": device,
        "deterministic": bool(trainer.get("deterministic", False)),
        "precision": str(trainer.get("precision", "32-true")),
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
