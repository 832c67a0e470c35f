"""Run every bad input of the catalogue through the real ``cskd-train`` and write the table of
``docs/errors.md`` from what the runs printed (the test
``tests/integration/test_error_catalogue.py`` checks the same cases).

    python benchmarks/error_catalogue.py --write docs/errors.md

Each case runs on top of an existing, finished run directory; the table shows the message
each one ended with (paths shortened to ``/tmp/demo``), and the script fails if any case did
not end with exit status 1 and one ``Error:`` message, or changed the run directory or the
teacher cache.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from error_catalogue import CASES, Workspace, fill, prepare, run_case, snapshot  # noqa: E402

START, END = "<!-- catalogue:start -->", "<!-- catalogue:end -->"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def code(text: str) -> str:
    """A Markdown code span, which may itself hold backticks."""
    return f"`` {cell(text)} ``" if "`" in text else f"`{cell(text)}`"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, default=None, help="the errors.md to update")
    args = parser.parse_args(argv)
    ws = Workspace(Path(tempfile.mkdtemp(prefix="catalogue_")))
    prepare(ws)
    before = snapshot(ws.run, ws.cache, ws.unfinished)
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda case: run_case(case, ws), CASES))
    unchanged = snapshot(ws.run, ws.cache, ws.unfinished) == before
    rows, failures = [], []
    for outcome in outcomes:
        case = outcome.case
        lines = [ln for ln in outcome.stderr.splitlines() if ln.startswith("Error: ")]
        if (
            outcome.returncode != 1
            or len(lines) != 1
            or fill(case.expected, ws) not in outcome.message
        ):
            failures.append(case.name)
        parts = [f"{k}={v}" for k, v in case.env.items()] + list(case.overrides)
        if case.run_dir != "{run}":
            parts.append(f"hydra.run.dir={case.run_dir}")
        shown = " ".join(parts)
        for key, value in (("{files}", "files"), ("{run}", "run"), ("{unfinished}", "unfinished")):
            shown = shown.replace(key, f"/tmp/demo/{value}")
        message = outcome.message.replace(str(ws.root), "/tmp/demo")
        rows.append(f"| {cell(case.what)} | {code(shown)} | {code(message)} |")
    print(
        f"{len(CASES) - len(failures)} of {len(CASES)} cases ended as documented; run "
        f"directory and teacher cache {'unchanged' if unchanged else 'CHANGED'}"
    )
    if failures:
        print("not as documented:", ", ".join(failures))
    if args.write:
        table = "\n".join(
            [
                START,
                "| bad input | example (on top of the finished run `/tmp/demo/run`) | "
                "what you see (stderr; exit status 1) |",
                "|---|---|---|",
                *rows,
                END,
            ]
        )
        text = args.write.read_text()
        head, rest = text.split(START, 1)
        args.write.write_text(head + table + rest.split(END, 1)[1])
    return 0 if not failures and unchanged else 1


if __name__ == "__main__":
    sys.exit(main())
