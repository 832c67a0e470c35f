"""DIST: Knowledge Distillation from A Stronger Teacher (Huang et al., NeurIPS 2022)."""

from __future__ import annotations

from torch import Tensor

from cskd_lightning.losses.base import DistillationLoss, check_positive, check_weight
from cskd_lightning.losses.functional import cross_entropy, dist_terms


class DISTLoss(DistillationLoss):
    """DIST: match Pearson correlations instead of probabilities.

    ``L = ce_weight * CE(z_s, y) + beta * inter + gamma * intra`` with, for
    ``P = softmax(z / tau)`` ``(B, C)``,

    - ``inter = tau^2 * (1 - (1/B) sum_i pearson(P_s[i, :], P_t[i, :]))`` (inter-class relation:
      each sample's prediction over the classes);
    - ``intra = tau^2 * (1 - (1/C) sum_j pearson(P_s[:, j], P_t[:, j]))`` (intra-class relation:
      each class's predictions over the batch).

    See :func:`~cskd_lightning.losses.functional.dist_terms`. ``intra`` depends on the whole
    batch, so with ``gather=True`` and a process group of more than one process both relation
    terms see the logits of every process (gathered with gradients; ``inter`` is a per-sample
    mean and is unchanged by this, apart from weighting unequal per-process batches exactly).
    CE is per process. Without a group gathering changes nothing.

    Defaults: CIFAR-100 (``tau = 4``, ``beta = gamma = 2``); ImageNet used ``tau = 1``,
    ``beta = gamma = 1``. A batch of one has no intra-class relation: the centred columns are
    zero, the Pearson correlation 0 and ``intra = tau^2`` with zero gradient.

    Inputs ``(B, C)`` logits, ``(B,)`` targets. Terms: ``loss``, ``ce``, ``inter``, ``intra``
    (unweighted).
    """

    batch_level = True

    def __init__(
        self,
        beta: float = 2.0,
        gamma: float = 2.0,
        tau: float = 4.0,
        ce_weight: float = 1.0,
        gather: bool = True,
    ) -> None:
        super().__init__()
        self.beta = check_weight("beta", beta)
        self.gamma = check_weight("gamma", gamma)
        self.tau = check_positive("tau", tau)
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.gather = bool(gather)

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        ce = cross_entropy(student_logits, targets)
        student_logits, teacher_logits = self.gather_pair(student_logits, teacher_logits)
        inter, intra = dist_terms(student_logits, teacher_logits, self.tau)
        loss = self.ce_weight * ce + self.beta * inter + self.gamma * intra
        return {"loss": loss, "ce": ce, "inter": inter, "intra": intra}
