"""The catalogue of bad inputs (``tests/error_catalogue.py``) and its table in docs/errors.md
agree: one row per case, in the catalogue's order (the real runs of every case:
tests/integration/test_error_catalogue.py; the table is written by
``python benchmarks/error_catalogue.py --write docs/errors.md``)."""

from __future__ import annotations

from error_catalogue import CASES
from helpers import REPO


def test_the_catalogue_covers_the_known_bad_inputs() -> None:
    assert len(CASES) >= 26
    assert len({case.name for case in CASES}) == len(CASES)


def test_docs_errors_lists_every_case_of_the_catalogue() -> None:
    text = (REPO / "docs" / "errors.md").read_text()
    table = text.split("<!-- catalogue:start -->")[1].split("<!-- catalogue:end -->")[0]
    rows = table.strip().splitlines()[2:]  # below the header and its rule
    assert len(rows) == len(CASES)
    for row, case in zip(rows, CASES, strict=True):
        what = case.what.replace("|", "\\|").replace("\n", "<br>")
        assert row.startswith(f"| {what} | "), (case.name, row[:200])
