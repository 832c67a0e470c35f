"""The module group: cskd-train builds its LightningModule from config, so a user's subclass of
DistillationModule trains through the real command (``module._target_=<pkg>.<Class>``)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from app_helpers import FAST, compose_train, read_summary, run_cli

from cskd_lightning.app.train import train
from cskd_lightning.errors import InputError
from cskd_lightning.module import DistillationModule

PACKAGE = '''
from cskd_lightning import DistillationModule


class MarkedModule(DistillationModule):
    """DistillationModule that logs train/marker = its extra argument every epoch."""

    def __init__(self, *args, marker: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.marker = marker

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train/marker", float(self.marker), on_step=False, on_epoch=True)
        return loss
'''


@pytest.mark.slow
def test_a_subclass_trains_in_every_job_of_a_multirun(tmp_path: Path) -> None:
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text(PACKAGE)
    sweep = tmp_path / "sweep"
    done = run_cli(
        [
            "cskd-train",
            "-m",
            "module._target_=my_pkg.MarkedModule",
            "+module.marker=3.5",
            "seed=0,1",
            *FAST,
            "+trainer.limit_val_batches=1",
            "+trainer.limit_test_batches=1",
            f"hydra.sweep.dir={sweep}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=tmp_path,
        PYTHONPATH=str(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for job, seed in (("0", 0), ("1", 1)):
        summary = read_summary(sweep / job)
        assert summary["seed"] == seed
        assert summary["metrics"]["train/marker"] == 3.5
        rows = list(csv.DictReader((sweep / job / "metrics.csv").open()))
        marked = [float(r["train/marker"]) for r in rows if r.get("train/marker")]
        assert marked == [3.5] * 3  # one per student epoch (FAST trains 3)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("my_missing_pkg.Module", "cannot be imported (No module named 'my_missing_pkg')"),
        ("cskd_lightning.NoSuchModule", "cannot be imported"),
        ("cskd_lightning.CSKDLoss", "is not a DistillationModule subclass"),
        ("DistillationModule", "is not a class path"),
    ],
)
def test_a_bad_module_target_fails_before_anything_trains(
    target: str, message: str, tmp_path: Path
) -> None:
    cfg = compose_train([*FAST, f"module._target_={target}"], tmp_path)
    with pytest.raises(InputError, match="module._target_") as err:
        train(cfg)
    assert message in str(err.value)
    assert not (tmp_path / "cache").exists()  # no teacher trained
    assert not (tmp_path / "run" / "config.yaml").exists()


class RecordedModule(DistillationModule):
    """DistillationModule that keeps every instance, for the test below to inspect."""

    built: list[DistillationModule] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        RecordedModule.built.append(self)


def test_module_options_reach_the_module(tmp_path: Path) -> None:
    """module.<option> still sets DistillationModule's arguments (train=false, test=false: the
    run builds the student's module and stops)."""
    overrides = [
        *FAST,
        f"module._target_={__name__}.RecordedModule",
        "module.check_inputs=false",
        "module.channels_last=true",
        "train=false",
        "test=false",
    ]
    RecordedModule.built.clear()
    train(compose_train(overrides, tmp_path))
    (module,) = RecordedModule.built
    assert module.check_inputs is False and module.channels_last is True
    assert type(module.loss).__name__ == "CSKDLoss" and module.teacher is not None
