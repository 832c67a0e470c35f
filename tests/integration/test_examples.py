"""The runnable examples the README points to still run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from helpers import REPO

EXAMPLES = REPO / "examples"


@pytest.mark.parametrize("name", ["loss_in_your_module", "subclass_distillation_module"])
def test_example_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    accuracy = module.main(max_epochs=2)
    assert 0.0 <= accuracy <= 1.0
