"""Reliability: resume settings, checkpoints committed after the epoch is logged, and the bad
inputs found while training (each fails early with one clear ``Error:`` line; docs/errors.md).
Kills, resumes and damaged checkpoints with real runs: tests/integration/test_reliability_runs.py.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import pytest
import torch
from app_helpers import FAST, compose_train, user_error
from helpers import process_view, quiet_trainer
from omegaconf import DictConfig

from cskd_lightning.app.resume import (
    relevant_config,
    resolve_resume,
)
from cskd_lightning.checkpoints import CheckpointError


# --------------------------------------------------------------------------- helpers
def compose_run(overrides: list[str], output_dir: Path, cache: Path) -> DictConfig:
    return compose_train(overrides, output_dir=output_dir, cache_dir=cache)


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


# --------------------------------------------------------------------------- resume


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
    trainer = quiet_trainer(
        max_epochs=3,
        callbacks=[
            CommitCheckpointsAfterLogging(ckpt_dir),
            ModelCheckpoint(ckpt_dir, "best", monitor="val/score", mode="max", save_top_k=1),
            ModelCheckpoint(ckpt_dir, "last", save_top_k=1, enable_version_counter=False),
        ],
        plugins=[Watch()],
        logger=RunCSVLogger(tmp_path),
        enable_checkpointing=True,
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
    datamodule.trainer = process_view(world=2)
    with pytest.raises(
        ValueError, match=r"batch_size=63 is the GLOBAL batch .* \(e\.g\. 62 or 64\)"
    ):
        datamodule.setup("fit")


def test_batch_of_one_with_a_batch_level_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from cskd_lightning.app.checks import check_per_process_batch
    from cskd_lightning.losses import CSKDLoss, KDLoss

    cache = tmp_path / "cache"
    line = user_error(
        compose_run([*FAST, "data.datamodule.batch_size=1"], tmp_path / "run", cache), capsys
    )
    assert line.startswith("Error: data.datamodule.batch_size=1, but CSKDLoss (distill=cskd_cswt)")
    assert "batch_size=2 or more" in line and not (cache / "teachers").exists()
    cfg = compose_run(["data.datamodule.batch_size=1"], tmp_path / "x", cache)
    check_per_process_batch(cfg, KDLoss())  # per-sample methods are fine with one sample
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


def test_non_finite_loss(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = compose_run(
        [*FAST, "pair.student.recipe.optimizer.lr=1e30"], tmp_path / "run", tmp_path / "cache"
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


def _checkpoints(ckpt_dir: Path, files: dict[str, tuple[int, int]]) -> None:
    """``{name: (epoch, global_step)}``: a training checkpoint per name, each file newer (by
    time) than the one before, so neither file time nor name order gives the answer."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for k, (name, (epoch, step)) in enumerate(files.items()):
        fake_training_checkpoint(ckpt_dir / name, epoch=epoch, global_step=step)
        os.utime(ckpt_dir / name, (1e9 + k, 1e9 + k))


def test_ckpt_path_last_takes_the_furthest_checkpoint_and_last_on_a_tie(tmp_path: Path) -> None:
    """``ckpt_path=last`` resumes from the checkpoint furthest into training (by the step and
    epoch inside it), not from the least advanced, the newest file or the last name; when the
    best epoch is also the last, ``best-*.ckpt`` and ``last.ckpt`` tie and ``last.ckpt`` wins."""
    run = tmp_path / "runs" / "now"
    cfg = compose_run(["ckpt_path=last"], run, tmp_path / "cache")
    # The best epoch (1) is not the last (3): last.ckpt is furthest.
    _checkpoints(
        run / "checkpoints",
        {"last.ckpt": (3, 32), "best-epoch001.ckpt": (1, 16), "zz-epoch000.ckpt": (0, 8)},
    )
    choice = resolve_resume(cfg, run)
    assert (choice.path.name, choice.epoch, choice.global_step) == ("last.ckpt", 3, 32)
    # Only last.ckpt's progress says it is behind (a copied-in older file): the best wins.
    _checkpoints(run / "checkpoints", {"last.ckpt": (0, 8), "best-epoch001.ckpt": (1, 16)})
    assert resolve_resume(cfg, run).path.name == "best-epoch001.ckpt"
    # The best epoch is the last: a tie on (step, epoch), broken for last.ckpt, whichever file
    # is newer or sorts last.
    for newer in ("last.ckpt", "best-epoch003.ckpt"):
        tie = tmp_path / f"tie-{newer}"
        names = ["best-epoch003.ckpt", "last.ckpt"]
        names.sort(key=lambda name: name == newer)
        _checkpoints(tie / "checkpoints", {name: (3, 32) for name in names})
        assert resolve_resume(cfg, tie).path.name == "last.ckpt", newer


def test_resume_from_sibling_takes_the_furthest_sibling(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _checkpoints(runs / "a" / "checkpoints", {"last.ckpt": (1, 16)})
    _checkpoints(runs / "b" / "checkpoints", {"last.ckpt": (4, 40)})
    _checkpoints(runs / "c" / "checkpoints", {"last.ckpt": (2, 24)})
    now = runs / "now"
    cfg = compose_run(["ckpt_path=last", "resume_from_sibling=true"], now, tmp_path / "cache")
    choice = resolve_resume(cfg, now)
    assert choice.path == runs / "b" / "checkpoints" / "last.ckpt" and choice.epoch == 4
