"""cskd-lightning: Cosine Similarity Knowledge Distillation for PyTorch Lightning.

The names below are imported on first use (PEP 562), so ``import cskd_lightning`` (or one of
its light submodules, e.g. ``cskd_lightning.losses``, which needs torch alone) does not import
Lightning and what Lightning imports (torchmetrics, torchvision, torch's compiler stack).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cskd_lightning.api import distill, train_teacher
    from cskd_lightning.export import load_student
    from cskd_lightning.losses import (
        CELoss,
        CSKDFullLoss,
        CSKDLoss,
        DistillationLoss,
        DISTLoss,
        DKDLoss,
        KDLoss,
        MLKDLoss,
    )
    from cskd_lightning.module import DistillationModule

__version__ = "0.1.0"

_WHERE = {
    "CELoss": "losses",
    "CSKDFullLoss": "losses",
    "CSKDLoss": "losses",
    "DISTLoss": "losses",
    "DKDLoss": "losses",
    "DistillationLoss": "losses",
    "DistillationModule": "module",
    "KDLoss": "losses",
    "MLKDLoss": "losses",
    "distill": "api",
    "train_teacher": "api",
    "load_student": "export",
}

__all__ = [
    "CELoss",
    "CSKDFullLoss",
    "CSKDLoss",
    "DISTLoss",
    "DKDLoss",
    "DistillationLoss",
    "DistillationModule",
    "KDLoss",
    "MLKDLoss",
    "distill",
    "train_teacher",
    "load_student",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'cskd_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cskd_lightning.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
