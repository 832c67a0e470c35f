"""Functional forms of the distillation losses.

Shapes: ``student_logits`` and ``teacher_logits`` are ``(B, C)`` (batch x classes). Softmax is
always over the class axis. Every function computes in float32 or wider, also under autocast:
half-precision inputs are upcast, float64 inputs stay float64.

Notation (see the method notes): ``P = softmax(z / T)``; a row ``P[i, :]`` is a sample's class
prediction, a column ``P[:, j]`` a class's batch prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def upcast(*tensors: Tensor) -> list[Tensor]:
    dtype = _compute_dtype(*tensors)
    return [t.to(dtype) for t in tensors]


def no_autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


def _check_pair(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "Expected student and teacher logits of the same shape (B, C); got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}."
        )


def _temperature_column(
    temperature: Temperature, like: Tensor, check: bool = True
) -> tuple[float | Tensor, float | Tensor]:
    """Return ``(T, mean(T))``: a float stays a float; a tensor becomes a ``(B, 1)`` column.

    A float gives one temperature for every sample; a ``(B,)`` tensor gives one per sample, in
    ``like``'s dtype and device.
    """
    if not isinstance(temperature, Tensor):
        value = float(temperature)
        if not value > 0:
            raise ValueError(f"temperature must be positive; got {value:g}.")
        return value, value
    t = temperature.detach().to(device=like.device, dtype=like.dtype).reshape(-1)
    if t.numel() not in (1, like.shape[0]):
        raise ValueError(
            f"temperature must be a float or a (B,) tensor with B={like.shape[0]}; "
            f"got shape {tuple(temperature.shape)}."
        )
    # A NaN temperature (CSWT on NaN logits) propagates into the loss, where the module reports
    # the non-finite term; only a definitely non-positive value is an argument error. Checked on
    # the CPU only: on an accelerator the check would stall every step.
    if check and t.device.type == "cpu" and bool((t <= 0).any()):
        raise ValueError(f"temperature must be positive; got {t.min().item():g}.")
    return t.reshape(-1, 1), t.mean()


def _squared_per_row(temperature: float | Tensor) -> float | Tensor:
    """``T^2`` as a float, or ``T_i^2`` as ``(B,)`` for a ``(B, 1)`` column."""
    return temperature**2 if isinstance(temperature, float) else temperature.reshape(-1).pow(2)


def softened_probs(logits: Tensor, temperature: Temperature) -> Tensor:
    """``softmax(z[i, :] / T_i)`` over classes; ``T`` a float or a ``(B,)`` tensor. ``(B, C)``."""
    (z,) = upcast(logits)
    t, _ = _temperature_column(temperature, z)
    with no_autocast(z.device):
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
    return batch_cosines(softened_pairs(student_logits, teacher_logits, [temperature])[0])[0]


def softened_pairs(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperatures: Sequence[Temperature],
    check: bool = True,
) -> tuple[Tensor, list[float | Tensor]]:
    """The student's and the teacher's ``P = softmax(z / T_k)`` at K temperatures, in one softmax.

    Returns ``(P, t_means)``: ``P`` is ``(2, K, B, C)`` (``P[0, k]`` the student's, ``P[1, k]``
    the teacher's at ``T_k``) and ``t_means[k] = mean(T_k)`` (a float for a float ``T_k``). Each
    ``T_k`` is a float or a ``(B,)`` tensor (no gradient flows through it); ``check=False``
    skips the positivity check of tensor temperatures positive by construction (CSWT's). The
    numbers are those of K separate :func:`softened_probs` calls; stacking makes one kernel of
    each op on an accelerator, where the separate calls launch K times 2.
    """
    _check_pair(student_logits, teacher_logits)
    s, t = upcast(student_logits, teacher_logits)
    pairs = [_temperature_column(temp, s, check) for temp in temperatures]
    t_stack = torch.stack(
        [c if isinstance(c, Tensor) else s.new_full((s.shape[0], 1), c) for c, _ in pairs]
    )  # (K, B, 1)
    with no_autocast(s.device):
        probs = F.softmax(torch.stack([s, t]).unsqueeze(1) / t_stack, dim=-1)
    return probs, [t_mean for _, t_mean in pairs]


def batch_cosines(probs: Tensor) -> Tensor:
    """``cos(P_s[:, j], P_t[:, j])`` for every class at each temperature: ``(K, C)`` from the
    ``(2, K, B, C)`` of :func:`softened_pairs`."""
    ps, pt = probs.unbind(0)  # unbind, not two selects: one stack in backward, not two fills
    norm_s, norm_t = probs.norm(dim=2).unbind(0)  # (K, C) each
    return (ps * pt).sum(1) / (norm_s * norm_t + COS_EPS)


def cskd_from_mean_cosines(
    mean_cos: Tensor, t_means: Sequence[float | Tensor], alpha: float = 2.0
) -> list[Tensor]:
    """``L_cs(T_k) = alpha * mean(T_k)^2 * (1 - mean_j cos_kj)`` for each ``k``, from the
    ``(K,)`` mean cosines of :func:`batch_cosines` and the ``t_means`` of :func:`softened_pairs`."""
    return [alpha * tm**2 * (1.0 - m) for m, tm in zip(mean_cos.unbind(), t_means, strict=True)]


def cskd_losses(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperatures: Sequence[Temperature],
    alpha: float = 2.0,
    check: bool = True,
) -> tuple[list[Tensor], Tensor]:
    """:func:`cskd_loss` at K temperatures in one pass: ``([L_cs(T_k) for each k], mean_j
    cos_kj (K,))``. Inputs ``(B, C)``."""
    probs, t_means = softened_pairs(student_logits, teacher_logits, temperatures, check)
    mean_cos = batch_cosines(probs).mean(-1)
    return cskd_from_mean_cosines(mean_cos, t_means, alpha), mean_cos


def correlation_losses(probs: Tensor) -> tuple[Tensor, Tensor]:
    """The class- and the batch-correlation terms at each temperature, ``(K,)`` each, from the
    ``(2, K, B, C)`` of :func:`softened_pairs`: :func:`class_correlation_loss` and
    :func:`batch_correlation_loss` in one matmul each."""
    by_class = probs.transpose(-1, -2) @ probs  # (2, K, C, C)
    by_sample = probs @ probs.transpose(-1, -2)  # (2, K, B, B)
    return _correlation_cosine_loss(*by_class), _correlation_cosine_loss(*by_sample)


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
    return cskd_losses(student_logits, teacher_logits, [temperature], alpha)[0][0]


@torch.no_grad()
def sample_cosine(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Per-sample similarity ``c_i = cos(softmax(z_s[i, :]), softmax(z_t[i, :]))``, ``(B,)``."""
    _check_pair(student_logits, teacher_logits)
    s, t = upcast(student_logits.detach(), teacher_logits.detach())
    with no_autocast(s.device):
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
    c = sample_cosine(student_logits, teacher_logits)
    return cswt_from_similarity(c, *torch.aminmax(c), t_low, t_high)


@torch.no_grad()
def cswt_from_similarity(
    similarity: Tensor, c_min: Tensor, c_max: Tensor, t_low: float = 2.0, t_high: float = 6.0
) -> Tensor:
    """CSWT's second half: ``T_i`` from the similarities ``c_i`` and their batch's min and max.

    ``T_i = t_low + (t_high - t_low) * (c_max - c_i) / (c_max - c_min)``, the midpoint where
    ``c_max - c_min <= 1e-6``. ``c_min`` and ``c_max`` are scalars or broadcast with
    ``similarity`` (one batch's extremes per sample: the
    :class:`~cskd_lightning.callbacks.TemperatureMonitor` rebuilds the temperatures of many
    batches at once this way). :func:`cswt_temperature` is this with one batch's min and max.
    """
    if not 0 < t_low <= t_high:
        raise ValueError(
            f"CSWT needs 0 < t_low <= t_high; got t_low={t_low}, t_high={t_high}. "
            "Swap them or pick positive values."
        )
    c = similarity
    spread = c_max - c_min
    flat = spread <= CSWT_SPREAD_TOL  # decided on the device: no host sync in the step
    weight = torch.where(flat, 0.5, (c_max - c) / spread.clamp_min(1e-30))
    return t_low + (t_high - t_low) * weight


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: Temperature) -> Tensor:
    """Classic KD (Hinton et al.): ``T^2 * KL(p_t || p_s)``, averaged over the batch.

    ``p = softmax(z / T)`` over classes; with a ``(B,)`` temperature each sample's KL is scaled
    by its own ``T_i^2``. Inputs ``(B, C)``; a scalar out.
    """
    _check_pair(student_logits, teacher_logits)
    s, t = upcast(student_logits, teacher_logits)
    temp, _ = _temperature_column(temperature, s)
    with no_autocast(s.device):
        log_ps = F.log_softmax(s / temp, dim=1)
        log_pt = F.log_softmax(t / temp, dim=1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)
        return (kl * _squared_per_row(temp)).mean()


def _correlation_cosine_loss(g_student: Tensor, g_teacher: Tensor) -> Tensor:
    """``1 - mean_r cos(G_t[r, :], G_s[r, :])`` over the last two axes of ``(..., R, R)``."""
    return 1.0 - cosine(g_teacher, g_student, dim=-1).mean(-1)


def class_correlation_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: Temperature
) -> Tensor:
    """Class-correlation cosine term of the full recipe.

    ``G = P^T P`` (``C x C``), ``L = 1 - (1/C) * sum_r cos(G_t[r, :], G_s[r, :])``,
    ``P = softmax(z / T)`` with a float or per-sample ``(B,)`` temperature. A scalar out.
    """
    _check_pair(student_logits, teacher_logits)
    s, t = upcast(student_logits, teacher_logits)
    with no_autocast(s.device):
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
    s, t = upcast(student_logits, teacher_logits)
    with no_autocast(s.device):
        ps, pt = softened_probs(s, temperature), softened_probs(t, temperature)
        return _correlation_cosine_loss(ps @ ps.T, pt @ pt.T)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy computed in float32 or wider (also under autocast)."""
    (z,) = upcast(logits)
    with no_autocast(z.device):
        return F.cross_entropy(z, targets)


# --------------------------------------------------------------------------------------------
# The methods beside CSKD: logit standardization, DKD, DIST and MLKD's consistency terms.
# --------------------------------------------------------------------------------------------

LOGIT_STD_EPS = 1e-7
"""The ``eps`` of logit standardization: ``(z - mean) / (std + eps)`` (as in Sun et al.'s code)."""


def standardize_logits(logits: Tensor, eps: float = LOGIT_STD_EPS) -> Tensor:
    """Logit standardization (Sun et al., CVPR 2024): z-score each sample over the classes.

    ``Z(z)[i, :] = (z[i, :] - mean_j z[i, j]) / (std_j z[i, j] + eps)``

    with the unbiased (``C - 1``) standard deviation, as ``torch.std`` and the authors' code.
    Divide the result by the (base) temperature afterwards. Inputs ``(B, C)`` with ``C >= 2``;
    returns ``(B, C)`` in float32 or wider. Differentiable (the mean and std are not detached).
    """
    (z,) = upcast(logits)
    if z.dim() != 2 or z.shape[1] < 2:
        raise ValueError(
            f"Logit standardization needs (B, C) logits with C >= 2; got {tuple(z.shape)}."
        )
    with no_autocast(z.device):
        return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


def _target_mask(logits: Tensor, targets: Tensor) -> Tensor:
    """Boolean ``(B, C)`` mask, True at each sample's target class."""
    if targets.shape != (logits.shape[0],):
        raise ValueError(
            f"Expected targets of shape (B,) = ({logits.shape[0]},); got {tuple(targets.shape)}."
        )
    mask = torch.zeros_like(logits, dtype=torch.bool)
    return mask.scatter_(1, targets.reshape(-1, 1).long(), True)


def _kl_rows(log_p: Tensor, log_q: Tensor, skip: Tensor | None = None) -> Tensor:
    """``KL(p || q)`` per row from log-probabilities, ``(B,)``; ``0 log 0 = 0``. ``skip``: a
    boolean ``(B, C)`` mask of entries left out of the sum (``p`` taken as 0 there)."""
    p = log_p.exp()
    if skip is not None:
        p = p.masked_fill(skip, 0.0)
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=1)


def dkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float,
    reduction: str = "mean",
) -> tuple[Tensor, Tensor]:
    """Decoupled KD (Zhao et al., CVPR 2022): target-class and non-target-class KD.

    With ``p = softmax(z / T)`` over the ``C`` classes and ``g`` the target class of a sample:

    - binary ``b = [p_g, 1 - p_g]``; ``TCKD = T^2 * KL(b_t || b_s)``;
    - ``p_hat = softmax(z[non-target] / T)`` over the ``C - 1`` non-target classes;
      ``NCKD = T^2 * KL(p_hat_t || p_hat_s)``.

    Per sample, ``T^2 KL(p_t || p_s) = TCKD + (1 - p_t,g) * NCKD`` exactly (the paper's Eq. 1).

    The non-target softmax gathers the ``C - 1`` non-target logits, so it is exact; the reference
    code (mdistiller) subtracts 1000 from the target logit instead, which agrees unless logit gaps
    reach ~1000 T. ``log(1 - p_g)`` is computed as ``logsumexp(non-target) - logsumexp(all)``,
    finite even where ``p_g`` rounds to 1.

    Args: logits ``(B, C)`` with ``C >= 2``; ``targets`` ``(B,)`` class indices; a float
    temperature; ``reduction`` ``"mean"`` (scalars, averaged over the batch) or ``"none"``
    (``(B,)`` each). Returns ``(tckd, nckd)``.
    """
    _check_pair(student_logits, teacher_logits)
    s, t = upcast(student_logits, teacher_logits)
    batch, classes = s.shape
    if classes < 2:
        raise ValueError(f"DKD needs at least 2 classes; got logits of shape {tuple(s.shape)}.")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none'; got {reduction!r}.")
    temp, _ = _temperature_column(float(temperature), s)
    gt = _target_mask(s, targets)
    target = targets.reshape(-1, 1).long()
    with no_autocast(s.device):
        zs, zt = s / temp, t / temp

        # No boolean-mask indexing (its output size is read on the host: a sync on an
        # accelerator): the target logit is gathered, the non-target softmax is taken over all
        # C columns with the target column at -inf, and that column is dropped from the KL.
        def binary_and_rest(z: Tensor) -> tuple[Tensor, Tensor]:
            lse = torch.logsumexp(z, dim=1, keepdim=True)
            rest = z.masked_fill(gt, float("-inf"))
            lse_rest = torch.logsumexp(rest, dim=1, keepdim=True)
            log_b = torch.cat([z.gather(1, target) - lse, lse_rest - lse], dim=1)
            return log_b, (z - lse_rest).masked_fill(gt, 0.0)

        log_bs, log_hat_s = binary_and_rest(zs)
        log_bt, log_hat_t = binary_and_rest(zt)
        scale = _squared_per_row(temp)
        tckd = _kl_rows(log_bt, log_bs) * scale
        nckd = _kl_rows(log_hat_t, log_hat_s, skip=gt) * scale
    if reduction == "mean":
        return tckd.mean(), nckd.mean()
    return tckd, nckd


