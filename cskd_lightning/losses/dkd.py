"""Decoupled Knowledge Distillation (DKD; Zhao et al., CVPR 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from cskd_lightning.losses.base import (
    DistillationLoss,
    check_count,
    check_positive,
    check_weight,
    weighted_sum,
)
from cskd_lightning.losses.functional import cross_entropy, dkd_terms, standardize_logits


class DKDLoss(DistillationLoss):
    """DKD: classic KD split into a target-class and a non-target-class part, re-weighted.

    ``L = ce_weight * CE(z_s, y) + w(epoch) * kd_weight * (alpha * TCKD + beta * NCKD)``

    - ``TCKD = T^2 * KL(b_t || b_s)`` on the binary ``b = [p_y, 1 - p_y]``;
    - ``NCKD = T^2 * KL(p_hat_t || p_hat_s)``, ``p_hat = softmax(z / T)`` over the ``C - 1``
      non-target classes (see :func:`~cskd_lightning.losses.functional.dkd_terms`);
    - warm-up ``w = min(epoch / warmup_epochs, 1)`` with a **1-based** epoch, as in the
      reference code (mdistiller counts epochs from 1): from Lightning's 0-based
      ``self.progress.epoch`` that is ``min((epoch + 1) / warmup_epochs, 1)``, i.e. ``1/20`` in
      the first epoch and ``1`` from the 20th on. ``warmup_epochs=0`` switches the warm-up off.

    The epoch comes from :class:`~cskd_lightning.losses.TrainingProgress`, which
    :class:`~cskd_lightning.DistillationModule` updates before every training step (call
    :meth:`set_progress` yourself when using the loss outside it).

    ``logit_standardization=True`` (Sun et al., CVPR 2024) computes TCKD and NCKD on the
    per-sample z-scored logits ``Z(z) / T``; CE stays on the raw logits.

    ``kd_weight`` multiplies alpha and beta together: the logit-standardization code's
    ``--kd-weight`` (9) does exactly that to a pair's DKD config (``distill=dkd_ls``).

    Per sample, so nothing is gathered across processes. Defaults: mdistiller's (alpha 1,
    beta 8, T 4, 20 warm-up epochs); its CIFAR-100 configs set beta per pair (2, 6 or 8), and
    ``distill=dkd`` takes it from the pair config (``pair.dkd.beta``).
    Inputs ``(B, C)`` logits, ``(B,)`` targets. Terms: ``loss``, ``ce``, ``tckd``, ``nckd``
    (unweighted, without the warm-up factor) and ``dkd_warmup`` (the factor ``w``).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        ce_weight: float = 1.0,
        warmup_epochs: int = 20,
        logit_standardization: bool = False,
        kd_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.alpha = check_weight("alpha", alpha)
        self.beta = check_weight("beta", beta)
        self.temperature = check_positive("temperature", temperature)
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.warmup_epochs = check_count("warmup_epochs", warmup_epochs, 0, "0: no warm-up")
        self.logit_standardization = bool(logit_standardization)
        self.kd_weight = check_weight("kd_weight", kd_weight)
        # The factor as a device tensor, refreshed by set_progress: a compiled loss reads it
        # as data (a Python float would be a constant, compiled again at every new epoch).
        self.register_buffer("_warmup", torch.tensor(self.warmup_factor()), persistent=False)

    def set_progress(self, epoch: int, global_step: int, max_epochs: int | None = None) -> None:
        """Record the progress and refresh the warm-up factor (a fill when it changes)."""
        super().set_progress(epoch, global_step, max_epochs)
        factor = self.warmup_factor()
        if factor != getattr(self, "_warmup_value", None):
            self._warmup.fill_(factor)
            self._warmup_value = factor

    def warmup_factor(self) -> float:
        """``min((epoch + 1) / warmup_epochs, 1)`` from ``self.progress`` (1 without warm-up)."""
        if self.warmup_epochs == 0:
            return 1.0
        return min((self.progress.epoch + 1) / self.warmup_epochs, 1.0)

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        ce = cross_entropy(student_logits, targets)
        zs, zt = student_logits, teacher_logits
        if self.logit_standardization:
            zs, zt = standardize_logits(zs), standardize_logits(zt)
        tckd, nckd = dkd_terms(zs, zt, targets, self.temperature)
        factor = self._warmup.to(ce.dtype)
        kd = weighted_sum((self.kd_weight, weighted_sum((self.alpha, tckd), (self.beta, nckd))))
        loss = weighted_sum((self.ce_weight, ce)) + factor * kd
        return {"loss": loss, "ce": ce, "tckd": tckd, "nckd": nckd, "dkd_warmup": factor}
