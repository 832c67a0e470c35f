"""The runnable examples the README points to run as documented, and their distilled students
learn: well above chance (10 classes: 10 %) after the examples' own 5 epochs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from helpers import REPO

from cskd_lightning.checkpoints import load_weights
from cskd_lightning.data import DigitsDataModule
from cskd_lightning.models import create_model

EXAMPLES = REPO / "examples"


def run_example(name: str) -> float:
    """``main()`` of ``examples/<name>.py`` with its defaults; the accuracy it returns."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main()


def test_loss_in_your_module_distils_a_student(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    accuracy = run_example("loss_in_your_module")  # the student's validation accuracy
    assert accuracy > 0.5


def test_subclass_distillation_module_distils_and_exports_its_student(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    accuracy = run_example("subclass_distillation_module")  # test/acc of the trained module
    assert accuracy > 0.5
    # The weights it exports (export_student: a plain state_dict) are the tested student's.
    student = load_weights(
        create_model("digits_student", num_classes=10, in_channels=1), tmp_path / "student.pt"
    ).eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in DigitsDataModule(batch_size=64).test_dataloader():
            correct += int((student(x).argmax(-1) == y).sum())
            total += len(y)
    assert correct / total == pytest.approx(accuracy, abs=1e-6)


def test_the_readme_distill_snippet_trains_from_a_trained_teacher_as_written(
    tmp_path: Path,
) -> None:
    """README's "Python API" snippet, copied literally and run as a script: the teacher it
    trains is well above chance (no "looks untrained" warning) and so is its student."""
    import subprocess
    import sys

    text = (REPO / "README.md").read_text().split("## Python API")[1]
    snippet = text.split("```python\n")[1].split("```")[0]
    assert "train_teacher(" in snippet and "distill(" in snippet
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    done = subprocess.run(
        [sys.executable, "-W", "always::UserWarning", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "looks untrained" not in done.stderr
    printed = float(done.stdout.strip().splitlines()[-1])
    assert printed > 0.85, done.stdout[-2000:]
