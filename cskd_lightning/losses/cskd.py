"""CSKD with CSWT: the method's paper-level objective."""

from __future__ import annotations

import torch
from torch import Tensor

from cskd_lightning.losses.base import (
    DistillationLoss,
    check_cswt_range,
    check_positive,
    check_weight,
    weighted_sum,
)
from cskd_lightning.losses.functional import (
    cross_entropy,
    cskd_losses,
    cswt_temperature,
    standardize_logits,
)


class CSKDLoss(DistillationLoss):
    """Cosine Similarity Knowledge Distillation, with the CSWT temperature by default.

    ``L = ce_weight * CE(z_s, y) + kd_weight * (L_cs(T) + L_cs(T_i))``  (``cswt=True``)

    ``L = ce_weight * CE(z_s, y) + kd_weight * L_cs(T)``                (``cswt=False``)

    with ``L_cs`` from :func:`~cskd_lightning.losses.functional.cskd_loss` and ``T_i`` from
    :func:`~cskd_lightning.losses.functional.cswt_temperature`.

    With ``gather=True`` and an initialised process group of more than one process, the
    batch-axis terms (``L_cs`` and the CSWT min/max) see the logits of every process
    (gathered with gradients), so N processes with B/N samples each train exactly like one
    process with B. Without a group it changes nothing.

    With ``logit_standardization=True`` (Sun et al., CVPR 2024) the ``L_cs`` terms soften the
    per-sample z-scored logits, ``softmax(Z(z) / T)`` (see
    :func:`~cskd_lightning.losses.functional.standardize_logits`). The CSWT similarities
    ``c_i`` are still computed on the RAW logits: CSWT ranks samples by how far the
    student's actual predictions are from the teacher's, and keeping that measure unchanged
    makes the option switch one thing only (what the cosine terms compare). CE stays raw.

    Returns the terms ``loss``, ``ce``, ``cs`` (and ``cs_cswt``) plus the diagnostics
    ``cos_mean`` (mean per-class batch cosine at ``T``) and, with CSWT, ``cswt_t_mean``,
    ``cswt_t_min``, ``cswt_t_max``.
    """

    batch_level = True

    def __init__(
        self,
        temperature: float = 4.0,
        alpha: float = 2.0,
        cswt: bool = True,
        t_low: float = 2.0,
        t_high: float = 6.0,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
        gather: bool = True,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.alpha = check_positive("alpha", alpha)
        self.cswt = bool(cswt)
        self.t_low, self.t_high = check_cswt_range(t_low, t_high)
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.kd_weight = check_weight("kd_weight", kd_weight)
        self.gather = bool(gather)
        self.logit_standardization = bool(logit_standardization)

    def distillation_terms(self, student_logits: Tensor, teacher_logits: Tensor) -> dict:
        """The teacher terms on (already gathered) ``(B, C)`` logits, unweighted."""
        zs, zt = student_logits, teacher_logits
        if self.logit_standardization:
            zs, zt = standardize_logits(zs), standardize_logits(zt)
        temperatures: list[float | Tensor] = [self.temperature]
        if self.cswt:
            # CSWT always ranks the samples on the raw logits (see the class docstring).
            temps = cswt_temperature(student_logits, teacher_logits, self.t_low, self.t_high)
            temperatures.append(temps)
        # Both terms in one pass (one softmax, one cosine). CSWT's temperatures lie in
        # [t_low, t_high]: no positivity check (a host read).
        losses, mean_cos = cskd_losses(zs, zt, temperatures, self.alpha, check=False)
        terms = {"cs": losses[0], "cos_mean": mean_cos[0].detach()}
        if self.cswt:
            terms["cs_cswt"] = losses[1]
            terms["cswt_t_mean"] = temps.mean()
            terms["cswt_t_min"], terms["cswt_t_max"] = torch.aminmax(temps)
        return terms

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        ce = cross_entropy(student_logits, targets)
        student_logits, teacher_logits = self.gather_pair(student_logits, teacher_logits)
        terms = self.distillation_terms(student_logits, teacher_logits)
        kd = terms["cs"] + terms["cs_cswt"] if self.cswt else terms["cs"]
        return {"loss": weighted_sum((self.ce_weight, ce), (self.kd_weight, kd)), "ce": ce, **terms}
