"""benchmarks/gpu_check.py --smoke: the GPU check's code paths on the CPU, so it cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO


@pytest.mark.timeout(300)
def test_gpu_check_smoke_passes_and_writes_its_record(tmp_path: Path) -> None:
    out = tmp_path / "record.md"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out)],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    status = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in rows[1:7]}
    assert status == {
        "precision bf16-mixed": "PASS",
        "precision 16-mixed": "SKIP",  # CUDA only, and the record says so
        "channels_last + torch.compile": "PASS",
        "device pipeline, no host sync, logit cache": "PASS",
        "warm cache = live teacher": "PASS",
        "epoch (teacher -> student)": "PASS",
    }, rows
    assert "CUDA only" in out.read_text() and "warm cache" in out.read_text()
