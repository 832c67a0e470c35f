"""CSKD with CSWT: the method's paper-level objective."""

from __future__ import annotations

import torch
from torch import Tensor

from cskd_lightning.errors import InputError
from cskd_lightning.losses.base import (
    DistillationLoss,
    check_cswt_range,
    check_positive,
    check_weight,
)
from cskd_lightning.losses.distributed import gather_batch
from cskd_lightning.losses.functional import (
    cross_entropy,
    cskd_loss,
    cskd_loss_from_cosine,
    cswt_temperature,
    per_class_batch_cosine,
    standardize_logits,
)
from cskd_lightning.losses.memory import LogitMemory


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

    With ``memory_size=M > 0`` a :class:`~cskd_lightning.losses.memory.LogitMemory` keeps the
    (detached) student and teacher logits of the last ``M`` training samples, and the
    batch-axis terms (``L_cs`` at ``T`` and at ``T_i``, the CSWT min/max) run on the current
    (gathered) batch with the memory below it, ``B + n`` rows (``n <= M``); only the current
    rows carry gradient, and the memory rows get their ``T_i`` from the same CSWT formula on
    the extended batch. Since a row's pull on a batch-axis cosine is about ``1 / rows``, the
    ``B`` current rows would pull ``B / (B + n)`` as hard as without the memory; with
    ``memory_rescale=True`` (the default) their gradient is scaled by ``(B + n) / B`` (the
    loss's value is unchanged). After each training call the current rows join the memory
    (FIFO; in eval mode the memory is read but not written). Under DDP the memory holds
    gathered logits, the same on every rank. It lives across epochs and is not saved in the
    ``state_dict`` (a resumed run refills it within ``M / B`` steps); :meth:`reset_memory`
    empties it. CE stays on the current batch. ``memory_size=0`` (the default) is the plain
    method, unchanged.

    With ``memory_warmup_steps=W > 0`` the memory is written from the first training call but
    only read from call ``W + 1`` on: the first ``W`` training calls are the plain method on the
    current batch (``memory_rows`` 0), so the memory never holds logits of a student that has
    not trained yet, and it is already full when reading starts. Eval calls always read it
    once it is read in training. The count of training calls is not checkpointed either (a
    resumed run waits ``W`` calls again; :meth:`reset_memory` resets it too).
    ``memory_warmup_steps=0`` (the default) reads the memory from the start.

    Returns the terms ``loss``, ``ce``, ``cs`` (and ``cs_cswt``) plus the diagnostics
    ``cos_mean`` (mean per-class batch cosine at ``T``) and, with CSWT, ``cswt_t_mean``,
    ``cswt_t_min``, ``cswt_t_max`` (over the extended batch with a memory), and with a memory
    ``memory_rows`` (the memory rows this call used).
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
        memory_size: int = 0,
        memory_rescale: bool = True,
        memory_warmup_steps: int = 0,
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
        if isinstance(memory_size, bool) or int(memory_size) != memory_size or memory_size < 0:
            raise InputError(
                f"memory_size must be a non-negative integer (0 switches the memory off); "
                f"got {memory_size!r}."
            )
        self.memory_size = int(memory_size)
        self.memory = LogitMemory(self.memory_size) if self.memory_size else None
        self.memory_rescale = bool(memory_rescale)
        if (
            isinstance(memory_warmup_steps, bool)
            or int(memory_warmup_steps) != memory_warmup_steps
            or memory_warmup_steps < 0
        ):
            raise InputError(
                f"memory_warmup_steps must be a non-negative integer; got {memory_warmup_steps!r}."
            )
        self.memory_warmup_steps = int(memory_warmup_steps)
        self.training_calls = 0

    def reset_memory(self) -> None:
        """Empty the logit memory (a no-op without one) and restart its warm-up count."""
        if self.memory is not None:
            self.memory.clear()
        self.training_calls = 0

    def distillation_terms(self, student_logits: Tensor, teacher_logits: Tensor) -> dict:
        """The teacher terms on (already gathered) ``(B, C)`` logits, unweighted."""
        zs, zt = student_logits, teacher_logits
        if self.logit_standardization:
            zs, zt = standardize_logits(zs), standardize_logits(zt)
        cos = per_class_batch_cosine(zs, zt, self.temperature)  # (C,), computed once
        terms = {
            "cs": cskd_loss_from_cosine(cos, self.temperature, self.alpha),
            "cos_mean": cos.mean().detach(),
        }
        if self.cswt:
            # CSWT always ranks the samples on the raw logits (see the class docstring).
            temps = cswt_temperature(student_logits, teacher_logits, self.t_low, self.t_high)
            terms["cs_cswt"] = cskd_loss(zs, zt, temps, self.alpha)
            terms["cswt_t_mean"] = temps.mean()
            terms["cswt_t_min"], terms["cswt_t_max"] = torch.aminmax(temps)
        return terms

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        ce = cross_entropy(student_logits, targets)
        if self.gather:
            student_logits = gather_batch(student_logits)
            teacher_logits = gather_batch(teacher_logits)
        if self.memory is None:
            terms = self.distillation_terms(student_logits, teacher_logits)
            kd = terms["cs"] + terms["cs_cswt"] if self.cswt else terms["cs"]
        else:
            terms, kd = self._with_memory(student_logits, teacher_logits)
        return {"loss": self.ce_weight * ce + self.kd_weight * kd, "ce": ce, **terms}

    def _with_memory(self, student_logits: Tensor, teacher_logits: Tensor) -> tuple[dict, Tensor]:
        """The teacher terms on ``[current; memory]``, then the current rows join the memory."""
        assert self.memory is not None
        if self.training:
            self.training_calls += 1
        if self.memory_warmup_steps == 0 or self.training_calls > self.memory_warmup_steps:
            extended_s, extended_t = self.memory.extend(student_logits, teacher_logits)
        else:  # warm-up: the plain method on the current batch; the memory only fills
            extended_s, extended_t = student_logits, teacher_logits
        current = student_logits.shape[0]
        used = extended_s.shape[0] - current
        terms = self.distillation_terms(extended_s, extended_t)
        terms["memory_rows"] = extended_s.new_tensor(float(used))
        kd = terms["cs"] + terms["cs_cswt"] if self.cswt else terms["cs"]
        if self.memory_rescale and used:
            # A row's pull on a batch-axis cosine is about 1 / rows: B current rows among B + n
            # pull B / (B + n) as hard as without the memory. Scale their gradient back by
            # (B + n) / B; the value (and every logged term) stays that of the extended batch.
            kd = kd + (used / current) * (kd - kd.detach())
        if self.training:
            self.memory.push(student_logits, teacher_logits)
        return terms, kd
