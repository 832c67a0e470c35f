"""Reliability with real runs and real kills: bit-exact resume after SIGKILL of ``cskd-train``,
resuming a sibling run and refusing a changed config, a save killed half-way, and damaged
checkpoints on disk (skipped, each named; the furthest good one is resumed from).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from app_helpers import FAST, compose_train, read_summary, run_cli, start_cli
from omegaconf import DictConfig

from cskd_lightning.app.resume import resolve_resume
from cskd_lightning.app.train import train
from cskd_lightning.checkpoints import (
    CheckpointError,
    checkpoint_candidates,
    newest_good_checkpoint,
    read_checkpoint,
)
from cskd_lightning.errors import InputError


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One teacher cache for the module's in-process runs (the first run trains it)."""
    return tmp_path_factory.mktemp("teacher_cache")


def compose_run(overrides: list[str], output_dir: Path, cache: Path) -> DictConfig:
    return compose_train(overrides, output_dir=output_dir, cache_dir=cache)


KILL_RUN = [
    "pair.teacher.recipe.max_epochs=1",
    "pair.student.recipe.max_epochs=6",
    "+trainer.limit_train_batches=4",
    "trainer.deterministic=true",
    "+data.datamodule.augment=true",  # random crops: the augmentation resumes exactly too
    "callbacks.progress_bar=null",
]


