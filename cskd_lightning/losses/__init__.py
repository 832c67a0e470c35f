"""Distillation losses: functional forms and swappable loss objects."""

from cskd_lightning.losses.base import DistillationLoss, TrainingProgress
from cskd_lightning.losses.crd import CRDLoss
from cskd_lightning.losses.cskd import CSKDLoss
from cskd_lightning.losses.cskd_full import CSKDFullLoss
from cskd_lightning.losses.dist import DISTLoss
from cskd_lightning.losses.dkd import DKDLoss
from cskd_lightning.losses.feature_base import FeatureBatch, FeatureDistillationLoss
from cskd_lightning.losses.feature_functional import at_loss, hcl_loss, pkt_loss, rkd_loss, sp_loss
from cskd_lightning.losses.feature_methods import ATLoss, FitNetLoss, PKTLoss, RKDLoss, SPLoss
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
    wttm_loss,
)
from cskd_lightning.losses.kd import CELoss, KDLoss
from cskd_lightning.losses.mlkd import MLKDLoss
from cskd_lightning.losses.reviewkd import ReviewKDLoss
from cskd_lightning.losses.wttm import WTTMLoss

__all__ = [
    "ATLoss",
    "CELoss",
    "CRDLoss",
    "CSKDFullLoss",
    "CSKDLoss",
    "DISTLoss",
    "DKDLoss",
    "DistillationLoss",
    "FeatureBatch",
    "FeatureDistillationLoss",
    "FitNetLoss",
    "KDLoss",
    "MLKDLoss",
    "PKTLoss",
    "RKDLoss",
    "ReviewKDLoss",
    "SPLoss",
    "TrainingProgress",
    "WTTMLoss",
    "at_loss",
    "batch_consistency_loss",
    "batch_correlation_loss",
    "class_consistency_loss",
    "class_correlation_loss",
    "cskd_loss",
    "cswt_temperature",
    "dist_terms",
    "dkd_terms",
    "hcl_loss",
    "kd_loss",
    "pearson_correlation",
    "pkt_loss",
    "rkd_loss",
    "sp_loss",
    "standardize_logits",
    "wttm_loss",
]
