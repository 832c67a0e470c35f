"""The text of ``cskd-report``'s ``report.md``: one row of numbers per run (a DataFrame), the
mean ± sample standard deviation per group, the published numbers beside them, every run and
the failed jobs, as Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cskd_lightning.app.report_runs import FailedJob, Run, never_grouped
from cskd_lightning.published import SOURCES, published_top1

DIGITS = {
    "teacher test acc (%)": 2,
    "student test acc (%)": 2,
    "best val acc (%)": 2,
    "last-epoch val acc (%)": 2,
    "best epoch": 0,
    "epochs": 0,
    "wall time (s)": 1,
}
"""The numeric columns and the decimals of a mean; 0: integer data (a single value prints as
an integer, a mean and std with one decimal)."""
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


def run_values(run: Run) -> dict[str, Any]:
    """One run's numbers for the :data:`DIGITS` columns (accuracies as fractions) and the
    published ones (:func:`cskd_lightning.published.published_top1`; the teacher's from
    ``summary.json``, i.e. ``pair.teacher.published_acc``).

    The best and last-epoch validation accuracy are the summary's, else ``metrics.csv``'s; the
    best epoch is the (1-based) epoch of the highest ``val/acc``, the first one on ties; the
    epochs are those with a ``val/acc``, counted up to the last."""
    student, teacher = run.summary.get("student", {}), run.summary.get("teacher", {})
    val = run.series("val/acc")
    best = last = best_epoch = epochs = None
    if not val.empty:
        best, last = val.max(), val.iloc[-1]
        best_epoch, epochs = val.idxmax() + 1, val.index[-1] + 1
    found = published_top1(str(run.summary.get("data")), str(run.summary.get("pair")), run.method)
    return {
        "teacher test acc (%)": teacher.get("test_acc"),
        "student test acc (%)": student.get("test_acc"),
        "best val acc (%)": _known(student.get("val_acc_best"), best),
        "last-epoch val acc (%)": _known(student.get("val_acc_last"), last),
        "best epoch": best_epoch,
        "epochs": epochs,
        "wall time (s)": run.summary.get("wall_time_s"),
        "published student (%)": found.top1 if found else np.nan,
        "published source": found.source if found else "",
        "published teacher (%)": (teacher.get("published") or {}).get("published_acc", np.nan),
    }


def _known(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


def runs_table(groups: dict[str, list[Run]]) -> pd.DataFrame:
    """One row per run: ``group``, ``seed``, ``selection``, ``data`` (data set and pair),
    ``path``, the :data:`DIGITS` columns in display units (accuracies in percent, NaN where a
    run lacks the value) and the :data:`PUBLISHED` columns."""
    rows = [
        {
            "group": name,
            "seed": str(run.seed),
            "selection": str(run.summary.get("selection", "unknown")),
            "data": f"{run.summary.get('data')} ({run.summary.get('pair')})",
            "path": run.path,
            **run_values(run),
        }
        for name, runs in groups.items()
        for run in runs
    ]
    columns = ["group", "seed", "selection", "data", "path", *DIGITS, *PUBLISHED]
    table = pd.DataFrame(rows, columns=columns)
    numbers = table[list(DIGITS)].apply(pd.to_numeric, errors="coerce")
    table[list(DIGITS)] = numbers.replace([np.inf, -np.inf], np.nan).astype(float)
    table[ACCURACIES] *= 100
    return table


def number(value: float, digits: int) -> str:
    return "–" if pd.isna(value) else f"{value:.{digits}f}"


def mean_std(values: pd.Series, digits: int) -> str:
    """``"mean ± std"`` (sample std, n − 1) of a group's values, ``"–"`` when none is known;
    one known value prints alone; ``(n=k)`` marks a mean over only k of the group's runs;
    ``digits=0`` (integer data) gives a mean and std with one decimal."""
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


def _one(values: pd.Series) -> Any:
    """The group's single value of a column, NaN when its runs disagree or have none."""
    known = values[values != ""].dropna()
    return known.iloc[0] if known.nunique() == 1 else np.nan


def _difference(ours: pd.Series, published: Any) -> str:
    return "–" if pd.isna(published) or ours.isna().all() else f"{ours.mean() - published:+.2f}"


