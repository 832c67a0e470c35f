"""``cskd-report DIR``: one Markdown report and a few plots for a run or a multirun.

Every directory under ``DIR`` that holds a ``summary.json`` (what ``cskd-train`` writes at the
end of a run) counts as a run; a directory with an ``error.txt`` and no summary is a failed
job, and so is a sweep job whose exit record (``exit.json``) says it started and never ended.
Runs are grouped by method (plus the data set, the teacher/student pair and any other
command-line override that differs between runs, the seed aside); a group's seeds are its runs.

Written into ``DIR`` (or ``--out``):

- ``report.md``: per group, mean ± sample standard deviation over seeds of the teacher's and
  the student's test accuracy, the best-epoch and last-epoch validation accuracy, the best
  epoch, the number of epochs and the wall time; on a CIFAR-100 or ImageNet pair, each
  group's student (and teacher) accuracy beside the published one, its source and the
  difference (:mod:`cskd_lightning.published`, ``pair.teacher.published_acc``); then every
  run, and the failed jobs;
- ``val_acc.png``: validation accuracy per epoch per group (mean over seeds, ± 1 std band);
- ``cswt_temperature.png``: the CSWT temperatures over training (the ``TemperatureMonitor``'s
  10/50/90% quantiles, else the loss's own per-epoch mean/min/max);
- ``class_cosine.png``: the per-class student-teacher batch cosine, epoch x class, when the
  ``TemperatureMonitor`` ran (``callbacks=monitor``).

A run's ``metrics.csv`` is read into a pandas DataFrame (one row per epoch), the report's tables
are DataFrames (one row per run, aggregated per group). ``cskd-report --help``: the options.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from cskd_lightning.app.jobs import EXIT_FILE, read_exit_record
from cskd_lightning.errors import InputError, MissingInputError
from cskd_lightning.published import SOURCES, published_top1

SUMMARY = "summary.json"
METRICS = "metrics.csv"
ERROR = "error.txt"
CLASS_COSINE_CSV = "class_cosine.csv"
CLASS_COS_PREFIX = "monitor/class_cos/"
REPORT = "report.md"
PLOTS = ("val_acc.png", "cswt_temperature.png", "class_cosine.png")

#: Overrides that never split runs into groups: the seed is what a group averages over, the
#: method (``distill=<name>``) is in the label already, the rest only moves files, resumes or
#: changes the display. ``distill.loss.*`` values do split groups.
IGNORED_OVERRIDES = (
    "seed",
    "hydra",
    "paths",
    "callbacks",
    "logger",
    "ckpt_path",
    "resume_allow_config_change",
    "resume_trust_checkpoint",
    "resume_from_sibling",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
)
IGNORED_EXACTLY = ("distill",)

#: ``--group-by`` names that are not overrides: fields of ``summary.json``.
SUMMARY_KEYS = ("method", "data", "pair", "selection")

#: The report's numeric columns and the decimals of a mean. 0 marks integer data (epochs): a
#: single value prints as an integer, a mean and std with one decimal.
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

#: The CSWT temperature columns of ``metrics.csv``: the ``TemperatureMonitor``'s quantiles of
#: the epoch's per-sample T_i (preferred), else the loss's own per-batch mean/min/max.
TEMPERATURES = {
    "monitor": {
        "mean": "monitor/cswt_t_mean",
        "low": "monitor/cswt_t_q10",
        "mid": "monitor/cswt_t_q50",
        "high": "monitor/cswt_t_q90",
    },
    "loss": {"mean": "train/cswt_t_mean", "low": "train/cswt_t_min", "high": "train/cswt_t_max"},
}
BANDS = {
    "monitor": "10–90% quantiles of the epoch's T_i",
    "loss": "per-batch min–max (t_low–t_high by construction: not drawn)",
}


class NoRunsError(MissingInputError):
    """The directory holds no run (no ``summary.json``) and no failed job (no ``error.txt``)."""


# --- reading runs ---------------------------------------------------------------------------
@dataclass
class Run:
    """One finished run: its summary, its per-epoch metrics and its command-line overrides."""

    path: Path
    summary: dict[str, Any]
    metrics: pd.DataFrame  # index the epoch, one column per metric (see read_metrics)
    overrides: dict[str, str]
    class_cosine: pd.DataFrame | None  # index the epoch, columns the class (read_class_cosine)

    @property
    def method(self) -> str:
        return str(self.summary.get("method", "?"))

    @property
    def seed(self) -> Any:
        return self.summary.get("seed")

    def series(self, column: str) -> pd.Series:
        """One ``metrics.csv`` column by epoch, the epochs that did not log it left out."""
        if column not in self.metrics:
            return pd.Series(dtype=float)
        return self.metrics[column].dropna()


@dataclass
class FailedJob:
    """A job that left an ``error.txt`` and no ``summary.json``."""

    path: Path
    error: str
    overrides: dict[str, str]


def find_runs(root: Path) -> tuple[list[Run], list[FailedJob]]:
    """Every run (a directory with ``summary.json``) and failed job under ``root``, sorted."""
    root = Path(root)
    runs = [read_run(p.parent) for p in sorted(root.rglob(SUMMARY))]
    done = {r.path for r in runs}
    failed = [
        FailedJob(p.parent, _last_line(p), read_overrides(p.parent))
        for p in sorted(root.rglob(ERROR))
        if p.parent not in done
    ]
    # A sweep job whose exit record says it started and never ended (killed: SIGKILL, out of
    # memory, a time limit) left no error.txt: it is reported too.
    seen = done | {job.path for job in failed}
    for path in sorted(root.rglob(EXIT_FILE)):
        record = read_exit_record(path.parent) or {}
        if path.parent in seen or record.get("status") not in ("running", "failed"):
            continue
        reason = str(record.get("error") or "").strip().splitlines()
        if record.get("status") == "running" or not reason:
            reason = ["did not finish (killed, or still running): no summary.json, no error.txt"]
        failed.append(FailedJob(path.parent, reason[-1], read_overrides(path.parent)))
    return runs, sorted(failed, key=lambda job: job.path)


def read_run(path: Path) -> Run:
    """Read one run directory: ``summary.json``, ``metrics.csv`` and the per-class cosines."""
    summary = json.loads((path / SUMMARY).read_text())
    metrics = read_metrics(path / METRICS)
    overrides = summary.get("overrides")
    overrides = parse_overrides(overrides) if isinstance(overrides, list) else read_overrides(path)
    return Run(path, summary, metrics, overrides, read_class_cosine(path, metrics))


def read_metrics(path: Path) -> pd.DataFrame:
    """Lightning's ``metrics.csv`` as one row per epoch (the index), one column per metric.

    Lightning writes the train and validation metrics of one epoch on different rows; the last
    non-empty value of an epoch wins (a resumed run may repeat an epoch). Test metrics, logged
    after training with the next epoch number, land on that epoch's row. Text and non-finite
    values count as missing. An absent or empty file gives an empty frame.
    """
    try:
        frame = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()
    if "epoch" not in frame:
        return pd.DataFrame()
    frame = frame.apply(pd.to_numeric, errors="coerce").replace([np.inf, -np.inf], np.nan)
    frame = frame.dropna(subset=["epoch"]).astype({"epoch": int})
    return frame.drop(columns="step", errors="ignore").groupby("epoch").last()


def read_class_cosine(path: Path, metrics: pd.DataFrame) -> pd.DataFrame | None:
    """The monitor's per-class cosines, epochs ``0..last`` x classes ``0..last`` (NaN where not
    logged): the ``monitor/class_cos/<j>`` columns of ``metrics.csv``, else the
    ``class_cosine.csv`` (``epoch,class,cos``) the monitor writes for many classes."""
    columns = {
        c: int(c[len(CLASS_COS_PREFIX) :])
        for c in metrics
        if c.startswith(CLASS_COS_PREFIX) and c[len(CLASS_COS_PREFIX) :].isdigit()
    }
    cosine = metrics[list(columns)].rename(columns=columns).dropna(how="all")
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


def read_overrides(path: Path) -> dict[str, str]:
    """The run's Hydra command-line overrides ``{key: value}`` (``.hydra/overrides.yaml``)."""
    file = path / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return {}
    try:
        items = OmegaConf.to_container(OmegaConf.load(file))
    except Exception:  # noqa: BLE001 - a damaged file only loses the label's detail
        return {}
    return parse_overrides(items if isinstance(items, list) else [])


