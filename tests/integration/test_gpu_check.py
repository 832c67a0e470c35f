"""benchmarks/gpu_check.py's dry run (--device cpu): the GPU check's code paths on the CPU, so
that its one run on a GPU does not fail on a typo; its JSON record is written check by check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO


@pytest.mark.long
@pytest.mark.timeout(420)
def test_gpu_check_dry_run_passes_and_writes_its_record(tmp_path: Path) -> None:
    out = tmp_path / "record" / "gpu_check.json"
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu"]
    done = subprocess.run(
        [*command, "--steps", "3", "--out", str(out)],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    record = json.loads(out.read_text())
    status = {c["check"]: c["status"] for c in record["checks"]}
    assert status == {
        "environment": "PASS",
        "triton prerequisites": "SKIP",  # CUDA only, and the record says so
        "step time": "PASS",
        "host syncs": "PASS",
        "profiler": "PASS",
        "precision bf16-mixed": "PASS",
        "precision 16-mixed": "SKIP",
        "channels_last + torch.compile": "PASS",
        "device pipeline, no host sync, logit cache": "PASS",
        "warm cache = live teacher": "PASS",
        "epoch (teacher -> student)": "PASS",
    }, record["checks"]
    checks = {c["check"]: c for c in record["checks"]}
    assert record["environment"]["torch"] and record["device"] == "cpu"
    steps = checks["step time"]["steps"]
    assert set(steps) == {
        "default, 1 view",
        "folded teacher, 1 view",
        "compiled, 1 view",
        "default, 2 views",
        "folded teacher, 2 views",
        "compiled, 2 views",
    }
    for timing in steps.values():
        assert timing["ms_per_step"] > 0 and timing["minutes_240_epochs"] > 0
    assert checks["host syncs"]["counted_per_step"] == [0, 0]
    assert len(checks["profiler"]["table"]) > 5
    assert "epoch_table" in record
