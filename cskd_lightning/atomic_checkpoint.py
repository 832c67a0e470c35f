"""A ``ModelCheckpoint`` whose files are never left half-written and whose ``last.ckpt`` is
always the newest epoch.

* **Atomic writes.** Every checkpoint is written to a hidden temporary file in the same
  directory (``.<name>.tmp``), flushed to disk (``fsync``), then renamed over the target with
  ``os.replace`` (atomic on POSIX and Windows). A crash or ``SIGKILL`` during a save leaves the
  previous ``last.ckpt`` intact, at worst with a stray temporary file, which the next run
  removes.
* **``last.ckpt`` every epoch.** Lightning >= 2.5 refreshes ``last.ckpt`` only when a top-k
  checkpoint was saved at that step; this class refreshes it at every checkpointing point
  (epoch end), so ``ckpt_path=last`` loses at most one epoch.
* **Resuming from another run directory.** When the restored state's ``dirpath`` is another
  run's, its best-k checkpoints are copied into this run's directory and the record is carried
  over, instead of being dropped (Lightning's behaviour), so the best model of the whole
  training is still found.
* Its ``state_key`` is ``ModelCheckpoint``'s: checkpoints of either class restore into the
  other.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from cskd_lightning.app import is_global_zero

log = logging.getLogger("cskd_lightning")

TMP_SUFFIX = ".tmp"


def temp_path_for(filepath: str | os.PathLike) -> Path:
    """``<dir>/.<name>.tmp``: hidden and not ``*.ckpt``, never mistaken for a checkpoint."""
    path = Path(filepath)
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary file and ``os.replace``."""
    tmp = temp_path_for(dst)
    shutil.copy2(src, tmp)
    _fsync_file(tmp)
    os.replace(tmp, dst)


class AtomicModelCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` with atomic writes, ``last.ckpt``
    every epoch and best-k carried over on a resume from another run directory (see the module
    docstring). Takes the same arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_step_of_last: int | None = None

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    # --- atomic writes -----------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath and os.path.isdir(self.dirpath):
            for stale in Path(self.dirpath).glob(f".*.ckpt{TMP_SUFFIX}"):
                log.info("Removing %s, left by a save that did not finish.", stale)
                stale.unlink(missing_ok=True)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        target = Path(filepath)
        tmp = temp_path_for(target)
        trainer.save_checkpoint(tmp, self.save_weights_only)  # every rank; rank 0 writes
        if trainer.is_global_zero:
            _fsync_file(tmp)
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        trainer.strategy.barrier("AtomicModelCheckpoint._save_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    # --- last.ckpt at every checkpointing point ----------------------------------------------
    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_step_of_last = trainer.global_step

    def _refresh_last(self, trainer: L.Trainer) -> None:
        if (
            not self.save_last
            or trainer.fast_dev_run
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or self._last_step_of_last == trainer.global_step
        ):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    # --- resuming from another run directory -------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if (
            old
            and self.dirpath
            and os.path.realpath(str(old)) != os.path.realpath(str(self.dirpath))
        ):
            state_dict = self._adopt(dict(state_dict), str(old), str(self.dirpath))
        super().load_state_dict(state_dict)

    def _adopt(self, state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
        """Copy the previous run's best-k files into ``new`` and point the record at them."""
        old_dir, new_dir = Path(old), Path(new)

        def moved(path: Any) -> Any:
            if not path or Path(str(path)).parent != old_dir:
                return path
            return str(new_dir / Path(str(path)).name)

        copied = []
        if is_global_zero():
            new_dir.mkdir(parents=True, exist_ok=True)
            for path in state.get("best_k_models", {}):
                src = Path(str(path))
                if src.parent == old_dir and src.is_file():
                    atomic_copy(src, new_dir / src.name)
                    copied.append(src.name)
        state["best_k_models"] = {moved(k): v for k, v in state.get("best_k_models", {}).items()}
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            state[key] = moved(state.get(key))
        state["dirpath"] = self.dirpath
        log.info(
            "Carried the best-checkpoint record over from %s (copied: %s).",
            old_dir,
            ", ".join(copied) or "none",
        )
        return state
