"""cskd-lightning: Cosine Similarity Knowledge Distillation for PyTorch Lightning."""

from cskd_lightning.losses import CELoss, CSKDLoss, DistillationLoss, KDLoss
from cskd_lightning.module import DistillationModule

__version__ = "0.1.0"

__all__ = ["CELoss", "CSKDLoss", "DistillationLoss", "DistillationModule", "KDLoss"]
