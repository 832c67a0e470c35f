"""The records of a run directory: what ``cskd-train`` writes there and reads back.

``config.yaml`` (the resolved config, written once the run's checks pass, with Hydra's own
``.hydra/`` copies beside it), ``summary.json`` (what was trained, how it scored, where the
files are) and the short table printed at the end of a run. A directory that already holds a
run is read with :func:`inspect_run_dir` before anything is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from cskd_lightning.app.resume import ALLOW_CHANGE_FLAG, diff_configs, relevant_config
from cskd_lightning.callbacks import RunClock
from cskd_lightning.errors import InputError

RUN_CONFIG = "config.yaml"
RUN_SUMMARY = "summary.json"


@dataclass
class ExistingRun:
    """What the run directory already holds: nothing of a run (``config`` is ``None``), an
    unfinished run (``config`` but no ``summary``), or a finished one."""

    config: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.summary is not None


def inspect_run_dir(cfg: DictConfig, output_dir: Path) -> ExistingRun:
    """Read the run that ``output_dir`` holds, if any, and refuse to mix it with another.

    A run directory with a ``config.yaml`` whose relevant settings differ from ``cfg`` is
    refused (unless ``resume_allow_config_change=true``): a new run there would overwrite its
    record. A run without ``summary.json`` is unfinished: it can only be resumed
    (``ckpt_path=...``).
    """
    saved = output_dir / RUN_CONFIG
    if not saved.is_file():
        return ExistingRun()
    try:
        before = relevant_config(OmegaConf.load(saved))
    except Exception as err:  # noqa: BLE001 - any unreadable config is reported the same way
        raise InputError(
            f"{saved} cannot be read ({type(err).__name__}: {err}), so {output_dir} cannot be "
            "checked: choose another hydra.run.dir."
        ) from None
    diff = diff_configs(before, relevant_config(cfg))
    # With ckpt_path, the resume check compares against the checkpoint's own stored config.
    if diff and not cfg.get("ckpt_path") and not cfg.get("resume_allow_config_change", False):
        listed = "; ".join(diff[:10]) + (f" (+{len(diff) - 10} more)" if len(diff) > 10 else "")
        raise InputError(
            f"{output_dir} already holds a run made with other settings (run -> now: {listed}). "
            "Choose another hydra.run.dir for these settings, or repeat the run's own settings "
            f"(ckpt_path=last resumes it; {ALLOW_CHANGE_FLAG} continues it with the new ones)."
        )
    summary_file = output_dir / RUN_SUMMARY
    summary = None
    if summary_file.is_file() and not diff:
        try:
            summary = json.loads(summary_file.read_text())
        except ValueError:
            summary = None
    if summary is None and not cfg.get("ckpt_path"):
        raise InputError(
            f"{output_dir} holds an unfinished run (config.yaml, no summary.json). Resume it "
            "with ckpt_path=last, or choose another hydra.run.dir for a new run."
        )
    return ExistingRun(config=before, summary=summary)


def write_run_config(cfg: DictConfig, output_dir: Path) -> None:
    """The new run's records: the resolved ``config.yaml`` and, as Hydra writes them,
    ``.hydra/{config,hydra,overrides}.yaml`` (Hydra itself writes nothing into the run
    directory, so a command that fails its checks leaves an existing run as it was)."""
    OmegaConf.save(cfg, output_dir / RUN_CONFIG, resolve=True)
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    records = output_dir / ".hydra"
    records.mkdir(exist_ok=True)
    OmegaConf.save(cfg, records / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), records / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(hydra_cfg.overrides.task)), records / "overrides.yaml")


def task_overrides(output_dir: Path) -> list[str]:
    """The run's command-line overrides, as first given (``.hydra/overrides.yaml``)."""
    path = output_dir / ".hydra" / "overrides.yaml"
    if path.is_file():
        return [str(o) for o in OmegaConf.load(path)]
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []


def _epoch_of(checkpoint: str) -> int | None:
    if not checkpoint:
        return None
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return int(state["epoch"]) if "epoch" in state else None


def make_summary(
    cfg: DictConfig,
    output_dir: Path,
    metrics: dict[str, Any],
    teacher_info: dict[str, Any],
    best: str,
    selection: str,
    clock: RunClock,
) -> dict[str, Any]:
    """The run's ``summary.json``: what was trained, how it scored, where the files are.

    ``student.best_checkpoint`` is relative to the run directory (the directory may move);
    ``selection`` says which split picked the best epoch (``validation`` or ``test``);
    ``wall_time_s`` adds up every segment of a resumed run.
    """
    best_file = None
    if best:
        try:
            best_file = str(Path(best).resolve().relative_to(output_dir.resolve()))
        except ValueError:  # outside the run directory
            best_file = str(Path(best).resolve())
    return {
        "method": cfg.distill.name,
        "seed": cfg.seed,
        "data": cfg.data.name,
        "pair": cfg.pair.name,
        "selection": selection,
        "overrides": task_overrides(output_dir),
        "teacher": {"model": cfg.pair.teacher.model.name, **teacher_info},
        "student": {
            "model": cfg.pair.student.model.name,
            "test_acc": metrics.get("test/acc"),
            "val_acc_best": metrics.get("val/acc_best"),
            "val_acc_last": metrics.get("val/acc"),
            "best_epoch": _epoch_of(best),
            "best_checkpoint": best_file,
        },
        "metrics": {k: v for k, v in metrics.items() if v is not None},
        "segments": clock.segments,
        "wall_time_s": round(clock.elapsed(), 2),
        "output_dir": str(output_dir.resolve()),
    }


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def print_summary(summary: Mapping[str, Any], console: Console | None = None) -> None:
    """Teacher and student accuracy, their gap, wall time and where the files are."""
    teacher, student = summary["teacher"], summary["student"]
    t_acc, s_acc = teacher.get("test_acc"), student.get("test_acc")
    table = Table(title=f"{summary['method']} on {summary['data']} (seed {summary['seed']})")
    table.add_column("model")
    table.add_column("", style="dim")
    table.add_column("test acc", justify="right")
    table.add_column("best val acc", justify="right")
    table.add_row("teacher", teacher.get("model", ""), _pct(t_acc), "")
    table.add_row(
        "student", student.get("model", ""), _pct(s_acc), _pct(student.get("val_acc_best"))
    )
    if t_acc is not None and s_acc is not None:
        table.add_row("gap", "student - teacher", f"{100 * (s_acc - t_acc):+.2f} pts", "")
    console = console or Console()
    console.print(table)
    console.print(f"wall time {summary['wall_time_s']:.1f} s; files in {summary['output_dir']}")
    console.print(f"teacher weights: {teacher.get('source')}")
    published = teacher.get("published")
    if published:
        beyond = "" if published.get("within_tolerance") else " (beyond tolerance: check it)"
        console.print(
            f"teacher published: {published['published_acc']:.2f}% "
            f"({published['gap_pts']:+.2f} pts){beyond}"
        )
