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
  count, the precision, the accelerator type, ``channels_last`` / ``compile_models`` and the
  storage dtype. Epochs are separate files, so the epoch count needs no key: a longer run
  reads the epochs that exist and computes the rest.
* **Files.** ``train-e<epoch>.<dtype>``: ``(N, V, C)`` logits of the ``N`` training samples
  (``V`` views, ``C`` classes), raw little-endian ``float32`` (default, bit-exact) or
  ``float16``, read and written through ``numpy.memmap``; ``train-e<epoch>.done``: the
  completion record, ``uint8`` ``(N, V)``, 1 where the row is stored. ``val.*`` / ``test.*``
  hold the evaluation splits (``V = 1``), stored once. ``meta.json`` describes the key.
* **Top-k** (``dtype="topk"``, opt-in, lossy; the scheme of FKD and TinyViT): each training
  row keeps its ``k`` largest logits and one fill value for the other ``C - k`` classes (see
  :func:`topk_compress` / :func:`topk_expand` for the formula): ``train-e<epoch>.topk-values``
  ``(N, V, k + 1)`` ``float16`` (the ``k`` logits in descending order, then the fill) and
  ``train-e<epoch>.topk-index`` ``(N, V, k)`` (their classes, ``int16`` when ``C <= 32767``,
  else ``int32``). Every method gets full ``(B, C)`` logits rebuilt from them, in the run that
  stores them as well as in the runs that read them (so a top-k run's result does not depend
  on whether the cache was warm). The evaluation splits are stored exact (``float32``) in a
  top-k cache: validation and test metrics are those of the float32 cache.
* **Atomic.** A file appears fully sized at once (a sparse temporary file hard-linked into
  place, so two processes never clobber each other); rows are marked done only after they are
  flushed (``msync``), so a run killed at any point leaves a cache whose done rows are right:
  the next run uses them and computes the rest ("partial").
* **Disk size.** ``E * N * V * C * b`` bytes of logits (``b = 4`` for ``float32``, ``2`` for
  ``float16``) plus ``E * N * V`` bytes of completion records, plus ``(N_val + N_test) * C * b``
  for the evaluation splits. CIFAR-100 (``N = 50000``, ``C = 100``, ``float32``): 20 MB per
  epoch and view; 240 epochs 4.8 GB (one view) / 9.6 GB (two views), 480 epochs 9.6 / 19.2 GB.
  Top-k: ``E * N * V * (2 * (k + 1) + k * i)`` bytes (``i = 2`` for ``int16`` indices, 4 for
  ``int32``) plus the same completion records, and ``(N_val + N_test) * C * 4`` for the exact
  evaluation splits: ImageNet (``N = 1281167``, ``C = 1000``) with ``k = 10``, 55 MB per epoch
  and view (completion records included) instead of 5.1 GB (:func:`cache_size_bytes`).

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

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from cskd_lightning import locks
from cskd_lightning.data.device import DeviceDataModule, SampleBatch, ShardedPermutation
from cskd_lightning.errors import InputError

log = logging.getLogger("cskd_lightning")

__all__ = [
    "CACHE_FORMAT",
    "LogitFile",
    "TeacherLogitCache",
    "cache_key",
    "cache_size_bytes",
    "index_dtype",
    "state_dict_hash",
    "topk_compress",
    "topk_expand",
]

CACHE_FORMAT = 1
DTYPES = {"float32": np.float32, "float16": np.float16}
"""The exact (full ``(N, V, C)``) storage dtypes."""
STORAGE = (*DTYPES, "topk")
"""Every ``teacher.logit_cache_dtype``: the full dtypes and ``"topk"``."""
REFUSAL = (
    "teacher.logit_cache=true needs the device-resident data pipeline, whose batches carry "
    "their sample indices (the cache's row numbers), but {data} is a DataLoader "
    "datamodule: use {fix} (or teacher.logit_cache=false)."
)
DEVICE_DATA = (
    "digits_device",
    "fashion_mnist_device",
    "fashion_mnist_pairs_device",
    "cifar100_device",
)


def refusal(data_name: str, datamodule: Any) -> str:
    """The one-line refusal of a DataLoader datamodule, naming the device config to use."""
    fix = f"{data_name}_device"
    if fix not in DEVICE_DATA:
        fix = "data=<name>_device (" + ", ".join(DEVICE_DATA) + ")"
    else:
        fix = f"data={fix}"
    return REFUSAL.format(data=f"data={data_name} ({type(datamodule).__name__})", fix=fix)


