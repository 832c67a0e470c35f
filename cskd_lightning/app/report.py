"""``cskd-report DIR``: one Markdown report (``report.md``) and a few plots for a run or a
multirun (README, "Results and reports"). The runs are found, read and grouped by
:mod:`~cskd_lightning.app.report_runs`, tabled by :mod:`~cskd_lightning.app.report_table` and
drawn by :mod:`~cskd_lightning.app.report_plots`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cskd_lightning.app.report_plots import draw_plots
from cskd_lightning.app.report_runs import FailedJob, Run, find_runs, group_runs
from cskd_lightning.app.report_table import render_markdown, runs_table
from cskd_lightning.errors import InputError, MissingInputError

REPORT = "report.md"


class NoRunsError(MissingInputError):
    """The directory holds no run (no ``summary.json``) and no failed job."""


def generate_report(
    root: Path, out: Path | None = None, group_by: Sequence[str] | None = None
) -> Path:
    """Read every run under ``root``; write ``report.md`` and the plots into ``out``/``root``.

    ``group_by``: the keys to group runs by (:func:`~cskd_lightning.app.report_runs.group_runs`).
    Returns the path of ``report.md``. Raises :class:`NoRunsError` when ``root`` holds neither
    runs nor failed jobs and :class:`~cskd_lightning.errors.InputError` for a ``group_by`` key
    no run has."""
    return _generate(root, out, group_by)[0]


def _generate(
    root: Path, out: Path | None, group_by: Sequence[str] | None = None
) -> tuple[Path, list[Run], list[FailedJob]]:
    root = Path(root).resolve()
    if not root.is_dir():
        raise NoRunsError(f"{root} is not a directory.")
    runs, failed = find_runs(root)
    if not runs and not failed:
        raise NoRunsError(
            f"No runs under {root}: no summary.json (written by cskd-train at the end of each "
            "run) and no error.txt (a failed job) in it or below it. Point cskd-report at a run "
            "directory or a multirun directory."
        )
    groups = group_runs(runs, group_by)
    out = Path(out).resolve() if out else root
    out.mkdir(parents=True, exist_ok=True)
    plots = draw_plots(groups, out)
    report = out / REPORT
    report.write_text(render_markdown(root, runs_table(groups), failed, plots, group_by))
    return report, runs, failed


def main(argv: Sequence[str] | None = None) -> int:
    """The ``cskd-report`` console script: 0, 1 when every job failed, 2 on a bad input."""
    parser = argparse.ArgumentParser(
        prog="cskd-report",
        description="Summarise the runs under a run or multirun directory of cskd-train: "
        "report.md (accuracy table, mean ± std over seeds; failed jobs) and PNG plots "
        "(val_acc.png, cswt_temperature.png, class_cosine.png).",
    )
    parser.add_argument("dir", type=Path, help="a run directory or a multirun directory")
    parser.add_argument("--out", type=Path, help="where to write the report (default: DIR)")
    parser.add_argument(
        "--group-by",
        default=None,
        help="comma-separated keys to group runs by, instead of every override that differs: "
        "override keys (e.g. distill.loss.temperature) or method, data, pair, selection",
    )
    args = parser.parse_args(argv)
    group_by = [k.strip() for k in args.group_by.split(",") if k.strip()] if args.group_by else None
    try:
        report, runs, failed = _generate(args.dir, args.out, group_by)
    except InputError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    print(f"{len(runs)} run(s), {len(failed)} failed job(s): wrote {report}")
    if not runs:
        print("Error: every job failed; see the report's list.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
