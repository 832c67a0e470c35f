"""Sweeps as a cluster runs them: a SLURM requeue that resumes by itself, and the jobs of a
parallel sweep (submitit's local executor) sharing one teacher and one teacher-logit cache,
bit-identical to the same sweep run one job after another."""

from __future__ import annotations

import csv
import os
import signal
import time
from pathlib import Path

import torch
from app_helpers import read_summary, run_cli, start_cli

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
