"""Resuming a ``cskd-train`` run: which checkpoint, made with which config, and the record.

**What a checkpoint holds** besides Lightning's own state (weights, optimizer, scheduler, loop
counters, the best-k record of ``ModelCheckpoint``): the run's *relevant config*
(:func:`relevant_config`, under ``checkpoint["cskd_run"]``), so a resume with other settings
is caught (:func:`check_config`), and the wall time so far (:class:`RunClock`). The data order
and augmentation of an epoch follow from the seed and the epoch alone, and
:class:`~cskd_lightning.callbacks.EpochSeed` reseeds the global RNGs (dropout) at each epoch's
start, so a run resumed at an epoch's end draws what it would have drawn (no RNG state is
stored; an older checkpoint's datamodule entry is ignored): on the CPU with
``trainer.deterministic=true`` its final weights are bit-identical to an uninterrupted run's.
A checkpoint taken mid-epoch resumes with a warning (the rest of that epoch is not replayed in
the same order).

**Which checkpoint ``ckpt_path=last`` picks** (:func:`resolve_resume`): the file of
``<run dir>/checkpoints/`` that is furthest into training by the global step and epoch
recorded inside it (never by file time; ``last*.ckpt`` wins a tie); files that do not load
are named and skipped. With no checkpoint there, a new run starts, unless
``resume_from_sibling=true`` asks for the furthest checkpoint of a sibling run directory made
with the same config (its best-k files are copied over, :class:`RunModelCheckpoint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from cskd_lightning.checkpoints import (
    CheckpointError,
    checkpoint_candidates,
    load_resumable,
    newest_good_checkpoint,
    progress_of,
)
from cskd_lightning.errors import InputError, MissingInputError

log = logging.getLogger("cskd_lightning")

STATE_FORMAT = 1
"""The version of what :class:`RunConfigRecorder` stores."""

RUN_KEY = "cskd_run"
"""Where :class:`RunConfigRecorder` stores the relevant config in a checkpoint."""

TRUST_FLAG = "resume_trust_checkpoint=true"
ALLOW_CHANGE_FLAG = "resume_allow_config_change=true"

IGNORED_KEYS = (
    "hydra",
    "paths",
    "task_name",
    "threads",
    "ckpt_path",
    "resume_allow_config_change",
    "resume_trust_checkpoint",
    "teacher.logit_cache",
    "resume_from_sibling",
    "tune_on_test_set",
    "train",
    "test",
    "optimized_metric",
    "plan",
    "logger",
    "teacher.trust_checkpoint",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "data.datamodule.data_dir",
    "data.datamodule.download",
    "data.datamodule.num_workers",
    "data.datamodule.pin_memory",
    "callbacks.model_checkpoint.dirpath",
)
"""Config keys (and everything under them) that do not change what a run computes: where
files go, logging, loader workers. ``callbacks.*`` other than ``model_checkpoint`` (which picks
the best checkpoint, hence ``student.pt``) are ignored too."""


# --------------------------------------------------------------------------- config
def _is_ignored(key: str) -> bool:
    if key.startswith("callbacks.") and not key.startswith("callbacks.model_checkpoint"):
        return True
    return any(key == k or key.startswith(k + ".") for k in IGNORED_KEYS)


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def relevant_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config flattened to ``{"dotted.key": value}``, less :data:`IGNORED_KEYS`.

    Only the kept keys are resolved, so an unresolvable path (``${hydra:...}`` outside Hydra)
    in an ignored key does no harm.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    flat: dict[str, Any] = {}

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node.keys():
            dotted = f"{prefix}{key}"
            if _is_ignored(dotted):
                continue
            value = node[key]
            if isinstance(value, DictConfig):
                walk(value, dotted + ".")
            else:
                flat[dotted] = _plain(value)

    walk(cfg, "")
    return flat


def config_hash(flat: Mapping[str, Any]) -> str:
    text = json.dumps(dict(flat), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def diff_configs(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``"key: saved -> now"`` for every relevant key that differs (``<absent>`` if missing)."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


class RunConfigRecorder(L.Callback):
    """Store the run's relevant config (and its hash) in every checkpoint, under
    ``checkpoint["cskd_run"]``."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)
        self.hash = config_hash(self.config)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[RUN_KEY] = {
            "format": STATE_FORMAT,
            "config": self.config,
            "config_hash": self.hash,
        }


