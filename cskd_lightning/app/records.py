"""The records of a run directory: ``config.yaml`` (with Hydra's ``.hydra/`` copies),
``summary.json`` and the table printed at the end of a run; a directory that already holds a
run is read with :func:`inspect_run_dir` before anything is written."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from cskd_lightning.app import run_dir
from cskd_lightning.app.resume import ALLOW_CHANGE_FLAG, listed
from cskd_lightning.callbacks import RunClock
from cskd_lightning.errors import InputError
from cskd_lightning.files import write_text_atomically


@dataclass
class ExistingRun:
    """What the run directory holds: no run (``config`` is ``None``), an unfinished run
    (``config``, no ``summary``) or a finished one."""

    config: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.summary is not None


def inspect_run_dir(cfg: DictConfig, output_dir: Path) -> ExistingRun:
    """Read the run ``output_dir`` holds and refuse to mix it with another: other relevant
    settings are refused (a new run would overwrite its record) unless
    ``resume_allow_config_change=true``; an unfinished run can only be resumed."""
    try:
        before = run_dir.saved_run_config(output_dir)
    except ValueError as err:
        fix = "choose another hydra.run.dir"
        raise InputError(f"{err}, so {output_dir} cannot be checked: {fix}.") from None
    if before is None:
        return ExistingRun()
    diff = run_dir.diff_configs(before, run_dir.relevant_config(cfg))
    # With ckpt_path, the resume check compares against the checkpoint's own stored config.
    if diff and not cfg.get("ckpt_path") and not cfg.get("resume_allow_config_change", False):
        raise InputError(
            f"{output_dir} already holds a run made with other settings (run -> now: "
            f"{listed(diff)}). Choose another hydra.run.dir for these settings, or repeat the "
            f"run's own settings (ckpt_path=last resumes it; {ALLOW_CHANGE_FLAG} continues it "
            "with the new ones)."
        )
    summary = None
    if (output_dir / run_dir.SUMMARY).is_file() and not diff:
        try:
            summary = json.loads((output_dir / run_dir.SUMMARY).read_text())
        except ValueError:
            summary = None
    if summary is None and not cfg.get("ckpt_path"):
        raise InputError(
            f"{output_dir} holds an unfinished run (config.yaml, no summary.json). Resume it "
            "with ckpt_path=last, or choose another hydra.run.dir for a new run."
        )
    return ExistingRun(config=before, summary=summary)


def write_run_config(cfg: DictConfig, output_dir: Path) -> None:
    """The resolved ``config.yaml`` and, as Hydra writes them, ``.hydra/{config,hydra,
    overrides}.yaml`` (Hydra itself writes nothing here, so a command that fails its checks
    leaves an existing run as it was)."""
    files = {output_dir / run_dir.CONFIG: OmegaConf.to_yaml(cfg, resolve=True)}
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        files[output_dir / run_dir.HYDRA_CONFIG] = OmegaConf.to_yaml(cfg)
        files[output_dir / ".hydra" / "hydra.yaml"] = OmegaConf.to_yaml({"hydra": hydra_cfg})
        overrides = OmegaConf.create(list(hydra_cfg.overrides.task))
        files[output_dir / run_dir.OVERRIDES] = OmegaConf.to_yaml(overrides)
    for path, text in files.items():
        write_text_atomically(path, text)


def task_overrides(output_dir: Path) -> list[str]:
    """The run's command-line overrides, as first given (``.hydra/overrides.yaml``)."""
    path = output_dir / run_dir.OVERRIDES
    if path.is_file():
        return [str(o) for o in OmegaConf.load(path)]
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def make_summary(
    cfg: DictConfig,
    output_dir: Path,
    metrics: dict[str, Any],
    teacher_info: dict[str, Any],
    best: str,
    selection: str,
    clock: RunClock,
) -> dict[str, Any]:
    """``summary.json``: ``student.best_checkpoint`` relative to the run directory (which may
    move), ``selection`` the split that picked the best epoch, ``wall_time_s`` over every
    segment of a resumed run."""
    best_file = best_epoch = None
    if best:
        try:
            best_file = str(Path(best).resolve().relative_to(output_dir.resolve()))
        except ValueError:  # outside the run directory
            best_file = str(Path(best).resolve())
        state = torch.load(best, map_location="cpu", weights_only=True, mmap=True)
        best_epoch = int(state["epoch"]) if "epoch" in state else None
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
            "best_epoch": best_epoch,
            "best_checkpoint": best_file,
        },
        "metrics": {k: v for k, v in metrics.items() if v is not None},
        "segments": clock.segments,
        "wall_time_s": round(clock.elapsed(), 2),
        "output_dir": str(output_dir.resolve()),
    }


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """``payload`` as indented JSON (tensors as numbers), written atomically."""
    default = lambda v: v.item() if hasattr(v, "item") else str(v)  # noqa: E731
    write_text_atomically(path, json.dumps(payload, indent=2, default=default) + "\n")


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