def pearson_correlation(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """Pearson correlation along ``dim``: the cosine of the mean-centred vectors.

    ``r(a, b) = cos(a - mean(a), b - mean(b))`` with the method's cosine
    (``eps = 1e-8`` added to the norm product, as in DIST's code). Unchanged, up to that eps, by
    positive affine maps ``a -> x a + y`` (``x > 0``) of either argument. A vector that is
    constant along ``dim`` centres to zero and gives ``r = 0``.
    """
    return cosine(a - a.mean(dim, keepdim=True), b - b.mean(dim, keepdim=True), dim=dim)


def dist_terms(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """DIST (Huang et al., NeurIPS 2022): inter- and intra-class relation losses.

    With ``P = softmax(z / tau)`` over classes, ``(B, C)``:

    - ``inter = tau^2 * (1 - (1/B) sum_i pearson(P_s[i, :], P_t[i, :]))`` (each sample's
      class prediction);
    - ``intra = tau^2 * (1 - (1/C) sum_j pearson(P_s[:, j], P_t[:, j]))`` (each class's batch
      prediction: batch-level, like CSKD's cosine).

    Returns ``(inter, intra)`` scalars.
    """
    _check_pair(student_logits, teacher_logits)
    s, t = upcast(student_logits, teacher_logits)
    tau = float(tau)
    with no_autocast(s.device):
        ps, pt = softened_probs(s, tau), softened_probs(t, tau)
        inter = tau**2 * (1.0 - pearson_correlation(ps, pt, dim=1).mean())
        intra = tau**2 * (1.0 - pearson_correlation(ps, pt, dim=0).mean())
    return inter, intra


def class_consistency_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: Temperature
) -> Tensor:
    """MLKD's class-level alignment (Jin et al., CVPR 2023).

    ``G = P^T P`` (``C x C``), ``L = sum_{r, c} (G_t - G_s)[r, c]^2 / C``, with
    ``P = softmax(z / T)`` (a float or a ``(B,)`` temperature). A scalar out. Compare
    :func:`class_correlation_loss`, the cosine form of the CSKD recipe.
    """
    _check_pair(student_logits, teacher_logits)
    s, t = upcast(student_logits, teacher_logits)
    with no_autocast(s.device):
        ps, pt = softened_probs(s, temperature), softened_probs(t, temperature)
        return (pt.T @ pt - ps.T @ ps).pow(2).sum() / s.shape[1]


def batch_consistency_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: Temperature
) -> Tensor:
    """MLKD's batch-level alignment (Jin et al., CVPR 2023).

    ``G = P P^T`` (``B x B``), ``L = sum_{r, c} (G_t - G_s)[r, c]^2 / B``, with
    ``P = softmax(z / T)``. A scalar out. Compare :func:`batch_correlation_loss`.
    """
    _check_pair(student_logits, teacher_logits)
    s, t = upcast(student_logits, teacher_logits)
    with no_autocast(s.device):
        ps, pt = softened_probs(s, temperature), softened_probs(t, temperature)
        return (pt @ pt.T - ps @ ps.T).pow(2).sum() / s.shape[0]


