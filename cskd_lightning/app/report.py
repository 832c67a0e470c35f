"""``cskd-report DIR``: one Markdown report and a few plots for a run or a multirun.

Every directory under ``DIR`` that holds a ``summary.json`` (what ``cskd-train`` writes at the
end of a run) counts as a run; a directory with an ``error.txt`` and no summary is a failed
job. Runs are grouped by method (plus the data set, the teacher/student pair and any other
command-line override that differs between runs, the seed aside); a group's seeds are its runs.

Written into ``DIR`` (or ``--out``):

- ``report.md``: per group, mean ± sample standard deviation over seeds of the teacher's and
  the student's test accuracy, the best-epoch and last-epoch validation accuracy, the best
  epoch, the number of epochs and the wall time; then every run, and the failed jobs;
- ``val_acc.png``: validation accuracy per epoch per group (mean over seeds, ± 1 std band);
- ``cswt_temperature.png``: the CSWT temperatures over training (the ``TemperatureMonitor``'s
  10/50/90% quantiles, else the loss's own per-epoch mean/min/max);
- ``class_cosine.png``: the per-class student-teacher batch cosine, epoch x class, when the
  ``TemperatureMonitor`` ran (``callbacks=monitor``).

Run ``cskd-report --help`` for the options.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

SUMMARY = "summary.json"
METRICS = "metrics.csv"
ERROR = "error.txt"
CLASS_COSINE_CSV = "class_cosine.csv"
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

CLASS_COS_PREFIX = "monitor/class_cos/"


class NoRunsError(FileNotFoundError):
    """The directory holds no run (no ``summary.json``) and no failed job (no ``error.txt``)."""


# --- reading runs ---------------------------------------------------------------------------
@dataclass
class Run:
    """One finished run: its summary, its per-epoch metrics and its command-line overrides."""

    path: Path
    summary: dict[str, Any]
    epochs: dict[str, dict[int, float]] = field(default_factory=dict)
    """``metrics.csv`` as ``{column: {epoch: last non-empty value of that epoch}}``."""
    class_cosine: np.ndarray | None = None
    """``(epochs, classes)`` per-class batch cosine (NaN where missing), if it was logged."""
    overrides: dict[str, str] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.summary.get("method", "?"))

    @property
    def seed(self) -> Any:
        return self.summary.get("seed")

    def series(self, column: str) -> dict[int, float]:
        """``{epoch: value}`` of one ``metrics.csv`` column (empty if it was not logged)."""
        return self.epochs.get(column, {})


@dataclass
class FailedJob:
    """A job that left an ``error.txt`` and no ``summary.json``."""

    path: Path
    error: str
    overrides: dict[str, str] = field(default_factory=dict)


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
    return runs, failed


def read_run(path: Path) -> Run:
    """Read one run directory: ``summary.json``, ``metrics.csv`` and the per-class cosines."""
    summary = json.loads((path / SUMMARY).read_text())
    epochs = read_metrics(path / METRICS) if (path / METRICS).is_file() else {}
    overrides = (
        parse_overrides(summary["overrides"])
        if isinstance(summary.get("overrides"), list)
        else read_overrides(path)
    )
    run = Run(path=path, summary=summary, epochs=epochs, overrides=overrides)
    run.class_cosine = _class_cosine(run)
    return run


def read_metrics(path: Path) -> dict[str, dict[int, float]]:
    """Lightning's ``metrics.csv`` as ``{column: {epoch: value}}``.

    Lightning writes train and validation metrics of one epoch on different rows; the last
    non-empty value of an epoch wins (a resumed run may repeat an epoch). Test metrics, logged
    after training with the next epoch number, are kept under that epoch as well.
    """
    out: dict[str, dict[int, float]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                epoch = int(float(row.get("epoch") or ""))
            except ValueError:
                continue
            for key, value in row.items():
                if key in ("epoch", "step") or value in (None, ""):
                    continue
                try:
                    number = float(value)
                except ValueError:
                    continue
                if math.isfinite(number):
                    out.setdefault(key, {})[epoch] = number
    return out


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
    result = {}
    for item in items:
        key, _, value = str(item).partition("=")
        result[key.lstrip("+~")] = value
    return result


def _class_cosine(run: Run) -> np.ndarray | None:
    """The monitor's per-class cosines as ``(epochs, classes)``: metrics.csv columns or CSV."""
    columns = {
        int(k[len(CLASS_COS_PREFIX) :]): v
        for k, v in run.epochs.items()
        if k.startswith(CLASS_COS_PREFIX) and k[len(CLASS_COS_PREFIX) :].isdigit()
    }
    cells: dict[tuple[int, int], float] = {}
    for cls, series in columns.items():
        cells.update({(epoch, cls): value for epoch, value in series.items()})
    csv_files = [run.path / CLASS_COSINE_CSV] + [
        p for p in run.path.rglob(CLASS_COSINE_CSV) if p.parent != run.path
    ]
    if not cells:
        for file in csv_files:
            if file.is_file():
                with file.open(newline="") as f:
                    for row in csv.DictReader(f):
                        cells[(int(row["epoch"]), int(row["class"]))] = float(row["cos"])
                break
    if not cells:
        return None
    n_epochs = max(e for e, _ in cells) + 1
    n_classes = max(c for _, c in cells) + 1
    matrix = np.full((n_epochs, n_classes), np.nan)
    for (epoch, cls), value in cells.items():
        matrix[epoch, cls] = value
    return matrix


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").strip().splitlines() if line]
    return lines[-1].strip() if lines else "(empty error.txt)"


