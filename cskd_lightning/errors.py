"""The product's exception for mistakes in what the user gave it.

:class:`InputError` is raised by the input checks, the data loaders, the checkpoint reader and
the loss, model and module validators when a config value, a file or the data is wrong. Its
message names the thing and the fix. The command-line programs print an ``InputError`` as one
line (``Error: <message>``) and exit with status 1; every other exception is a bug and keeps
its traceback.

The subclasses also derive from the built-in exception a caller would expect, so
``except FileNotFoundError`` still catches a missing data directory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

__all__ = [
    "InputError",
    "MissingInputError",
    "NonFiniteLossError",
    "UnwritablePathError",
    "config_keys",
]


class InputError(ValueError):
    """A mistake in the user's input (config value, file, data), with the fix in its message.

    ``key``: the name of the argument or config key that is wrong, when one is (e.g.
    ``"temperature"``); the application joins it to the config path it was instantiated from,
    so the message ends with ``(config: distill.loss.temperature)``.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class MissingInputError(InputError, FileNotFoundError):
    """A file or directory the user named (or that a config implies) does not exist."""


class UnwritablePathError(InputError, PermissionError):
    """A directory the run must write to (run directory, cache) cannot be written."""


class NonFiniteLossError(InputError, FloatingPointError):
    """The loss became NaN or infinite (too high a learning rate, bad inputs)."""


@contextmanager
def config_keys(keys: Mapping[str, str]) -> Iterator[None]:
    """Name the config key of an :class:`InputError` raised inside: one whose ``key`` (a Python
    argument's name) is in ``keys`` (argument -> config key) is raised again, of the same type,
    with `` (config: <config key>)`` appended. How an application that builds library objects
    from its own config keys tells the user which key to fix."""
    try:
        yield
    except InputError as err:
        path = keys.get(err.key or "")
        if path is None:
            raise
        raise type(err)(f"{err} (config: {path})", key=path) from err
