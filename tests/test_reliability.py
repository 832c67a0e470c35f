"""Reliability: bit-exact resume after SIGKILL, atomic checkpoints, safe loading, and the
catalogue of bad inputs (each fails early with one clear ``Error:`` line; docs/errors.md)."""

from __future__ import annotations

import logging
import os
import re
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

from cskd_lightning.app import run_task
from cskd_lightning.checkpoints import CheckpointError, read_checkpoint
from cskd_lightning.resume import (
    checkpoint_candidates,
    newest_good_checkpoint,
    relevant_config,
    resolve_resume,
)
from cskd_lightning.train import train

ROOT = Path(__file__).resolve().parents[1]


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


def cli_error(args: list[str], cwd: Path) -> str:
    """Run cskd-train; expect exit 1, no traceback and one ``Error:`` message; return it (from
    ``Error:`` to the end: a message may go on over a few indented lines)."""
    done = run_cli(["cskd-train", *args], cwd=cwd, OMP_NUM_THREADS="1")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("Error: ") == 1, done.stderr[-3000:]
    return done.stderr[done.stderr.index("Error: ") :].strip()


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
    "+data.datamodule.augment=true",  # random crops: augmentation randomness is restored too
    "callbacks.progress_bar=null",
]


def _epoch_of(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - not there yet
        return -1


@pytest.mark.slow
def test_sigkill_then_resume_last_is_bit_identical(tmp_path: Path) -> None:
    common = [*KILL_RUN, f"paths.cache_dir={tmp_path / 'cache'}"]
    env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = run_cli(["cskd-train", *common, f"hydra.run.dir={full}"], cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(
        [sys.executable, "-m", "cskd_lightning.train", *common, f"hydra.run.dir={killed}"],
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

    resumed = run_cli(
        ["cskd-train", *common, f"hydra.run.dir={killed}", "ckpt_path=last"], cwd=tmp_path, **env
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {last}" in (killed / "train.log").read_text()

    for name in ("student.pt", "checkpoints/last.ckpt"):
        a = torch.load(full / name, weights_only=True)
        b = torch.load(killed / name, weights_only=True)
        a, b = a.get("state_dict", a), b.get("state_dict", b)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # What we save is plain: weights_only loads it, RNG and shuffle state included.
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["cskd_run"]["config"]["trainer.deterministic"] is True
    assert {"generator", "rng"} <= set(ckpt["DigitsDataModule"]["train_loader"])


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
    with pytest.raises(ValueError) as err:
        train(changed)
    message = str(err.value)
    assert "distill.loss.temperature: 4.0 -> 3.0" in message
    assert "resume_allow_config_change=true" in message and str(ckpt_dir / "last.ckpt") in message
    assert {p.name: p.stat().st_mtime_ns for p in ckpt_dir.iterdir()} == before
    assert (runs / "a" / "config.yaml").read_text() == config_before

    # A fresh run dir with the same config finds the sibling's checkpoint.
    train(compose_run([*FAST, "ckpt_path=last"], runs / "b", teacher_cache))
    assert f"resuming from {ckpt_dir / 'last.ckpt'}" in caplog.text
    best = Path(read_summary(runs / "b")["student"]["best_checkpoint"])
    assert best.parent == (runs / "b" / "checkpoints").resolve() and best.is_file()
    a = torch.load(runs / "a" / "student.pt", weights_only=True)
    b = torch.load(runs / "b" / "student.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Siblings with another config are not used: the error says why.
    with pytest.raises(FileNotFoundError, match=r"different config: .*seed"):
        train(compose_run([*FAST, "ckpt_path=last", "seed=1"], runs / "c", teacher_cache))
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
DYING_SAVE = textwrap.dedent(
    """
    import io, os, signal, sys
    import lightning as L, torch
    import lightning.fabric.plugins.io.torch_io as tio
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from cskd_lightning.atomic_checkpoint import AtomicModelCheckpoint

    real = tio._atomic_save
    def dying_save(checkpoint, path):  # a writer that dies halfway through epoch 1's last.ckpt
        if checkpoint["epoch"] >= 1 and "last" in str(path):
            buf = io.BytesIO(); torch.save(checkpoint, buf)
            with open(path, "wb") as f:
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        real(checkpoint, path)
    tio._atomic_save = dying_save

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__(); self.net = nn.Linear(4, 2)
        def training_step(self, batch, i):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=4)
    ckpt = AtomicModelCheckpoint(dirpath=sys.argv[1], save_last=True, save_top_k=0)
    trainer = L.Trainer(max_epochs=3, callbacks=[ckpt], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(Tiny(), data)
    """
)


def test_sigkill_during_a_save_leaves_last_ckpt_intact(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt_dir = tmp_path / "ckpts"
    done = subprocess.run(
        [sys.executable, "-c", DYING_SAVE, str(ckpt_dir)],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    last = ckpt_dir / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0  # the previous save, whole
    partial = ckpt_dir / ".last.ckpt.tmp"
    with pytest.raises(CheckpointError, match=r"\.last\.ckpt\.tmp is truncated or corrupt"):
        read_checkpoint(partial)
    assert checkpoint_candidates(ckpt_dir) == [last]  # the temporary file is never a candidate

    # A truncated newest checkpoint (say, written by another tool): ckpt_path=last falls back
    # to the newest good one and says which; an explicit path names the file.
    good = ckpt_dir / "epoch0.ckpt"
    good.write_bytes(last.read_bytes())
    os.utime(good, (time.time() - 60, time.time() - 60))
    last.write_bytes(last.read_bytes()[:100])
    caplog.set_level(logging.INFO, logger="cskd_lightning")
    path, checkpoint = newest_good_checkpoint(ckpt_dir)
    assert path == good and checkpoint["epoch"] == 0
    assert f"Skipping {last}" in caplog.text
    assert f"Falling back to the newest good checkpoint: {good}" in caplog.text
    cfg = compose_run([f"ckpt_path={last}"], tmp_path / "run", tmp_path / "cache")
    with pytest.raises(CheckpointError, match=re.escape(f"{last} is truncated or corrupt")):
        resolve_resume(cfg, tmp_path / "run")


def test_plain_writes_would_truncate_and_atomic_ones_do_not(tmp_path: Path) -> None:
    """The same dying writer, in-process: Lightning's ModelCheckpoint is left with a truncated
    last.ckpt (the hazard), AtomicModelCheckpoint with the previous, whole one."""
    import io

    import lightning as L
    import lightning.fabric.plugins.io.torch_io as tio
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from cskd_lightning.atomic_checkpoint import AtomicModelCheckpoint

    class Died(Exception):
        pass

    real = tio._atomic_save

    def dying_save(checkpoint: dict, path: str) -> None:
        if checkpoint["epoch"] >= 1 and "last" in str(path):
            buf = io.BytesIO()
            torch.save(checkpoint, buf)
            Path(path).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise Died
        real(checkpoint, path)

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(4, 2)

        def training_step(self, batch: tuple, i: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=4)
    tio._atomic_save = dying_save
    try:
        for cls in (ModelCheckpoint, AtomicModelCheckpoint):
            ckpt_dir = tmp_path / cls.__name__
            trainer = L.Trainer(
                max_epochs=3,
                callbacks=[cls(dirpath=ckpt_dir, save_last=True, save_top_k=-1)],
                logger=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                accelerator="cpu",
            )
            with pytest.raises(Died):
                trainer.fit(Tiny(), data)
            if cls is ModelCheckpoint:
                with pytest.raises(CheckpointError, match="truncated or corrupt"):
                    read_checkpoint(ckpt_dir / "last.ckpt")
            else:
                assert read_checkpoint(ckpt_dir / "last.ckpt")["epoch"] == 0
    finally:
        tio._atomic_save = real


def test_last_ckpt_is_refreshed_every_epoch_and_stale_temp_files_removed(tmp_path: Path) -> None:
    import lightning as L
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from cskd_lightning.atomic_checkpoint import AtomicModelCheckpoint

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(4, 2)

        def training_step(self, batch: tuple, i: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch: tuple, i: int) -> None:
            self.log("val/score", 1.0)  # constant: top-1 is saved once, never again

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    ckpt_dir = tmp_path / "ckpts"
    ckpt_dir.mkdir()
    (ckpt_dir / ".last.ckpt.tmp").write_bytes(b"half a checkpoint")
    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=4)
    callback = AtomicModelCheckpoint(
        dirpath=ckpt_dir, monitor="val/score", mode="max", save_last=True, save_top_k=1
    )
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[callback],
        logger=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), data, data)
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["epoch"] == 2
    assert not (ckpt_dir / ".last.ckpt.tmp").exists()
    assert callback.state_key.startswith("ModelCheckpoint{")


# --------------------------------------------------------------------------- 3. bad inputs
def test_unknown_model_name_cli(tmp_path: Path) -> None:
    line = cli_error(
        [f"hydra.run.dir={tmp_path / 'run'}", "pair.student.model.name=resnet_nope"], tmp_path
    )
    assert line.startswith("Error: Unknown model 'resnet_nope'. Available: ")
    assert line.splitlines()[0].endswith("(config: pair.student.model)")
    assert not (tmp_path / "run" / "checkpoints").exists()


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


TEACHER_FILES = {
    "unknown_format": (
        lambda: {"weights": [1, 2, 3], "epoch": 3},
        "Unknown checkpoint format in {path}: expected a state_dict",
    ),
    "other_architecture": (
        lambda: {
            "model": __import__("cskd_lightning.models", fromlist=["x"])
            .create_model("digits_student", 10, 1)
            .state_dict()
        },
        "The weights in {path} do not fit SmallCNN:",
    ),
}


@pytest.mark.parametrize("kind", sorted(TEACHER_FILES))
def test_bad_teacher_checkpoint_cli(kind: str, tmp_path: Path) -> None:
    make, expected = TEACHER_FILES[kind]
    path = tmp_path / "teacher.pth"
    torch.save(make(), path)
    line = cli_error([f"hydra.run.dir={tmp_path / 'run'}", f"teacher.ckpt_path={path}"], tmp_path)
    assert expected.format(path=path) in line
    assert not (tmp_path / "run" / "checkpoints").exists()
    if kind == "other_architecture":  # the first mismatched keys and shapes are listed
        assert "missing keys [" in line and "shape keys [" in line and "checkpoint (" in line


class Planted:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_a_pickle_that_runs_code_is_refused_cli(tmp_path: Path) -> None:
    from cskd_lightning.models import create_model

    marker = tmp_path / "marker.txt"
    path = tmp_path / "teacher.pth"
    state = create_model("digits_teacher", 10, 1).state_dict()
    torch.save({"state_dict": state, "extra": Planted(marker)}, path)
    line = cli_error([f"hydra.run.dir={tmp_path / 'run'}", f"teacher.ckpt_path={path}"], tmp_path)
    assert not marker.exists(), "the planted code ran"
    assert f"{path} holds more than weights" in line
    assert "teacher.trust_checkpoint=true" in line

    # The same for a resume checkpoint, whose message names the resume flag.
    resume_file = tmp_path / "evil.ckpt"
    fake_training_checkpoint(resume_file, extra=Planted(marker))
    cfg = compose_run([f"ckpt_path={resume_file}"], tmp_path / "run2", tmp_path / "cache")
    with pytest.raises(CheckpointError, match="resume_trust_checkpoint=true"):
        resolve_resume(cfg, tmp_path / "run2")
    assert not marker.exists()


@pytest.mark.parametrize("state", ["missing", "corrupt"])
def test_missing_or_corrupt_data_directory(
    state: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = Path("/nonexistent") if state == "missing" else tmp_path / "fmnist"
    if state == "corrupt":
        data.mkdir()
        for name in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ):
            (data / f"{name}.gz").write_bytes(b"not gzip at all")
    cfg = compose_run(
        ["data=fashion_mnist", "pair=fashion_mnist", f"data.datamodule.data_dir={data}"],
        tmp_path / "run",
        tmp_path / "cache",
    )
    line = user_error(cfg, capsys)
    if state == "missing":
        assert line.startswith("Error: Fashion-MNIST not found in /nonexistent (looked for ")
    else:
        assert f"cannot read Fashion-MNIST file {data}/train-images-idx3-ubyte.gz" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


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
    from cskd_lightning.losses import CSKDLoss, KDLoss
    from cskd_lightning.preflight import check_batch_for_loss, check_per_process_batch

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
    assert line.startswith(expected) and line.endswith("(config: distill.loss)")


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


def test_unwritable_output_directory_cli(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("a file")
    line = cli_error([f"hydra.run.dir={afile / 'run'}"], tmp_path)
    assert f"Output directory {afile / 'run'} cannot be written: {afile} is a file" in line


def test_resume_from_missing_or_weights_only_checkpoint(tmp_path: Path) -> None:
    cfg = compose_run(["ckpt_path=last"], tmp_path / "runs" / "now", tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=last: no checkpoint in .*now"):
        resolve_resume(cfg, tmp_path / "runs" / "now")
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