# --- grouping -------------------------------------------------------------------------------
@dataclass
class Group:
    """The runs of one configuration that differ only by seed."""

    label: str
    runs: list[Run]

    def values(self, getter) -> list[float]:
        """``getter(run)`` for every run where it is a finite number."""
        out = []
        for run in self.runs:
            value = getter(run)
            if value is not None and math.isfinite(float(value)):
                out.append(float(value))
        return out


def _ignored(key: str) -> bool:
    return key in IGNORED_EXACTLY or any(
        key == p or key.startswith(p + ".") for p in IGNORED_OVERRIDES
    )


def varying_overrides(items: Iterable[dict[str, str]]) -> list[str]:
    """The override keys (seed and file locations aside) whose value is not the same in all."""
    items = list(items)
    keys = sorted({k for o in items for k in o if not _ignored(k)})
    return [k for k in keys if len({o.get(k) for o in items}) > 1]


def group_runs(runs: Sequence[Run], group_by: Sequence[str] | None = None) -> list[Group]:
    """Group runs so that a group's runs differ by their seed alone.

    By default: by method, data and pair (when they differ) and every override that differs
    between the runs (the seed and file locations aside), e.g. ``distill.loss.temperature`` or
    an Optuna trial's parameters. ``group_by``: group by these keys only instead, override keys
    or ``method``, ``data``, ``pair``, ``selection`` (the other differences are then averaged
    over, and the report says so). Values show in the group's label.
    """
    if group_by:
        keys = list(group_by)
    else:
        several_data = len({(r.summary.get("data"), r.summary.get("pair")) for r in runs}) > 1
        keys = ["method", *(["data", "pair"] if several_data else [])]
        keys += varying_overrides(r.overrides for r in runs)
    groups: dict[str, list[Run]] = {}
    for run in runs:
        parts = []
        for key in keys:
            if key in SUMMARY_KEYS:
                parts.append(run.method if key == "method" else f"{key}={run.summary.get(key)}")
            else:
                parts.append(f"{key}={run.overrides.get(key, '(default)')}")
        groups.setdefault(" ".join(parts) or "all runs", []).append(run)
    return [Group(label, sorted(rs, key=lambda r: str(r.seed))) for label, rs in groups.items()]