def published_section(table: pd.DataFrame) -> list[str]:
    """The "Against the published numbers" lines of ``report.md``: one row per group whose
    (data, pair, method) has a published student or teacher number, none at all otherwise."""
    rows = []
    for name, runs in table.groupby("group", sort=False):
        student, teacher = _one(runs["published student (%)"]), _one(runs["published teacher (%)"])
        if pd.isna(student) and pd.isna(teacher):
            continue
        source = _one(runs["published source"])
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
    used = sorted({r["source"] for r in rows if r["source"] != "–"})
    return [
        "## Against the published numbers",
        "",
        PUBLISHED_INTRO,
        "",
        *markdown_table(pd.DataFrame(rows)),
        "",
        "Sources (`cskd_lightning/published.py`; the teachers': the pair configs):",
        "",
        *[f"- {key}: {SOURCES[key]}." for key in used],
        "",
    ]


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def render_markdown(
    root: Path,
    table: pd.DataFrame,
    failed: Sequence[FailedJob],
    plots: Sequence[str],
    group_by: Sequence[str] | None = None,
) -> str:
    """The text of ``report.md`` from :func:`runs_table`'s ``table`` (empty: no finished run);
    ``plots``: the figures drawn, of :data:`CAPTIONS`."""
    datasets = sorted(set(table["data"]))
    lines = [
        f"# Distillation report: `{root}`",
        "",
        f"{len(table)} finished run(s) in {table['group'].nunique()} group(s)"
        + (f", {len(failed)} failed job(s)" if failed else "")
        + (f"; data (pair): {', '.join(datasets)}" if datasets else "")
        + ".",
        "",
    ]
    if len(table):
        lines += ["## Results (mean ± std over seeds)", "", INTRO, ""]
        if group_by:
            keys = ", ".join(f"`{k}`" for k in group_by)
            lines += [
                f"Grouped by {keys} (`--group-by`): runs that differ in anything else are "
                "averaged together.",
                "",
            ]
        # Runs that differ in something the grouping does not show, or plain repeats.
        repeats = table[table.duplicated(["group", "seed"], keep=False)]
        repeats = repeats.groupby("group", sort=False)
        if len(repeats):
            lines += [
                "**Repeated seeds** (these runs differ in something not shown, or are repeats):",
                "",
                *[
                    f"- `{name}`: seed {', '.join(sorted(set(rows['seed'])))} more than once"
                    for name, rows in repeats
                ],
                "",
            ]
        results = table.groupby("group", sort=False).agg(
            seeds=("seed", lambda s: f"{len(s)} ({', '.join(s)})"),
            selection=("selection", lambda s: ", ".join(sorted(set(s)))),
            **{col: (col, lambda s, d=d: mean_std(s, d)) for col, d in DIGITS.items()},
        )
        results = results.reset_index().rename(columns={"selection": "selected on"})
        results.insert(0, "method", "`" + results.pop("group") + "`")
        lines += markdown_table(results) + [""]
        lines += published_section(table)
        runs = pd.DataFrame(
            {
                "method": "`" + table["group"] + "`",
                "seed": table["seed"],
                "selected on": table["selection"],
                **{col: table[col].map(lambda v, d=d: number(v, d)) for col, d in DIGITS.items()},
                "directory": table["path"].map(lambda p: _relative(p, root)),
            }
        )
        lines += ["## Runs", "", *markdown_table(runs), ""]

    lines += ["## Failed jobs", ""]
    if failed:
        jobs = pd.DataFrame(
            {
                "directory": [_relative(job.path, root) for job in failed],
                "error (last line of error.txt)": [f"`{job.error}`" for job in failed],
                "overrides": [
                    " ".join(
                        f"`{k}={v}`"
                        for k, v in job.overrides.items()
                        if not never_grouped(k) or k in ("seed", "distill")
                    )
                    for job in failed
                ],
            }
        )
        lines += markdown_table(jobs)
    else:
        lines.append("None.")
    lines.append("")
    if plots:
        lines += ["## Figures", ""]
        for name in plots:
            lines += [f"### {CAPTIONS[name]}", "", f"![{name}]({name})", ""]
    missing = [p for p in CAPTIONS if p not in plots]
    if missing and len(table):
        lines += ["Not drawn:", "", *[f"- `{p}`: {NOT_DRAWN[p]}." for p in missing], ""]
    return "\n".join(lines)
