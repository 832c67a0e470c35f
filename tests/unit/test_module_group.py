"""The module group: cskd-train builds its LightningModule from config, so a user's subclass of
DistillationModule trains through the real command (``module._target_=<pkg>.<Class>``)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from app_helpers import FAST, compose_train, read_summary, run_cli
from helpers import REPO

from cskd_lightning.app.train import train
from cskd_lightning.errors import InputError
from cskd_lightning.module import DistillationModule

README = REPO / "README.md"


def readme_package() -> str:
    """The ``my_pkg/__init__.py`` of README's "Your own LightningModule", as written there."""
    text = README.read_text().split("### Your own LightningModule")[1]
    block = text.split("```python\n")[1].split("```")[0]
    assert block.startswith("# my_pkg/__init__.py")
    return block


@pytest.mark.slow
def test_the_readme_subclass_trains_in_every_job_of_a_multirun(tmp_path: Path) -> None:
    """README's WarmupCSKD through the real command: only CE in the first epoch, then CSKD +
    CSWT, in both jobs of a 2-job multirun."""
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text(readme_package())
    sweep = tmp_path / "sweep"
    done = run_cli(
        [
            "cskd-train",
            "-m",
            "module._target_=my_pkg.WarmupCSKD",
            "seed=0,1",
            *FAST,
            "+trainer.limit_val_batches=1",
            "+trainer.limit_test_batches=1",
            f"hydra.sweep.dir={sweep}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=tmp_path,
        PYTHONPATH=".",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for job, seed in (("0", 0), ("1", 1)):
        assert read_summary(sweep / job)["seed"] == seed
        rows = list(csv.DictReader((sweep / job / "metrics.csv").open()))
        epochs = [r for r in rows if r.get("train/loss")]
        assert len(epochs) == 3  # FAST's student epochs
        loss = [float(r["train/loss"]) for r in epochs]
        ce = [float(r["train/ce"]) for r in epochs]
        assert loss[0] == ce[0]  # the subclass: CE alone in epoch 0
        assert all(total > plain for total, plain in zip(loss[1:], ce[1:], strict=True))  # + CSKD


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
    """DistillationModule with an argument of its own that keeps every instance, for the test
    below to inspect."""

    built: list[RecordedModule] = []

    def __init__(self, *args, note: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.note = note
        RecordedModule.built.append(self)


def test_module_options_reach_the_module(tmp_path: Path) -> None:
    """module.<option> still sets DistillationModule's arguments, and +module.<key> a
    subclass's own (train=false, test=false: the run builds the student's module and stops)."""
    overrides = [
        *FAST,
        f"module._target_={__name__}.RecordedModule",
        "module.check_inputs=false",
        "module.channels_last=true",
        "+module.note=mine",
        "train=false",
        "test=false",
    ]
    RecordedModule.built.clear()
    train(compose_train(overrides, tmp_path))
    (module,) = RecordedModule.built
    assert module.check_inputs is False and module.channels_last is True
    assert module.note == "mine"
    assert type(module.loss).__name__ == "CSKDLoss" and module.teacher is not None
