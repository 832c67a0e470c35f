"""Sweeps as a cluster runs them: a SLURM requeue that resumes by itself, and the jobs of a
parallel sweep (submitit's local executor) sharing one teacher and one teacher-logit cache,
bit-identical to the same sweep run one job after another."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from app_helpers import compose_train, read_summary, run_cli, start_cli
from helpers import write_cifar

SLURM_ENV = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "cskd",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "127.0.0.1",
}
"""What SLURM sets for a one-task job (Lightning's SLURMEnvironment reads them)."""

REQUEUE_RUN = [
    "pair.teacher.recipe.max_epochs=1",
    "pair.student.recipe.max_epochs=5",
    "+trainer.limit_train_batches=4",
    "trainer.deterministic=true",
    "callbacks.progress_bar=null",
]


def _epoch_of(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - not there yet
        return -1


def _val_epochs(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle) if row.get("val/acc")]


@pytest.mark.long
def test_slurm_requeue_after_sigkill_resumes_by_itself(tmp_path: Path) -> None:
    """The same command, restarted by SLURM (``SLURM_RESTART_COUNT=1``) after a SIGKILL, goes
    on from the run's furthest checkpoint and ends with every epoch in ``metrics.csv``; a
    restarted job with another config in that directory is refused, the run left as it was."""
    run = tmp_path / "slurm-4242"
    command = ["cskd-train", *REQUEUE_RUN, f"paths.cache_dir={tmp_path / 'cache'}"]
    command.append(f"hydra.run.dir={run}")
    env = {"OMP_NUM_THREADS": "1", **SLURM_ENV}
    proc = start_cli(command, cwd=tmp_path, **env)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if last.is_file() and _epoch_of(last) >= 1:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run must die mid-training"
    assert not (run / "summary.json").exists()
    killed_at = _epoch_of(last)
    assert 1 <= killed_at < 4

    other = run_cli([*command, "seed=1"], cwd=tmp_path, SLURM_RESTART_COUNT="1", **env)
    assert other.returncode == 1
    assert (
        "Error: " in other.stderr and "already holds a run made with other settings" in other.stderr
    )
    assert _epoch_of(last) == killed_at

    again = run_cli(command, cwd=tmp_path, SLURM_RESTART_COUNT="1", **env)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert "SLURM restarted this job (SLURM_RESTART_COUNT=1)" in log
    assert f"Resuming from {last}" in log
    assert _val_epochs(run) == [0, 1, 2, 3, 4]
    summary = read_summary(run)
    assert summary["segments"] == 2 and summary["student"]["test_acc"] is not None


PARALLEL_SWEEP = [
    "data=digits_device",
    "teacher.seed=0",  # one teacher for the whole sweep
    "teacher.logit_cache=true",
    "trainer.deterministic=true",
    "pair.teacher.recipe.max_epochs=1",
    "pair.student.recipe.max_epochs=2",
    "+trainer.limit_train_batches=4",
    "callbacks.progress_bar=null",
    "distill=kd,cskd_cswt",
    "seed=0,1",
]
VOLATILE = ("wall_time_s", "output_dir", "overrides")


def _job_logs(sweep: Path) -> list[str]:
    return [
        (sweep / str(job) / "train.log").read_text()
        if (sweep / str(job) / "train.log").is_file()
        else ""
        for job in range(4)
    ]


def _cache_batches(logs: list[str], which: str) -> int:
    """The training batches the jobs' teacher-logit caches answered (``read``) or the teacher
    computed (``computed``), summed over the jobs' logs."""
    pattern = re.compile(r"Teacher-logit cache: (\d+) training batches read from it, (\d+) comp")
    found = [m.groups() for log in logs for m in pattern.finditer(log)]
    return sum(int(read if which == "read" else computed) for read, computed in found)


@pytest.mark.long
def test_parallel_submitit_sweep_trains_one_teacher_and_equals_the_sequential_sweep(
    tmp_path: Path,
) -> None:
    """A 4-job sweep on submitit's local executor (4 processes at once), started on an empty
    cache, with a shared teacher and the teacher-logit cache: the test holds the teacher's
    cache lock until all 4 jobs wait for it (so they really run together), then lets go. One
    teacher is trained, each epoch's teacher logits are computed once, and every job ends
    bit-identical (summary, student weights) to the same sweep run one job after another."""
    from cskd_lightning.app.teacher_stage import teacher_cache_path
    from cskd_lightning.locks import FileLock

    par, seq = tmp_path / "parallel", tmp_path / "sequential"
    cfg = compose_train(
        [p for p in PARALLEL_SWEEP if "," not in p] + ["seed=0"],
        output_dir=tmp_path / "x",
        cache_dir=par / "cache",
    )
    teacher = teacher_cache_path(cfg)
    held = FileLock(str(teacher) + ".lock")
    teacher.parent.mkdir(parents=True)
    held.acquire()
    env = {"OMP_NUM_THREADS": "1"}
    command = ["cskd-train", "-m", *PARALLEL_SWEEP]
    proc = start_cli(
        [*command, "launcher=local", f"hydra.sweep.dir={par}", f"paths.cache_dir={par / 'cache'}"],
        cwd=tmp_path,
        log=tmp_path / "parallel.out",
        **env,
    )
    waiting = "Waiting for another job to finish training the teacher"
    deadline = time.monotonic() + 420
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if all(waiting in log for log in _job_logs(par)):
                break
            time.sleep(0.2)
        all_waited = all(waiting in log for log in _job_logs(par))
    finally:
        held.release()
    assert proc.wait(timeout=420) == 0, (tmp_path / "parallel.out").read_text()[-3000:]
    assert all_waited, "the 4 jobs must run at the same time"
    sequential = run_cli(
        [*command, f"hydra.sweep.dir={seq}", f"paths.cache_dir={seq / 'cache'}"],
        cwd=tmp_path,
        **env,
    )
    assert sequential.returncode == 0, sequential.stderr[-3000:]

    logs = _job_logs(par)
    assert sum(log.count("Teacher trained") for log in logs) == 1
    assert sum(log.count("Reusing the cached teacher") for log in logs) == 3
    assert len(list((par / "cache" / "teachers").glob("*.pt"))) == 1
    # 2 logit caches (the student seed sets the augmentation), 2 epochs x 4 batches each: every
    # batch computed once by the teacher, in one job, and read from the cache by the other.
    assert (_cache_batches(logs, "computed"), _cache_batches(logs, "read")) == (16, 16)
    for job in range(4):
        a, b = read_summary(seq / str(job)), read_summary(par / str(job))
        assert a["teacher"].pop("source") != b["teacher"].pop("source")
        a["teacher"].pop("cached"), b["teacher"].pop("cached")
        assert {k: v for k, v in a.items() if k not in VOLATILE} == {
            k: v for k, v in b.items() if k not in VOLATILE
        }
        x = torch.load(seq / str(job) / "student.pt", weights_only=True)
        y = torch.load(par / str(job) / "student.pt", weights_only=True)
        x, y = x.get("state_dict", x), y.get("state_dict", y)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        assert json.loads((par / str(job) / "exit.json").read_text())["status"] == "ok"


CIFAR_PAIRS = [
    "resnet110_resnet32",
    "resnet32x4_resnet8x4",
    "resnet32x4_shufflev1",
    "resnet32x4_shufflev2",
    "resnet50_mobilenetv2",
    "resnet56_resnet20",
    "vgg13_mobilenetv2",
    "vgg13_vgg8",
    "wrn_40_2_shufflev1",
    "wrn_40_2_wrn_16_2",
    "wrn_40_2_wrn_40_1",
]
METHODS = ["ce", "kd", "kd_ls", "dkd", "dist", "mlkd", "cskd", "cskd_cswt"]


@pytest.mark.long
def test_plan_of_the_440_job_cifar100_sweep(tmp_path: Path) -> None:
    """``plan=true`` on the published table's sweep (11 pairs x 8 methods x 5 seeds, one
    teacher per pair's teacher, the logit cache on): every job listed, the 6 distinct teachers
    (one of them already cached), the logit caches and their size, nothing trained or written."""
    from cskd_lightning.app.teacher_stage import teacher_cache_path

    write_cifar(tmp_path / "data", 100, n_train=500, n_test=100)
    common = [
        "experiment=cifar100_standard",
        "data=cifar100_device",
        "teacher.seed=0",
        "teacher.logit_cache=true",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    one = compose_train(
        [*common, "pair=vgg13_vgg8", "distill=kd", "seed=3"],
        output_dir=tmp_path / "x",
        cache_dir=tmp_path / "cache",
    )
    cached = teacher_cache_path(one)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")  # the plan only looks whether the entry is there
    sweep = [f"pair={','.join(CIFAR_PAIRS)}", f"distill={','.join(METHODS)}", "seed=0,1,2,3,4"]
    started = time.monotonic()
    done = run_cli(["cskd-train", "-m", *common, *sweep, "plan=true"], cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.startswith("Plan: 440 job(s); nothing is trained or written")
    jobs = [line for line in out.splitlines() if re.match(r"  #\d+ experiment=", line)]
    assert len(jobs) == 440 and sum("no teacher" in j for j in jobs) == 55  # distill=ce
    assert "Teachers: 6 (1 cached, 5 to train)" in out
    assert f"  cached     vgg13 on cifar100, seed 0 (70 job(s)): {cached}" in out
    # One cache per teacher, augmentation seed (= the seed) and view count: the two-view
    # methods (mlkd) have their own. 500 samples x 100 classes x 240 epochs, float32, 1 view:
    # 240 * 500 * (100 * 4 + 1) bytes + the 100 test samples' 100 * (100 * 4 + 1).
    assert "Teacher-logit caches: 60," in out
    one_view = 240 * 500 * (100 * 4 + 1) + 100 * (100 * 4 + 1)
    assert f"float32 (18 job(s)): {one_view / 1e6:.1f} MB, 240 epochs x 500 samples" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data"]  # no outputs/
    assert list((tmp_path / "cache").rglob("*")) == [cached.parent, cached]
    print(f"plan of 440 jobs: {elapsed:.1f} s for the whole command")


@pytest.mark.long
def test_optuna_trials_in_parallel_each_reach_the_study(tmp_path: Path) -> None:
    """``hparams_search=optuna`` with ``hydra.sweeper.n_jobs=2`` on submitit's local executor:
    the 2 trials of a round run in 2 processes at once, and each trial's value in the study
    is what its job measured (its ``summary.json``)."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    done = run_cli(
        [
            "cskd-train",
            "hparams_search=optuna",
            "launcher=local",
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.n_trials=2",
            f"hydra.sweeper.storage={storage}",
            "pair.teacher.recipe.max_epochs=1",
            "pair.student.recipe.max_epochs=2",
            "+trainer.limit_train_batches=4",
            "callbacks.progress_bar=null",
            "teacher.seed=0",
            f"hydra.sweep.dir={tmp_path / 'hpo'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=tmp_path,
        OMP_NUM_THREADS="1",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in done.stdout + done.stderr
    study = optuna.load_study(study_name="cskd_cswt", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in study.trials:
        summary = read_summary(tmp_path / "hpo" / str(trial.number))
        assert trial.value == summary["metrics"]["val/acc_best"]
        temperature = float(summary["overrides"][0].split("=")[1])
        assert trial.params["distill.loss.temperature"] == temperature
