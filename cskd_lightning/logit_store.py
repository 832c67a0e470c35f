"""The teacher-logit cache's storage: content hashes for its key, the logit files (full or
top-k), their sizes, and a split's table in device memory during an epoch
(:class:`~cskd_lightning.logit_cache.TeacherLogitCache` is the callback that uses them).

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
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cskd_lightning.errors import InputError

__all__ = [
    "CACHE_FORMAT",
    "DTYPES",
    "STORAGE",
    "LogitFile",
    "LogitTable",
    "cache_key",
    "cache_size_bytes",
    "check_topk",
    "data_hash",
    "index_dtype",
    "state_dict_hash",
    "topk_compress",
    "topk_expand",
]

CACHE_FORMAT = 1
DTYPES = {"float32": np.float32, "float16": np.float16}
"""The exact (full ``(N, V, C)``) storage dtypes."""
STORAGE = (*DTYPES, "topk")
"""Every storage ``dtype`` of the cache: the full dtypes and ``"topk"``."""


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


def data_hash(datamodule: Any) -> dict[str, str]:
    """Content hashes of the images and labels of each split (``train``, ``val``, ``test``) of a
    :class:`~cskd_lightning.data.device.DeviceDataModule`."""
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
            f"TeacherLogitCache(topk={topk!r}): give the number of classes a top-k cache keeps "
            "per sample, a whole number >= 1 (FKD and TinyViT keep 5 to 10).",
            key="topk",
        )
    if classes is not None and topk >= classes:
        raise InputError(
            f"TeacherLogitCache(topk={topk}) keeps every class of this data ({classes} "
            f"classes): choose topk < {classes}, or dtype='float32' (or 'float16') to store "
            "all of them.",
            key="topk",
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


class LogitTable:
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
