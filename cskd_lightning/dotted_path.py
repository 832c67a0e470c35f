"""The library's one import of an object by its dotted path (``package.module.Name``).

The application uses Hydra's ``get_object``; the library does not load Hydra, and its callers
turn these errors into their own one-line messages.
"""

from __future__ import annotations

import importlib
from typing import Any

IMPORT_ERRORS = (ImportError, AttributeError, ValueError)
"""What :func:`import_object` raises for a path that names nothing importable."""


def import_object(path: str) -> Any:
    """The object ``path`` names: ``getattr(import_module("package.module"), "Name")``.

    Raises ``ImportError`` (no such module), ``AttributeError`` (no such name in it) or
    ``ValueError`` (a path without a module, ``"Name"``), with Python's own one-line message.
    """
    module_name, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)
