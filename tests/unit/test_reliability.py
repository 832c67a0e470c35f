"""Reliability: bit-exact resume after SIGKILL, atomic checkpoints, safe loading, and the
catalogue of bad inputs (each fails early with one clear ``Error:`` line; docs/errors.md)."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from app_helpers import FAST, read_summary, run_cli
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from cskd_lightning.app.jobs import run_task
from cskd_lightning.app.resume import (
    checkpoint_candidates,
    newest_good_checkpoint,
    relevant_config,
    resolve_resume,
)
from cskd_lightning.app.train import train
from cskd_lightning.checkpoints import CheckpointError, read_checkpoint
from cskd_lightning.errors import InputError


# --------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One teacher cache for the module's in-process runs (the first run trains it)."""
    return tmp_path_factory.mktemp("teacher_cache")


def compose_run(overrides: list[str], output_dir: Path, cache: Path) -> DictConfig:
    with initialize_config_module(config_module="cskd_lightning.conf", version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[f"paths.output_dir={output_dir}", f"paths.cache_dir={cache}", *overrides],
        )


def user_error(cfg: DictConfig, capsys: pytest.CaptureFixture) -> str:
    """Run ``cfg`` as cskd-train does; expect exit 1 and one ``Error:`` line; return it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_task(train, cfg)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def fake_training_checkpoint(path: Path, **extra: object) -> None:
    torch.save(
        {
            "state_dict": {"w": torch.ones(2)},
            "optimizer_states": [],
            "loops": {},
            "epoch": 0,
            "global_step": 1,
            **extra,
        },
        path,
    )


# --------------------------------------------------------------------------- 1. resume
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


@pytest.mark.slow
@pytest.mark.parametrize(
    "data",
    [
        [],  # the digits default: the DataLoader path
        ["data=digits_device", "data.datamodule.two_view=true", "distill=cskd_full"],
    ],
    ids=["dataloader", "device-two-view"],
)
def test_sigkill_then_resume_last_is_bit_identical(tmp_path: Path, data: list[str]) -> None:
    common = [*KILL_RUN, *data, f"paths.cache_dir={tmp_path / 'cache'}"]
    env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cskd_lightning.app.train", *common, f"hydra.run.dir={killed}"],
        cwd=tmp_path,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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


def test_relevant_config_ignores_paths_and_logging(tmp_path: Path) -> None:
    base = relevant_config(compose_run([], tmp_path / "x", tmp_path / "c"))
    other = relevant_config(
        compose_run(
            [
                "+data.datamodule.num_workers=2",
                "callbacks.progress_bar=null",
                "ckpt_path=last",
                "logger=tensorboard",
                "trainer.log_every_n_steps=1",
            ],
            tmp_path / "y",
            tmp_path / "d",
        )
    )
    assert base == other
    assert "paths.output_dir" not in base and base["distill.loss.temperature"] == 4.0


# --------------------------------------------------------------------------- 2. atomic writes
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


def test_ckpt_path_last_picks_by_the_progress_inside_and_skips_bad_files(
    tmp_path: Path, teacher_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a copy (new modification times), the checkpoint furthest into training is resumed,
    whatever the file times say; a damaged file is skipped with a warning, not a traceback."""
    import shutil

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


