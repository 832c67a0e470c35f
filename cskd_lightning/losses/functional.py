"""Functional forms of the distillation losses.

Shapes: ``student_logits`` and ``teacher_logits`` are ``(B, C)`` (batch x classes). Softmax is
always over the class axis. Every function computes in float32 or wider, also under autocast:
half-precision inputs are upcast, float64 inputs stay float64.

Notation (see the method notes): ``P = softmax(z / T)``; a row ``P[i, :]`` is a sample's class
prediction, a column ``P[:, j]`` a class's batch prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

COS_EPS = 1e-8
"""The ``eps`` in ``cos(a, b) = <a, b> / (||a|| * ||b|| + eps)``."""

CSWT_SPREAD_TOL = 1e-6
"""Below this spread ``max(c) - min(c)`` the CSWT similarities count as equal (midpoint)."""

Temperature = float | Tensor


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half precision is upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _upcast(*tensors: Tensor) -> list[Tensor]:
    dtype = _compute_dtype(*tensors)
    return [t.to(dtype) for t in tensors]


def _no_autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


def _check_pair(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "Expected student and teacher logits of the same shape (B, C); got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}."
        )


def _temperature_column(temperature: Temperature, like: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``(T as (B, 1) or (1, 1), mean(T))`` in ``like``'s dtype and device.

    A float gives one temperature for every sample; a ``(B,)`` tensor gives one per sample.
    """
    if isinstance(temperature, Tensor):
        t = temperature.detach().to(device=like.device, dtype=like.dtype).reshape(-1)
        if t.numel() not in (1, like.shape[0]):
            raise ValueError(
                f"temperature must be a float or a (B,) tensor with B={like.shape[0]}; "
                f"got shape {tuple(temperature.shape)}."
            )
        # A NaN temperature (CSWT on NaN logits) propagates into the loss, where the module
        # reports the non-finite term; only a definitely non-positive value is an argument error.
        invalid = bool((t <= 0).any())
    else:
        t = torch.tensor([float(temperature)], device=like.device, dtype=like.dtype)
        invalid = not float(temperature) > 0
    if invalid:
        raise ValueError(f"temperature must be positive; got {t.min().item():g}.")
    return t.reshape(-1, 1), t.mean()


def softened_probs(logits: Tensor, temperature: Temperature) -> Tensor:
    """``softmax(z[i, :] / T_i)`` over classes; ``T`` a float or a ``(B,)`` tensor. ``(B, C)``."""
    (z,) = _upcast(logits)
    t, _ = _temperature_column(temperature, z)
    with _no_autocast(z.device):
        return F.softmax(z / t, dim=1)


def cosine(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """``<a, b> / (||a|| * ||b|| + 1e-8)`` along ``dim`` (the method's cosine, eps outside)."""
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + COS_EPS)


def per_class_batch_cosine(
    student_logits: Tensor, teacher_logits: Tensor, temperature: Temperature
) -> Tensor:
    """Cosine between student and teacher batch predictions, one per class.

    ``cos_j = cos(P_s[:, j], P_t[:, j])`` with ``P = softmax(z / T)``. Returns ``(C,)``.
    """
    _check_pair(student_logits, teacher_logits)
    s, t = _upcast(student_logits, teacher_logits)
    with _no_autocast(s.device):
        return cosine(softened_probs(s, temperature), softened_probs(t, temperature), dim=0)


def cskd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: Temperature,
    alpha: float = 2.0,
) -> Tensor:
    """Cosine similarity KD loss on batch predictions.

    ``L_cs = alpha * mean(T)^2 * (1 - (1/C) * sum_j cos(P_s[:, j], P_t[:, j]))``

    where ``P[i, :] = softmax(z[i, :] / T_i)``. ``temperature`` is a float (every sample) or a
    ``(B,)`` tensor (per sample; no gradient flows through it). Inputs ``(B, C)``; a scalar out.
    """
    s, t = _upcast(student_logits, teacher_logits)
    _, t_mean = _temperature_column(temperature, s)
    cos = per_class_batch_cosine(s, t, temperature)
    return alpha * t_mean.pow(2) * (1.0 - cos.mean())


