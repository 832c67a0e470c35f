"""Cluster sweeps, the quick checks: the failed-jobs report reads exit records (never file
times), the cache-entry lock lets one holder in at a time, and a SLURM restart resumes."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from app_helpers import compose_train
from omegaconf import OmegaConf

from cskd_lightning import locks
from cskd_lightning.app.jobs import FailedJobsReport, write_exit_record
from cskd_lightning.app.report import find_runs
from cskd_lightning.app.resume import resume_if_requeued
from cskd_lightning.app.sweep import SweepPlan, sweep_jobs
from cskd_lightning.app.teacher_stage import build_teacher


def _sweep_config(sweep: Path):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})


def test_failed_jobs_report_reads_exit_records_not_clocks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sweep = tmp_path / "sweep"
    write_exit_record(sweep / "0", "earlier", "failed", "ValueError: an earlier attempt")
    future = time.time() + 10 * 24 * 3600  # a clock ahead: written "after" the start
    os.utime(sweep / "0" / "exit.json", (future, future))
    report = FailedJobsReport()
    report.on_multirun_start(_sweep_config(sweep))

    write_exit_record(sweep / "1", "a1", "ok")
    report.on_multirun_end(_sweep_config(sweep))  # job 0's old failure is not this multirun's

    write_exit_record(sweep / "2", "a2", "failed", "RuntimeError: boom\nthe last line")
    os.utime(sweep / "2" / "exit.json", (0, 0))  # a clock behind: written "in 1970"
    write_exit_record(sweep / "3", "a3", "running")  # killed before its end
    with caplog.at_level(logging.ERROR, "cskd_lightning"), pytest.raises(SystemExit) as end:
        report.on_multirun_end(_sweep_config(sweep))
    assert end.value.code == 1
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "2 job(s) of the multirun failed:"
    assert lines[1:] == [
        f"  {sweep / '2'}: the last line",
        f"  {sweep / '3'}: did not finish (killed, or still running)",
    ]
    # cskd-report (every attempt in the directory) lists the failed jobs from their records,
    # the one that never ended too (none of them left an error.txt here).
    _, failed = find_runs(sweep)
    assert [(job.path.name, job.error) for job in failed] == [
        ("0", "ValueError: an earlier attempt"),
        ("2", "the last line"),
        ("3", "did not finish (killed, or still running): no summary.json, no error.txt"),
    ]


def _hold(entry: str, started: multiprocessing.Event, release: multiprocessing.Event) -> None:
    with locks.held(Path(entry), "a test"):
        started.set()
        release.wait(30)


def _hold_then_die(entry: str, started: multiprocessing.Event) -> None:
    locks.acquire(Path(entry), "a test")
    started.set()
    os._exit(0)  # no release: the OS drops the lock with the process


def test_cache_entry_lock_waits_names_the_file_and_survives_a_dead_holder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entry = tmp_path / "teachers" / "t.pt"
    ctx = multiprocessing.get_context("fork")  # a quick start: the lock is all it needs
    started, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(entry), started, release))
    holder.start()
    assert started.wait(30)
    lock = locks.FileLock(str(entry) + ".lock")
    with pytest.raises(locks.Timeout):
        lock.acquire(timeout=0.2)  # held by the other process
    threading.Timer(0.5, release.set).start()
    with caplog.at_level(logging.INFO, "cskd_lightning"), locks.held(entry, "training it"):
        assert not holder.is_alive() or release.is_set()  # in only once the holder let go
    holder.join(30)
    assert f"Waiting for another job to finish training it: {entry}" in caplog.text

    started = ctx.Event()
    dead = ctx.Process(target=_hold_then_die, args=(str(entry), started))
    dead.start()
    assert started.wait(30)
    dead.join(30)
    lock.acquire(timeout=5)  # the dead holder's lock is gone with it
    lock.release()


def test_a_slurm_restart_resumes_only_its_own_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    cfg = compose_train([], output_dir=run, cache_dir=tmp_path / "cache")
    assert not resume_if_requeued(cfg, run)  # no SLURM restart
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert resume_if_requeued(cfg, run) and cfg.ckpt_path == "last"  # nothing there yet
    run.mkdir()
    OmegaConf.save(cfg, run / "config.yaml", resolve=False)
    mine = compose_train([], output_dir=run, cache_dir=tmp_path / "cache")
    assert resume_if_requeued(mine, run) and mine.ckpt_path == "last"
    given = compose_train(["ckpt_path=x.ckpt"], output_dir=run, cache_dir=tmp_path / "cache")
    assert not resume_if_requeued(given, run) and given.ckpt_path == "x.ckpt"
    other = compose_train(["seed=1"], output_dir=run, cache_dir=tmp_path / "cache")
    assert not resume_if_requeued(other, run) and other.ckpt_path is None


def test_the_teachers_initial_weights_follow_teacher_seed_alone(tmp_path: Path) -> None:
    """Whichever job of a sweep trains the shared teacher (``teacher.seed=0``, student seeds 0
    and 1) starts it from the same weights; another teacher seed starts elsewhere. The global
    random state is left as it was."""

    def weights(*overrides: str) -> dict:
        cfg = compose_train(list(overrides), tmp_path=tmp_path)
        torch.manual_seed(123)
        model, _ = build_teacher(cfg)
        assert torch.rand(1).item() == pytest.approx(0.2961, abs=1e-4)  # torch.manual_seed(123)
        return model.state_dict()

    a, b = weights("seed=0"), weights("seed=1", "teacher.seed=0")
    c = weights("seed=1")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_plan_expands_the_sweep_and_refuses_a_search(capsys: pytest.CaptureFixture) -> None:
    config = OmegaConf.create(
        {
            "plan": True,
            "hydra": {
                "overrides": {"task": ["distill=kd,cskd", "seed=0,1,2", "trainer.max_epochs=3"]},
                "sweeper": {
                    "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "params": {"data.datamodule.batch_size": "32,64"},
                },
            },
        }
    )
    jobs = sweep_jobs(config)
    assert len(jobs) == 12 and len({tuple(j) for j in jobs}) == 12
    first = ["data.datamodule.batch_size=32", "distill=kd", "seed=0", "trainer.max_epochs=3"]
    assert jobs[0] == first
    config.hydra.sweeper._target_ = "hydra_plugins.hydra_optuna_sweeper.OptunaSweeper"
    with pytest.raises(SystemExit) as end:
        SweepPlan().on_multirun_start(config)
    assert end.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: plan=true lists the jobs of a sweep")
