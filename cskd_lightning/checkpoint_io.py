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
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"


def temp_path_for(filepath: str | os.PathLike) -> Path:
    """``<dir>/.<name>.tmp``: hidden and not ``*.ckpt``, never mistaken for a checkpoint."""
    path = Path(filepath)
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename) to disk, where the platform allows it."""
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


def write_temporary(payload: Any, path: Path) -> Path:
    """``torch.save(payload)`` into ``path``'s temporary file, flushed to disk; returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


def write_atomically(payload: Any, path: Path) -> None:
    """``torch.save(payload)`` to ``path`` through a temporary file, ``fsync`` and rename."""
    os.replace(write_temporary(payload, path), path)
    fsync_dir(path.parent)


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
            write_atomically(checkpoint, target)
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
