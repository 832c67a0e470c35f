"""Contrastive representation distillation (CRD; Tian et al., ICLR 2020)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cskd_lightning.errors import InputError
from cskd_lightning.features import Features
from cskd_lightning.losses.base import check_count, check_positive, check_weight
from cskd_lightning.losses.distributed import gather_no_grad, mean_across_processes
from cskd_lightning.losses.feature_base import FeatureBatch, FeatureDistillationLoss

__all__ = ["CRDLoss", "Embed", "contrast_loss"]


class Embed(nn.Module):
    """A linear map of the flattened feature to ``dim_out`` and an L2 normalisation:
    ``(B, ...) -> (B, dim_out)``, rows of unit norm."""

    def __init__(self, dim_in: int, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x.reshape(x.shape[0], -1).float())
        return x / x.pow(2).sum(1, keepdim=True).sqrt()


def contrast_loss(scores: Tensor, num_samples: int, eps: float = 1e-7) -> Tensor:
    """CRD's NCE loss on ``(B, K + 1)`` normalised scores (column 0 the positive):

    ``-(1/B) [sum_i log(P_i0 / (P_i0 + K/N + eps)) + sum_{i,k>0} log((K/N) / (P_ik + K/N + eps))]``
    with ``N = num_samples`` (the uniform noise distribution ``1/N``). A scalar out.
    """
    m = scores.shape[1] - 1
    noise = m / float(num_samples)
    log_d1 = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    log_d0 = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


class CRDLoss(FeatureDistillationLoss):
    """CRD: ``L = ce_weight * CE(z_s, y) + crd_weight * (L_nce(student) + L_nce(teacher))``.

    The pooled features of student and teacher are embedded (:class:`Embed`, ``feat_dim``,
    unit norm; both embeddings trained with the student). Two memories of every training
    sample's embedding (``(N, feat_dim)`` buffers, one per model, momentum ``momentum``) supply
    ``num_negatives`` negatives per sample: sample ``i``'s student embedding is scored against
    the teacher memory rows ``[i, n_1 .. n_K]`` and its teacher embedding against the student
    memory's, ``exp(<v, m> / temperature) / Z`` (``Z`` fixed at the first batch as ``N`` times the
    mean score), and :func:`contrast_loss` turns each into an NCE loss. Then rows ``i`` of the
    memories move to ``normalize(momentum * m_i + (1 - momentum) * v_i)``.

    Needs each sample's dataset index (``needs_index``; every datamodule of the package gives
    it when the module asks) and the training set's size ``N`` (from the datamodule, or
    ``num_samples``). The negatives are drawn uniformly from the other ``N - 1`` samples with
    torch's generator (mdistiller's CIFAR loader draws them from the other classes' samples;
    with 100 balanced classes 1% of uniform negatives share the positive's class). Under DDP
    the memories are updated with the embeddings and indices of every process, so they stay
    identical on all of them, and ``Z`` is the mean over the processes. Defaults: mdistiller's
    (dim 128, 16384 negatives, temperature 0.07, momentum 0.5, weight 0.8).
    Terms: ``loss``, ``ce``, ``crd``.
    """

    student_features = ("pooled_feat",)
    teacher_features = ("pooled_feat",)
    needs_index = True

    def __init__(
        self,
        feat_dim: int = 128,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        ce_weight: float = 1.0,
        crd_weight: float = 0.8,
        num_samples: int | None = None,
    ) -> None:
        super().__init__()
        self.feat_dim = check_count("feat_dim", feat_dim)
        self.num_negatives = check_count("num_negatives", num_negatives)
        self.temperature = check_positive("temperature", temperature)
        momentum = float(momentum)
        if not 0 <= momentum < 1:
            raise InputError(f"momentum must be in [0, 1); got {momentum}.", key="momentum")
        self.momentum = momentum
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.crd_weight = check_weight("crd_weight", crd_weight)
        self.num_samples = None if num_samples is None else int(num_samples)

    def setup_features(
        self, student: Features, teacher: Features, num_samples: int | None = None
    ) -> None:
        n = self.num_samples or num_samples
        if not n or n < 2:
            raise InputError(
                "CRDLoss needs the training set's size for its memory: give "
                "CRDLoss(num_samples=<N>) or use a datamodule with a train_set.",
                key="num_samples",
            )
        self.num_samples = int(n)
        d_s = student["pooled_feat"][0][0].numel()
        d_t = teacher["pooled_feat"][0][0].numel()
        self.embed_s = Embed(d_s, self.feat_dim)
        self.embed_t = Embed(d_t, self.feat_dim)
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        for name in ("memory_s", "memory_t"):
            self.register_buffer(name, torch.rand(n, self.feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z_norm", torch.full((2,), -1.0))

    def _negatives(self, index: Tensor) -> Tensor:
        """``(B, K + 1)`` memory rows: the sample itself, then ``K`` uniform others."""
        n, k = self.num_samples, self.num_negatives
        assert n is not None
        others = torch.randint(0, n - 1, (index.shape[0], k), device=index.device)
        others = others + (others >= index[:, None]).long()
        return torch.cat([index[:, None], others], dim=1)

    def _scores(self, memory: Tensor, rows: Tensor, v: Tensor, slot: int) -> Tensor:
        weight = memory.index_select(0, rows.reshape(-1)).reshape(*rows.shape, -1)
        scores = torch.exp(torch.bmm(weight, v.unsqueeze(2)).squeeze(2) / self.temperature)
        if float(self.z_norm[slot]) < 0:
            z = mean_across_processes(scores.detach().mean()) * self.num_samples
            self.z_norm[slot] = z
        return scores / self.z_norm[slot].clone()

    @torch.no_grad()
    def _update(self, memory: Tensor, index: Tensor, v: Tensor) -> None:
        rows = memory.index_select(0, index) * self.momentum + v * (1 - self.momentum)
        memory.index_copy_(0, index, F.normalize(rows, dim=1))

    def feature_loss(self, features: FeatureBatch) -> tuple[Tensor, dict[str, Tensor]]:
        index = features.index
        if index is None:
            raise InputError(
                "CRDLoss needs each sample's dataset index: use a datamodule of the package "
                "(DistillationModule switches its with_indices on) or yield "
                "cskd_lightning.data.device.SampleBatch batches."
            )
        v_s = self.embed_s(features.student["pooled_feat"][0])
        v_t = self.embed_t(features.teacher["pooled_feat"][0].detach())
        index = index.to(device=v_s.device, dtype=torch.long)
        rows = self._negatives(index)
        out_s = self._scores(self.memory_t, rows, v_s, 0)  # student vs the teacher memory
        out_t = self._scores(self.memory_s, rows, v_t, 1)  # teacher vs the student memory
        term = contrast_loss(out_s, self.num_samples) + contrast_loss(out_t, self.num_samples)
        all_index = gather_no_grad(index)
        self._update(self.memory_s, all_index, gather_no_grad(v_s))
        self._update(self.memory_t, all_index, gather_no_grad(v_t))
        return self.crd_weight * term, {"crd": term}
