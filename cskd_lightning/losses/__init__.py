"""Distillation losses: functional forms and swappable loss objects."""

from cskd_lightning.losses.base import DistillationLoss, TrainingProgress
from cskd_lightning.losses.cskd import CSKDLoss
from cskd_lightning.losses.functional import (
    batch_correlation_loss,
    class_correlation_loss,
    cskd_loss,
    cswt_temperature,
    kd_loss,
)
from cskd_lightning.losses.kd import CELoss, KDLoss

__all__ = [
    "CELoss",
    "CSKDLoss",
    "DistillationLoss",
    "KDLoss",
    "TrainingProgress",
    "batch_correlation_loss",
    "class_correlation_loss",
    "cskd_loss",
    "cswt_temperature",
    "kd_loss",
]