# ------------------------------------------------------------------------------- hashing
def _blake(parts: Iterable[bytes]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part)
    return h.hexdigest()


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    header = f"{t.dtype}{tuple(t.shape)}".encode()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return header + t.numpy().tobytes()


def state_dict_hash(model: nn.Module) -> str:
    """A content hash of every tensor of ``model.state_dict()`` (names, dtypes, shapes, bytes)."""
    parts: list[bytes] = []
    for name, value in model.state_dict().items():
        if isinstance(value, Tensor):
            parts += [name.encode(), _tensor_bytes(value)]
    return _blake(parts)


def data_hash(datamodule: DeviceDataModule) -> dict[str, str]:
    """Content hashes of the images and labels of each split (``train``, ``val``, ``test``)."""
    hashes: dict[str, str] = {}
    for part in ("train", "val", "test"):
        tensors = datamodule.split_tensors(part)
        if tensors is not None:
            hashes[part] = _blake(_tensor_bytes(t) for t in tensors)
    return hashes


def cache_key(payload: dict[str, Any]) -> str:
    """A 16-hex-digit hash of the key ``payload`` (see :meth:`TeacherLogitCache.key_payload`)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def index_dtype(classes: int) -> np.dtype:
    """The dtype of a top-k cache's class indices: ``int16`` when ``classes <= 32767``, else
    ``int32``."""
    return np.dtype(np.int16 if classes <= np.iinfo(np.int16).max else np.int32)


def check_topk(topk: Any, classes: int | None = None) -> int:
    """``topk`` as an ``int``, refused in one line (:class:`InputError`) unless it is a whole
    number with ``1 <= topk < classes`` (``classes``: when known)."""
    if isinstance(topk, bool) or not isinstance(topk, int | np.integer) or topk < 1:
        raise InputError(
            f"teacher.logit_cache_topk={topk!r}: give the number of classes a top-k cache keeps "
            "per sample, a whole number >= 1 (FKD and TinyViT keep 5 to 10)."
        )
    if classes is not None and topk >= classes:
        raise InputError(
            f"teacher.logit_cache_topk={topk} keeps every class of this data ({classes} "
            f"classes): choose teacher.logit_cache_topk < {classes}, or "
            "teacher.logit_cache_dtype=float32 (or float16) to store all of them."
        )
    return int(topk)


def cache_size_bytes(
    epochs: int,
    n: int,
    views: int,
    classes: int,
    dtype: str = "float32",
    n_eval: int = 0,
    topk: int | None = None,
) -> int:
    """Disk bytes of a full cache: ``E*N*V*C*b + E*N*V`` (training logits and completion
    records) ``+ N_eval*C*b + N_eval`` (evaluation splits); ``b`` = 4 (float32) or 2.

    ``dtype="topk"`` (``topk`` = k): ``E*N*V*(2*(k+1) + k*i) + E*N*V`` for the training rows
    (``k + 1`` float16 values, ``k`` indices of ``i`` bytes, see :func:`index_dtype`) ``+
    N_eval*C*4 + N_eval`` (the evaluation splits, stored exact)."""
    if dtype == "topk":
        k = check_topk(topk)
        row = 2 * (k + 1) + k * index_dtype(classes).itemsize
        eval_row = classes * 4
    else:
        row = eval_row = classes * np.dtype(DTYPES[dtype]).itemsize
    return epochs * n * views * (row + 1) + n_eval * (eval_row + 1)


# ------------------------------------------------------------------------------- top-k
def topk_compress(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top-k record of ``logits`` ``(B, C)``: ``(values (B, k + 1) float16, index (B, k)
    int64)``.

    With ``S`` the ``k`` classes of largest logit (``index``, in descending order of logit):
    ``values[:, :k] = z[:, S]`` and ``values[:, k] = f``, the fill of the other classes,

        ``f = logsumexp_{j not in S}(z_j) - log(C - k)``

    (computed in float32, then everything rounded to float16). :func:`topk_expand` puts ``f``
    in every class outside ``S``, so that ``sum_{j not in S} exp(f) = sum_{j not in S}
    exp(z_j)``: the log-sum-exp of the row is kept, and at ``T = 1`` the top-k probabilities
    are the teacher's and the remaining mass ``1 - sum_{j in S} p_j`` is spread evenly over
    the other ``C - k`` classes (up to the float16 rounding). ``f <= min_{j in S} z_j``, and
    rounding is monotone, so the argmax is kept (up to float16 ties among the top values).
    """
    z = logits.detach().float()
    classes = z.shape[1]
    top, index = z.topk(k, dim=1)
    rest = z.scatter(1, index, float("-inf")).logsumexp(dim=1, keepdim=True)
    fill = rest - math.log(classes - k)
    return torch.cat([top, fill], dim=1).to(torch.float16), index


