"""The module group: cskd-train builds its LightningModule from config, so a user's subclass of
DistillationModule trains through the real command (``module._target_=<pkg>.<Class>``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_helpers import FAST, compose_train
from helpers import REPO

from cskd_lightning.app.train import train
from cskd_lightning.errors import InputError
from cskd_lightning.module import DistillationModule

README = REPO / "README.md"


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
