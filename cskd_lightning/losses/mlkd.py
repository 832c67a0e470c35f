"""Multi-level logit distillation in the style of MLKD (Jin et al., CVPR 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cskd_lightning.errors import InputError
from cskd_lightning.losses.base import check_positive
from cskd_lightning.losses.functional import (
    batch_consistency_loss,
    class_consistency_loss,
    kd_loss,
)
from cskd_lightning.losses.two_view import TwoViewLoss, TwoViews


class MLKDLoss(TwoViewLoss):
    """Instance-, class- and batch-level KL/consistency at several temperatures, two views.

    Inputs: ``(weak, strong)`` tuples of ``(B, C)`` student and teacher logits and ``(B,)``
    targets. With ``K`` the set of ``temperatures`` (default ``{2, 3, 4, 5, 6}``):

    ``L = ce_weight * (CE(z_s^w, y) + CE(z_s^s, y))``
    ``  + kd_weight * [ sum_T KL_T^s``
    ``  + weak_weight * sum_T ( KL_T^w + CC_T^w + BC_T^w ) ]``

    - ``KL_T = T^2 * mean_i KL(p_t[i] || p_s[i])`` (instance level;
      :func:`~cskd_lightning.losses.functional.kd_loss`);
    - ``CC_T = sum (G_t - G_s)^2 / C``, ``G = P^T P`` (class level, ``C x C``;
      :func:`~cskd_lightning.losses.functional.class_consistency_loss`);
    - ``BC_T = sum (G_t - G_s)^2 / B``, ``G = P P^T`` (batch level, ``B x B``;
      :func:`~cskd_lightning.losses.functional.batch_consistency_loss`).

    ``weak_weight = 0.5`` stands for the reference's median-confidence masks (sample mask for the
    instance and batch terms, class mask for the class term), whose batch mean is 1/2: the
    factor is reproduced, not the mask. ``ce_weight = 0.1`` and ``kd_weight = 0.9`` are the
    reference's values (mdistiller's KD defaults, which MLKD's configs leave unchanged);
    ``kd_weight`` multiplies every distillation term.

    Differences from the reference code, on purpose: the strong view's instance term uses the
    strong logits at every temperature (the reference uses the weak logits at T = 2 and 6);
    the reference's strong-view class/batch terms, computed but never added to its loss, are
    left out; no logit-standardization option.

    The class and batch terms are batch-level: with ``gather=True`` and a process group of more
    than one process all distillation terms see every process's logits (gathered with
    gradients); CE is per process.

    Terms (unweighted sums over the temperatures): ``loss``, ``ce_weak``, ``ce_strong``,
    ``kl_weak``, ``cc_weak``, ``bc_weak``, ``kl_strong``.
    """

    def __init__(
        self,
        temperatures: Sequence[float] = (2.0, 3.0, 4.0, 5.0, 6.0),
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        weak_weight: float = 0.5,
        gather: bool = True,
    ) -> None:
        super().__init__()
        temps = [float(t) for t in temperatures]
        if not temps:
            raise InputError("MLKDLoss needs at least one temperature.")
        self.temperatures = tuple(check_positive("temperatures[]", t) for t in temps)
        self.set_weights(ce_weight, kd_weight, weak_weight, gather)

    def view_terms(self, views: TwoViews) -> dict[str, Tensor]:
        sw, ss, tw, ts, ce_weak, ce_strong = views

        def over_temperatures(fn, s: Tensor, t: Tensor) -> Tensor:
            return torch.stack([fn(s, t, temp) for temp in self.temperatures]).sum()

        kl_weak = over_temperatures(kd_loss, sw, tw)
        cc_weak = over_temperatures(class_consistency_loss, sw, tw)
        bc_weak = over_temperatures(batch_consistency_loss, sw, tw)
        kl_strong = over_temperatures(kd_loss, ss, ts)
        distill = kl_strong + self.weak_weight * (kl_weak + cc_weak + bc_weak)
        loss = self.ce_weight * (ce_weak + ce_strong) + self.kd_weight * distill
        return {
            "loss": loss,
            "ce_weak": ce_weak,
            "ce_strong": ce_strong,
            "kl_weak": kl_weak,
            "cc_weak": cc_weak,
            "bc_weak": bc_weak,
            "kl_strong": kl_strong,
        }