# --------------------------------------------------------------------------------------------
# WTTM and the feature methods. Names and argument orders are mdistiller's module-level
# functions (``at_loss(g_s, g_t, p)``, ``rkd_loss(f_s, f_t, squared, eps, distance_weight,
# angle_weight)``, ``pkt_loss(f_s, f_t, eps)``, ``sp_loss(g_s, g_t)``, ``hcl_loss(fstudent,
# fteacher)``), with the same values; they compute in float32 or wider.
# --------------------------------------------------------------------------------------------


def wttm_loss(student_logits: Tensor, teacher_logits: Tensor, gamma: float) -> Tensor:
    """Weighted transformed teacher matching (Zheng & Yang, ICLR 2024).

    The teacher is transformed by the power ``gamma`` (a temperature ``1 / gamma`` on the
    teacher only) and matched by the student at ``T = 1``, each sample weighted by the power sum:

        ``s_i = sum_j p_t[i, j]^gamma``,  ``q_i = p_t[i]^gamma / s_i = softmax(gamma * z_t[i])``,
        ``L = (1/B) sum_i s_i * KL(q_i || softmax(z_s[i]))``

    Inputs ``(B, C)``; a scalar out. ``gamma = 1`` gives KD at ``T = 1`` (``s_i = 1``).
    """
    _check_pair(student_logits, teacher_logits)
    s, t = upcast(student_logits, teacher_logits)
    with no_autocast(s.device):
        log_pt = F.log_softmax(t, dim=1)
        log_q = F.log_softmax(gamma * log_pt, dim=1)  # = log_softmax(gamma * z_t)
        weight = torch.logsumexp(gamma * log_pt, dim=1).exp()  # s_i
        kl = _kl_rows(log_q, F.log_softmax(s, dim=1))
        return (weight * kl).mean()
