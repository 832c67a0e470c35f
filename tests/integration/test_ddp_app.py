"""Hydra + DDP through the real command: 2 CPU processes over gloo, sweeps, and 2 nodes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from app_helpers import FAST, read_summary, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_ddp_sim_run_writes_one_run_directory(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = run_cli(
        [
            "cskd-train",
            "trainer=ddp_sim",
            *FAST,
            f"hydra.run.dir={run}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.log_dir={tmp_path / 'logs'}",
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = read_summary(run)
    assert 0.0 <= summary["student"]["test_acc"] <= 1.0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "student.pt").is_file()
    # Nothing written outside the run directory (no per-rank run directories).
    assert not (tmp_path / "logs").exists(), run_files(tmp_path / "logs")
    assert done.stdout.count("cskd_cswt on digits") == 1, "the summary table is printed once"
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "train/cs_cswt" in header


def test_ddp_sim_multirun_of_two_jobs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = run_cli(
        [
            "cskd-train",
            "-m",
            "trainer=ddp_sim",
            *FAST,
            "distill=kd,cskd_cswt",
            f"hydra.sweep.dir={sweep}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.log_dir={tmp_path / 'logs'}",
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert read_summary(sweep / "0")["method"] == "kd"
    assert read_summary(sweep / "1")["method"] == "cskd_cswt"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert not list(sweep.glob("*/error.txt"))
    assert not (tmp_path / "logs").exists()


def test_two_nodes_on_loopback(tmp_path: Path) -> None:
    """2 nodes x 1 process, wired through the variables Lightning reads on a cluster."""
    port = str(free_port())
    procs = []
    for node in (0, 1):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "NODE_RANK": str(node),
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "2",
            "PYTHONUNBUFFERED": "1",
        }
        args = [
            sys.executable,
            "-m",
            "cskd_lightning.app.train",
            "trainer=ddp_sim",
            "trainer.devices=1",
            "+trainer.num_nodes=2",
            *FAST,
            f"hydra.run.dir={tmp_path / f'node{node}'}",
            f"paths.cache_dir={tmp_path / f'cache{node}'}",
        ]
        log = (tmp_path / f"node{node}.log").open("w")
        procs.append((subprocess.Popen(args, cwd=tmp_path, env=env, stdout=log, stderr=log), log))
    for proc, log in procs:
        proc.wait(timeout=500)
        log.close()
    for node, (proc, _) in enumerate(procs):
        assert proc.returncode == 0, (tmp_path / f"node{node}.log").read_text()[-4000:]
    summary = read_summary(tmp_path / "node0")
    assert 0.0 <= summary["student"]["test_acc"] <= 1.0
    assert not (tmp_path / "node1" / "summary.json").exists(), "only global rank 0 writes"
