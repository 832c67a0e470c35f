"""OS-level locks on cache entries, so that jobs started together compute a cached thing once.

A lock is the file ``<entry>.lock`` beside the entry, locked with ``flock`` through
:mod:`filelock`: the operating system releases it when its holder exits, however it exits
(a crash, ``SIGKILL``), so a dead job never leaves the others waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["FileLock", "Timeout", "acquire", "held"]

log = logging.getLogger("cskd_lightning")


def acquire(entry: Path, what: str) -> FileLock:
    """Lock the cache entry ``entry`` and return the held lock (``.release()`` it). A job that
    finds the lock held logs one line naming ``what`` and the file it waits for, then waits."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(entry) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("Waiting for another job to finish %s: %s", what, entry)
        lock.acquire()
    return lock


@contextmanager
def held(entry: Path, what: str) -> Iterator[None]:
    """Hold the lock of the cache entry ``entry`` for a ``with`` block (see :func:`acquire`)."""
    lock = acquire(entry, what)
    try:
        yield
    finally:
        lock.release()
