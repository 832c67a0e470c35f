"""Classic KD and plain cross-entropy."""

from __future__ import annotations

from torch import Tensor

from cskd_lightning.losses.base import (
    DistillationLoss,
    check_positive,
    check_weight,
    weighted_sum,
)
from cskd_lightning.losses.functional import cross_entropy, kd_loss, standardize_logits


class KDLoss(DistillationLoss):
    """Hinton KD: ``L = ce_weight * CE(z_s, y) + kd_weight * T^2 * KL(p_t || p_s)``.

    ``p = softmax(z / T)``; per-sample, so nothing is gathered across processes.
    With ``logit_standardization=True`` (Sun et al., CVPR 2024) the KD term uses
    ``p = softmax(Z(z) / T)``, ``Z`` the per-sample z-score of
    :func:`~cskd_lightning.losses.functional.standardize_logits`; CE stays on the raw logits.
    Terms: ``loss``, ``ce``, ``kd``.
    """

    def __init__(
        self,
        temperature: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.kd_weight = check_weight("kd_weight", kd_weight)
        self.logit_standardization = bool(logit_standardization)

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        ce = cross_entropy(student_logits, targets)
        if self.logit_standardization:
            student_logits = standardize_logits(student_logits)
            teacher_logits = standardize_logits(teacher_logits)
        kd = kd_loss(student_logits, teacher_logits, self.temperature)
        loss = weighted_sum((self.ce_weight, ce), (self.kd_weight, kd))
        return {"loss": loss, "ce": ce, "kd": kd}


class CELoss(DistillationLoss):
    """Cross-entropy only, no teacher: trains teachers and the no-distillation baseline."""

    requires_teacher = False

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor
    ) -> dict[str, Tensor]:
        ce = cross_entropy(student_logits, targets)
        return {"loss": ce, "ce": ce}