def parse_overrides(items: Iterable[Any]) -> dict[str, str]:
    """``["a.b=1", "+c=2"]`` -> ``{"a.b": "1", "c": "2"}``."""
    pairs = (str(item).partition("=") for item in items)
    return {key.lstrip("+~"): value for key, _, value in pairs}


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").strip().splitlines() if line]
    return lines[-1].strip() if lines else "(empty error.txt)"


# --- grouping -------------------------------------------------------------------------------
def _ignored(key: str) -> bool:
    return key in IGNORED_EXACTLY or any(
        key == p or key.startswith(p + ".") for p in IGNORED_OVERRIDES
    )


def varying_overrides(items: Iterable[dict[str, str]]) -> list[str]:
    """The override keys (seed and file locations aside) whose value is not the same in all."""
    items = list(items)
    keys = sorted({k for o in items for k in o if not _ignored(k)})
    return [k for k in keys if len({o.get(k) for o in items}) > 1]


def group_runs(runs: Sequence[Run], group_by: Sequence[str] | None = None) -> dict[str, list[Run]]:
    """Group runs so that a group's runs differ by their seed alone: ``{label: runs}``.

    By default: by method, data and pair (when they differ) and every override that differs
    between the runs (the seed and file locations aside), e.g. ``distill.loss.temperature`` or
    an Optuna trial's parameters. ``group_by``: group by these keys only instead, override keys
    or ``method``, ``data``, ``pair``, ``selection`` (the other differences are then averaged
    over, and the report says so). Values show in the label; groups keep the order in which
    their first run was found, and a group's runs are sorted by seed.
    """
    if group_by:
        keys = list(group_by)
        known = {k for r in runs for k in r.overrides}
        for key in keys:
            if key not in SUMMARY_KEYS and key not in known:
                raise InputError(
                    f"--group-by {key}: no run has this override and it is none of "
                    f"{', '.join(SUMMARY_KEYS)}; the runs' overrides are "
                    f"{', '.join(sorted(known)) or '(none)'}."
                )
    else:
        several_data = len({(r.summary.get("data"), r.summary.get("pair")) for r in runs}) > 1
        keys = ["method", *(["data", "pair"] if several_data else [])]
        keys += varying_overrides(r.overrides for r in runs)

    def label(run: Run) -> str:
        parts = []
        for key in keys:
            if key == "method":
                parts.append(run.method)
            elif key in SUMMARY_KEYS:
                parts.append(f"{key}={run.summary.get(key)}")
            else:
                parts.append(f"{key}={run.overrides.get(key, '(default)')}")
        return " ".join(parts) or "all runs"

    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(label(run), []).append(run)
    return {name: sorted(rs, key=lambda r: str(r.seed)) for name, rs in groups.items()}


