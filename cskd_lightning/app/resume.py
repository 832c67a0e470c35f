"""Resuming a ``cskd-train`` run: which checkpoint (``ckpt_path=last``: the one furthest into
training by its recorded step and epoch, never file time; with ``resume_from_sibling=true`` a
sibling run's), made with which config (stored in it as ``cskd_run``). No RNG state is stored:
data order and augmentation follow from seed and epoch, and ``EpochSeed`` reseeds dropout & co.,
so a run resumed at an epoch's end is bit-identical on the CPU with deterministic algorithms."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, open_dict

from cskd_lightning.app.run_dir import (
    ALLOW_CHANGE_FLAG,
    CHECKPOINTS,
    diff_configs,
    listed,
    relevant_config,
    saved_run_config,
)
from cskd_lightning.checkpoints import (
    CheckpointError,
    checkpoint_candidates,
    load_resumable,
    newest_good_checkpoint,
    progress_of,
)
from cskd_lightning.errors import InputError, MissingInputError

log = logging.getLogger("cskd_lightning")

RUN_KEY = "cskd_run"
TRUST_FLAG = "resume_trust_checkpoint=true"


class RunConfigRecorder(L.Callback):
    """Store the run's relevant config in every checkpoint (``cskd_run``)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:
        checkpoint[RUN_KEY] = {"format": 1, "config": self.config}


def _stored_config(checkpoint: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The config :class:`RunConfigRecorder` stored (``None``: another program's checkpoint)."""
    run = checkpoint.get(RUN_KEY)
    return run.get("config") if isinstance(run, Mapping) else None


def check_config(
    checkpoint: Mapping[str, Any], now: Mapping[str, Any], path: Path, allow_change: bool
) -> None:
    """Refuse (:class:`InputError`) a checkpoint made with a different relevant config."""
    stored = _stored_config(checkpoint)
    if stored is None:
        log.warning(
            "%s holds no cskd-train config (made by another program or an older version): "
            "cannot check that it was made with this config.",
            path,
        )
        return
    diff = diff_configs(stored, now)
    if diff and allow_change:
        message = "Resuming %s although the config changed (resume_allow_config_change=true): %s"
        log.warning(message, path, listed(diff))
    elif diff:
        raise InputError(
            f"Cannot resume from {path}: it was made with a different config. Differing keys "
            f"(checkpoint -> now): {listed(diff)}. Resume with the original values, start a "
            f"fresh run (ckpt_path=null), or pass {ALLOW_CHANGE_FLAG} to resume anyway."
        )


def search_sibling_runs(
    output_dir: Path, now: Mapping[str, Any], trust: bool = False
) -> tuple[Path, dict[str, Any]]:
    """The furthest good checkpoint among the sibling run directories whose saved and stored
    config match ``now``."""
    here, found, differing = output_dir.resolve(), [], []
    parent = here.parent  # exists: the run directory was created before the resume check
    for run in sorted(r for r in parent.iterdir() if r.is_dir()):
        ckpt_dir = run / CHECKPOINTS
        if run.resolve() == here or not checkpoint_candidates(ckpt_dir):
            continue
        try:
            saved = saved_run_config(run)  # None: no config.yaml
        except ValueError:  # unreadable: the config stored in its checkpoint decides
            saved = None
        diff = diff_configs(saved, now) if saved is not None else []
        if not diff:
            try:
                path, checkpoint = newest_good_checkpoint(ckpt_dir, trust, TRUST_FLAG)
            except CheckpointError as err:
                log.warning("Skipping run %s: %s", run, err)
                continue
            stored = _stored_config(checkpoint)
            diff = diff_configs(stored, now) if stored is not None else []
        if diff:
            differing.append(f"{run.name} ({', '.join(d.split(':')[0] for d in diff[:3])})")
        else:
            found.append((progress_of(checkpoint), path, checkpoint))
    if found:
        _, path, checkpoint = max(found, key=lambda item: item[0])
        log.info(
            "ckpt_path=last with resume_from_sibling=true: %s has no checkpoint; resuming from "
            "%s, the furthest checkpoint of a sibling run with the same config.",
            output_dir / CHECKPOINTS,
            path,
        )
        return path, checkpoint
    other = f" {len(differing)} other run(s) there have checkpoints but a different config: "
    other = other + "; ".join(differing[:5]) + "." if differing else ""
    raise MissingInputError(
        f"ckpt_path=last resume_from_sibling=true: no checkpoint in "
        f"{output_dir / CHECKPOINTS} and no run in {parent} with the same config has "
        f"one.{other} Restart with hydra.run.dir=<the run's directory>, give the checkpoint's "
        "path (ckpt_path=<file>), or drop ckpt_path to start afresh."
    )


@dataclass
class ResumeChoice:
    path: Path
    epoch: int | None
    global_step: int | None


def resolve_resume(cfg: DictConfig, output_dir: Path) -> ResumeChoice | None:
    """The checkpoint ``cfg.ckpt_path`` resumes from, checked (a missing, unreadable or other
    config's checkpoint refused); ``None``: start afresh."""
    given = cfg.get("ckpt_path")
    if not given:
        return None
    trust = bool(cfg.get("resume_trust_checkpoint", False))
    now = relevant_config(cfg)
    if str(given) == "last":
        ckpt_dir = output_dir / CHECKPOINTS
        # Lightning's SLURM handler saves hpc_ckpt_<n>.ckpt in the run directory before it
        # requeues the job: a candidate too.
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
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
    done = progress.get("current", {}).get("completed", 0)
    if done > 0 and not progress.get("is_last_batch", True):
        log.warning(
            "%s was saved mid-epoch (after %d batches): the run resumes, but the rest of that "
            "epoch will not see the data in the same order as an uninterrupted run.",
            path,
            done,
        )
    step, epoch = progress_of(checkpoint)
    log.info("Resuming from %s (saved after epoch %s, global step %s)", path, epoch, step)
    return ResumeChoice(path=path, epoch=epoch, global_step=step)


def resume_if_requeued(cfg: DictConfig, output_dir: Path) -> bool:
    """A job SLURM restarted (``SLURM_RESTART_COUNT`` > 0: ``scontrol requeue``, Lightning's
    SIGUSR1 handler, submitit) continues its run with ``ckpt_path=last`` unless one is given,
    when the run directory holds this job's own run or none. Returns whether it set it."""
    count = os.environ.get("SLURM_RESTART_COUNT", "0")
    if not count.isdigit() or int(count) == 0 or cfg.get("ckpt_path"):
        return False
    try:
        saved = saved_run_config(output_dir)
    except ValueError:
        return False  # an unreadable config.yaml: inspect_run_dir refuses it
    if saved is not None and diff_configs(saved, relevant_config(cfg)):
        return False  # someone else's run: inspect_run_dir refuses it
    log.info(
        "SLURM restarted this job (SLURM_RESTART_COUNT=%d): resuming its run in %s "
        "(ckpt_path=last).",
        int(count),
        output_dir,
    )
    with open_dict(cfg):
        cfg.ckpt_path = "last"
    return True
