"""Classic KD and plain cross-entropy."""

from __future__ import annotations

from torch import Tensor

from cskd_lightning.losses.base import DistillationLoss, check_positive, check_weight
from cskd_lightning.losses.functional import cross_entropy, kd_loss


class KDLoss(DistillationLoss):
    """Hinton KD: ``L = ce_weight * CE(z_s, y) + kd_weight * T^2 * KL(p_t || p_s)``.

    ``p = softmax(z / T)``; per-sample, so nothing is gathered across processes.
    Terms: ``loss``, ``ce``, ``kd``.
    """

    def __init__(
        self, temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.kd_weight = check_weight("kd_weight", kd_weight)

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        ce = cross_entropy(student_logits, targets)
        kd = kd_loss(student_logits, teacher_logits, self.temperature)
        return {"loss": self.ce_weight * ce + self.kd_weight * kd, "ce": ce, "kd": kd}


class CELoss(DistillationLoss):
    """Cross-entropy only, no teacher: trains teachers and the no-distillation baseline."""

    requires_teacher = False

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor
    ) -> dict[str, Tensor]:
        ce = cross_entropy(student_logits, targets)
        return {"loss": ce, "ce": ce}
