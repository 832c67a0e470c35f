"""The full published CSKD recipe: two views, CSWT from the weak view, correlation terms."""

from __future__ import annotations

import torch
from torch import Tensor

from cskd_lightning.losses.base import check_cswt_range, check_positive
from cskd_lightning.losses.functional import (
    batch_cosines,
    correlation_losses,
    cskd_from_mean_cosines,
    cswt_temperature,
    softened_pairs,
)
from cskd_lightning.losses.two_view import TwoViewLoss, TwoViews


class CSKDFullLoss(TwoViewLoss):
    """The full CSKD recipe of the published training code (docs/method.md section 5).

    Inputs: ``(weak, strong)`` tuples of ``(B, C)`` student and teacher logits (two augmented
    views of the same images, same order) and ``(B,)`` targets. With ``T = temperature`` and
    ``T_i`` the CSWT temperatures computed ONCE, on the weak view, and reused for the strong:

    ``L = ce_weight * (CE(z_s^w, y) + CE(z_s^s, y))``
    ``  + kd_weight * [ L_cs^s(T) + L_cs^s(T_i)``
    ``  + weak_weight * ( L_cs^w(T) + L_cs^w(T_i) + L_cc^w(T) + L_cc^w(T_i)``
    ``                    + L_bc^w(T) + L_bc^w(T_i) ) ]``

    - ``L_cs`` = :func:`~cskd_lightning.losses.functional.cskd_loss`
      (``alpha * mean(T)^2 * (1 - mean_j cos(P_s[:, j], P_t[:, j]))``);
    - ``L_cc`` = :func:`~cskd_lightning.losses.functional.class_correlation_loss`
      (``1 - mean_r cos(G_t[r], G_s[r])``, ``G = P^T P``, ``C x C``);
    - ``L_bc`` = :func:`~cskd_lightning.losses.functional.batch_correlation_loss`
      (the same with ``G = P P^T``, ``B x B``).

    ``weak_weight = 0.5`` reproduces the reference code, which multiplies each scalar weak-view
    loss by a median-confidence mask (teacher confidence <= its batch median) and averages the
    product: that mean is the fraction of masked samples, 1/2 for an even batch of distinct
    confidences. The factor is reproduced, not the per-sample mask. Everything else has weight 1
    (``ce_weight = kd_weight = 1``).

    All distillation terms and the CSWT min/max are batch-level: with ``gather=True`` and a
    process group of more than one process they see every process's logits (gathered with
    gradients); CE is per process.

    Terms (unweighted): ``loss``, ``ce_weak``, ``ce_strong``, ``cs_weak``, ``cs_cswt_weak``,
    ``cc_weak``, ``cc_cswt_weak``, ``bc_weak``, ``bc_cswt_weak``, ``cs_strong``,
    ``cs_cswt_strong``; diagnostics ``cswt_t_mean``, ``cswt_t_min``, ``cswt_t_max``.
    """

    def __init__(
        self,
        temperature: float = 4.0,
        alpha: float = 2.0,
        t_low: float = 2.0,
        t_high: float = 6.0,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
        weak_weight: float = 0.5,
        gather: bool = True,
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.alpha = check_positive("alpha", alpha)
        self.t_low, self.t_high = check_cswt_range(t_low, t_high)
        self.set_weights(ce_weight, kd_weight, weak_weight, gather)

    def view_terms(self, views: TwoViews) -> dict[str, Tensor]:
        sw, ss, tw, ts, ce_weak, ce_strong = views
        terms: dict[str, Tensor] = {"ce_weak": ce_weak, "ce_strong": ce_strong}
        temps = cswt_temperature(sw, tw, self.t_low, self.t_high)  # weak view, reused
        temperatures = [self.temperature, temps]  # CSWT's are positive: no check (a host read)
        p_weak, t_means = softened_pairs(sw, tw, temperatures, check=False)  # (2, 2, B, C)
        p_strong, _ = softened_pairs(ss, ts, temperatures, check=False)
        mean_cos = torch.cat([batch_cosines(p_weak), batch_cosines(p_strong)]).mean(-1)  # (4,)
        cs_weak = cskd_from_mean_cosines(mean_cos[:2], t_means, self.alpha)
        cs_strong = cskd_from_mean_cosines(mean_cos[2:], t_means, self.alpha)
        cc, bc = correlation_losses(p_weak)  # (2,) each: at T and at T_i
        terms["cs_weak"], terms["cs_cswt_weak"] = cs_weak
        terms["cc_weak"], terms["cc_cswt_weak"] = cc
        terms["bc_weak"], terms["bc_cswt_weak"] = bc
        terms["cs_strong"], terms["cs_cswt_strong"] = cs_strong

        weak = torch.stack([terms[k] for k in terms if k.endswith("_weak") and k != "ce_weak"])
        strong = terms["cs_strong"] + terms["cs_cswt_strong"]
        ce = terms["ce_weak"] + terms["ce_strong"]
        loss = self.ce_weight * ce + self.kd_weight * (self.weak_weight * weak.sum() + strong)
        t_min, t_max = torch.aminmax(temps)
        return {
            "loss": loss,
            **terms,
            "cswt_t_mean": t_means[1],
            "cswt_t_min": t_min,
            "cswt_t_max": t_max,
        }
