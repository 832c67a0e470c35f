"""The application's one way to end on a user's mistake: one ``Error:`` line and a status."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

__all__ = ["exit_with_error"]


def exit_with_error(err: BaseException | str, status: int = 1) -> NoReturn:
    """Print ``Error: <err>`` on stderr and exit with ``status``.

    With ``HYDRA_FULL_ERROR=1`` an exception is raised instead, with its traceback (the
    setting Hydra users already know for the full story)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1" and isinstance(err, BaseException):
        raise err
    print(f"Error: {err}", file=sys.stderr)
    sys.exit(status)
