"""Every bad input of the catalogue (``tests/error_catalogue.py``, ``docs/errors.md``), given to
the real ``cskd-train`` on top of an existing finished run: exit status 1, one ``Error:``
message naming the problem, no traceback, and the run directory, an unfinished run beside it
and the teacher cache byte-identical afterwards."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from error_catalogue import CASES, Workspace, fill, prepare, run_case, snapshot


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("catalogue"))
    prepare(ws)
    return ws


def test_every_bad_input_fails_in_one_line_and_changes_nothing(workspace: Workspace) -> None:
    ws = workspace
    cases = [c for c in CASES if not (c.cpu_only and torch.cuda.is_available())]
    before = snapshot(ws.run, ws.cache, ws.unfinished)
    assert (ws.run / "summary.json").is_file() and (ws.unfinished / "checkpoints").is_dir()
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda case: run_case(case, ws), cases))
    problems = []
    for outcome in outcomes:
        name, expected = outcome.case.name, fill(outcome.case.expected, ws)
        if outcome.returncode != 1:
            problems.append(f"{name}: exit status {outcome.returncode}")
        if "Traceback" in outcome.stderr:
            problems.append(f"{name}: a traceback")
        lines = [line for line in outcome.stderr.splitlines() if line.startswith("Error: ")]
        if len(lines) != 1:
            problems.append(f"{name}: {len(lines)} 'Error:' messages")
        if expected not in outcome.message:
            problems.append(f"{name}: expected {expected!r} in {outcome.message[:400]!r}")
    assert not problems, "\n".join(problems)
    after = snapshot(ws.run, ws.cache, ws.unfinished)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, changed
    assert not (ws.files / "marker.txt").exists(), "a planted pickle ran its code"
