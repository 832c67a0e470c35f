"""A run directory: the names of the files the application keeps there (said once here), its
records (``config.yaml`` and Hydra's ``.hydra/`` copies, ``summary.json``, the end-of-run
table), and :data:`NOT_A_RESULT`, the one table of the config keys that change no result (used
by the resume check, the report's grouping and the teacher's cache key)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from cskd_lightning.callbacks import CLASS_COSINE_CSV, RunClock  # noqa: F401 - a run's file
from cskd_lightning.errors import InputError
from cskd_lightning.files import write_text_atomically
from cskd_lightning.loggers import METRICS_FILE  # noqa: F401 - a run's file

CONFIG = "config.yaml"  # the resolved config, written once the run's checks pass
HYDRA_CONFIG = Path(".hydra") / "config.yaml"  # Hydra's copy of the unresolved config
OVERRIDES = Path(".hydra") / "overrides.yaml"  # the command-line overrides, as first given
EVAL_METRICS = Path("eval") / "metrics.json"  # cskd-eval's test metrics
SUMMARY = "summary.json"  # what was trained, how it scored, where the files are
STUDENT = "student.pt"  # the best student with the spec to rebuild it (cskd_lightning.export)
CHECKPOINTS = "checkpoints"  # Lightning's: last.ckpt and best-epoch<NNN>.ckpt
ERROR = "error.txt"  # a failed job's traceback or one-line error
PREVIOUS_ERROR = "error.previous.txt"  # an earlier attempt's error, kept when run again
EXIT = "exit.json"  # how a sweep job ended, read by the failed-jobs report
ALLOW_CHANGE_FLAG = "resume_allow_config_change=true"

NOT_A_RESULT = tuple(
    """hydra paths task_name threads ckpt_path resume_allow_config_change resume_trust_checkpoint
    resume_from_sibling teacher.logit_cache teacher.trust_checkpoint tune_on_test_set train test
    optimized_metric plan logger trainer.default_root_dir trainer.enable_progress_bar
    trainer.enable_model_summary trainer.log_every_n_steps data.datamodule.data_dir
    data.datamodule.download data.datamodule.num_workers data.datamodule.pin_memory
    callbacks.model_checkpoint.dirpath""".split()
)
"""Config keys (and everything under them) that change where files go, what is logged or how
data is loaded, never a number a run computes; so do the ``callbacks.*`` other than
``model_checkpoint`` (which picks the best checkpoint, hence ``student.pt``)."""


def changes_result(key: str) -> bool:
    """Whether the dotted config key ``key`` can change what a run computes."""
    if key.startswith("callbacks.") and not key.startswith("callbacks.model_checkpoint"):
        return False
    return not any(key == k or key.startswith(k + ".") for k in NOT_A_RESULT)


def relevant_config(cfg: DictConfig) -> dict[str, Any]:
    """The config flattened to ``{"dotted.key": value}``, keeping (and resolving) only the keys
    that :func:`changes_result`: an unresolvable ``${hydra:...}`` elsewhere does no harm."""
    flat: dict[str, Any] = {}

    def walk(node: DictConfig, prefix: str) -> None:
        for key in (k for k in node.keys() if changes_result(f"{prefix}{k}")):
            value = node[key]
            if isinstance(value, DictConfig):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, ListConfig):
                flat[f"{prefix}{key}"] = OmegaConf.to_container(value, resolve=True)
            else:
                plain = isinstance(value, (str, int, float, bool)) or value is None
                flat[f"{prefix}{key}"] = value if plain else str(value)

    walk(cfg, "")
    return flat


ADDED_KEYS = {"module.fold_teacher_batchnorm": False, "teacher.logit_cache_topk": 10}
"""Keys added to the config after runs were made, with the value under which a run does what
those runs did (a top-k size is unused without a top-k cache, which they could not have): a
saved config without the key reads as having that value, so an older run still resumes."""


def diff_configs(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``"key: saved -> now"`` for every key that differs (``<absent>`` where missing; a key of
    :data:`ADDED_KEYS` missing from ``saved`` reads as its old-behaviour value)."""
    saved = {**{k: v for k, v in ADDED_KEYS.items() if k in now}, **saved}
    pairs = ((k, saved.get(k, "<absent>"), now.get(k, "<absent>")) for k in sorted({*saved, *now}))
    return [f"{k}: {a!r} -> {b!r}" for k, a, b in pairs if a != b]