def topk_expand(values: Tensor, index: Tensor, classes: int) -> Tensor:
    """The full logits ``(B, C)`` (float32) of a top-k record (:func:`topk_compress`):

    ``z_hat[b, index[b, i]] = values[b, i]`` (``i < k``), ``z_hat[b, j] = values[b, k]``
    for every other class ``j``.
    """
    values = values.float()
    out = values[:, -1:].expand(values.shape[0], classes).contiguous()
    return out.scatter_(1, index.long(), values[:, :-1])


# ------------------------------------------------------------------------------- storage
def _create_sparse(path: Path, size: int) -> None:
    """Make ``path`` a zero-filled file of ``size`` bytes, atomically and without clobbering:
    a sparse temporary file is hard-linked into place (if another process was first, its file
    is kept)."""
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.truncate(size)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


class LogitFile:
    """One table of stored logits: ``values`` ``(N, V, C)`` and ``done`` ``(N, V)`` (``uint8``),
    memory-mapped from ``<stem>.<dtype>`` and ``<stem>.done`` (created zero-filled if absent).

    ``dtype="topk"`` (``topk`` = k): ``values`` ``(N, V, k + 1)`` ``float16`` from
    ``<stem>.topk-values`` and ``index`` ``(N, V, k)`` (:func:`index_dtype`) from
    ``<stem>.topk-index`` (see :func:`topk_compress`); ``shape`` stays ``(N, V, C)``.
    """

    def __init__(
        self, stem: Path, n: int, views: int, classes: int, dtype: str, topk: int | None = None
    ) -> None:
        self.stem, self.shape, self.dtype = stem, (int(n), int(views), int(classes)), dtype
        self.topk = check_topk(topk, classes) if dtype == "topk" else None
        self.index: np.memmap | None = None
        self.done_path = stem.with_name(f"{stem.name}.done")
        if self.topk is None:
            np_dtype = np.dtype(DTYPES[dtype])
            self.values_path = stem.with_name(f"{stem.name}.{dtype}")
            shape = self.shape
        else:
            np_dtype = np.dtype(np.float16)
            self.values_path = stem.with_name(f"{stem.name}.topk-values")
            self.index_path = stem.with_name(f"{stem.name}.topk-index")
            shape = (*self.shape[:2], self.topk + 1)
            index_shape = (*self.shape[:2], self.topk)
            np_index = index_dtype(classes)
            _create_sparse(self.index_path, int(np.prod(index_shape)) * np_index.itemsize)
            self.index = np.memmap(self.index_path, dtype=np_index, mode="r+", shape=index_shape)
        _create_sparse(self.values_path, int(np.prod(shape)) * np_dtype.itemsize)
        _create_sparse(self.done_path, self.shape[0] * self.shape[1])
        self.values = np.memmap(self.values_path, dtype=np_dtype, mode="r+", shape=shape)
        self.done = np.memmap(self.done_path, dtype=np.uint8, mode="r+", shape=self.shape[:2])

    @staticmethod
    def done_rows(stem: Path, n: int, views: int) -> np.ndarray | None:
        """The completion record ``(N, V)`` as ``bool`` without creating anything (``None`` if
        absent)."""
        path = stem.with_name(f"{stem.name}.done")
        if not path.is_file() or path.stat().st_size != n * views:
            return None
        return np.fromfile(path, dtype=np.uint8).reshape(n, views).astype(bool)

    def write(
        self, rows: np.ndarray, view: int, values: np.ndarray, index: np.ndarray | None = None
    ) -> None:
        """Store ``values`` ``(len(rows), C)`` as rows ``rows`` of ``view`` (top-k: ``values``
        ``(len(rows), k + 1)`` and ``index`` ``(len(rows), k)``): the values are flushed
        before the rows are marked done (a kill in between leaves them not done)."""
        if rows.size == 0:
            return
        self.values[rows, view, :] = values.astype(self.values.dtype, copy=False)
        self.values.flush()
        if self.index is not None:
            self.index[rows, view, :] = index.astype(self.index.dtype, copy=False)
            self.index.flush()
        self.done[rows, view] = 1
        self.done.flush()


