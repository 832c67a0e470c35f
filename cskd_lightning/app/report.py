"""``cskd-report DIR``: one Markdown report (``report.md``) and a few plots
(:mod:`~cskd_lightning.app.report_plots`) for a run or a multirun. A directory with a
``summary.json`` is a run; one with an ``error.txt``, or an exit record of a job that failed or
never ended, and no summary is a failed job. Runs are grouped so that a group's runs differ by
their seed alone; a group shows the mean ± sample standard deviation over its seeds."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from cskd_lightning.app.jobs import NOT_FINISHED, failure, read_exit_record
from cskd_lightning.app.run_dir import (
    CLASS_COSINE_CSV,
    ERROR,
    EXIT,
    METRICS_FILE,
    OVERRIDES,
    SUMMARY,
    changes_result,
)
from cskd_lightning.errors import InputError, MissingInputError
from cskd_lightning.published import SOURCES, published_top1

CLASS_COS_PREFIX = "monitor/class_cos/"
SUMMARY_KEYS = ("method", "data", "pair", "selection")  # --group-by names from summary.json
# Overrides that split no group besides those that change no result: the seed is what a group
# averages over, callbacks only log; ``distill`` (the method) is in the label already.
NEVER_GROUPED = ("seed", "callbacks")


@dataclass
class Run:
    """One finished run: its summary, per-epoch metrics, overrides and per-class cosines."""

    path: Path
    summary: dict[str, Any]
    metrics: pd.DataFrame  # index the epoch, one column per metric
    overrides: dict[str, str]
    class_cosine: pd.DataFrame | None  # index the epoch, columns the class

    @property
    def method(self) -> str:
        return str(self.summary.get("method", "?"))

    @property
    def seed(self) -> Any:
        return self.summary.get("seed")

    def series(self, column: str) -> pd.Series:
        """One ``metrics.csv`` column by epoch, the epochs that did not log it left out."""
        return self.metrics[column].dropna() if column in self.metrics else pd.Series(dtype=float)


@dataclass
class FailedJob:
    path: Path
    error: str  # the last line of its error
    overrides: dict[str, str]


def find_runs(root: Path) -> tuple[list[Run], list[FailedJob]]:
    """Every run and failed job under ``root``, sorted by directory."""
    root = Path(root)
    runs = [read_run(p.parent) for p in sorted(root.rglob(SUMMARY))]
    errors: dict[Path, str | None] = {run.path: None for run in runs}  # None: no failure
    for path in sorted(root.rglob(ERROR)):
        lines = path.read_text(errors="replace").strip().splitlines()
        errors.setdefault(path.parent, lines[-1].strip() if lines else "(empty error.txt)")
    # A job killed before its end (SIGKILL, out of memory, a time limit) left no error.txt.
    for path in sorted(root.rglob(EXIT)):
        reason = failure(read_exit_record(path.parent) or {"status": "ok"})
        if reason == NOT_FINISHED:
            reason += ": no summary.json, no error.txt"
        if reason is not None:
            errors.setdefault(path.parent, reason)
    jobs = [FailedJob(p, e, read_overrides(p)) for p, e in errors.items() if e is not None]
    return runs, sorted(jobs, key=lambda job: job.path)


def read_run(path: Path) -> Run:
    """Read one run directory: ``summary.json``, ``metrics.csv`` and the per-class cosines."""
    summary = json.loads((path / SUMMARY).read_text())
    metrics = read_metrics(path / METRICS_FILE)
    overrides = read_overrides(path, summary.get("overrides"))
    return Run(path, summary, metrics, overrides, read_class_cosine(path, metrics))


def read_metrics(path: Path) -> pd.DataFrame:
    """Lightning's ``metrics.csv`` as one row per epoch (the index), one column per metric: an
    epoch's last non-empty value wins (a resumed run may repeat an epoch; test metrics land on
    the epoch after the last); text and non-finite values count as missing."""
    try:
        frame = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        frame = pd.DataFrame()
    if "epoch" not in frame:
        return pd.DataFrame()
    frame = frame.apply(pd.to_numeric, errors="coerce").replace([np.inf, -np.inf], np.nan)
    frame = frame.dropna(subset=["epoch"]).astype({"epoch": int})
    return frame.drop(columns="step", errors="ignore").groupby("epoch").last()


def read_class_cosine(path: Path, metrics: pd.DataFrame) -> pd.DataFrame | None:
    """The monitor's per-class cosines, epochs x classes (NaN where not logged): the
    ``monitor/class_cos/<j>`` columns, else the ``class_cosine.csv`` written for many classes."""
    cosine = metrics.filter(regex=rf"^{CLASS_COS_PREFIX}\d+$").dropna(how="all")
    cosine = cosine.rename(columns=lambda c: int(c.removeprefix(CLASS_COS_PREFIX)))
    if cosine.empty:
        files = [path / CLASS_COSINE_CSV, *sorted(path.rglob(CLASS_COSINE_CSV))]
        file = next((f for f in files if f.is_file()), None)
        if file is None:
            return None
        table = pd.read_csv(file)
        cosine = table.pivot_table(index="epoch", columns="class", values="cos", aggfunc="last")
        if cosine.empty:  # a header and no row yet
            return None
    return cosine.reindex(
        index=range(cosine.index.max() + 1), columns=range(cosine.columns.max() + 1)
    )


def read_overrides(path: Path, items: Any = None) -> dict[str, str]:
    """The run's overrides (``items`` when a list, else ``.hydra/overrides.yaml``): ``+a.b=1``
    -> ``{"a.b": "1"}``."""
    if not isinstance(items, list):
        try:
            items = OmegaConf.to_container(OmegaConf.load(path / OVERRIDES))
        except Exception:  # noqa: BLE001 - none, or damaged: only the label's detail is lost
            items = []
    pairs = (str(item).partition("=") for item in (items if isinstance(items, list) else []))
    return {key.lstrip("+~"): value for key, _, value in pairs}


def never_grouped(key: str) -> bool:
    prefixes = (key == p or key.startswith(p + ".") for p in NEVER_GROUPED)
    return key == "distill" or not changes_result(key) or any(prefixes)


def group_runs(runs: Sequence[Run], group_by: Sequence[str] | None = None) -> dict[str, list[Run]]:
    """``{label: runs}``: by method, data and pair (when they differ) and every override that
    differs between the runs and is not :func:`never_grouped`; or by the keys ``group_by``
    (overrides or :data:`SUMMARY_KEYS`). Groups in the order found, runs sorted by seed."""
    known = {k for r in runs for k in r.overrides}
    keys = list(group_by or ())
    for key in keys:
        if key not in SUMMARY_KEYS and key not in known:
            raise InputError(
                f"--group-by {key}: no run has this override and it is none of "
                f"{', '.join(SUMMARY_KEYS)}; the runs' overrides are "
                f"{', '.join(sorted(known)) or '(none)'}."
            )
    if not keys:
        several_data = len({(r.summary.get("data"), r.summary.get("pair")) for r in runs}) > 1
        keys += ["method", *(["data", "pair"] if several_data else [])]
        varying = (k for k in sorted(known) if len({r.overrides.get(k) for r in runs}) > 1)
        keys += [k for k in varying if not never_grouped(k)]

    def part(run: Run, key: str) -> str:
        if key == "method":
            return run.method
        value = run.summary.get(key) if key in SUMMARY_KEYS else run.overrides.get(key, "(default)")
        return f"{key}={value}"

    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(" ".join(part(run, k) for k in keys) or "all runs", []).append(run)
    return {name: sorted(rs, key=lambda r: str(r.seed)) for name, rs in groups.items()}


# The numeric columns and the decimals of a mean (0: integers; their mean has one decimal).
DIGITS = {
    "teacher test acc (%)": 2,
    "student test acc (%)": 2,
    "best val acc (%)": 2,
    "last-epoch val acc (%)": 2,
    "best epoch": 0,
    "epochs": 0,
    "wall time (s)": 1,
}
ACCURACIES = [column for column in DIGITS if column.endswith("(%)")]
PUBLISHED = ("published student (%)", "published source", "published teacher (%)")

INTRO = (
    "Each cell is the mean ± the sample standard deviation (n − 1) over the group's "
    "seeds; a single seed shows its value alone, and `(n=k)` marks a value only k of "
    "the seeds have. Accuracies are top-1 in percent. *best val acc* is the highest "
    "validation accuracy over the epochs, *last-epoch val acc* the final epoch's; "
    "*best epoch* is the (1-based) epoch where the validation accuracy peaked; the "
    "student's test accuracy is measured with the best checkpoint. *selected on* is "
    "the split the best epoch was chosen on: `validation` (a held-out split) or `test` "
    "(`val_split=0`: the published tables' best-test-epoch convention, which flatters "
    "the accuracy)."
)
PUBLISHED_INTRO = (
    "Each group's student test accuracy beside the published number for its method on its "
    "pair, and the difference (yours minus published, in points). The published numbers are "
    "the best test-epoch top-1 of the standard 240-epoch protocol (MLKD: its own two-view "
    "recipe); compare runs made the same way (`experiment=cifar100_standard`, or "
    "`experiment=imagenet`), and a mean over seeds with a mean. The CSKD methods have no "
    "published per-pair number."
)
CAPTIONS = {
    "val_acc.png": "Student validation accuracy per epoch (mean over seeds, ± 1 std).",
    "cswt_temperature.png": "CSWT per-sample temperatures over training.",
    "class_cosine.png": "Per-class student-teacher batch cosine, epoch x class.",
}
NOT_DRAWN = {
    "val_acc.png": "no run has a `val/acc` column in metrics.csv",
    "cswt_temperature.png": "no run logged CSWT temperatures (a CSWT loss or `callbacks=monitor`)",
    "class_cosine.png": "no run logged per-class cosines (`callbacks=monitor`)",
}


def run_row(group: str, run: Run) -> dict[str, Any]:
    """One run's row of :func:`runs_table`, its accuracies as fractions (the summary's, else
    ``metrics.csv``'s), its best epoch the 1-based epoch of the first highest ``val/acc``."""
    student = {k: v for k, v in run.summary.get("student", {}).items() if v is not None}
    teacher = run.summary.get("teacher", {})
    data, pair = run.summary.get("data"), run.summary.get("pair")
    val = run.series("val/acc")
    logged = {"best": val.max(), "last": val.iloc[-1]} if len(val) else {}
    found = published_top1(str(data), str(pair), run.method)
    return {
        "group": group,
        "seed": str(run.seed),
        "selection": str(run.summary.get("selection", "unknown")),
        "data": f"{data} ({pair})",
        "path": run.path,
        "teacher test acc (%)": teacher.get("test_acc"),
        "student test acc (%)": student.get("test_acc"),
        "best val acc (%)": student.get("val_acc_best", logged.get("best")),
        "last-epoch val acc (%)": student.get("val_acc_last", logged.get("last")),
        "best epoch": val.idxmax() + 1 if len(val) else None,
        "epochs": val.index[-1] + 1 if len(val) else None,
        "wall time (s)": run.summary.get("wall_time_s"),
        "published student (%)": found.top1 if found else np.nan,
        "published source": found.source if found else "",
        "published teacher (%)": (teacher.get("published") or {}).get("published_acc", np.nan),
    }