def repeated_seeds(groups: Sequence[Group]) -> list[str]:
    """Groups in which a seed occurs more than once: runs that differ in something the grouping
    does not show (a changed default, another code version) or plain repeats."""
    out = []
    for group in groups:
        seeds = [str(r.seed) for r in group.runs]
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            out.append(f"`{group.label}`: seed {', '.join(repeated)} more than once")
    return out


# --- statistics -----------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); the std is ``None`` for one value."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def format_mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``"mean ± std"`` of ``values * scale``; ``"mean"`` alone for one value, ``"–"`` for none.

    ``digits=0`` marks integer data (epochs): a single value prints as an integer, a mean and
    std with one decimal.
    """
    if not values:
        return "–"
    mean, std = mean_std([v * scale for v in values])
    if std is None:
        return f"{mean:.{digits}f}"
    digits = digits or 1
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def best_epoch(run: Run) -> int | None:
    """The (1-based) epoch with the highest validation accuracy; the first one on ties."""
    series = run.series("val/acc")
    if not series:
        return None
    best = max(series.values())
    return min(e for e, v in series.items() if v == best) + 1


def epochs_trained(run: Run) -> int | None:
    """How many epochs have a validation accuracy (the last epoch, 1-based)."""
    series = run.series("val/acc")
    return max(series) + 1 if series else None


def last_val_acc(run: Run) -> float | None:
    """The last epoch's validation accuracy (the summary's, else ``metrics.csv``'s)."""
    value = run.summary.get("student", {}).get("val_acc_last")
    if value is None and run.series("val/acc"):
        series = run.series("val/acc")
        value = series[max(series)]
    return value


def best_val_acc(run: Run) -> float | None:
    """The best validation accuracy over epochs (the summary's, else ``metrics.csv``'s)."""
    value = run.summary.get("student", {}).get("val_acc_best")
    if value is None and run.series("val/acc"):
        value = max(run.series("val/acc").values())
    return value


#: The report's columns: (header, getter, scale to display, digits of a mean; digits 0 marks
#: an integer column, whose means and stds get one decimal and single values none).
COLUMNS: list[tuple[str, Any, float, int]] = [
    ("teacher test acc (%)", lambda r: r.summary.get("teacher", {}).get("test_acc"), 100.0, 2),
    ("student test acc (%)", lambda r: r.summary.get("student", {}).get("test_acc"), 100.0, 2),
    ("best val acc (%)", best_val_acc, 100.0, 2),
    ("last-epoch val acc (%)", last_val_acc, 100.0, 2),
    ("best epoch", best_epoch, 1.0, 0),
    ("epochs", epochs_trained, 1.0, 0),
    ("wall time (s)", lambda r: r.summary.get("wall_time_s"), 1.0, 1),
]


# --- the Markdown report --------------------------------------------------------------------
def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def _cell(values: Sequence[float], n_runs: int, scale: float, digits: int) -> str:
    text = format_mean_std(values, scale, digits)
    return text if not values or len(values) == n_runs else f"{text} (n={len(values)})"


def selection_text(runs: Sequence[Run]) -> str:
    """Which split picked the best epoch (``summary.json``'s ``selection``) for these runs."""
    return ", ".join(sorted({str(r.summary.get("selection", "unknown")) for r in runs}))


