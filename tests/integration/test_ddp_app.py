"""Hydra + DDP through the real command: 2 CPU processes over gloo, sweeps, and 2 nodes."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_helpers import FAST, logged, read_summary, run_cli, start_cli
from helpers import free_port, student_pt_accuracy

pytestmark = pytest.mark.timeout(600)


def run_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.long
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
    # Each process tests its half of the test set; the reported accuracy is the whole set's,
    # as one process measures it on the saved student (not rank 0's half).
    assert summary["student"]["test_acc"] == pytest.approx(student_pt_accuracy(run / "student.pt"))
    assert summary["student"]["val_acc_best"] == pytest.approx(max(logged(run, "val/acc")))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "student.pt").is_file()
    # Nothing written outside the run directory (no per-rank run directories).
    assert not (tmp_path / "logs").exists(), run_files(tmp_path / "logs")
    assert done.stdout.count("cskd_cswt on digits") == 1, "the summary table is printed once"
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "train/cs_cswt" in header


@pytest.mark.long
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


@pytest.mark.long
def test_two_nodes_on_loopback(tmp_path: Path) -> None:
    """2 nodes x 1 process, wired through the variables Lightning reads on a cluster."""
    port = str(free_port())
    procs = []
    for node in (0, 1):
        cluster = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(node)}
        args = [
            "cskd-train",
            "trainer=ddp_sim",
            "trainer.devices=1",
            "+trainer.num_nodes=2",
            *FAST,
            f"hydra.run.dir={tmp_path / f'node{node}'}",
            f"paths.cache_dir={tmp_path / f'cache{node}'}",
        ]
        log = tmp_path / f"node{node}.log"
        procs.append(start_cli(args, tmp_path, log, LOCAL_RANK="0", WORLD_SIZE="2", **cluster))
    for proc in procs:
        proc.wait(timeout=500)
    for node, proc in enumerate(procs):
        assert proc.returncode == 0, (tmp_path / f"node{node}.log").read_text()[-4000:]
    summary = read_summary(tmp_path / "node0")
    expected = student_pt_accuracy(tmp_path / "node0" / "student.pt")
    assert summary["student"]["test_acc"] == pytest.approx(expected)  # both nodes' halves
    assert not (tmp_path / "node1" / "summary.json").exists(), "only global rank 0 writes"
