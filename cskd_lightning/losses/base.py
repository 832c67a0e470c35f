"""The contract every distillation loss follows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from cskd_lightning.errors import InputError


@dataclass
class TrainingProgress:
    """Where training is; the module updates it before every training step.

    Losses that schedule something over training (DKD's warm-up, say) read
    ``self.progress`` instead of counting calls themselves.
    """

    epoch: int = 0
    global_step: int = 0
    max_epochs: int | None = None


class DistillationLoss(nn.Module):
    """Base class of the swappable losses.

    Call signature: ``loss(student_logits, teacher_logits, targets) -> dict[str, Tensor]``.

    - ``student_logits``, ``teacher_logits``: ``(B, C)``; for a loss with ``num_views = 2`` a
      tuple ``(weak, strong)`` of ``(B, C)`` tensors each (``teacher_logits`` is ``None`` for a
      loss with ``requires_teacher = False``).
    - ``targets``: ``(B,)`` int64 class indices.
    - The result's ``"loss"`` is the scalar to backpropagate; every other key is a named term or
      a detached diagnostic, logged by :class:`~cskd_lightning.DistillationModule` as
      ``train/<key>``.
    """

    requires_teacher: bool = True
    num_views: int = 1
    batch_level: bool = False
    """True when a term depends on the whole batch (and is gathered across processes)."""

    def __init__(self) -> None:
        super().__init__()
        self.progress = TrainingProgress()

    def set_progress(self, epoch: int, global_step: int, max_epochs: int | None = None) -> None:
        """Record the training progress (called by the module before each training step)."""
        self.progress = TrainingProgress(epoch, global_step, max_epochs)


def as_number(name: str, value: Any) -> float:
    """``value`` as a float, or an :class:`InputError` naming ``name`` (e.g. ``"abc"``)."""
    if isinstance(value, bool):
        raise InputError(f"{name} must be a number; got {value!r}.", key=name)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number; got {value!r}.", key=name) from None


def check_positive(name: str, value: float) -> float:
    """Return ``value`` as float, or raise an :class:`InputError` naming ``name`` if it is not a
    finite number > 0."""
    value = as_number(name, value)
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a positive number; got {value}.", key=name)
    return value


def check_weight(name: str, value: float) -> float:
    """Return ``value`` as float, or raise an :class:`InputError` naming ``name`` if negative or
    not finite. A weight of 0 switches a term off (``ce_weight=0`` is pure distillation).
    """
    value = as_number(name, value)
    if not math.isfinite(value) or value < 0:
        raise InputError(
            f"{name} must be a non-negative number (0 switches it off); got {value}.", key=name
        )
    return value


def check_cswt_range(t_low: float, t_high: float) -> tuple[float, float]:
    """Validate CSWT's ``(t_low, t_high)``: both positive and ``t_low <= t_high``."""
    t_low, t_high = check_positive("t_low", t_low), check_positive("t_high", t_high)
    if t_low > t_high:
        raise InputError(
            f"t_low ({t_low}) must not exceed t_high ({t_high}): the most similar "
            "sample gets t_low, the least similar t_high. Swap the two values.",
            key="t_low",
        )
    return t_low, t_high