def render_markdown(
    root: Path,
    groups: Sequence[Group],
    failed: Sequence[FailedJob],
    plots: Sequence[str],
    group_by: Sequence[str] | None = None,
) -> str:
    """The text of ``report.md``."""
    runs = [r for g in groups for r in g.runs]
    datasets = sorted({f"{r.summary.get('data')} ({r.summary.get('pair')})" for r in runs})
    lines = [
        f"# Distillation report: `{root}`",
        "",
        f"{len(runs)} finished run(s) in {len(groups)} group(s)"
        + (f", {len(failed)} failed job(s)" if failed else "")
        + (f"; data (pair): {', '.join(datasets)}" if datasets else "")
        + ".",
        "",
    ]
    if groups:
        lines += [
            "## Results (mean ± std over seeds)",
            "",
            "Each cell is the mean ± the sample standard deviation (n − 1) over the group's "
            "seeds; a single seed shows its value alone, and `(n=k)` marks a value only k of "
            "the seeds have. Accuracies are top-1 in percent. *best val acc* is the highest "
            "validation accuracy over the epochs, *last-epoch val acc* the final epoch's; "
            "*best epoch* is the (1-based) epoch where the validation accuracy peaked; the "
            "student's test accuracy is measured with the best checkpoint. *selected on* is "
            "the split the best epoch was chosen on: `validation` (a held-out split) or `test` "
            "(`val_split=0`: the published tables' best-test-epoch convention, which flatters "
            "the accuracy).",
            "",
        ]
        if group_by:
            lines += [
                f"Grouped by {', '.join(f'`{k}`' for k in group_by)} (`--group-by`): runs that "
                "differ in anything else are averaged together.",
                "",
            ]
        repeats = repeated_seeds(groups)
        if repeats:
            lines += [
                "**Repeated seeds** (these runs differ in something not shown, or are repeats):",
                "",
                *[f"- {r}" for r in repeats],
                "",
            ]
        header = ["method", "seeds", "selected on", *[c[0] for c in COLUMNS]]
        rows = []
        for group in groups:
            seeds = ", ".join(str(r.seed) for r in group.runs)
            cells = [
                _cell(group.values(get), len(group.runs), scale, digits)
                for _, get, scale, digits in COLUMNS
            ]
            rows.append(
                [
                    f"`{group.label}`",
                    f"{len(group.runs)} ({seeds})",
                    selection_text(group.runs),
                    *cells,
                ]
            )
        lines += _table(header, rows) + [""]

        lines += ["## Runs", ""]
        rows = []
        for group in groups:
            for run in group.runs:
                cells = []
                for _, get, scale, digits in COLUMNS:
                    value = get(run)
                    cells.append("–" if value is None else format_mean_std([value], scale, digits))
                rows.append(
                    [
                        f"`{group.label}`",
                        str(run.seed),
                        selection_text([run]),
                        *cells,
                        _relative(run.path, root),
                    ]
                )
        header = ["method", "seed", "selected on", *[c[0] for c in COLUMNS], "directory"]
        lines += _table(header, rows) + [""]

    lines += ["## Failed jobs", ""]
    if failed:
        rows = [
            [_relative(job.path, root), f"`{job.error}`", " ".join(_override_text(job.overrides))]
            for job in failed
        ]
        lines += _table(["directory", "error (last line of error.txt)", "overrides"], rows)
    else:
        lines.append("None.")
    lines.append("")

    if plots:
        lines += ["## Figures", ""]
        captions = {
            "val_acc.png": "Student validation accuracy per epoch (mean over seeds, ± 1 std).",
            "cswt_temperature.png": "CSWT per-sample temperatures over training.",
            "class_cosine.png": "Per-class student-teacher batch cosine, epoch x class.",
        }
        for name in plots:
            lines += [f"### {captions.get(name, name)}", "", f"![{name}]({name})", ""]
    missing = [p for p in PLOTS if p not in plots]
    if missing and groups:
        why = {
            "val_acc.png": "no run has a `val/acc` column in metrics.csv",
            "cswt_temperature.png": "no run logged CSWT temperatures (a CSWT loss or "
            "`callbacks=monitor`)",
            "class_cosine.png": "no run logged per-class cosines (`callbacks=monitor`)",
        }
        lines += ["Not drawn:", ""] + [f"- `{p}`: {why[p]}." for p in missing] + [""]
    return "\n".join(lines)


def _override_text(overrides: dict[str, str]) -> list[str]:
    return [
        f"`{k}={v}`" for k, v in overrides.items() if not _ignored(k) or k in ("seed", "distill")
    ]


