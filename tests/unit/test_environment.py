"""How cskd-train chooses its CPU thread count (cskd_lightning.app.environment)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from cskd_lightning.app import environment
from cskd_lightning.errors import InputError


@pytest.fixture
def machine(monkeypatch):
    """A 4-core machine whose load the test sets; torch's thread count restored afterwards."""
    before = torch.get_num_threads()
    load = {"busy": 0.0}
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(environment, "usable_cores", lambda: 4)
    monkeypatch.setattr(environment, "busy_cores", lambda: load["busy"])
    monkeypatch.setattr(environment, "_chosen", None)
    yield load
    torch.set_num_threads(before)


def choose(**trainer):
    threads = trainer.pop("threads", None)
    cfg = OmegaConf.create({"threads": threads, "trainer": {"devices": 1, **trainer}})
    environment._chosen = None  # every call here is a new process
    return environment.choose_threads(cfg)


def test_idle_machine_one_process_takes_every_core(machine) -> None:
    assert choose().threads == 4
    assert torch.get_num_threads() == 4


def test_busy_cores_and_ddp_processes_take_threads_away(machine) -> None:
    machine["busy"] = 2.6  # rounded: 3 cores busy with other work
    assert choose().threads == 1
    machine["busy"] = 0.0
    assert choose(devices=2).threads == 2  # two processes of this run share the 4 cores


def test_a_deterministic_run_does_not_depend_on_the_load(machine) -> None:
    """trainer.deterministic=true: the count is a function of the machine and the config, so
    a resume (or a second run) on a loaded machine uses the threads of the first."""
    machine["busy"] = 3.0
    choice = choose(deterministic=True)
    assert choice.threads == 4 and "load not counted" in choice.source


def test_threads_given_or_omp_num_threads_win(machine, monkeypatch) -> None:
    machine["busy"] = 3.0
    assert choose(threads=3).threads == 3
    with pytest.raises(InputError, match="threads=0"):
        choose(threads=0)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert choose().source == "OMP_NUM_THREADS=2"