def _epoch_of(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - not there yet
        return -1


@pytest.mark.parametrize(
    "data",
    [
        [],  # the digits default: the DataLoader path
        pytest.param(
            ["data=digits_device", "data.datamodule.two_view=true", "distill=cskd_full"],
            marks=pytest.mark.long,
        ),
    ],
    ids=["dataloader", "device-two-view"],
)
def test_sigkill_then_resume_last_is_bit_identical(tmp_path: Path, data: list[str]) -> None:
    common = [*KILL_RUN, *data, f"paths.cache_dir={tmp_path / 'cache'}"]
    env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    proc = start_cli(["cskd-train", *common, f"hydra.run.dir={killed}"], cwd=tmp_path, **env)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if last.is_file() and _epoch_of(last) >= 1:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run must die mid-training"
    assert not (killed / "summary.json").exists() and not (killed / "student.pt").exists()
    assert 1 <= _epoch_of(last) < 5
    # The uninterrupted run, after the killed one (which trained the shared teacher).
    done = run_cli(["cskd-train", *common, f"hydra.run.dir={full}"], cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr[-3000:]

    teacher_log = (killed / "teacher" / "metrics.csv").read_bytes()
    hparams = (killed / "hparams.yaml").read_bytes()
    resumed_epoch = _epoch_of(last)
    with open(killed / "metrics.csv", newline="") as handle:
        rows_before = [r for r in csv.DictReader(handle) if int(r["epoch"]) <= resumed_epoch]
    resumed = run_cli(
        ["cskd-train", *common, f"hydra.run.dir={killed}", "ckpt_path=last"], cwd=tmp_path, **env
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {last}" in (killed / "train.log").read_text()

    # The whole record: every metrics row of the uninterrupted run (the rows of the segment
    # before the kill kept, the redone epoch's rows written once), the same summary (best
    # accuracy, best epoch, best checkpoint, every final metric), the teacher's log untouched,
    # and a wall time that adds up both segments.
    assert (killed / "metrics.csv").read_bytes() == (full / "metrics.csv").read_bytes()
    with open(killed / "metrics.csv", newline="") as handle:
        rows_after = list(csv.DictReader(handle))
    assert rows_before and all(
        {k: after[k] for k in before} == before
        for before, after in zip(rows_before, rows_after, strict=False)
    )
    assert (killed / "teacher" / "metrics.csv").read_bytes() == teacher_log
    assert (killed / "hparams.yaml").read_bytes() == hparams  # not the resume's ckpt_path=last
    a, b = read_summary(full), read_summary(killed)
    assert a["student"] == b["student"] and a["metrics"] == b["metrics"]
    assert (a["segments"], b["segments"]) == (1, 2)
    assert b["student"]["best_epoch"] == int(b["student"]["best_checkpoint"][-8:-5])

    for name in ("student.pt", "checkpoints/last.ckpt"):
        a = torch.load(full / name, weights_only=True)
        b = torch.load(killed / name, weights_only=True)
        a, b = a.get("state_dict", a), b.get("state_dict", b)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # What we save is plain (weights_only loads it), and holds nothing of the data stream or
    # the RNGs: the order and the augmentation of an epoch follow from the seed and its number.
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["cskd_run"]["config"]["trainer.deterministic"] is True
    assert not [key for key in ckpt if "DataModule" in key]


def test_resume_config_check_and_sibling_runs(
    tmp_path: Path, teacher_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cskd_lightning")
    runs = tmp_path / "runs"
    train(compose_run(FAST, runs / "a", teacher_cache))
    ckpt_dir = runs / "a" / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in ckpt_dir.iterdir()}
    config_before = (runs / "a" / "config.yaml").read_text()

    # A different config: refused, the keys listed, nothing overwritten.
    changed = compose_run(
        [*FAST, "ckpt_path=last", "distill.loss.temperature=3.0"], runs / "a", teacher_cache
    )
    with pytest.raises(InputError) as err:
        train(changed)
    message = str(err.value)
    assert "distill.loss.temperature: 4.0 -> 3.0" in message
    assert "resume_allow_config_change=true" in message and str(ckpt_dir / "last.ckpt") in message
    assert {p.name: p.stat().st_mtime_ns for p in ckpt_dir.iterdir()} == before
    assert (runs / "a" / "config.yaml").read_text() == config_before

    # A fresh run directory with ckpt_path=last starts a new run, saying where a sibling with
    # checkpoints could be resumed from; only resume_from_sibling=true takes that checkpoint.
    caplog.clear()
    assert (
        resolve_resume(
            compose_run([*FAST, "ckpt_path=last"], runs / "b", teacher_cache), runs / "b"
        )
        is None
    )
    assert "resume_from_sibling=true" in caplog.text and "new run" in caplog.text
    train(
        compose_run(
            [*FAST, "ckpt_path=last", "resume_from_sibling=true"], runs / "b", teacher_cache
        )
    )
    assert f"resuming from {ckpt_dir / 'last.ckpt'}" in caplog.text
    assert "furthest checkpoint of a sibling run with the same config" in caplog.text
    best = runs / "b" / read_summary(runs / "b")["student"]["best_checkpoint"]
    assert best.parent == runs / "b" / "checkpoints" and best.is_file()
    a = torch.load(runs / "a" / "student.pt", weights_only=True)["state_dict"]
    b = torch.load(runs / "b" / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Siblings with another config are not used: the error says why.
    with pytest.raises(FileNotFoundError, match=r"different config: .*seed"):
        train(
            compose_run(
                [*FAST, "ckpt_path=last", "resume_from_sibling=true", "seed=1"],
                runs / "c",
                teacher_cache,
            )
        )
    assert not (runs / "c" / "config.yaml").exists()

    # The explicit override resumes anyway, with a warning naming the keys.
    caplog.clear()
    train(
        compose_run(
            [
                *FAST,
                "ckpt_path=last",
                "distill.loss.temperature=3.0",
                "resume_allow_config_change=true",
            ],
            runs / "a",
            teacher_cache,
        )
    )
    assert "although the config changed" in caplog.text
    assert "distill.loss.temperature: 4.0 -> 3.0" in caplog.text


KILLED_SAVE = textwrap.dedent(
    """
    import sys, torch
    from cskd_lightning.checkpoint_io import AtomicCheckpointIO
    io = AtomicCheckpointIO()
    target = sys.argv[1]
    io.save_checkpoint({"epoch": 0, "w": torch.zeros(4)}, target)
    print("first", flush=True)
    epoch = 1
    while True:  # big saves, one after another, until the parent kills this process
        io.save_checkpoint({"epoch": epoch, "w": torch.randn(40_000_000)}, target)
        epoch += 1
    """
)


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_whole(tmp_path: Path) -> None:
    """A real kill in the middle of a real (160 MB) save: the target is the previous, whole
    checkpoint; the half-written temporary file is never taken for a checkpoint."""
    target = tmp_path / "ckpts" / "last.ckpt"
    target.parent.mkdir()
    tmp = target.with_name(".last.ckpt.tmp")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVE, str(target)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "first", proc.stderr.read()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if tmp.is_file() and tmp.stat().st_size > 10_000_000:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = torch.load(target, weights_only=True)
    assert saved["w"].numel() in (4, 40_000_000)  # a whole checkpoint, never a partial one
    if tmp.is_file():  # killed mid-write: the partial file is recognised for what it is
        with pytest.raises(CheckpointError, match=r"\.last\.ckpt\.tmp is truncated or corrupt"):
            read_checkpoint(tmp)
    assert checkpoint_candidates(target.parent) == [target]


@pytest.mark.long
def test_ckpt_path_last_picks_by_the_progress_inside_and_skips_bad_files(
    tmp_path: Path, teacher_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a copy (new modification times), the checkpoint furthest into training is resumed,
    whatever the file times say; a damaged file is skipped with a warning, not a traceback."""

    run = tmp_path / "run"
    train(compose_run(FAST, run, teacher_cache))
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "summary.json").unlink()  # as a run killed before its end leaves it
    ckpts = copy / "checkpoints"
    best = next(ckpts.glob("best-*.ckpt"))
    older = ckpts / "best-epoch000.ckpt"
    torch.save({**torch.load(best, weights_only=True), "epoch": 0, "global_step": 8}, older)
    future = time.time() + 3600
    os.utime(older, (future, future))  # the newest file, the least progress
    caplog.set_level(logging.INFO, logger="cskd_lightning")
    choice = resolve_resume(compose_run([*FAST, "ckpt_path=last"], copy, teacher_cache), copy)
    assert choice.path == ckpts / "last.ckpt" and choice.epoch == 2

    # Damaged files of every kind: skipped, each named; the furthest good one is used.
    (ckpts / "last.ckpt").write_bytes((ckpts / "last.ckpt").read_bytes()[:300])
    (ckpts / "notes.ckpt").write_text("epoch,step\n0,1\n")
    (ckpts / "lfs.ckpt").write_text("version https://git-lfs.github.com/spec/v1\n")
    (ckpts / "empty.ckpt").write_bytes(b"")
    path, checkpoint = newest_good_checkpoint(ckpts)
    assert path == best and checkpoint["epoch"] == 2
    for name in ("last", "notes", "lfs", "empty"):
        assert f"Skipping {ckpts / name}.ckpt" in caplog.text
    assert f"Falling back to the furthest good checkpoint: {best}" in caplog.text

    # The real command resumes from it and reports; cskd-eval tests the summary's checkpoint.
    done = run_cli(
        [
            "cskd-train",
            *FAST,
            f"hydra.run.dir={copy}",
            f"paths.cache_dir={teacher_cache}",
            "ckpt_path=last",
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Resuming from {best}" in (copy / "train.log").read_text()
    summary = read_summary(copy)
    assert summary["student"]["best_checkpoint"] == f"checkpoints/{best.name}"
    assert older.is_file()  # an older best file stays beside the real one ...
    evaluated = run_cli(["cskd-eval", f"run_dir={copy}"], cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    measured = json.loads((copy / "eval" / "metrics.json").read_text())
    assert measured["checkpoint"] == str(best)  # ... and is not the one tested
    assert measured["test/acc"] == pytest.approx(summary["student"]["test_acc"], abs=1e-6)