# ------------------------------------------------------------------------------- the callback
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
                f"teacher.logit_cache_dtype={dtype!r}: choose one of {', '.join(STORAGE)}"
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
        self._tables: dict[str, _Table] = {}
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
            raise InputError(refusal(type(dm).__name__, dm))
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
            tmp = meta.with_name(f".meta.json.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
            os.replace(tmp, meta)
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

    def _table_for(self, batch: Any) -> _Table | None:
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
        table = self._tables[split] = _Table(file, epoch, batch.index.device, lock)
        return table


class _Table:
    """One open :class:`LogitFile` during an epoch: the stored rows on the device for lookups,
    a device buffer for the rows the teacher computes, written out by :meth:`flush`.

    A top-k file keeps its records on the device (``(N, k + 1)`` float16 values and ``(N, k)``
    indices per view) and rebuilds a batch's ``(B, C)`` logits when asked."""

    def __init__(
        self, file: LogitFile, epoch: int | None, device: torch.device, lock: Any = None
    ) -> None:
        self.file, self.epoch, self.device, self.lock = file, epoch, device, lock
        self.done = np.array(file.done, dtype=bool)  # (N, V) host copy
        n, views, classes = file.shape
        self.topk = file.topk
        self.stored: list[Tensor] | None = None
        self.stored_index: list[Tensor] | None = None
        if self.done.any():
            values = torch.from_numpy(np.array(file.values))  # (N, V, C or k + 1) in host memory
            dtype = torch.float32 if self.topk is None else torch.float16
            self.stored = [
                values[:, v].to(device=device, dtype=dtype).contiguous() for v in range(views)
            ]
            if self.topk is not None:
                index = torch.from_numpy(np.array(file.index))  # (N, V, k)
                self.stored_index = [index[:, v].to(device).contiguous() for v in range(views)]
        self.buffer: list[Tensor] | None = None
        self.buffer_index: list[Tensor] | None = None
        self.written: Tensor | None = None

    def lookup(self, host_index: np.ndarray, index: Tensor, views: int) -> list[Tensor] | None:
        if self.stored is None or views > self.file.shape[1]:
            return None
        if not bool(self.done[host_index, :views].all()):
            return None
        if self.topk is None:
            return [self.stored[v].index_select(0, index) for v in range(views)]
        return [
            topk_expand(
                self.stored[v].index_select(0, index),
                self.stored_index[v].index_select(0, index),
                self.file.shape[2],
            )
            for v in range(views)
        ]

    def record(self, index: Tensor, logits: Sequence[Tensor]) -> list[Tensor]:
        n, views, classes = self.file.shape
        width = classes if self.topk is None else self.topk + 1
        dtype = torch.float32 if self.topk is None else torch.float16
        if self.buffer is None:
            self.buffer = [
                torch.zeros(n, width, device=self.device, dtype=dtype) for _ in range(views)
            ]
            if self.topk is not None:
                self.buffer_index = [
                    torch.zeros(n, self.topk, device=self.device, dtype=torch.int64)
                    for _ in range(views)
                ]
            self.written = torch.zeros(n, views, device=self.device, dtype=torch.bool)
        used = list(logits)
        for v, z in enumerate(logits[:views]):
            if self.topk is None:
                self.buffer[v].index_copy_(0, index, z.detach().to(torch.float32))
            else:
                values, top = topk_compress(z, self.topk)
                self.buffer[v].index_copy_(0, index, values)
                self.buffer_index[v].index_copy_(0, index, top)
                used[v] = topk_expand(values, top, classes)
            self.written[:, v].index_fill_(0, index, True)
        return used

    def flush(self) -> None:
        """Write the computed rows not yet stored (one device-to-host copy per view), then
        release the table's lock."""
        try:
            if self.buffer is not None:
                written = self.written.cpu().numpy()
                for v, values in enumerate(self.buffer):
                    rows = np.nonzero(written[:, v] & ~self.done[:, v])[0]
                    if rows.size:
                        index = None
                        if self.buffer_index is not None:
                            index = self.buffer_index[v].cpu().numpy()[rows]
                        self.file.write(rows, v, values.cpu().numpy()[rows], index)
                self.buffer = self.buffer_index = self.written = None
        finally:
            self.release()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
