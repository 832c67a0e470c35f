"""Files written so a crash never leaves half of one, and the short hashes that name them.

A write goes to a hidden temporary file beside the target (``.<name>.tmp``, never mistaken for
a checkpoint or a record), is flushed to disk (``fsync``), and is renamed over the target with
``os.replace``, which is atomic on POSIX and Windows; the directory entry is flushed too. A
reader sees the old file or the new one, never a torn one, even after a power cut.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "TMP_SUFFIX",
    "fsync_dir",
    "save_atomically",
    "stable_hash",
    "temp_path_for",
    "write_text_atomically",
    "write_temporary",
]

TMP_SUFFIX = ".tmp"


def stable_hash(payload: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``payload`` as canonical JSON (keys
    sorted; values JSON cannot hold written with ``str``). The same payload gives the same hash
    in every process, on every machine."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


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


def _write_temporary(write: Callable[[IO[bytes]], None], path: Path, tmp: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


def write_temporary(payload: Any, path: Path) -> Path:
    """``torch.save(payload)`` into ``path``'s temporary file, flushed to disk; returns it."""
    return _write_temporary(lambda h: torch.save(payload, h), path, temp_path_for(path))


def _commit(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    fsync_dir(path.parent)


def save_atomically(payload: Any, path: Path, *, shared: bool = False) -> None:
    """``torch.save(payload)`` to ``path`` through a temporary file, ``fsync`` and rename.

    ``shared=True``: several processes may write the same file at once (a cache entry); each
    writes its own temporary file (``.<name>.<pid>.tmp``) and the last rename wins."""
    tmp = _own_temp(path) if shared else temp_path_for(path)
    _commit(_write_temporary(lambda h: torch.save(payload, h), path, tmp), path)


def write_text_atomically(path: Path, text: str, *, shared: bool = False) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` through a temporary file, ``fsync``
    and rename; ``shared`` as in :func:`save_atomically`."""
    tmp = _own_temp(path) if shared else temp_path_for(path)
    _commit(_write_temporary(lambda h: h.write(text.encode()), path, tmp), path)


def _own_temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