def runs_table(groups: dict[str, list[Run]]) -> pd.DataFrame:
    """One row per run: group, seed, selection, data (and pair), path, :data:`DIGITS` in display
    units (NaN where unknown), :data:`PUBLISHED`."""
    rows = [run_row(name, run) for name, runs in groups.items() for run in runs]
    columns = ["group", "seed", "selection", "data", "path", *DIGITS, *PUBLISHED]
    table = pd.DataFrame(rows, columns=columns)
    numbers = table[list(DIGITS)].apply(pd.to_numeric, errors="coerce")
    table[list(DIGITS)] = numbers.replace([np.inf, -np.inf], np.nan).astype(float)
    table[ACCURACIES] *= 100
    return table


def number(value: float, digits: int) -> str:
    return "–" if pd.isna(value) else f"{value:.{digits}f}"


def mean_std(values: pd.Series, digits: int) -> str:
    """``"mean ± std"`` (n − 1) of the known values (one alone; ``"–"``: none), ``(n=k)`` when
    only k of the group's runs have one."""
    known = values.dropna()
    if len(known) <= 1:
        text = number(known.iloc[0] if len(known) else np.nan, digits)
    else:
        text = f"{known.mean():.{digits or 1}f} ± {known.std():.{digits or 1}f}"
    return text if len(known) in (0, len(values)) else f"{text} (n={len(known)})"


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """A DataFrame of text as the lines of a Markdown table (``|`` in a cell escaped)."""
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return lines