def check_config(
    checkpoint: Mapping[str, Any], now: Mapping[str, Any], path: Path, allow_change: bool
) -> None:
    """Refuse (``ValueError``) a checkpoint made with a different relevant config."""
    run = checkpoint.get(RUN_KEY)
    if not isinstance(run, Mapping) or not isinstance(run.get("config"), Mapping):
        log.warning(
            "%s holds no cskd-train config (made by another program or an older version): "
            "cannot check that it was made with this config.",
            path,
        )
        return
    if run.get("config_hash") == config_hash(now):
        return
    diff = diff_configs(run["config"], now)
    if not diff:
        return
    listed = "; ".join(diff[:10]) + (f" (+{len(diff) - 10} more)" if len(diff) > 10 else "")
    if allow_change:
        log.warning(
            "Resuming %s although the config changed (resume_allow_config_change=true): %s",
            path,
            listed,
        )
        return
    raise InputError(
        f"Cannot resume from {path}: it was made with a different config. Differing keys "
        f"(checkpoint -> now): {listed}. Resume with the original values, start a fresh run "
        f"(ckpt_path=null), or pass {ALLOW_CHANGE_FLAG} to resume anyway."
    )


def _mid_epoch_warning(checkpoint: Mapping[str, Any], path: Path) -> None:
    try:
        progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        mid_epoch = progress["current"]["completed"] > 0 and not progress["is_last_batch"]
    except (KeyError, TypeError):
        return
    if mid_epoch:
        log.warning(
            "%s was saved mid-epoch (after %d batches): the run resumes, but the rest of that "
            "epoch will not see the data in the same order as an uninterrupted run.",
            path,
            progress["current"]["completed"],
        )


def _saved_run_config(run_dir: Path) -> dict[str, Any] | None:
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return None
    try:
        return relevant_config(OmegaConf.load(saved))
    except Exception:  # noqa: BLE001 - an unreadable config just does not match
        return None


def search_sibling_runs(
    output_dir: Path, now: Mapping[str, Any], trust: bool = False
) -> tuple[Path, dict[str, Any]]:
    """The furthest good checkpoint among the sibling run directories (the other directories
    in ``output_dir``'s parent) whose saved and stored config match ``now``."""
    here = output_dir.resolve()
    parent = here.parent
    found, differing = [], []
    runs = sorted(r for r in parent.iterdir() if r.is_dir()) if parent.is_dir() else []
    for run in runs:
        if run.resolve() == here or not checkpoint_candidates(run / "checkpoints"):
            continue
        saved = _saved_run_config(run)
        if saved is not None and (diff := diff_configs(saved, now)):
            differing.append(f"{run.name} ({', '.join(d.split(':')[0] for d in diff[:3])})")
            continue
        try:
            path, checkpoint = newest_good_checkpoint(run / "checkpoints", trust, TRUST_FLAG)
        except CheckpointError as err:
            log.warning("Skipping run %s: %s", run, err)
            continue
        stored = checkpoint.get(RUN_KEY, {})
        if isinstance(stored, Mapping) and isinstance(stored.get("config"), Mapping):
            if diff := diff_configs(stored["config"], now):
                differing.append(f"{run.name} ({', '.join(d.split(':')[0] for d in diff[:3])})")
                continue
        found.append((progress_of(checkpoint), path, checkpoint))
    if found:
        _, path, checkpoint = max(found, key=lambda item: item[0])
        log.info(
            "ckpt_path=last with resume_from_sibling=true: %s has no checkpoint; resuming from "
            "%s, the furthest checkpoint of a sibling run with the same config.",
            output_dir / "checkpoints",
            path,
        )
        return path, checkpoint
    other = (
        f" {len(differing)} other run(s) there have checkpoints but a different config: "
        + "; ".join(differing[:5])
        + "."
        if differing
        else ""
    )
    raise MissingInputError(
        f"ckpt_path=last resume_from_sibling=true: no checkpoint in {output_dir / 'checkpoints'} "
        f"and no run in {parent} with the same config has one.{other} Restart with "
        "hydra.run.dir=<the run's directory>, give the checkpoint's path (ckpt_path=<file>), or "
        "drop ckpt_path to start afresh."
    )