def test_epoch_end_checkpoints_are_committed_after_the_epoch_is_logged(tmp_path: Path) -> None:
    """last.ckpt is refreshed every epoch, stale temporary files are removed, and at every
    commit the metrics file already holds the epoch the new checkpoint belongs to."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from cskd_lightning.checkpoint_io import AtomicCheckpointIO, CommitCheckpointsAfterLogging
    from cskd_lightning.loggers import RunCSVLogger

    seen: list[tuple[int, int]] = []

    class Watch(AtomicCheckpointIO):
        def commit(self) -> None:
            pending = [t for a, t in self._pending if a == "replace" and t.name == "last.ckpt"]
            super().commit()
            if pending:
                with open(tmp_path / "metrics.csv", newline="") as handle:
                    rows = list(csv.DictReader(handle))
                trained = [int(r["epoch"]) for r in rows if r["train/loss"]]
                seen.append((torch.load(pending[0], weights_only=True)["epoch"], max(trained)))

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(4, 2)

        def training_step(self, batch: tuple, i: int) -> torch.Tensor:
            loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.log("train/loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch: tuple, i: int) -> None:
            self.log("val/score", 1.0)  # constant: the best file is saved once, never again

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    ckpt_dir = tmp_path / "ckpts"
    ckpt_dir.mkdir()
    (ckpt_dir / ".last.ckpt.tmp").write_bytes(b"half a checkpoint")
    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=4)
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[
            CommitCheckpointsAfterLogging(ckpt_dir),
            ModelCheckpoint(ckpt_dir, "best", monitor="val/score", mode="max", save_top_k=1),
            ModelCheckpoint(ckpt_dir, "last", save_top_k=1, enable_version_counter=False),
        ],
        plugins=[Watch()],
        logger=RunCSVLogger(tmp_path),
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), data, data)
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["epoch"] == 2
    assert torch.load(ckpt_dir / "best.ckpt", weights_only=True)["epoch"] == 0
    assert not (ckpt_dir / ".last.ckpt.tmp").exists()
    assert seen == [(0, 0), (1, 1), (2, 2)]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "pair.teacher.model.num_classes=5",
            "the teacher (pair.teacher.model: digits_teacher) = 5",
        ),
        (
            "pair.student.model.num_classes=7",
            "the student (pair.student.model: digits_student) = 7",
        ),
        ("data.num_classes=5", "the datamodule (DigitsDataModule).num_classes = 10"),
    ],
)
def test_class_counts_that_disagree_fail_before_training(
    override: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache = tmp_path / "cache"
    line = user_error(compose_run([*FAST, override], tmp_path / "run", cache), capsys)
    assert line.startswith("Error: Class counts disagree: ") and expected in line
    assert not (cache / "teachers").exists(), "no teacher was trained"


def test_batch_size_not_divisible_by_process_count() -> None:
    from cskd_lightning.data import DigitsDataModule

    datamodule = DigitsDataModule(batch_size=63)
    datamodule.trainer = SimpleNamespace(world_size=2)
    with pytest.raises(
        ValueError, match=r"batch_size=63 is the GLOBAL batch .* \(e\.g\. 62 or 64\)"
    ):
        datamodule.setup("fit")


def test_batch_of_one_with_a_batch_level_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from cskd_lightning.app.checks import check_batch_for_loss, check_per_process_batch
    from cskd_lightning.losses import CSKDLoss, KDLoss

    cache = tmp_path / "cache"
    line = user_error(
        compose_run([*FAST, "data.datamodule.batch_size=1"], tmp_path / "run", cache), capsys
    )
    assert line.startswith("Error: data.datamodule.batch_size=1, but CSKDLoss (distill=cskd_cswt)")
    assert "batch_size=2 or more" in line and not (cache / "teachers").exists()
    cfg = compose_run(["data.datamodule.batch_size=1"], tmp_path / "x", cache)
    check_batch_for_loss(cfg, KDLoss())  # per-sample methods are fine with one sample
    cfg = compose_run(["data.datamodule.batch_size=2"], tmp_path / "x", cache)
    with pytest.raises(ValueError, match="1 sample per process and distill.loss.gather=false"):
        check_per_process_batch(cfg, CSKDLoss(gather=False), world_size=2)
    check_per_process_batch(cfg, CSKDLoss(gather=True), world_size=2)  # gathered: global batch 2


def test_labels_out_of_range() -> None:
    from cskd_lightning import DistillationModule, KDLoss
    from cskd_lightning.models import create_model

    module = DistillationModule(
        create_model("digits_student", 10, 1), create_model("digits_teacher", 10, 1), KDLoss()
    )
    with pytest.raises(ValueError, match=r"Labels out of range: found labels in \[0, 12\]"):
        module.compute_loss((torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 12])))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("distill.loss.t_low=7", "Error: t_low (7.0) must not exceed t_high (6.0)"),
        ("distill.loss.temperature=0", "Error: temperature must be a positive number; got 0.0."),
        ("distill.loss.kd_weight=-1", "Error: kd_weight must be a non-negative number"),
    ],
)
def test_bad_loss_settings(
    override: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    line = user_error(compose_run([override], tmp_path / "run", tmp_path / "cache"), capsys)
    key = override.split("=")[0]
    assert line.startswith(expected) and line.endswith(f"(config: {key})")


def test_non_finite_loss(
    tmp_path: Path, teacher_cache: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = compose_run(
        [*FAST, "pair.student.recipe.optimizer.lr=1e30"], tmp_path / "run", teacher_cache
    )
    line = user_error(cfg, capsys)
    assert line.startswith("Error: Non-finite loss at global step ")
    assert "loss=nan" in line and "Lower the learning rate" in line


def test_unwritable_output_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    afile = tmp_path / "afile"
    afile.write_text("a file, not a directory")
    line = user_error(compose_run(FAST, afile / "run", tmp_path / "cache"), capsys)
    assert line == (
        f"Error: Output directory {afile / 'run'} cannot be written: {afile} is a file, not a "
        "directory. Choose a writable location with hydra.run.dir=<dir> (or paths.log_dir=<dir>)."
    )
    assert afile.read_text() == "a file, not a directory"


def test_resume_from_missing_or_weights_only_checkpoint(tmp_path: Path) -> None:
    cfg = compose_run(["ckpt_path=last"], tmp_path / "runs" / "now", tmp_path / "cache")
    assert resolve_resume(cfg, tmp_path / "runs" / "now") is None  # nothing to resume: a new run
    cfg = compose_run([f"ckpt_path={tmp_path / 'none.ckpt'}"], tmp_path / "run", tmp_path / "c")
    with pytest.raises(FileNotFoundError, match=r"ckpt_path: no checkpoint at .*none\.ckpt"):
        resolve_resume(cfg, tmp_path / "run")
    weights = tmp_path / "weights.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 1}, weights)
    cfg = compose_run([f"ckpt_path={weights}"], tmp_path / "run", tmp_path / "cache")
    with pytest.raises(CheckpointError, match="holds weights only"):
        resolve_resume(cfg, tmp_path / "run")


def test_mid_epoch_checkpoint_resumes_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    progress = {"current": {"completed": 3}, "is_last_batch": False}
    path = tmp_path / "mid.ckpt"
    fake_training_checkpoint(path, loops={"fit_loop": {"epoch_loop.batch_progress": progress}})
    caplog.set_level(logging.INFO, logger="cskd_lightning")
    cfg = compose_run([f"ckpt_path={path}"], tmp_path / "run", tmp_path / "cache")
    assert resolve_resume(cfg, tmp_path / "run").path == path
    assert "saved mid-epoch (after 3 batches)" in caplog.text
    assert "holds no cskd-train config" in caplog.text
