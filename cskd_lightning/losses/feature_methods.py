"""FitNet, AT, RKD, PKT and SP: feature distillation with mdistiller's settings.

Each loss is ``ce_weight * CE(z_s, y) + feat_weight * term`` with ``term`` from
:mod:`cskd_lightning.losses.functional`, on the features the pair's config names for the roles
the loss declares (``feats``: the stem and stage outputs; ``pooled_feat``: the pooled feature
before the classifier). Defaults: ``mdistiller/engine/cfg.py``. The batch-level terms (RKD,
PKT, SP) see the features of every process under DDP (gathered with gradients, as CSKD's
logits are), so N processes with B/N samples compute the loss of one process with B.
Terms: ``loss``, ``ce`` and the method's unweighted term.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cskd_lightning.errors import InputError
from cskd_lightning.features import Features
from cskd_lightning.losses.base import check_positive, check_weight
from cskd_lightning.losses.distributed import gather_batch
from cskd_lightning.losses.feature_base import FeatureBatch, FeatureDistillationLoss
from cskd_lightning.losses.feature_functional import at_loss, pkt_loss, rkd_loss, sp_loss

__all__ = ["ATLoss", "ConvReg", "FitNetLoss", "PKTLoss", "RKDLoss", "SPLoss"]


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


class _SingleTermLoss(FeatureDistillationLoss):
    """``ce_weight * CE + feat_weight * self.term(features)``, logged as ``self.name``."""

    name = "feat"

    def __init__(self, ce_weight: float = 1.0, feat_weight: float = 1.0) -> None:
        super().__init__()
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.feat_weight = check_weight("feat_weight", feat_weight)

    def term(self, features: FeatureBatch) -> Tensor:
        raise NotImplementedError

    def flat_pair(self, features: FeatureBatch, role: str, level: int) -> tuple[Tensor, Tensor]:
        """The student's and teacher's feature ``role[level]`` flattened to ``(B, D)``, of every
        process's batch (``(N*B, D)``, with gradients) when ``self.gather`` is set."""
        f_s = _flat(features.student[role][level])
        f_t = _flat(features.teacher[role][level])
        if getattr(self, "gather", False):
            f_s, f_t = gather_batch(f_s), gather_batch(f_t)
        return f_s, f_t

    def feature_loss(self, features: FeatureBatch) -> tuple[Tensor, dict[str, Tensor]]:
        term = self.term(features)
        return self.feat_weight * term, {self.name: term}


class ConvReg(nn.Module):
    """FitNet's regressor from a student map ``(B, C_s, H_s, W_s)`` to the teacher's
    ``(B, C_t, H_t, W_t)``: a stride-2 3x3 conv (``H_s = 2 H_t``), a stride-2 transposed 4x4
    conv (``2 H_s = H_t``) or a ``(1 + H_s - H_t)``-sized conv (``H_s >= H_t``), then BN and
    ReLU (mdistiller's ``ConvReg``)."""

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...], use_relu: bool = True):
        super().__init__()
        _, s_c, s_h, s_w = s_shape
        _, t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h:
            self.conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise InputError(
                f"FitNet cannot regress a student map of side {s_h} onto a teacher map of side "
                f"{t_h}: pick a hint layer where the student's map is at least as large."
            )
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = bool(use_relu)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


class FitNetLoss(_SingleTermLoss):
    """FitNet (Romero et al., ICLR 2015): ``MSE(regressor(f_s), f_t)`` at ``feats[hint_layer]``.

    The regressor (:class:`ConvReg`) is sized from the two maps' shapes in :meth:`setup_features`
    and trained with the student. mdistiller: hint layer 2 (the second stage's output when
    ``feats`` is ``[stem, stage1, stage2, stage3]``), weight 100. Term: ``fitnet``.
    """

    name = "fitnet"
    student_features = ("feats",)
    teacher_features = ("feats",)

    def __init__(
        self, hint_layer: int = 2, ce_weight: float = 1.0, feat_weight: float = 100.0
    ) -> None:
        super().__init__(ce_weight, feat_weight)
        self.hint_layer = int(hint_layer)
        self.regressor: ConvReg | None = None

    def _hint(self, feats: Features, role: str) -> Tensor:
        maps = feats["feats"]
        if not -len(maps) <= self.hint_layer < len(maps):
            raise InputError(
                f"hint_layer={self.hint_layer} but the {role}'s 'feats' names {len(maps)} layers.",
                key="hint_layer",
            )
        return maps[self.hint_layer]

    def setup_features(
        self, student: Features, teacher: Features, num_samples: int | None = None
    ) -> None:
        s, t = self._hint(student, "student"), self._hint(teacher, "teacher")
        self.regressor = ConvReg(tuple(s.shape), tuple(t.shape))

    def term(self, features: FeatureBatch) -> Tensor:
        assert self.regressor is not None
        f_s = self.regressor(self._hint(features.student, "student"))
        f_t = self._hint(features.teacher, "teacher")
        return F.mse_loss(f_s.float(), f_t.float())