def block(*parts: str | list[str]) -> list[str]:
    """Lines of Markdown: each part (a line, or lines such as a table's), a blank line after it."""
    lines = []
    for part in parts:
        lines += [part, ""] if isinstance(part, str) else [*part, ""]
    return lines


def _one(values: pd.Series) -> Any:
    """The group's single value of a column, NaN when its runs disagree or have none."""
    known = values[values != ""].dropna()
    return known.iloc[0] if known.nunique() == 1 else np.nan


def _difference(ours: pd.Series, published: Any) -> str:
    return "–" if pd.isna(published) or ours.isna().all() else f"{ours.mean() - published:+.2f}"


def published_section(table: pd.DataFrame) -> list[str]:
    """The "Against the published numbers" lines: a row per group with a published number."""
    rows = []
    for name, runs in table.groupby("group", sort=False):
        student, source, teacher = (_one(runs[column]) for column in PUBLISHED)
        if pd.isna(student) and pd.isna(teacher):
            continue
        ours, ours_teacher = runs["student test acc (%)"], runs["teacher test acc (%)"]
        rows.append(
            {
                "method": f"`{name}`",
                "data (pair)": ", ".join(sorted(set(runs["data"]))),
                "student test acc (%)": mean_std(ours, 2),
                "published (%)": number(student, 2),
                "difference (pts)": _difference(ours, student),
                "source": "–" if pd.isna(source) else str(source),
                "teacher test acc (%)": mean_std(ours_teacher, 2),
                "teacher published (%)": number(teacher, 2),
                "teacher difference (pts)": _difference(ours_teacher, teacher),
            }
        )
    if not rows:
        return []
    sources = sorted({row["source"] for row in rows} - {"–"})
    return block(
        "## Against the published numbers",
        PUBLISHED_INTRO,
        markdown_table(pd.DataFrame(rows)),
        "Sources (`cskd_lightning/published.py`; the teachers': the pair configs):",
        [f"- {key}: {SOURCES[key]}." for key in sources],
    )


