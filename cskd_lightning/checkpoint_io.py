"""Checkpoint files that are never half-written, and an epoch's files committed together.

:class:`AtomicCheckpointIO` is a Lightning ``CheckpointIO`` plugin (``Trainer(plugins=[...])``):
every checkpoint is written to a hidden temporary file in the target's directory
(``.<name>.tmp``), flushed to disk (``fsync``) and renamed over the target with ``os.replace``
(atomic on POSIX and Windows). A kill during a save leaves the previous file whole, at worst
with a stray temporary file that the next run removes and that is never taken for a checkpoint.

**Epoch-end saves are committed after the epoch's record.** Lightning saves the epoch-end
checkpoints (in ``ModelCheckpoint.on_train_epoch_end``) *before* it writes that epoch's
training metrics to the loggers. A kill between the two would resume from a checkpoint whose
epoch has no training row in ``metrics.csv``. :class:`CommitCheckpointsAfterLogging` therefore
holds the epoch-end saves (and removals of superseded files) as written temporary files, and
renames them at the start of the next epoch and at the end of training, after the loggers have
written the epoch. Killed in between, the run resumes from the previous epoch's checkpoint and
redoes the epoch, so the metrics file and the checkpoints always agree.

:class:`RunModelCheckpoint` is a ``ModelCheckpoint`` whose best-k record follows a run resumed
from a checkpoint of another directory.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from cskd_lightning.files import (
    TMP_SUFFIX,
    fsync_dir,
    save_atomically,
    temp_path_for,
    write_temporary,
)

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic writes and an optional hold on renames and removals.

    While :meth:`hold` is on, :meth:`save_checkpoint` writes the temporary file and queues its
    rename; :meth:`remove_checkpoint` queues the removal; :meth:`commit` carries them out in
    order. Only the process that writes checkpoints (global rank 0) ever calls these.
    """

    def __init__(self) -> None:
        super().__init__()
        self._held = False
        self._pending: list[tuple[str, Path]] = []

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        if not self._held:
            save_atomically(checkpoint, target)
            return
        write_temporary(checkpoint, target)
        self._pending.append(("replace", target))

    def remove_checkpoint(self, path: Any) -> None:
        if self._held:
            self._pending.append(("remove", Path(path)))
        else:
            Path(path).unlink(missing_ok=True)

    def hold(self) -> None:
        """Queue renames and removals until :meth:`commit`."""
        self._held = True

    def commit(self) -> None:
        """Carry out the queued renames and removals, in the order they were asked for."""
        self._held = False
        pending, self._pending = self._pending, []
        for action, target in pending:
            if action == "replace":
                os.replace(temp_path_for(target), target)
                fsync_dir(target.parent)
            else:
                target.unlink(missing_ok=True)


class CommitCheckpointsAfterLogging(L.Callback):
    """Hold the epoch-end checkpoint saves of :class:`AtomicCheckpointIO` until the loggers have
    written the epoch (see the module docstring); remove stray temporary files at the start.

    Needs the trainer's checkpoint plugin to be an :class:`AtomicCheckpointIO`; with any other
    plugin it does nothing. Put it in the callback list before the ``ModelCheckpoint`` s.
    """

    def __init__(self, dirpath: str | os.PathLike | None = None) -> None:
        self.dirpath = None if dirpath is None else Path(dirpath)

    @staticmethod
    def _io(trainer: L.Trainer) -> AtomicCheckpointIO | None:
        io = trainer.strategy.checkpoint_io
        return io if isinstance(io, AtomicCheckpointIO) else None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero and self.dirpath and self.dirpath.is_dir():
            for stale in self.dirpath.glob(f".*{TMP_SUFFIX}"):
                log.info("Removing %s, left by a save that did not finish.", stale)
                stale.unlink(missing_ok=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        io = self._io(trainer)
        if io is not None:
            io.hold()

    def _commit(self, trainer: L.Trainer) -> None:
        io = self._io(trainer)
        if io is not None:
            io.commit()
        trainer.strategy.barrier("CommitCheckpointsAfterLogging")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._commit(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._commit(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        io = self._io(trainer)
        if io is not None:
            io.commit()  # the held files are whole and the epoch they belong to is logged


class RunModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose best-k record follows a resume from another run directory.

    When the restored state's ``dirpath`` is another run's (``resume_from_sibling=true``), that
    run's best-k files are copied into this run's directory and the record points at the
    copies, instead of being dropped (Lightning's behaviour): the best model of the whole
    training is still the one tested, and the other run's directory is left untouched.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if (
            old
            and self.dirpath
            and os.path.realpath(str(old)) != os.path.realpath(str(self.dirpath))
        ):
            state_dict = self._adopt(dict(state_dict), Path(str(old)), Path(str(self.dirpath)))
        super().load_state_dict(state_dict)

    def _adopt(self, state: dict[str, Any], old_dir: Path, new_dir: Path) -> dict[str, Any]:
        """Copy the previous run's best-k files into ``new_dir`` and point the record at them."""

        def moved(path: Any) -> Any:
            if not path or Path(str(path)).parent != old_dir:
                return path
            return str(new_dir / Path(str(path)).name)

        copied = []
        if rank_zero_only.rank == 0:
            new_dir.mkdir(parents=True, exist_ok=True)
            for path in state.get("best_k_models", {}):
                src = Path(str(path))
                if src.parent == old_dir and src.is_file():
                    tmp = temp_path_for(new_dir / src.name)
                    shutil.copy2(src, tmp)
                    os.replace(tmp, new_dir / src.name)
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
