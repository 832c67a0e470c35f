"""LightningCLI with the YAML of ``examples/lightning_cli/``, through the real command line:
a teacher checkpoint loaded from YAML (``Pretrained``), the module's scheduler as a
``class_path``, Lightning's own ``--lr_scheduler`` (handed to the module by ``DistillationCLI``,
refused by plain ``LightningCLI``, which would drop it)."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO

from cskd_lightning.checkpoints import CheckpointError
from cskd_lightning.models import Pretrained, create_model

EXAMPLE = REPO / "examples" / "lightning_cli"
FAST = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "4"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with ``teacher.ckpt`` written by the example's ``make_teacher.py``."""
    root = tmp_path_factory.mktemp("cli")
    spec = importlib.util.spec_from_file_location("make_teacher", EXAMPLE / "make_teacher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    accuracy = module.main(epochs=3, out=str(root / "teacher.ckpt"))
    assert accuracy > 0.8
    return root


def cli(script: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(script), "fit", "--config", str(EXAMPLE / "config.yaml"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def last_run(root: Path) -> Path:
    return sorted((root / "logs" / "lightning_logs").glob("version_*"))[-1]


def read_metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def saved_checkpoint(run: Path) -> dict:
    return torch.load(sorted((run / "checkpoints").glob("*.ckpt"))[-1], weights_only=False)


def test_the_example_yaml_distils_from_the_teacher_checkpoint_with_its_scheduler(
    workdir: Path,
) -> None:
    done = cli(EXAMPLE / "distill.py", FAST, workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    run = last_run(workdir)
    # The teacher is the trained checkpoint (a random one scores about 10%).
    teacher_acc = [float(r["val/teacher_acc"]) for r in read_metrics(run) if r["val/teacher_acc"]]
    assert teacher_acc and min(teacher_acc) > 0.8
    # The module's scheduler, given as a class_path, ran: cosine over T_max=20, two epochs.
    state = saved_checkpoint(run)
    (scheduler,) = state["lr_schedulers"]
    assert scheduler["T_max"] == 20 and scheduler["last_epoch"] == 2
    lr = state["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr == pytest.approx(0.025 * (1 + torch.cos(torch.tensor(torch.pi * 2 / 20)).item()))
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["teacher"]["class_path"] == "cskd_lightning.models.Pretrained"


def test_lightnings_own_lr_scheduler_reaches_the_student(workdir: Path) -> None:
    args = [*FAST, "--model.scheduler", "null", "--lr_scheduler", "StepLR"]
    args += ["--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.5"]
    done = cli(EXAMPLE / "distill.py", args, workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    state = saved_checkpoint(last_run(workdir))
    (scheduler,) = state["lr_schedulers"]
    assert scheduler["step_size"] == 1 and scheduler["last_epoch"] == 2
    (group,) = state["optimizer_states"][0]["param_groups"]
    assert group["lr"] == pytest.approx(0.05 * 0.5**2)
    # The module's optimizer over the student's parameters alone (Lightning's own override
    # would optimise every parameter of the module, the frozen teacher's too).
    assert len(group["params"]) == len(list(create_model("digits_student", 10, 1).parameters()))


def test_plain_lightning_cli_refuses_a_scheduler_it_would_drop(workdir: Path) -> None:
    script = workdir / "plain_cli.py"
    script.write_text(
        "from lightning.pytorch.cli import LightningCLI\n"
        "from cskd_lightning import DistillationModule\n"
        "from cskd_lightning.data import DigitsDataModule\n"
        "LightningCLI(DistillationModule, DigitsDataModule)\n"
    )
    args = [*FAST, "--model.scheduler", "null", "--lr_scheduler", "StepLR"]
    done = cli(script, [*args, "--lr_scheduler.step_size", "1"], workdir)
    assert done.returncode == 1
    assert "--lr_scheduler was given without --optimizer, and Lightning ignores it" in done.stderr
    assert "`Trainer.fit` stopped" not in done.stderr


def test_pretrained_loads_the_weights_and_names_a_bad_file(workdir: Path) -> None:
    teacher = Pretrained("digits_teacher", workdir / "teacher.ckpt", num_classes=10, in_channels=1)
    saved = torch.load(workdir / "teacher.ckpt", weights_only=True)
    assert all(torch.equal(teacher.model.state_dict()[k], v) for k, v in saved.items())
    assert teacher(torch.zeros(2, 1, 8, 8)).shape == (2, 10) and teacher.num_classes == 10
    with pytest.raises(CheckpointError, match="do not fit SmallCNN"):
        Pretrained("digits_student", workdir / "teacher.ckpt", num_classes=10, in_channels=1)
