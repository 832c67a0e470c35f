"""The teacher-logit cache: the teacher runs once per (teacher, data, augmentation) and every
later run of a sweep reads its logits from disk instead.

A distillation step is a teacher forward plus a student training step, and a sweep over
methods, learning rates or student seeds repeats the same teacher forwards on the same views.
With the device pipeline (:mod:`cskd_lightning.data.device`) the views of training sample
``i`` in epoch ``e`` depend only on ``(augment_seed, e, i)``, so the teacher's logits
``z_t[e, i, v]`` (view ``v``) are a fixed table. :class:`TeacherLogitCache` stores it:

* **Key.** A directory ``<cache_dir>/teacher_logits/<teacher>-<data>-<key>/`` per
  :func:`cache_key`: a content hash of the teacher's weights (every tensor of its
  ``state_dict``), a content hash of the data of every split (images and labels, so the split
  is in it), the augmentation settings and ``augment_seed``, the number of views, the class
  count, the precision, the accelerator type, ``channels_last`` / ``compile_models`` /
  ``fold_teacher_batchnorm`` and the storage dtype. Epochs are separate files, so the epoch
  count needs no key: a longer run reads the epochs that exist and computes the rest.
* **Storage.** Files, top-k format, atomic writes and disk size: :mod:`cskd_lightning.logit_store`.

At run time (a Lightning :class:`~lightning.pytorch.callbacks.Callback`, attached by
``cskd-train`` with ``teacher.logit_cache=true``): when an epoch's first batch asks, the
stored rows of the epoch are read into ONE device tensor per view (``(N, C)``, ``float32``)
and their completion record into host memory; a training batch (a
:class:`~cskd_lightning.data.device.SampleBatch`, which carries its sample indices) whose
rows are all stored is answered by an ``index_select`` on the device (the check reads the
host copy of the indices: no host sync); any other batch runs the teacher and its logits
are copied into a device buffer (``index_copy_``), written to the files once, at the epoch's
end. Under DDP every process looks up and writes only the rows
of its own samples (disjoint rows of the same files).

:class:`~cskd_lightning.module.DistillationModule` consults ``module.logit_cache``
(:meth:`~cskd_lightning.module.DistillationModule.teacher_logits`); this callback sets it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from cskd_lightning import locks
from cskd_lightning.data.device import DeviceDataModule, SampleBatch, ShardedPermutation
from cskd_lightning.errors import InputError
from cskd_lightning.files import write_text_atomically
from cskd_lightning.logit_store import (
    CACHE_FORMAT,
    STORAGE,
    LogitFile,
    LogitTable,
    cache_key,
    cache_size_bytes,
    check_topk,
    data_hash,
    state_dict_hash,
)

log = logging.getLogger("cskd_lightning")

__all__ = ["TeacherLogitCache"]


def _ranges(epochs: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 6]`` -> ``"0-2, 5-6"``."""
    out: list[str] = []
    start = prev = None
    for e in epochs:
        if start is None:
            start = prev = e
        elif e == prev + 1:
            prev = e
        else:
            out.append(f"{start}-{prev}" if start != prev else f"{start}")
            start = prev = e
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ", ".join(out) or "none"


def _disk_usage(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.glob("*") if p.is_file())


TOPK_WARNING = (
    "Top-%d storage trains on rebuilt teacher logits, and at the temperatures of the "
    "distillation losses (T = 4) that costs accuracy: on the 100-class Fashion-MNIST pairs KD "
    "lost 5 points with top-10 and 14 with top-5 (more than it gained over no teacher), CSKD + "
    "CSWT 0.3 and 2.3 (docs/benchmarks/logit_cache.md). Use float16 storage where it fits."
)
"""Logged once by a run that uses a top-k cache (what the study measured)."""


