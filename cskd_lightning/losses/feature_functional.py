"""Functional forms of the feature-distillation losses (AT, RKD, PKT, SP, ReviewKD's HCL).

Shapes: feature maps are ``(B, C, H, W)``, embeddings ``(B, D)``. Like the logit losses
(:mod:`cskd_lightning.losses.functional`), every function computes in float32 or wider, also
under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cskd_lightning.losses.functional import no_autocast, upcast

__all__ = ["at_loss", "attention_map", "hcl_loss", "pkt_loss", "rkd_loss", "sp_loss"]


def _match_spatial(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two ``(B, C, H, W)`` maps to the other's ``H x H``."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return f_s, f_t


def attention_map(feat: Tensor, p: float) -> Tensor:
    """AT's attention map: ``normalize(mean_c feat[:, c]^p)`` flattened, ``(B, H*W)``."""
    return F.normalize(feat.pow(p).mean(1).reshape(feat.shape[0], -1), dim=1)


def at_loss(g_s: list[Tensor], g_t: list[Tensor], p: float) -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017), summed over feature pairs.

    For each pair of maps ``(B, C_s, H, W)`` / ``(B, C_t, H', W')`` (the larger average-pooled to
    the smaller side): ``mean((a_s - a_t)^2)`` over the batch and the ``H*W`` positions, with
    ``a`` from :func:`attention_map`. A scalar out.
    """
    total = None
    for f_s, f_t in zip(g_s, g_t, strict=True):
        f_s, f_t = upcast(f_s, f_t)
        with no_autocast(f_s.device):
            f_s, f_t = _match_spatial(f_s, f_t)
            term = (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()
        total = term if total is None else total + term
    assert total is not None, "at_loss needs at least one feature pair"
    return total


def _pdist(e: Tensor, squared: bool, eps: float) -> Tensor:
    """Pairwise Euclidean distances ``(B, B)`` of the rows of ``e``, clamped at ``eps`` (squared
    before the square root), with a zero diagonal."""
    sq = e.pow(2).sum(dim=1)
    res = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.T).clamp(min=eps)
    if not squared:
        res = res.sqrt()
    return res * (1 - torch.eye(e.shape[0], dtype=res.dtype, device=res.device))


def _rkd_angles(e: Tensor) -> Tensor:
    """Cosines of the angles ``<e_i - e_j, e_k - e_j>`` over all triplets, flattened ``(B^3,)``."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def rkd_loss(
    f_s: Tensor,
    f_t: Tensor,
    squared: bool = False,
    eps: float = 1e-12,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> Tensor:
    """Relational KD (Park et al., CVPR 2019): distance and angle relations of the batch.

    ``f_s``, ``f_t``: ``(B, ...)`` (flattened to ``(B, D)``). ``d = pdist / mean(pdist > 0)``;
    ``L = distance_weight * smoothL1(d_s, d_t) + angle_weight * smoothL1(angle_s, angle_t)``, the
    angles over all ``B^3`` triplets. The teacher's side carries no gradient. A scalar out.
    """
    s, t = upcast(f_s.reshape(f_s.shape[0], -1), f_t.reshape(f_t.shape[0], -1))
    t = t.detach()
    with no_autocast(s.device):
        t_d = _pdist(t, squared, eps)
        t_d = t_d / t_d[t_d > 0].mean()
        d = _pdist(s, squared, eps)
        d = d / d[d > 0].mean()
        loss_d = F.smooth_l1_loss(d, t_d)
        loss_a = F.smooth_l1_loss(_rkd_angles(s), _rkd_angles(t))
        return distance_weight * loss_d + angle_weight * loss_a


def pkt_loss(f_s: Tensor, f_t: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

    Rows of ``(B, D)`` features normalised (``f / (||f|| + eps)``), cosine similarities mapped
    to ``[0, 1]`` (``(K + 1) / 2``) and each row normalised to a distribution ``P``;
    ``L = mean_{i,j} P_t[i, j] * log((P_t[i, j] + eps) / (P_s[i, j] + eps))`` over the ``B x B``
    entries. A scalar out.
    """
    s, t = upcast(f_s.reshape(f_s.shape[0], -1), f_t.reshape(f_t.shape[0], -1))
    with no_autocast(s.device):

        def conditional(f: Tensor) -> Tensor:
            f = f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
            f = torch.nan_to_num(f, nan=0.0)
            k = (f @ f.T + 1.0) / 2.0
            return k / k.sum(dim=1, keepdim=True)

        p_s, p_t = conditional(s), conditional(t)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def sp_loss(g_s: list[Tensor], g_t: list[Tensor]) -> Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019), summed over feature pairs.

    For each pair of ``(B, ...)`` features flattened to ``(B, D)``: ``G = normalize_rows(f f^T)``
    ``(B, B)``, ``L = ||G_t - G_s||_F^2 / B^2``. A scalar out.
    """
    total = None
    for f_s, f_t in zip(g_s, g_t, strict=True):
        s, t = upcast(f_s.reshape(f_s.shape[0], -1), f_t.reshape(f_t.shape[0], -1))
        with no_autocast(s.device):
            g_s_, g_t_ = F.normalize(s @ s.T, dim=1), F.normalize(t @ t.T, dim=1)
            term = (g_t_ - g_s_).pow(2).sum() / (s.shape[0] ** 2)
        total = term if total is None else total + term
    assert total is not None, "sp_loss needs at least one feature pair"
    return total


def hcl_loss(fstudent: list[Tensor], fteacher: list[Tensor]) -> Tensor:
    """ReviewKD's hierarchical context loss (Chen et al., CVPR 2021), summed over levels.

    For each pair of ``(B, C, H, W)`` maps: the MSE at full size plus, for every ``l`` in
    ``(4, 2, 1)`` with ``l < H``, the MSE of both average-pooled to ``l x l`` weighted ``1/2, 1/4,
    1/8, ...``, the sum divided by the sum of the weights. A scalar out.
    """
    total = None
    for fs, ft in zip(fstudent, fteacher, strict=True):
        fs, ft = upcast(fs, ft)
        with no_autocast(fs.device):
            h = fs.shape[2]
            loss = F.mse_loss(fs, ft)
            cnt, tot = 1.0, 1.0
            for level in (4, 2, 1):
                if level >= h:
                    continue
                cnt /= 2.0
                pooled_s = F.adaptive_avg_pool2d(fs, (level, level))
                pooled_t = F.adaptive_avg_pool2d(ft, (level, level))
                loss = loss + F.mse_loss(pooled_s, pooled_t) * cnt
                tot += cnt
            term = loss / tot
        total = term if total is None else total + term
    assert total is not None, "hcl_loss needs at least one feature pair"
    return total
