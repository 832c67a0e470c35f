"""ReviewKD (Chen et al., CVPR 2021): knowledge review with attention-based fusion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cskd_lightning.errors import InputError
from cskd_lightning.features import Features
from cskd_lightning.losses.base import check_count, check_weight
from cskd_lightning.losses.feature_base import FeatureBatch, FeatureDistillationLoss
from cskd_lightning.losses.feature_functional import hcl_loss

__all__ = ["ABF", "ReviewKDLoss"]


class ABF(nn.Module):
    """Attention-based fusion: a 1x1 conv-BN of the student map to ``mid_channel``, fused (with
    ``fuse``) with the upsampled residual of the level below by a 2-channel sigmoid attention,
    resized to the teacher's side and a 3x3 conv-BN to ``out_channel``. Returns ``(output,
    residual)``."""

    def __init__(self, in_channel: int, mid_channel: int, out_channel: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid_channel),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channel, out_channel, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(out_channel),
        )
        self.att_conv = (
            nn.Sequential(nn.Conv2d(mid_channel * 2, 2, kernel_size=1), nn.Sigmoid())
            if fuse
            else None
        )
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: Tensor, y: Tensor | None, shape: int, out_shape: int
    ) -> tuple[Tensor, Tensor]:
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            assert y is not None
            y = F.interpolate(y, (shape, shape), mode="nearest")
            z = self.att_conv(torch.cat([x, y], dim=1))
            x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        if x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        return self.conv2(x), x


def _as_map(t: Tensor) -> Tensor:
    """``(B, D)`` -> ``(B, D, 1, 1)``; maps stay."""
    return t.reshape(t.shape[0], -1, 1, 1) if t.dim() == 2 else t


class ReviewKDLoss(FeatureDistillationLoss):
    """ReviewKD: ``L = ce_weight * CE + reviewkd_weight * w(epoch) * HCL(ABF(student), teacher)``.

    Student levels: ``feats[1:]`` (the stage outputs) and the pooled feature (as ``1 x 1`` map);
    teacher levels: ``preact_feats[1:]`` (the stage outputs before their last ReLU) and the
    pooled feature. From the deepest level up, an :class:`ABF` per level maps the student level
    to the teacher level's channels and side, fusing the residual of the level below;
    :func:`~cskd_lightning.losses.feature_functional.hcl_loss` compares the outputs with the
    teacher's.
    The ABFs are sized in :meth:`setup_features` from the real shapes (channels and sides of each
    level: mdistiller's per-pair ``IN_CHANNELS``, ``OUT_CHANNELS``, ``SHAPES``, ``OUT_SHAPES``),
    middle width ``min(max_mid_channel, channels of the deepest student level)``. Warm-up
    ``w = min((epoch + 1) / warmup_epochs, 1)`` (1-based epochs, as mdistiller counts them).
    Defaults: mdistiller's CIFAR-100 config (weight 5, warm-up 20). With ``student_preact`` the
    student's levels are ``preact_feats[1:]`` too. Terms: ``loss``, ``ce``, ``reviewkd``
    (unweighted, without the warm-up) and ``reviewkd_warmup``.
    """

    student_features = ("feats", "pooled_feat")
    teacher_features = ("preact_feats", "pooled_feat")

    def __init__(
        self,
        ce_weight: float = 1.0,
        reviewkd_weight: float = 5.0,
        warmup_epochs: int = 20,
        max_mid_channel: int = 512,
        student_preact: bool = False,
    ) -> None:
        super().__init__()
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.reviewkd_weight = check_weight("reviewkd_weight", reviewkd_weight)
        self.warmup_epochs = check_count("warmup_epochs", warmup_epochs, 0, "0: no warm-up")
        self.max_mid_channel = int(max_mid_channel)
        self.student_preact = bool(student_preact)
        if self.student_preact:
            self.student_features = ("preact_feats", "pooled_feat")
        self.shapes: list[int] = []
        self.out_shapes: list[int] = []

    def _levels(self, feats: Features, stage_role: str) -> list[Tensor]:
        return [*feats[stage_role][1:], _as_map(feats["pooled_feat"][0])]

    def setup_features(
        self, student: Features, teacher: Features, num_samples: int | None = None
    ) -> None:
        xs = self._levels(student, self.student_features[0])
        ts = self._levels(teacher, "preact_feats")
        if len(xs) != len(ts):
            raise InputError(
                f"ReviewKD pairs the student's and the teacher's levels one to one, but the "
                f"student has {len(xs)} and the teacher {len(ts)} (stage layers after the "
                "first, plus the pooled feature). Name as many stages for both models (the "
                "features= layer maps)."
            )
        mid = min(self.max_mid_channel, xs[-1].shape[1])
        self.shapes = [int(x.shape[-1]) for x in xs]
        self.out_shapes = [int(t.shape[-1]) for t in ts]
        self.abfs = nn.ModuleList(
            ABF(x.shape[1], mid, t.shape[1], fuse=i < len(xs) - 1)
            for i, (x, t) in enumerate(zip(xs, ts, strict=True))
        )

    def warmup_factor(self) -> float:
        """``min((epoch + 1) / warmup_epochs, 1)`` (1 without warm-up)."""
        if self.warmup_epochs == 0:
            return 1.0
        return min((self.progress.epoch + 1) / self.warmup_epochs, 1.0)

    def feature_loss(self, features: FeatureBatch) -> tuple[Tensor, dict[str, Tensor]]:
        xs = self._levels(features.student, self.student_features[0])
        ts = self._levels(features.teacher, "preact_feats")
        results: list[Tensor] = []
        residual: Tensor | None = None
        for level in reversed(range(len(xs))):  # the deepest (pooled) level first
            out, residual = self.abfs[level](
                xs[level], residual, self.shapes[level], self.out_shapes[level]
            )
            results.insert(0, out)
        term = hcl_loss(results, [t.detach() for t in ts])
        factor = self.warmup_factor()
        warmup = torch.tensor(factor, dtype=term.dtype, device=term.device)
        return self.reviewkd_weight * factor * term, {"reviewkd": term, "reviewkd_warmup": warmup}
