"""What every two-view loss does first: split the views, CE on both, gather for the batch terms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from torch import Tensor

from cskd_lightning.errors import InputError
from cskd_lightning.losses.base import DistillationLoss, check_weight
from cskd_lightning.losses.distributed import gather_batch
from cskd_lightning.losses.functional import cross_entropy


def split_views(logits: Sequence[Tensor], owner: str, role: str) -> tuple[Tensor, Tensor]:
    """``(weak, strong)`` from a two-view loss's input, or a clear error.

    ``logits`` is a ``(weak, strong)`` pair of ``(B, C)`` tensors (what
    :meth:`~cskd_lightning.losses.DistillationLoss.forward_views` hands a two-view loss). The
    check is on the count and the shapes: a single ``(B, C)`` tensor has ``B`` rows, not two
    ``(B, C)`` views, so it fails one or the other.
    """
    if len(logits) != 2 or any(view.dim() != 2 for view in logits):
        raise InputError(
            f"{owner} is a two-view loss: {role} must be a (weak, strong) pair of (B, C) logits. "
            "Train with a datamodule in two-view mode, two_view=True (the module then passes "
            "both views).",
            key="two_view",
        )
    weak, strong = logits
    if weak.shape != strong.shape:
        raise InputError(
            f"{owner}: the weak and strong {role} differ in shape: "
            f"{tuple(weak.shape)} and {tuple(strong.shape)}."
        )
    return weak, strong


class TwoViews(NamedTuple):
    """Both views' logits, ``(B, C)`` each (gathered across processes when asked), and CE."""

    student_weak: Tensor
    student_strong: Tensor
    teacher_weak: Tensor
    teacher_strong: Tensor
    ce_weak: Tensor
    ce_strong: Tensor


class TwoViewLoss(DistillationLoss):
    """Base of the losses that see a weak and a strong view of every image."""

    num_views = 2
    batch_level = True
    gather: bool = True

    def set_weights(
        self, ce_weight: float, kd_weight: float, weak_weight: float, gather: bool
    ) -> None:
        """Check and set the weights both two-view losses take, and ``gather``."""
        self.ce_weight = check_weight("ce_weight", ce_weight)
        self.kd_weight = check_weight("kd_weight", kd_weight)
        self.weak_weight = check_weight("weak_weight", weak_weight)
        self.gather = bool(gather)

    def prepare_views(
        self,
        student_logits: Sequence[Tensor],
        teacher_logits: Sequence[Tensor],
        targets: Tensor,
    ) -> TwoViews:
        """Split both inputs into views, take CE on each local view, then gather if ``gather``."""
        name = type(self).__name__
        sw, ss = split_views(student_logits, name, "student_logits")
        tw, ts = split_views(teacher_logits, name, "teacher_logits")
        ce_weak, ce_strong = cross_entropy(sw, targets), cross_entropy(ss, targets)
        if self.gather:
            sw, ss, tw, ts = (gather_batch(z, self.gather_same_size) for z in (sw, ss, tw, ts))
        return TwoViews(sw, ss, tw, ts, ce_weak, ce_strong)

    def forward(
        self,
        student_logits: Sequence[Tensor],
        teacher_logits: Sequence[Tensor],
        targets: Tensor,
    ) -> dict[str, Tensor]:
        """The terms of :meth:`view_terms` on :meth:`prepare_views` of the ``(weak, strong)``
        pairs of ``(B, C)`` logits."""
        return self.view_terms(self.prepare_views(student_logits, teacher_logits, targets))

    def view_terms(self, views: TwoViews) -> dict[str, Tensor]:
        """The loss's terms (``"loss"`` and named terms) from both views' logits and CE."""
        raise NotImplementedError