# --- plots ----------------------------------------------------------------------------------
def _stack(series_list: Sequence[dict[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Align per-run ``{epoch: value}`` on the union of epochs: ``(epochs, (runs, epochs))``."""
    epochs = np.array(sorted({e for s in series_list for e in s}))
    data = np.full((len(series_list), len(epochs)), np.nan)
    for i, series in enumerate(series_list):
        for j, epoch in enumerate(epochs):
            data[i, j] = series.get(int(epoch), np.nan)
    return epochs, data


def _nanmean_std(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and sample std (0 where fewer than two values), NaN-aware."""
    count = np.sum(~np.isnan(data), axis=0)
    mean = np.nanmean(data, axis=0)
    centred = np.where(np.isnan(data), 0.0, data - mean)
    var = np.sum(centred**2, axis=0) / np.maximum(count - 1, 1)
    return mean, np.where(count > 1, np.sqrt(var), 0.0)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grid(plt, n: int, sharey: bool = True):
    """``n`` panels, at most 3 a row, in a figure at least 9 inches wide (room for titles)."""
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    width = max(9.0, 5.0 * cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(width, 4.0 * rows + 1.2),
        squeeze=False,
        sharey=sharey,
        layout="constrained",
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n]), width / cols


def _wrap(text: str, inches: float) -> str:
    """Wrap a title to about the width of ``inches`` (at the default font size)."""
    return "\n".join(textwrap.wrap(text, width=max(20, int(inches * 9))))


def _integer_epochs(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_val_acc(groups: Sequence[Group], path: Path) -> bool:
    """Validation accuracy per epoch per group: mean over seeds, ± 1 std band."""
    drawn = [g for g in groups if any(r.series("val/acc") for r in g.runs)]
    if not drawn:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5), layout="constrained")
    for group in drawn:
        epochs, data = _stack([r.series("val/acc") for r in group.runs if r.series("val/acc")])
        mean, std = _nanmean_std(100 * data)
        x = epochs + 1
        (line,) = ax.plot(x, mean, marker="o", markersize=3, label=f"{group.label} (n={len(data)})")
        if len(data) > 1:
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    teacher = [r.summary.get("teacher", {}).get("test_acc") for g in drawn for r in g.runs]
    teacher = [t for t in teacher if t is not None]
    if (
        teacher
        and len({(r.summary.get("data"), r.summary.get("pair")) for g in drawn for r in g.runs})
        == 1
    ):
        ax.axhline(
            100 * statistics.fmean(teacher),
            color="grey",
            linestyle="--",
            linewidth=1,
            label="teacher (test acc, mean over runs)",
        )
    ax.set_title(
        "Student validation accuracy per epoch\n"
        "line: mean over seeds; shaded band: ± 1 standard deviation over seeds"
    )
    ax.set_xlabel("training epoch (1 = after the first training epoch)")
    ax.set_ylabel("validation top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(title="method (n = seeds)", fontsize="small")
    _integer_epochs(ax)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _temperature_series(run: Run) -> tuple[str, dict[str, dict[int, float]]] | None:
    """``("monitor", {mean, low, mid, high})`` from the monitor, else the loss's mean/min/max."""
    if run.series("monitor/cswt_t_q50"):
        return "monitor", {
            "mean": run.series("monitor/cswt_t_mean"),
            "low": run.series("monitor/cswt_t_q10"),
            "mid": run.series("monitor/cswt_t_q50"),
            "high": run.series("monitor/cswt_t_q90"),
        }
    if run.series("train/cswt_t_mean"):
        return "loss", {
            "mean": run.series("train/cswt_t_mean"),
            "low": run.series("train/cswt_t_min"),
            "high": run.series("train/cswt_t_max"),
        }
    return None


def plot_temperatures(groups: Sequence[Group], path: Path) -> bool:
    """Per group, the CSWT temperatures per epoch (quantile band, median, mean)."""
    panels = []
    for group in groups:
        found = [s for s in (_temperature_series(r) for r in group.runs) if s is not None]
        if found:
            source = "monitor" if any(kind == "monitor" for kind, _ in found) else "loss"
            series = [s for kind, s in found if kind == source]
            used = any(r.series("train/cswt_t_mean") for r in group.runs)
            panels.append((group, source, series, used))
    if not panels:
        return False
    plt = _pyplot()
    fig, axes, panel_width = _grid(plt, len(panels))
    for ax, (group, source, series, used) in zip(axes, panels, strict=True):
        band = (
            "10–90% quantiles of the epoch's T_i"
            if source == "monitor"
            else "per-batch min–max (t_low–t_high by construction)"
        )
        epochs, low = _stack([s["low"] for s in series])
        _, high = _stack([s["high"] for s in series])
        x = epochs + 1
        ax.fill_between(
            x, np.nanmean(low, 0), np.nanmean(high, 0), alpha=0.25, color="tab:orange", label=band
        )
        if source == "monitor":
            e_mid, mid = _stack([s["mid"] for s in series])
            ax.plot(
                e_mid + 1,
                np.nanmean(mid, 0),
                color="tab:red",
                marker="o",
                markersize=3,
                label="median",
            )
        e_mean, mean = _stack([s["mean"] for s in series])
        ax.plot(e_mean + 1, np.nanmean(mean, 0), color="black", linestyle="--", label="mean")
        title = f"{group.label} (n={len(series)} seeds)"
        if not used:
            title += " — diagnostic only: this loss does not use CSWT"
        ax.set_title(_wrap(title, panel_width), fontsize="medium")
        ax.set_xlabel("epoch")
        _integer_epochs(ax)
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
    plt.close(fig)
    return True


def plot_class_cosine(groups: Sequence[Group], path: Path) -> bool:
    """Per group, a heatmap of the per-class batch cosine: epochs (rows) x classes (columns)."""
    panels = []
    for group in groups:
        mats = [r.class_cosine for r in group.runs if r.class_cosine is not None]
        if mats:
            rows = max(m.shape[0] for m in mats)
            cols = max(m.shape[1] for m in mats)
            padded = np.full((len(mats), rows, cols), np.nan)
            for i, m in enumerate(mats):
                padded[i, : m.shape[0], : m.shape[1]] = m
            with np.errstate(all="ignore"):
                panels.append((group, np.nanmean(padded, axis=0), len(mats)))
    if not panels:
        return False
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    values = np.concatenate([m[np.isfinite(m)] for _, m, _ in panels])
    vmin, vmax = float(values.min()), float(values.max())
    if vmax - vmin < 1e-6:
        vmin, vmax = vmin - 1e-3, vmax + 1e-3
    fig, axes, panel_width = _grid(plt, len(panels), sharey=False)
    image = None
    for ax, (group, matrix, n) in zip(axes, panels, strict=True):
        image = ax.imshow(
            matrix,
            aspect="auto",
            origin="lower",
            cmap="viridis",
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
            extent=(-0.5, matrix.shape[1] - 0.5, 0.5, matrix.shape[0] + 0.5),
        )
        ax.set_title(_wrap(f"{group.label} (mean of n={n} seeds)", panel_width), fontsize="medium")
        ax.set_xlabel("class index j")
        ax.set_ylabel("epoch")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if matrix.shape[1] <= 20:
            ax.set_xticks(range(matrix.shape[1]))
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
    plt.close(fig)
    return True


# --- entry points ---------------------------------------------------------------------------
def generate_report(
    root: Path, out: Path | None = None, group_by: Sequence[str] | None = None
) -> Path:
    """Read every run under ``root``; write ``report.md`` and the plots into ``out``/``root``.

    ``group_by``: the keys to group runs by (see :func:`group_runs`). Returns the path of
    ``report.md``. Raises :class:`NoRunsError` when ``root`` holds neither runs nor failed jobs.
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
    report.write_text(render_markdown(root, groups, failed, plots, group_by))
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
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the report (default: DIR)"
    )
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
    except NoRunsError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    print(f"{len(runs)} run(s), {len(failed)} failed job(s): wrote {report}")
    if not runs:
        print("Error: every job failed; see the report's list.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
