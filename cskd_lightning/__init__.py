"""cskd-lightning: Cosine Similarity Knowledge Distillation for PyTorch Lightning."""

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