class TeacherLogitCache(Callback):
    """Store the teacher's logits per epoch, sample and view; serve them to later runs.

    Args:
        root: the cache root (``<paths.cache_dir>/teacher_logits``).
        name: a readable prefix of the cache directory (e.g. ``"<teacher>-<data>"``).
        dtype: ``"float32"`` (bit-exact), ``"float16"`` (half the disk; the stored logits are
            rounded to float16) or ``"topk"`` (the ``topk`` largest logits and one fill value
            per training row, :func:`topk_compress`; lossy: every run with it, storing or
            reading, trains on the rebuilt logits of :func:`topk_expand`).
        topk: ``k`` for ``dtype="topk"`` (``1 <= k < C``; ignored otherwise).

    Needs a :class:`~cskd_lightning.data.device.DeviceDataModule` (it turns on its
    ``with_indices``) and a :class:`~cskd_lightning.module.DistillationModule` with a teacher
    and a loss that uses it. ``stats``: the training batches answered from the cache
    (``"cached"``) and those the teacher ran on (``"computed"``), this process.
    """

    def __init__(
        self,
        root: str | Path,
        name: str = "teacher",
        dtype: str = "float32",
        topk: int | None = None,
    ) -> None:
        if dtype not in STORAGE:
            raise InputError(
                f"TeacherLogitCache(dtype={dtype!r}): choose one of {', '.join(STORAGE)}.",
                key="dtype",
            )
        self.root = Path(root).expanduser()
        self.name = name
        self.dtype = dtype
        self.topk = check_topk(topk) if dtype == "topk" else None
        self.directory: Path | None = None
        self.stats = {"cached": 0, "computed": 0}
        self._enabled = False
        self._datamodule: DeviceDataModule | None = None
        self._views = 1
        self._classes = 0
        self._tables: dict[str, LogitTable] = {}
        self.lock = True

    # ---------------------------------------------------------------- key and directory
    def key_payload(
        self, module: Any, dm: DeviceDataModule, precision: str, accelerator: str
    ) -> dict[str, Any]:
        """Everything that determines the stored logits (see the module docstring)."""
        return {
            "format": CACHE_FORMAT,
            "teacher": state_dict_hash(module.teacher),
            "teacher_class": type(module.teacher).__name__,
            "data": data_hash(dm),
            "augmentation": dm.augmentation_settings(),
            "views": self._views,
            "classes": self._classes,
            "precision": str(precision),
            "accelerator": str(accelerator),
            "channels_last": bool(getattr(module, "channels_last", False)),
            "compile": bool(getattr(module, "compile_models", False)),
            "dtype": self.dtype,
            # Only in a top-k key, so the keys of the full caches stay what they were.
            **({"topk": self.topk} if self.topk is not None else {}),
            # Only when folded (the folded teacher's logits differ by rounding), likewise.
            **(
                {"fold_teacher_batchnorm": True}
                if getattr(module, "fold_teacher_batchnorm", False)
                else {}
            ),
        }

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Attach to the trainer's datamodule and module (Lightning calls it before fit/test).

        A one-process run locks each table while it fills it (other jobs wait, then read);
        the processes of a DDP run fill disjoint rows of the same files and take no lock (one
        rank waiting for another job would stall its peers in their collectives).
        """
        self.lock = trainer.world_size == 1
        self.attach(
            pl_module,
            trainer.datamodule,
            precision=str(trainer.precision),
            accelerator=torch.device(trainer.strategy.root_device).type,
            announce=trainer.is_global_zero,
        )

    def attach(
        self,
        module: Any,
        dm: Any,
        precision: str = "32-true",
        accelerator: str = "cpu",
        announce: bool = True,
    ) -> bool:
        """Serve ``module`` (a :class:`~cskd_lightning.module.DistillationModule`) on the
        batches of ``dm``; what :meth:`setup` does, usable in a loop without a trainer.
        ``precision`` / ``accelerator``: the forward's settings, part of the key. Returns
        whether the cache is in use (not for a loss without a teacher)."""
        if not isinstance(dm, DeviceDataModule):
            raise InputError(
                "TeacherLogitCache needs a DeviceDataModule (the device-resident data pipeline), "
                "whose batches carry their sample indices (the cache's row numbers); got "
                f"{type(dm).__name__}, a DataLoader datamodule: wrap it, "
                "cskd_lightning.data.DeviceDataModule(datamodule).",
                key="datamodule",
            )
        loss = getattr(module, "loss", None)
        if getattr(module, "teacher", None) is None or not getattr(loss, "requires_teacher", False):
            if self.directory is None and announce:
                log.info("Teacher-logit cache not used: this run's loss needs no teacher.")
            return False
        dm.with_indices = True
        module.logit_cache = self
        self._enabled = True
        if self.directory is not None:
            return True
        if self.dtype == "topk" and announce:
            log.warning(TOPK_WARNING, self.topk)
        self._datamodule = dm
        self._views = 2 if dm.two_view else 1
        self._classes = int(module.num_classes)
        if self.topk is not None:
            check_topk(self.topk, self._classes)
        payload = self.key_payload(module, dm, precision, accelerator)
        self.directory = self.root / f"{self.name}-{cache_key(payload)}"
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = self.directory / "meta.json"
        if not meta.is_file():
            write_text_atomically(meta, json.dumps(payload, indent=2, sort_keys=True), shared=True)
        return True

    def end_epoch(self) -> None:
        """Write what the teacher computed this epoch (the epoch-end hooks call it)."""
        self._flush("train", "val", "test")

    # ---------------------------------------------------------------- what this run needs
    def _train_rows(self, trainer: L.Trainer, epoch: int) -> np.ndarray:
        """The training rows this process's batches of ``epoch`` cover (its loader's order)."""
        loader = trainer.train_dataloader
        sampler = loader.sampler
        order = ShardedPermutation(
            sampler.n, sampler.shuffle, sampler.seed, sampler.rank, sampler.world_size
        )
        order.set_epoch(epoch)
        batches = min(int(trainer.num_training_batches), len(loader))
        return order.indices().numpy()[: batches * loader.batch_size]

    def _needed_views(self, module: Any) -> int:
        return min(int(getattr(module.loss, "num_views", 1)), self._views)

    def _n(self, split: str) -> int:
        tensors = self._datamodule.split_tensors(split)
        return int(tensors[0].shape[0])

    def _stem(self, split: str, epoch: int | None) -> Path:
        return self.directory / (f"{split}-e{epoch:04d}" if epoch is not None else split)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log whether this run's epochs are stored (hit), not stored (miss) or some (partial)."""
        if not self._enabled:
            return
        first, last = trainer.current_epoch, int(trainer.max_epochs)
        views = self._needed_views(pl_module)
        stored = []
        for epoch in range(first, last):
            done = LogitFile.done_rows(self._stem("train", epoch), self._n("train"), self._views)
            rows = self._train_rows(trainer, epoch)
            if done is not None and bool(done[rows, :views].all()):
                stored.append(epoch)
        todo = [e for e in range(first, last) if e not in stored]
        size = (
            cache_size_bytes(
                last, self._n("train"), self._views, self._classes, self.dtype, topk=self.topk
            )
            / 1e6
        )
        if not todo:
            status = f"hit (epochs {_ranges(stored)} stored)"
        elif not stored:
            status = f"miss (the teacher runs; epochs {_ranges(todo)} are stored)"
        else:
            status = f"partial (epochs {_ranges(stored)} stored, {_ranges(todo)} computed)"
        if trainer.is_global_zero:
            log.info(
                "Teacher-logit cache %s at %s (%s; %.1f MB for %d epochs when full)",
                status,
                self.directory,
                self.dtype if self.topk is None else f"top-{self.topk}",
                size,
                last,
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush("train")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush("val", "test")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush("val", "test")

    def _flush(self, *splits: str) -> None:
        for split in splits:
            table = self._tables.pop(split, None)
            if table is not None:
                table.flush()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """A failed run releases its tables' locks (the next job of a sweep in this process
        may need them); what it computed is not written."""
        for table in self._tables.values():
            table.release()
        self._tables.clear()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled:
            log.info(
                "Teacher-logit cache: %d training batches read from it, %d computed by the "
                "teacher (rank %d); %.1f MB on disk in %s",
                self.stats["cached"],
                self.stats["computed"],
                trainer.global_rank,
                _disk_usage(self.directory) / 1e6,
                self.directory,
            )

    # ---------------------------------------------------------------- the module's side
    def lookup(self, batch: Any, views: int) -> list[Tensor] | None:
        """The stored teacher logits ``(B, C)`` of the first ``views`` views of ``batch``, or
        ``None`` if some are not stored (or ``batch`` carries no sample indices)."""
        table = self._table_for(batch)
        if table is None:
            return None
        found = table.lookup(batch.host_index, batch.index, views)
        if batch.split == "train":
            self.stats["cached" if found is not None else "computed"] += 1
        return found

    def record(self, batch: Any, logits: Sequence[Tensor]) -> list[Tensor]:
        """Keep the teacher's ``logits`` (one ``(B, C)`` per view) of ``batch`` for the files;
        return the logits the loss is to use: those a later run will read (a top-k cache's
        training rows: their :func:`topk_expand` reconstruction; else ``logits``)."""
        table = self._table_for(batch)
        if table is None:
            return list(logits)
        return table.record(batch.index, logits)

    def _table_for(self, batch: Any) -> LogitTable | None:
        """The open table of ``batch``'s split (and epoch), opened on first use: an epoch's
        stored rows are read once, when its first batch asks."""
        if not self._enabled or not isinstance(batch, SampleBatch):
            return None
        split = batch.split
        epoch = batch.epoch if split == "train" else None
        table = self._tables.get(split)
        if table is not None and table.epoch == epoch:
            return table
        self._flush(split)
        views = self._views if split == "train" else 1
        stem = self._stem(split, epoch)
        # One process at a time per table (its first store): a job that opens a table another
        # job is filling waits for it, then reads its rows instead of computing them again.
        what = f"the teacher logits of {stem.name}"
        lock = locks.acquire(stem, what) if self.lock else None
        # A top-k cache stores its training rows as top-k, its evaluation splits exact.
        dtype = "float32" if self.topk is not None and split != "train" else self.dtype
        file = LogitFile(stem, self._n(split), views, self._classes, dtype, self.topk)
        table = self._tables[split] = LogitTable(file, epoch, batch.index.device, lock)
        return table