def results_section(table: pd.DataFrame, group_by: Sequence[str] | None) -> list[str]:
    """The "Results" lines: how the runs are grouped, repeated seeds, a row per group."""
    lines = block("## Results (mean ± std over seeds)", INTRO)
    if group_by:
        keys = ", ".join(f"`{k}`" for k in group_by)
        text = "(`--group-by`): runs that differ in anything else are averaged together."
        lines += block(f"Grouped by {keys} {text}")
    # Runs that differ in something the grouping does not show, or plain repeats.
    repeats = table[table.duplicated(["group", "seed"], keep=False)].groupby("group", sort=False)
    repeated = [
        f"- `{name}`: seed {', '.join(sorted(set(rows['seed'])))} more than once"
        for name, rows in repeats
    ]
    if repeated:
        title = "**Repeated seeds** (these runs differ in something not shown, or are repeats):"
        lines += block(title, repeated)
    results = table.groupby("group", sort=False).agg(
        seeds=("seed", lambda s: f"{len(s)} ({', '.join(s)})"),
        selection=("selection", lambda s: ", ".join(sorted(set(s)))),
        **{col: (col, lambda s, d=d: mean_std(s, d)) for col, d in DIGITS.items()},
    )
    results = results.reset_index().rename(columns={"selection": "selected on"})
    results.insert(0, "method", "`" + results.pop("group") + "`")
    return lines + block(markdown_table(results))