@torch.no_grad()
def sample_cosine(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Per-sample similarity ``c_i = cos(softmax(z_s[i, :]), softmax(z_t[i, :]))``, ``(B,)``."""
    _check_pair(student_logits, teacher_logits)
    s, t = _upcast(student_logits.detach(), teacher_logits.detach())
    with _no_autocast(s.device):
        return cosine(F.softmax(s, dim=1), F.softmax(t, dim=1), dim=1)


@torch.no_grad()
def cswt_temperature(
    student_logits: Tensor,
    teacher_logits: Tensor,
    t_low: float = 2.0,
    t_high: float = 6.0,
) -> Tensor:
    """Cosine-similarity-weighted temperature (CSWT), one per sample, without gradient.

    ``c_i = cos(softmax(z_s[i, :]), softmax(z_t[i, :]))`` at temperature 1, then

    ``T_i = t_low + (t_high - t_low) * (max(c) - c_i) / (max(c) - min(c))``

    so the most similar sample gets ``t_low`` and the least similar ``t_high``. When the
    similarities do not spread (``max(c) - min(c) <= 1e-6``: a batch of one, identical
    predictions) every sample gets the midpoint ``(t_low + t_high) / 2``. Returns ``(B,)`` in
    float32 (float64 for float64 inputs).
    """
    if not 0 < t_low <= t_high:
        raise ValueError(
            f"CSWT needs 0 < t_low <= t_high; got t_low={t_low}, t_high={t_high}. "
            "Swap them or pick positive values."
        )
    c = sample_cosine(student_logits, teacher_logits)
    c_max, c_min = c.max(), c.min()
    spread = c_max - c_min
    flat = spread <= CSWT_SPREAD_TOL  # decided on the device: no host sync in the step
    weight = torch.where(flat, torch.full_like(c, 0.5), (c_max - c) / spread.clamp_min(1e-30))
    return t_low + (t_high - t_low) * weight


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: Temperature) -> Tensor:
    """Classic KD (Hinton et al.): ``T^2 * KL(p_t || p_s)``, averaged over the batch.

    ``p = softmax(z / T)`` over classes; with a ``(B,)`` temperature each sample's KL is scaled
    by its own ``T_i^2``. Inputs ``(B, C)``; a scalar out.
    """
    _check_pair(student_logits, teacher_logits)
    s, t = _upcast(student_logits, teacher_logits)
    temp, _ = _temperature_column(temperature, s)
    with _no_autocast(s.device):
        log_ps = F.log_softmax(s / temp, dim=1)
        log_pt = F.log_softmax(t / temp, dim=1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)
        return (kl * temp.reshape(-1).pow(2)).mean()


def _correlation_cosine_loss(g_student: Tensor, g_teacher: Tensor) -> Tensor:
    return 1.0 - cosine(g_teacher, g_student, dim=1).mean()


def class_correlation_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: Temperature
) -> Tensor:
    """Class-correlation cosine term of the full recipe.

    ``G = P^T P`` (``C x C``), ``L = 1 - (1/C) * sum_r cos(G_t[r, :], G_s[r, :])``,
    ``P = softmax(z / T)`` with a float or per-sample ``(B,)`` temperature. A scalar out.
    """
    _check_pair(student_logits, teacher_logits)
    s, t = _upcast(student_logits, teacher_logits)
    with _no_autocast(s.device):
        ps, pt = softened_probs(s, temperature), softened_probs(t, temperature)
        return _correlation_cosine_loss(ps.T @ ps, pt.T @ pt)


def batch_correlation_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: Temperature
) -> Tensor:
    """Batch-correlation cosine term of the full recipe.

    ``G = P P^T`` (``B x B``), ``L = 1 - (1/B) * sum_r cos(G_t[r, :], G_s[r, :])``,
    ``P = softmax(z / T)`` with a float or per-sample ``(B,)`` temperature. A scalar out.
    """
    _check_pair(student_logits, teacher_logits)
    s, t = _upcast(student_logits, teacher_logits)
    with _no_autocast(s.device):
        ps, pt = softened_probs(s, temperature), softened_probs(t, temperature)
        return _correlation_cosine_loss(ps @ ps.T, pt @ pt.T)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy computed in float32 or wider (also under autocast)."""
    (z,) = _upcast(logits)
    with _no_autocast(z.device):
        return F.cross_entropy(z, targets)
