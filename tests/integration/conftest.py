"""Every test in this folder runs the real commands, real multi-epoch fits or real process
groups: each one is marked ``slow``, so ``pytest -m "not slow"`` is the quick loop (tests/unit)
and ``pytest`` runs both folders."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The hook sees the whole session's items, not only this folder's.
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)
