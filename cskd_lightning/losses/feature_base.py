"""The contract of a feature-distillation loss: which features it needs, a setup step that
sizes its trainable modules from the real feature shapes, and a forward that gets them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from cskd_lightning.errors import InputError
from cskd_lightning.features import Features
from cskd_lightning.losses.base import DistillationLoss
from cskd_lightning.losses.functional import cross_entropy

__all__ = ["FeatureBatch", "FeatureDistillationLoss"]


@dataclass
class FeatureBatch:
    """What a feature loss gets beside the logits.

    ``student`` / ``teacher``: ``role -> [tensor per layer]`` (see :mod:`cskd_lightning.features`;
    the teacher's carry no gradient). ``index``: the samples' dataset indices ``(B,)`` int64, for
    a loss with ``needs_index`` (else ``None``).
    """

    student: Features
    teacher: Features
    index: Tensor | None = None


class FeatureDistillationLoss(DistillationLoss):
    """Base class of the losses that distil intermediate features.

    A subclass declares the feature roles it reads (:attr:`student_features`,
    :attr:`teacher_features`; mdistiller's names ``feats``, ``preact_feats``, ``pooled_feat``),
    sets :attr:`needs_index` if it needs each sample's dataset index, builds its trainable
    modules in :meth:`setup_features` and implements :meth:`feature_loss` (its weighted term
    from a :class:`FeatureBatch`; :meth:`forward` adds the CE), or ``forward(student_logits,
    teacher_logits, targets, features)`` itself; it returns the terms like every loss
    (``"loss"`` and named terms).

    :class:`~cskd_lightning.DistillationModule` hooks the layers a pair's config names for
    each role, calls :meth:`prepare` with the features of one batch before the optimizer is
    built (so the loss's parameters are trained with the student and saved in its checkpoints;
    the student artifact holds the student only), and passes the features of every training
    batch through :meth:`forward_views`. In a training loop of your own, call
    ``loss.prepare(student_features, teacher_features, num_samples)`` once before building the
    optimizer over ``student.parameters()`` and ``loss.parameters()``.

    Feature losses take one view per image (``num_views = 1``).
    """

    student_features: tuple[str, ...] = ()
    teacher_features: tuple[str, ...] = ()
    needs_index: bool = False
    ce_weight: float = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.is_prepared = False

    def setup_features(
        self, student: Features, teacher: Features, num_samples: int | None = None
    ) -> None:
        """Build the trainable modules from one batch's features (shapes ``(B, C, H, W)`` or
        ``(B, D)``) and the training set's size. The default builds nothing."""

    def prepare(self, student: Features, teacher: Features, num_samples: int | None = None) -> None:
        """:meth:`setup_features` once (later calls do nothing)."""
        if not self.is_prepared:
            self.setup_features(student, teacher, num_samples)
            self.is_prepared = True

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        targets: Tensor,
        features: FeatureBatch,
    ) -> dict[str, Tensor]:
        """``ce_weight * CE(z_s, y) + weighted``, ``(weighted, terms)`` from
        :meth:`feature_loss`: ``{"loss", "ce", **terms}``. ``student_logits`` ``(B, C)``;
        ``teacher_logits`` unused by the feature losses of the package."""
        ce = cross_entropy(student_logits, targets)
        weighted, terms = self.feature_loss(features)
        return {"loss": self.ce_weight * ce + weighted, "ce": ce, **terms}

    def feature_loss(self, features: FeatureBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted feature loss (added to ``ce_weight`` times CE) and the named terms to
        log, from one batch's ``features``. A subclass that overrides :meth:`forward` instead
        need not implement it."""
        raise NotImplementedError

    def extra_parameter_count(self) -> int:
        """The loss's own trainable parameters and buffers (what it adds to the student)."""
        return sum(p.numel() for p in self.parameters()) + sum(b.numel() for b in self.buffers())

    def forward_views(  # type: ignore[override]
        self,
        student_views: Sequence[Tensor],
        teacher_views: Sequence[Tensor] | None,
        targets: Tensor,
        features: FeatureBatch | None = None,
    ) -> dict[str, Tensor]:
        """The loss on one view: ``forward(student_views[0], teacher_views[0], targets,
        features)``."""
        if features is None:
            raise InputError(
                f"{type(self).__name__} distils intermediate features: call it with "
                "features=FeatureBatch(...) (DistillationModule does, with the layers of its "
                "features= argument)."
            )
        if len(student_views) != 1 or teacher_views is None or len(teacher_views) != 1:
            raise InputError(
                f"{type(self).__name__} takes one view per image and the teacher's logits."
            )
        if not self.is_prepared:
            raise InputError(
                f"{type(self).__name__} was not prepared: call loss.prepare(student_features, "
                "teacher_features, num_samples) before training (DistillationModule does it in "
                "its setup hook)."
            )
        return self(student_views[0], teacher_views[0], targets, features)