class ATLoss(_SingleTermLoss):
    """Attention transfer: :func:`~cskd_lightning.losses.feature_functional.at_loss` over
    ``feats[1:]`` (the stage outputs), ``p = 2``, weight 1000 (mdistiller). Term: ``at``."""

    name = "at"
    student_features = ("feats",)
    teacher_features = ("feats",)

    def __init__(self, p: float = 2.0, ce_weight: float = 1.0, feat_weight: float = 1000.0):
        super().__init__(ce_weight, feat_weight)
        self.p = check_positive("p", p)

    def term(self, features: FeatureBatch) -> Tensor:
        return at_loss(features.student["feats"][1:], features.teacher["feats"][1:], self.p)


class RKDLoss(_SingleTermLoss):
    """Relational KD on the pooled feature:
    :func:`~cskd_lightning.losses.feature_functional.rkd_loss` (distance weight 25, angle
    weight 50, eps 1e-12, not squared; weight 1: mdistiller), on the batch of every process
    with ``gather=True``. Term: ``rkd``."""

    name = "rkd"
    batch_level = True
    student_features = ("pooled_feat",)
    teacher_features = ("pooled_feat",)

    def __init__(
        self,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        eps: float = 1e-12,
        squared: bool = False,
        ce_weight: float = 1.0,
        feat_weight: float = 1.0,
        gather: bool = True,
    ) -> None:
        super().__init__(ce_weight, feat_weight)
        self.distance_weight = check_weight("distance_weight", distance_weight)
        self.angle_weight = check_weight("angle_weight", angle_weight)
        self.eps = check_positive("eps", eps)
        self.squared = bool(squared)
        self.gather = bool(gather)

    def term(self, features: FeatureBatch) -> Tensor:
        f_s, f_t = self.flat_pair(features, "pooled_feat", 0)
        return rkd_loss(f_s, f_t, self.squared, self.eps, self.distance_weight, self.angle_weight)


class PKTLoss(_SingleTermLoss):
    """Probabilistic knowledge transfer on the pooled feature:
    :func:`~cskd_lightning.losses.feature_functional.pkt_loss`, weight 30000 (mdistiller), on
    the batch of every process with ``gather=True``. Term: ``pkt``."""

    name = "pkt"
    batch_level = True
    student_features = ("pooled_feat",)
    teacher_features = ("pooled_feat",)

    def __init__(
        self,
        eps: float = 1e-7,
        ce_weight: float = 1.0,
        feat_weight: float = 30000.0,
        gather: bool = True,
    ):
        super().__init__(ce_weight, feat_weight)
        self.eps = check_positive("eps", eps)
        self.gather = bool(gather)

    def term(self, features: FeatureBatch) -> Tensor:
        f_s, f_t = self.flat_pair(features, "pooled_feat", 0)
        return pkt_loss(f_s, f_t, self.eps)


class SPLoss(_SingleTermLoss):
    """Similarity-preserving KD on ``feats[-1]`` (the last stage's output):
    :func:`~cskd_lightning.losses.feature_functional.sp_loss`, weight 3000 (mdistiller), on the
    batch of every process with ``gather=True``. Term: ``sp``."""

    name = "sp"
    batch_level = True
    student_features = ("feats",)
    teacher_features = ("feats",)

    def __init__(self, ce_weight: float = 1.0, feat_weight: float = 3000.0, gather: bool = True):
        super().__init__(ce_weight, feat_weight)
        self.gather = bool(gather)

    def term(self, features: FeatureBatch) -> Tensor:
        f_s, f_t = self.flat_pair(features, "feats", -1)
        return sp_loss([f_s], [f_t])