def runs_section(table: pd.DataFrame, root: Path) -> list[str]:
    """The "Runs" lines: a row per run, its own values and its directory under ``root``."""
    runs = pd.DataFrame(
        {
            "method": "`" + table["group"] + "`",
            "seed": table["seed"],
            "selected on": table["selection"],
            **{col: table[col].map(lambda v, d=d: number(v, d)) for col, d in DIGITS.items()},
            "directory": table["path"].map(lambda path: path.relative_to(root)),
        }
    )
    return block("## Runs", markdown_table(runs))


def failed_section(failed: Sequence[FailedJob], root: Path) -> list[str]:
    """The "Failed jobs" lines: a row per job, its error and the overrides that tell it apart."""
    rows = [
        {
            "directory": job.path.relative_to(root),
            "error (last line of error.txt)": f"`{job.error}`",
            "overrides": " ".join(
                f"`{k}={v}`"
                for k, v in job.overrides.items()
                if not never_grouped(k) or k in ("seed", "distill")
            ),
        }
        for job in failed
    ]
    return block("## Failed jobs", markdown_table(pd.DataFrame(rows)) if rows else "None.")


def render_markdown(
    root: Path,
    table: pd.DataFrame,
    failed: Sequence[FailedJob],
    plots: Sequence[str],
    group_by: Sequence[str] | None = None,
) -> str:
    """The text of ``report.md`` on the runs under ``root``; ``plots``: the figures drawn, of
    :data:`CAPTIONS`."""
    datasets = ", ".join(sorted(set(table["data"])))
    counts = f"{len(table)} finished run(s) in {table['group'].nunique()} group(s)"
    counts += f", {len(failed)} failed job(s)" if failed else ""
    counts += f"; data (pair): {datasets}" if datasets else ""
    lines = block(f"# Distillation report: `{root}`", counts + ".")
    if len(table):
        lines += results_section(table, group_by) + published_section(table)
        lines += runs_section(table, root)
    lines += failed_section(failed, root)
    if plots:
        lines += block("## Figures")
    for name in plots:
        lines += block(f"### {CAPTIONS[name]}", f"![{name}]({name})")
    missing = [f"- `{name}`: {NOT_DRAWN[name]}." for name in CAPTIONS if name not in plots]
    if missing and len(table):
        lines += block("Not drawn:", missing)
    return "\n".join(lines)


def generate_report(
    root: Path, out: Path | None = None, group_by: Sequence[str] | None = None
) -> tuple[Path, list[Run], list[FailedJob]]:
    """Read every run under ``root``; write ``report.md`` and the plots into ``out`` (default:
    ``root``). Returns the report's path, the runs and the failed jobs;
    :class:`~cskd_lightning.errors.MissingInputError` when there is neither."""
    from cskd_lightning.app.report_plots import draw_plots  # it imports Run from here

    root = Path(root).resolve()
    if not root.is_dir():
        raise MissingInputError(f"{root} is not a directory.")
    runs, failed = find_runs(root)
    if not runs and not failed:
        raise MissingInputError(
            f"No runs under {root}: no summary.json (written by cskd-train at the end of each "
            "run) and no error.txt (a failed job) in it or below it. Point cskd-report at a run "
            "directory or a multirun directory."
        )
    groups = group_runs(runs, group_by)
    out = Path(out).resolve() if out else root
    out.mkdir(parents=True, exist_ok=True)
    plots = draw_plots(groups, out)
    report = out / "report.md"
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
        type=lambda text: [key.strip() for key in text.split(",") if key.strip()],
        help="comma-separated keys to group runs by, instead of every override that differs: "
        "override keys (e.g. distill.loss.temperature) or method, data, pair, selection",
    )
    args = parser.parse_args(argv)
    try:
        report, runs, failed = generate_report(args.dir, args.out, args.group_by)
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
