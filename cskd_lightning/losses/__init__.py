"""Distillation losses: functional forms and swappable loss objects."""

from cskd_lightning.losses.base import DistillationLoss, TrainingProgress
from cskd_lightning.losses.cskd import CSKDLoss
from cskd_lightning.losses.cskd_full import CSKDFullLoss
from cskd_lightning.losses.dist import DISTLoss
from cskd_lightning.losses.dkd import DKDLoss
from cskd_lightning.losses.functional import (
    batch_consistency_loss,
    batch_correlation_loss,
    class_consistency_loss,
    class_correlation_loss,
    cskd_loss,
    cswt_temperature,
    dist_terms,
    dkd_terms,
    kd_loss,
    pearson_correlation,
    standardize_logits,
)
from cskd_lightning.losses.kd import CELoss, KDLoss
from cskd_lightning.losses.mlkd import MLKDLoss

__all__ = [
    "CELoss",
    "CSKDFullLoss",
    "CSKDLoss",
    "DISTLoss",
    "DKDLoss",
    "DistillationLoss",
    "KDLoss",
    "MLKDLoss",
    "TrainingProgress",
    "batch_consistency_loss",
    "batch_correlation_loss",
    "class_consistency_loss",
    "class_correlation_loss",
    "cskd_loss",
    "cswt_temperature",
    "dist_terms",
    "dkd_terms",
    "kd_loss",
    "pearson_correlation",
    "standardize_logits",
]