# --- the numbers ----------------------------------------------------------------------------
def run_values(run: Run) -> dict[str, Any]:
    """One run's numbers for the report's :data:`DIGITS` columns (accuracies as fractions).

    The best and last-epoch validation accuracy are the summary's, else ``metrics.csv``'s; the
    best epoch is the (1-based) epoch of the highest ``val/acc``, the first one on ties; the
    epochs are those with a ``val/acc``, counted up to the last.
    """
    student, teacher = run.summary.get("student", {}), run.summary.get("teacher", {})
    val = run.series("val/acc")
    best = last = best_epoch = epochs = None
    if not val.empty:
        best, last = val.max(), val.iloc[-1]
        best_epoch, epochs = val.idxmax() + 1, val.index[-1] + 1
    return {
        "teacher test acc (%)": teacher.get("test_acc"),
        "student test acc (%)": student.get("test_acc"),
        "best val acc (%)": _first_known(student.get("val_acc_best"), best),
        "last-epoch val acc (%)": _first_known(student.get("val_acc_last"), last),
        "best epoch": best_epoch,
        "epochs": epochs,
        "wall time (s)": run.summary.get("wall_time_s"),
    }


def _first_known(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


#: The published numbers beside a run (:mod:`cskd_lightning.published`, the pair config).
PUBLISHED_COLUMNS = ("published student (%)", "published source", "published teacher (%)")


def published_values(run: Run) -> dict[str, Any]:
    """What was published for the run's (data, pair, method): the student's top-1 and its
    source (:func:`cskd_lightning.published.published_top1`; NaN and ``""`` when nothing is),
    and the teacher's accuracy the run compared its teacher with (``summary.json``'s
    ``teacher.published``, from ``pair.teacher.published_acc``)."""
    data = str(run.summary.get("data"))
    found = published_top1(data, str(run.summary.get("pair")), run.method)
    teacher = run.summary.get("teacher", {}).get("published") or {}
    return {
        "published student (%)": found.top1 if found else np.nan,
        "published source": found.source if found else "",
        "published teacher (%)": teacher.get("published_acc", np.nan),
    }


def runs_table(groups: dict[str, list[Run]]) -> pd.DataFrame:
    """One row per run: ``group``, ``seed``, ``selection``, ``data`` (data set and pair),
    ``path``, the :data:`DIGITS` columns in display units (accuracies in percent; NaN where
    a run lacks the value) and the :data:`PUBLISHED_COLUMNS` (see :func:`published_values`)."""
    rows = [
        {
            "group": name,
            "seed": str(run.seed),
            "selection": str(run.summary.get("selection", "unknown")),
            "data": f"{run.summary.get('data')} ({run.summary.get('pair')})",
            "path": run.path,
            **run_values(run),
            **published_values(run),
        }
        for name, runs in groups.items()
        for run in runs
    ]
    columns = ["group", "seed", "selection", "data", "path", *DIGITS, *PUBLISHED_COLUMNS]
    table = pd.DataFrame(rows, columns=columns)
    numbers = table[list(DIGITS)].apply(pd.to_numeric, errors="coerce")
    table[list(DIGITS)] = numbers.replace([np.inf, -np.inf], np.nan).astype(float)
    table[ACCURACIES] *= 100
    return table


def _number(value: float, digits: int) -> str:
    return "–" if pd.isna(value) else f"{value:.{digits}f}"


def mean_std(values: pd.Series, digits: int) -> str:
    """``"mean ± std"`` (sample std, n − 1) of a group's values, ``"–"`` when none is known.

    One known value prints alone; ``(n=k)`` marks a mean over only k of the group's runs.
    ``digits=0`` (integer data) gives a mean and std with one decimal.
    """
    known = values.dropna()
    if len(known) <= 1:
        text = _number(known.iloc[0] if len(known) else np.nan, digits)
    else:
        text = f"{known.mean():.{digits or 1}f} ± {known.std():.{digits or 1}f}"
    return text if len(known) in (0, len(values)) else f"{text} (n={len(known)})"


def repeated_seeds(table: pd.DataFrame) -> list[str]:
    """Groups in which a seed occurs more than once: runs that differ in something the grouping
    does not show (a changed default, another code version) or plain repeats."""
    repeats = table[table.duplicated(["group", "seed"], keep=False)]
    return [
        f"`{name}`: seed {', '.join(sorted(set(rows['seed'])))} more than once"
        for name, rows in repeats.groupby("group", sort=False)
    ]


# --- the Markdown report --------------------------------------------------------------------
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


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """A DataFrame of text as the lines of a Markdown table (``|`` in a cell escaped)."""
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return lines


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _override_text(overrides: dict[str, str]) -> str:
    keep = {k: v for k, v in overrides.items() if not _ignored(k) or k in ("seed", "distill")}
    return " ".join(f"`{k}={v}`" for k, v in keep.items())


PUBLISHED_INTRO = (
    "Each group's student test accuracy beside the published number for its method on its "
    "pair, and the difference (yours minus published, in points). The published numbers are "
    "the best test-epoch top-1 of the standard 240-epoch protocol (MLKD: its own two-view "
    "recipe); compare runs made the same way (`experiment=cifar100_standard`, or "
    "`experiment=imagenet`), and a mean over seeds with a mean. The CSKD methods have no "
    "published per-pair number."
)


def _one(values: pd.Series) -> Any:
    """The group's single value of a column, NaN/``""`` when its runs disagree or have none."""
    known = values.dropna()
    known = known if pd.api.types.is_numeric_dtype(known) else known[known != ""]
    return known.iloc[0] if len(known) and known.nunique() == 1 else np.nan


def published_section(table: pd.DataFrame) -> list[str]:
    """The "Against the published numbers" lines of ``report.md``: one row per group whose
    (data, pair, method) has a published student or teacher number, none at all otherwise."""
    groups = table.groupby("group", sort=False)
    rows = []
    for name, runs in groups:
        student, source = _one(runs["published student (%)"]), _one(runs["published source"])
        teacher = _one(runs["published teacher (%)"])
        if pd.isna(student) and pd.isna(teacher):
            continue
        ours = runs["student test acc (%)"].dropna()
        ours_teacher = runs["teacher test acc (%)"].dropna()
        rows.append(
            {
                "method": f"`{name}`",
                "data (pair)": ", ".join(sorted(set(runs["data"]))),
                "student test acc (%)": mean_std(runs["student test acc (%)"], 2),
                "published (%)": _number(student, 2),
                "difference (pts)": (
                    "–" if pd.isna(student) or ours.empty else f"{ours.mean() - student:+.2f}"
                ),
                "source": "–" if pd.isna(source) else str(source),
                "teacher test acc (%)": mean_std(runs["teacher test acc (%)"], 2),
                "teacher published (%)": _number(teacher, 2),
                "teacher difference (pts)": (
                    "–"
                    if pd.isna(teacher) or ours_teacher.empty
                    else f"{ours_teacher.mean() - teacher:+.2f}"
                ),
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


def render_markdown(
    root: Path,
    table: pd.DataFrame,
    failed: Sequence[FailedJob],
    plots: Sequence[str],
    group_by: Sequence[str] | None = None,
) -> str:
    """The text of ``report.md`` from :func:`runs_table`'s ``table`` (empty: no finished run)."""
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
        if repeats := repeated_seeds(table):
            lines += [
                "**Repeated seeds** (these runs differ in something not shown, or are repeats):",
                "",
                *[f"- {r}" for r in repeats],
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
                **{col: table[col].map(lambda v, d=d: _number(v, d)) for col, d in DIGITS.items()},
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
                "overrides": [_override_text(job.overrides) for job in failed],
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
    missing = [p for p in PLOTS if p not in plots]
    if missing and len(table):
        lines += ["Not drawn:", "", *[f"- `{p}`: {NOT_DRAWN[p]}." for p in missing], ""]
    return "\n".join(lines)


# --- plots ----------------------------------------------------------------------------------
# matplotlib is imported where a figure is drawn: reading runs and writing the tables do not
# need it. The figures are plain ``matplotlib.figure.Figure`` objects, not pyplot's: their
# ``savefig`` renders PNG with the non-interactive Agg backend, needs no display and leaves the
# pyplot backend of the process that imports this module (a notebook, a test session) alone.
def _figure(panels: int, sharey: bool = True):
    """``panels`` axes, at most 3 a row, in a figure at least 9 inches wide (room for titles);
    returns the figure, the axes and a panel's width in inches."""
    from matplotlib.figure import Figure

    cols = min(panels, 3)
    rows = -(-panels // cols)
    width = max(9.0, 5.0 * cols)
    fig = Figure(figsize=(width, 4.0 * rows + 1.2), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, list(axes[:panels]), width / cols


def _wrap(text: str, inches: float) -> str:
    """Wrap a title to about the width of ``inches`` (at the default font size)."""
    return "\n".join(textwrap.wrap(text, width=max(20, int(inches * 9))))


def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def per_epoch(runs: Sequence[Run], column: str) -> pd.DataFrame:
    """``column`` of every run that logged it: index the epoch (union over runs), one column
    per run, NaN where a run has no value for an epoch."""
    return pd.DataFrame({i: r.series(column) for i, r in enumerate(runs) if column in r.metrics})


def plot_val_acc(groups: dict[str, list[Run]], path: Path) -> bool:
    """Validation accuracy per epoch per group: mean over seeds, ± 1 std band."""
    curves = {name: 100 * per_epoch(runs, "val/acc") for name, runs in groups.items()}
    curves = {name: acc for name, acc in curves.items() if acc.notna().any(axis=None)}
    if not curves:
        return False
    fig, (ax,), _ = _figure(1)
    for name, acc in curves.items():
        x, mean = acc.index + 1, acc.mean(axis=1)
        (line,) = ax.plot(x, mean, marker="o", markersize=3, label=f"{name} (n={acc.shape[1]})")
        if acc.shape[1] > 1:
            std = acc.std(axis=1).fillna(0.0)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    drawn = [r for name in curves for r in groups[name]]
    teacher = pd.Series([r.summary.get("teacher", {}).get("test_acc") for r in drawn], dtype=float)
    one_data_set = len({(r.summary.get("data"), r.summary.get("pair")) for r in drawn}) == 1
    if one_data_set and teacher.notna().any():  # one teacher accuracy means something
        label = "teacher (test acc, mean over runs)"
        ax.axhline(100 * teacher.mean(), color="grey", linestyle="--", linewidth=1, label=label)
    ax.set_title(
        "Student validation accuracy per epoch\n"
        "line: mean over seeds; shaded band: ± 1 standard deviation over seeds"
    )
    ax.set_xlabel("training epoch (1 = after the first training epoch)")
    ax.set_ylabel("validation top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(title="method (n = seeds)", fontsize="small")
    _integer_ticks(ax.xaxis)
    fig.savefig(path, dpi=120)
    return True


def temperatures(runs: Sequence[Run]) -> tuple[str, pd.DataFrame, int] | None:
    """The group's CSWT temperatures per epoch, averaged over its seeds:
    ``(source, frame with columns mean/low/high (and mid from the monitor), seeds)``, from the
    monitor where a run logged it, else from the loss; ``None`` when no run logged either."""
    for source, columns in TEMPERATURES.items():
        found = [r for r in runs if not r.series(columns["mean"]).empty]
        if found:
            names = {column: key for key, column in columns.items()}
            frames = [r.metrics.reindex(columns=list(names)).rename(columns=names) for r in found]
            mean = pd.concat(frames).groupby(level=0).mean().dropna(how="all")
            return source, mean, len(found)
    return None


def plot_temperatures(groups: dict[str, list[Run]], path: Path) -> bool:
    """Per group, the CSWT temperatures per epoch (quantile band, median, mean)."""
    panels = [(name, runs, t) for name, runs in groups.items() if (t := temperatures(runs))]
    if not panels:
        return False
    fig, axes, panel_width = _figure(len(panels))
    for ax, (name, runs, (source, t, n)) in zip(axes, panels, strict=True):
        x = t.index + 1
        if source == "monitor":  # the loss's min-max is t_low-t_high by construction: no band
            ax.fill_between(
                x, t["low"], t["high"], alpha=0.25, color="tab:orange", label=BANDS[source]
            )
        if "mid" in t:
            ax.plot(x, t["mid"], color="tab:red", marker="o", markersize=3, label="median")
        ax.plot(x, t["mean"], color="black", linestyle="--", label="mean")
        title = f"{name} (n={n} seeds)"
        if all(r.series(TEMPERATURES["loss"]["mean"]).empty for r in runs):
            title += " — diagnostic only: this loss does not use CSWT"
        if source == "loss":
            title += " — the mean alone (callbacks=monitor adds the spread)"
        ax.set_title(_wrap(title, panel_width), fontsize="medium")
        ax.set(xlabel="epoch")
        _integer_ticks(ax.xaxis)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_ylabel("per-sample temperature T_i (unitless)")
    fig.suptitle(
        _wrap(
            "CSWT temperatures per training epoch: each sample's softmax temperature T_i, from "
            "t_low (default 2: the sample where the student agrees most with the teacher) to "
            "t_high (default 6: the least); averaged over seeds",
            panel_width * len(axes[:3]),
        )
    )
    fig.savefig(path, dpi=120)
    return True


HEATMAP = {"aspect": "auto", "origin": "lower", "cmap": "viridis", "interpolation": "nearest"}


def plot_class_cosine(groups: dict[str, list[Run]], path: Path) -> bool:
    """Per group, a heatmap of the per-class batch cosine: epochs (rows) x classes (columns),
    averaged over the group's seeds."""
    panels = []
    for name, runs in groups.items():
        found = [r.class_cosine for r in runs if r.class_cosine is not None]
        if found:
            mean = pd.concat(found).groupby(level=0).mean().sort_index(axis=1)
            panels.append((name, mean.to_numpy(dtype=float), len(found)))
    if not panels:
        return False
    vmin = min(np.nanmin(m) for _, m, _ in panels)
    vmax = max(np.nanmax(m) for _, m, _ in panels)
    if vmax - vmin < 1e-6:  # a constant image still needs a colour range
        vmin, vmax = vmin - 1e-3, vmax + 1e-3
    fig, axes, panel_width = _figure(len(panels), sharey=False)
    for ax, (name, matrix, n) in zip(axes, panels, strict=True):
        epochs, classes = matrix.shape
        extent = (-0.5, classes - 0.5, 0.5, epochs + 0.5)  # row e is epoch e + 1
        image = ax.imshow(matrix, extent=extent, vmin=vmin, vmax=vmax, **HEATMAP)
        ax.set_title(_wrap(f"{name} (mean of n={n} seeds)", panel_width), fontsize="medium")
        ax.set(xlabel="class index j", ylabel="epoch")
        _integer_ticks(ax.yaxis)
        if classes <= 20:
            ax.set_xticks(range(classes))
    fig.suptitle(
        _wrap(
            "Per-class cosine between student and teacher batch predictions, "
            "cos(P_s[:, j], P_t[:, j]) at the loss's temperature, averaged over each epoch's "
            "training batches (1 = the student spreads class j over the batch exactly like "
            "the teacher)",
            panel_width * len(axes[:3]),
        )
    )
    fig.colorbar(image, ax=axes, label="cosine (unitless, at most 1)", shrink=0.9)
    fig.savefig(path, dpi=120)
    return True


# --- entry points ---------------------------------------------------------------------------
def generate_report(
    root: Path, out: Path | None = None, group_by: Sequence[str] | None = None
) -> Path:
    """Read every run under ``root``; write ``report.md`` and the plots into ``out``/``root``.

    ``group_by``: the keys to group runs by (see :func:`group_runs`). Returns the path of
    ``report.md``. Raises :class:`NoRunsError` when ``root`` holds neither runs nor failed jobs
    and :class:`~cskd_lightning.errors.InputError` for a ``group_by`` key no run has.
    """
    return _generate(root, out, group_by)[0]


def _generate(
    root: Path, out: Path | None, group_by: Sequence[str] | None = None
) -> tuple[Path, list[Run], list[FailedJob]]:
    root = Path(root).resolve()
    if not root.is_dir():
        raise NoRunsError(f"{root} is not a directory.")
    out = Path(out).resolve() if out else root
    runs, failed = find_runs(root)
    if not runs and not failed:
        raise NoRunsError(
            f"No runs under {root}: no summary.json (written by cskd-train at the end of each "
            "run) and no error.txt (a failed job) in it or below it. Point cskd-report at a run "
            "directory or a multirun directory."
        )
    groups = group_runs(runs, group_by)
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    for name, draw in zip(PLOTS, (plot_val_acc, plot_temperatures, plot_class_cosine), strict=True):
        if groups and draw(groups, out / name):
            plots.append(name)
    report = out / REPORT
    report.write_text(render_markdown(root, runs_table(groups), failed, plots, group_by))
    return report, runs, failed


def main(argv: Sequence[str] | None = None) -> int:
    """The ``cskd-report`` console script."""
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