def listed(diff: list[str]) -> str:
    """The first ten differences, and how many more."""
    return "; ".join(diff[:10]) + (f" (+{len(diff) - 10} more)" if len(diff) > 10 else "")


def saved_run_config(run_dir: Path) -> dict[str, Any] | None:
    """The :func:`relevant_config` of ``run_dir``'s ``config.yaml`` (``None``: none there);
    ``ValueError`` naming the file when it cannot be read."""
    saved = run_dir / CONFIG
    if not saved.is_file():
        return None
    try:
        return relevant_config(OmegaConf.load(saved))
    except Exception as err:  # noqa: BLE001 - any unreadable config is reported the same way
        raise ValueError(f"{saved} cannot be read ({type(err).__name__}: {err})") from None


@dataclass
class ExistingRun:
    """What the run directory holds: no run (no ``config``), an unfinished or a finished run."""

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
        before = saved_run_config(output_dir)
    except ValueError as err:
        fix = "choose another hydra.run.dir"
        raise InputError(f"{err}, so {output_dir} cannot be checked: {fix}.") from None
    if before is None:
        return ExistingRun()
    diff = diff_configs(before, relevant_config(cfg))
    # With ckpt_path, the resume check compares against the checkpoint's own stored config.
    if diff and not cfg.get("ckpt_path") and not cfg.get("resume_allow_config_change", False):
        raise InputError(
            f"{output_dir} already holds a run made with other settings (run -> now: "
            f"{listed(diff)}). Choose another hydra.run.dir for these settings, or repeat the "
            f"run's own settings (ckpt_path=last resumes it; {ALLOW_CHANGE_FLAG} continues it "
            "with the new ones)."
        )
    summary = None
    if (output_dir / SUMMARY).is_file() and not diff:
        with contextlib.suppress(ValueError):  # a damaged summary: an unfinished run
            summary = json.loads((output_dir / SUMMARY).read_text())
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
    files = {output_dir / CONFIG: OmegaConf.to_yaml(cfg, resolve=True)}
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        files[output_dir / HYDRA_CONFIG] = OmegaConf.to_yaml(cfg)
        files[output_dir / ".hydra" / "hydra.yaml"] = OmegaConf.to_yaml({"hydra": hydra_cfg})
        files[output_dir / OVERRIDES] = OmegaConf.to_yaml(hydra_cfg.overrides.task)
    for path, text in files.items():
        write_text_atomically(path, text)


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
        best_epoch = int(state["epoch"])  # a Lightning checkpoint's
    overrides = output_dir / OVERRIDES  # as first given
    if overrides.is_file():
        overrides = [str(o) for o in OmegaConf.load(overrides)]
    else:
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return {
        "method": cfg.distill.name,
        "seed": cfg.seed,
        "data": cfg.data.name,
        "pair": cfg.pair.name,
        "selection": selection,
        "overrides": overrides,
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


def print_summary(summary: Mapping[str, Any]) -> None:
    """Teacher and student accuracy, their gap, wall time and where the files are."""
    teacher, student = summary["teacher"], summary["student"]
    t_acc, s_acc = teacher.get("test_acc"), student.get("test_acc")
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    table = Table(title=f"{summary['method']} on {summary['data']} (seed {summary['seed']})")
    table.add_column("model")
    table.add_column("", style="dim")
    table.add_column("test acc", justify="right")
    table.add_column("best val acc", justify="right")
    table.add_row("teacher", teacher.get("model", ""), pct(t_acc), "")
    table.add_row("student", student.get("model", ""), pct(s_acc), pct(student.get("val_acc_best")))
    if t_acc is not None and s_acc is not None:
        table.add_row("gap", "student - teacher", f"{100 * (s_acc - t_acc):+.2f} pts", "")
    console = Console()
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
