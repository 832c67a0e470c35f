"""Weighted transformed teacher matching (WTTM; Zheng & Yang, ICLR 2024)."""

from __future__ import annotations

from torch import Tensor

from cskd_lightning.losses.base import DistillationLoss, check_positive, check_weight
from cskd_lightning.losses.functional import cross_entropy, wttm_loss


class WTTMLoss(DistillationLoss):
    """WTTM: ``L = ce_weight * CE(z_s, y) + wttm_weight * (1/B) sum_i s_i KL(q_i || p_s_i)``.

    ``q_i = softmax(gamma * z_t[i])`` (the teacher alone at temperature ``1 / gamma``),
    ``p_s = softmax(z_s)`` (the student at ``T = 1``) and ``s_i = sum_j softmax(z_t[i])_j^gamma``
    (the teacher's power sum: flatter teachers weigh more); see
    :func:`~cskd_lightning.losses.functional.wttm_loss`. Per sample, nothing gathered.
    Terms: ``loss``, ``ce``, ``wttm`` (unweighted).
    """

    def __init__(self, gamma: float = 0.2, ce_weight: float = 1.0, wttm_weight: float = 4.0):
        super().__init__()
        self.gamma = check_positive("gamma", gamma)
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.wttm_weight = check_weight("wttm_weight", wttm_weight)

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        ce = cross_entropy(student_logits, targets)
        term = wttm_loss(student_logits, teacher_logits, self.gamma)
        return {"loss": self.ce_weight * ce + self.wttm_weight * term, "ce": ce, "wttm": term}
