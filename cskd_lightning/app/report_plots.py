"""The figures of ``cskd-report``: validation accuracy per epoch per group, the CSWT
temperatures and the per-class student-teacher cosine. Plain ``matplotlib.figure.Figure``s, not
pyplot's: no display needed, and the importing process's pyplot backend is left alone."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cskd_lightning.app.report import Run

# The CSWT temperature columns: the TemperatureMonitor's quantiles of the epoch's per-sample
# T_i (preferred), else the loss's own per-batch mean/min/max.
TEMPERATURES = {
    "monitor": {
        "mean": "monitor/cswt_t_mean",
        "low": "monitor/cswt_t_q10",
        "mid": "monitor/cswt_t_q50",
        "high": "monitor/cswt_t_q90",
    },
    "loss": {"mean": "train/cswt_t_mean", "low": "train/cswt_t_min", "high": "train/cswt_t_max"},
}
TEMPERATURES_TITLE = (
    "CSWT temperatures per training epoch: each sample's softmax temperature T_i, from t_low "
    "(default 2: the sample where the student agrees most with the teacher) to t_high (default "
    "6: the least); averaged over seeds"
)
CLASS_COSINE_TITLE = (
    "Per-class cosine between student and teacher batch predictions, cos(P_s[:, j], P_t[:, j]) "
    "at the loss's temperature, averaged over each epoch's training batches (1 = the student "
    "spreads class j over the batch exactly like the teacher)"
)
HEATMAP = {"aspect": "auto", "origin": "lower", "cmap": "viridis", "interpolation": "nearest"}


def _figure(panels: int, sharey: bool = True):
    """A figure of ``panels`` axes, 3 a row, at least 9 inches wide; its axes, a panel's width."""
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
    return "\n".join(textwrap.wrap(text, width=max(20, int(inches * 9))))


def _save(fig, path: Path, title: str | None = None) -> bool:
    """Write ``fig`` as a PNG, ``title`` (wrapped to the figure's width) on top."""
    if title:
        fig.suptitle(_wrap(title, fig.get_figwidth()))
    fig.savefig(path, dpi=120)
    return True


def plot_val_acc(groups: dict[str, list[Run]], path: Path) -> bool:
    """Validation accuracy per epoch per group: mean over seeds, ± 1 std band."""
    curves = {}  # per group: index the epoch, one column per run that logged it
    for name, runs in groups.items():
        acc = pd.DataFrame({r.path: r.series("val/acc") for r in runs}).dropna(axis=1, how="all")
        if not acc.empty:
            curves[name] = 100 * acc
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
    ax.locator_params(axis="x", integer=True)
    return _save(fig, path)


def temperatures(runs: Sequence[Run]) -> tuple[str, pd.DataFrame, int] | None:
    """The group's CSWT temperatures per epoch, mean over seeds: ``(source, frame of
    mean/low/high (mid from the monitor), seeds)``; ``None`` when no run logged them."""
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
            label = "10–90% quantiles of the epoch's T_i"
            ax.fill_between(x, t["low"], t["high"], alpha=0.25, color="tab:orange", label=label)
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
        ax.locator_params(axis="x", integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_ylabel("per-sample temperature T_i (unitless)")
    return _save(fig, path, TEMPERATURES_TITLE)


def plot_class_cosine(groups: dict[str, list[Run]], path: Path) -> bool:
    """Per group, a heatmap of the per-class batch cosine (epochs x classes), mean over seeds."""
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
        ax.locator_params(axis="y", integer=True)
        if classes <= 20:
            ax.set_xticks(range(classes))
    fig.colorbar(image, ax=axes, label="cosine (unitless, at most 1)", shrink=0.9)
    return _save(fig, path, CLASS_COSINE_TITLE)


PLOTS = {
    "val_acc.png": plot_val_acc,
    "cswt_temperature.png": plot_temperatures,
    "class_cosine.png": plot_class_cosine,
}


def draw_plots(groups: dict[str, list[Run]], out: Path) -> list[str]:
    """Draw the :data:`PLOTS` the runs have data for into ``out``; their names."""
    return [name for name, draw in PLOTS.items() if groups and draw(groups, out / name)]
