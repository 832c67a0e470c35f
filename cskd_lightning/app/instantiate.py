"""Building a run's parts from config groups with Hydra's ``instantiate``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra


def instantiate_group(cfg: Mapping | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a config group (callbacks, loggers)."""
    return [hydra.utils.instantiate(c) for c in (cfg or {}).values() if c and "_target_" in c]


def optional_instantiate(cfg: Any) -> Any:
    """``instantiate(cfg)``, or ``None`` for a missing or null config."""
    return hydra.utils.instantiate(cfg) if cfg else None