@dataclass
class ResumeChoice:
    path: Path
    epoch: int | None
    global_step: int | None


def resolve_resume(cfg: DictConfig, output_dir: Path) -> ResumeChoice | None:
    """Which checkpoint ``cfg.ckpt_path`` resumes from (see the module docstring), checked.

    ``None``: start afresh (no ``ckpt_path``, or ``ckpt_path=last`` with no checkpoint in the
    run directory). Raises :class:`~cskd_lightning.errors.MissingInputError` (a named file that
    is not there), :class:`CheckpointError` (unreadable, or not a training checkpoint) or
    :class:`~cskd_lightning.errors.InputError` (made with another config).
    """
    given = cfg.get("ckpt_path")
    if not given:
        return None
    trust = bool(cfg.get("resume_trust_checkpoint", False))
    now = relevant_config(cfg)
    if str(given) == "last":
        ckpt_dir = output_dir / "checkpoints"
        # Lightning's SLURM handler (SIGUSR1 before the time limit) saves hpc_ckpt_<n>.ckpt in
        # the run directory before it requeues the job: a candidate too.
        hpc = sorted(p for p in output_dir.glob("hpc_ckpt_*.ckpt") if p.is_file())
        if checkpoint_candidates(ckpt_dir) or hpc:
            path, checkpoint = newest_good_checkpoint(ckpt_dir, trust, TRUST_FLAG, extra=hpc)
        elif cfg.get("resume_from_sibling", False):
            path, checkpoint = search_sibling_runs(output_dir, now, trust)
        else:
            log.info(
                "ckpt_path=last: no checkpoint in %s, so this is a new run. (To continue a "
                "run of another directory, give hydra.run.dir=<that directory>, or add "
                "resume_from_sibling=true to take the furthest checkpoint of a sibling run "
                "with the same config.)",
                ckpt_dir,
            )
            return None
    else:
        path = Path(str(given)).expanduser()
        if not path.is_file():
            raise MissingInputError(
                f"ckpt_path: no checkpoint at {path}. Give an existing .ckpt file, or "
                "ckpt_path=last to resume this run's newest checkpoint."
            )
        checkpoint = load_resumable(path, trust, TRUST_FLAG)
    check_config(checkpoint, now, path, bool(cfg.get("resume_allow_config_change", False)))
    _mid_epoch_warning(checkpoint, path)
    step, epoch = progress_of(checkpoint)
    log.info("Resuming from %s (saved after epoch %s, global step %s)", path, epoch, step)
    return ResumeChoice(path=path, epoch=epoch, global_step=step)


# --------------------------------------------------------------------------- requeue
def restart_count() -> int:
    """How many times SLURM has restarted this job (``SLURM_RESTART_COUNT``; 0 outside SLURM
    and on a job's first start). A requeue, by ``scontrol requeue``, by Lightning's SIGUSR1
    handler or by submitit after a timeout or preemption, restarts the same command."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def resume_if_requeued(cfg: DictConfig, output_dir: Path) -> bool:
    """A job SLURM restarted continues its run: ``ckpt_path=last`` unless a ``ckpt_path`` is
    given. Only when the run directory holds this job's own run (a ``config.yaml`` with the
    same relevant settings) or none; another run there is refused as for any job. Returns
    whether it set ``ckpt_path``."""
    count = restart_count()
    if count <= 0 or cfg.get("ckpt_path"):
        return False
    saved = _saved_run_config(output_dir)
    if (output_dir / "config.yaml").is_file() and (
        saved is None or diff_configs(saved, relevant_config(cfg))
    ):
        return False  # someone else's run: inspect_run_dir refuses it
    log.info(
        "SLURM restarted this job (SLURM_RESTART_COUNT=%d): resuming its run in %s "
        "(ckpt_path=last).",
        count,
        output_dir,
    )
    with open_dict(cfg):
        cfg.ckpt_path = "last"
    return True
