"""The runs under a directory, for ``cskd-report``: finding them (a directory with a
``summary.json`` is a run; one with an ``error.txt``, or an exit record of a job that failed or
never ended, and no summary is a failed job), reading them, and grouping them so that a
group's runs differ by their seed alone."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
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
from cskd_lightning.errors import InputError

CLASS_COS_PREFIX = "monitor/class_cos/"
SUMMARY_KEYS = ("method", "data", "pair", "selection")
"""``--group-by`` names that are fields of ``summary.json``, not overrides."""
NEVER_GROUPED = ("seed", "callbacks")
"""Overrides that split no group besides those that change no result
(:data:`~cskd_lightning.app.run_dir.NOT_A_RESULT`): the seed is what a group averages over,
callbacks only log; ``distill`` (the method) is in the label already."""


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
    failed = {r.path: None for r in runs}
    for path in sorted(root.rglob(ERROR)):
        if path.parent not in failed:
            lines = path.read_text(errors="replace").strip().splitlines()
            failed[path.parent] = lines[-1].strip() if lines else "(empty error.txt)"
    # A job killed before its end (SIGKILL, out of memory, a time limit) left no error.txt.
    for path in sorted(root.rglob(EXIT)):
        reason = failure(read_exit_record(path.parent) or {"status": "ok"})
        if path.parent not in failed and reason is not None:
            if reason == NOT_FINISHED:
                reason += ": no summary.json, no error.txt"
            failed[path.parent] = reason
    jobs = [FailedJob(p, e, read_overrides(p)) for p, e in failed.items() if e is not None]
    return runs, sorted(jobs, key=lambda job: job.path)


def read_run(path: Path) -> Run:
    """Read one run directory: ``summary.json``, ``metrics.csv`` and the per-class cosines."""
    summary = json.loads((path / SUMMARY).read_text())
    metrics = read_metrics(path / METRICS_FILE)
    overrides = summary.get("overrides")
    overrides = parse_overrides(overrides) if isinstance(overrides, list) else read_overrides(path)
    return Run(path, summary, metrics, overrides, read_class_cosine(path, metrics))


def read_metrics(path: Path) -> pd.DataFrame:
    """Lightning's ``metrics.csv`` as one row per epoch (the index), one column per metric.

    Lightning writes the train and validation metrics of one epoch on different rows; the last
    non-empty value of an epoch wins (a resumed run may repeat an epoch). Test metrics, logged
    after training with the next epoch number, land on that epoch's row. Text and non-finite
    values count as missing; an absent or empty file gives an empty frame."""
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
    found = metrics.filter(regex=rf"^{CLASS_COS_PREFIX}\d+$").columns
    columns = {c: int(c[len(CLASS_COS_PREFIX) :]) for c in found}
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
    try:
        items = OmegaConf.to_container(OmegaConf.load(path / OVERRIDES))
    except Exception:  # noqa: BLE001 - none, or damaged: only the label's detail is lost
        return {}
    return parse_overrides(items if isinstance(items, list) else [])


def parse_overrides(items: Iterable[Any]) -> dict[str, str]:
    """``["a.b=1", "+c=2"]`` -> ``{"a.b": "1", "c": "2"}``."""
    pairs = (str(item).partition("=") for item in items)
    return {key.lstrip("+~"): value for key, _, value in pairs}


def never_grouped(key: str) -> bool:
    """Whether an override never splits runs into groups (see :data:`NEVER_GROUPED`)."""
    prefixes = (key == p or key.startswith(p + ".") for p in NEVER_GROUPED)
    return key == "distill" or not changes_result(key) or any(prefixes)


def group_runs(runs: Sequence[Run], group_by: Sequence[str] | None = None) -> dict[str, list[Run]]:
    """Group runs so that a group's runs differ by their seed alone: ``{label: runs}``.

    By default: by method, data and pair (when they differ) and every override that differs
    between the runs (but those :func:`never_grouped`), e.g. ``distill.loss.temperature`` or
    an Optuna trial's parameters. ``group_by``: by these keys only (override keys or
    :data:`SUMMARY_KEYS`; the other differences are averaged over). Groups keep the order in
    which their first run was found; a group's runs are sorted by seed."""
    known = {k for r in runs for k in r.overrides}
    if group_by:
        keys = list(group_by)
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
