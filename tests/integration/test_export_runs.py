"""``cskd-export`` to ONNX (run by onnxruntime) and the ``cskd-export`` console script's input
errors, on the shared digits run (the rest of the student's life after training:
tests/unit/test_export.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from app_helpers import compose_app, run_cli
from helpers import raw_digits_test_set

from cskd_lightning import load_student
from cskd_lightning.app.export import export
from cskd_lightning.errors import InputError


@pytest.fixture
def run(digits_run: Path) -> Path:
    """The real digits run these tests read (one per session: tests/conftest.py)."""
    return digits_run


def test_cskd_export_onnx_matches_pytorch(run: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (onnx extra)")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (onnx extra)")
    out = tmp_path / "student.onnx"
    record = export(compose_app("export", [f"run_dir={run}", "format=onnx", f"output={out}"]))
    assert record["max_abs_diff"] <= 1e-4
    model, preprocess, _ = load_student(run / "student.pt")
    x = preprocess(raw_digits_test_set()[0])  # 360 images: another batch size than the check's
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-4)


def test_cskd_export_console_script_reports_input_errors(run: Path, tmp_path: Path) -> None:
    bad = run_cli(["cskd-export", f"run_dir={run}", "format=tflite"], cwd=tmp_path)
    assert bad.returncode == 1
    lines = [line for line in bad.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert "format=tflite" in lines[0] and "onnx" in lines[0]
    with pytest.raises(InputError, match="Checkpoint not found"):
        export(compose_app("export", [f"run_dir={tmp_path / 'nothing'}"]))
