"""The contract every distillation loss follows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from cskd_lightning.errors import InputError
from cskd_lightning.losses.distributed import gather_batch


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

    **Two ways to call a loss**, both returning ``dict[str, Tensor]``:

    - ``loss(student_logits, teacher_logits, targets)`` (``forward``), the call for your own
      training step. For a loss with ``num_views = 1`` the logits are ``(B, C)`` tensors, so
      ``CSKDLoss()(student(x), teacher(x), y)`` works as is; for a loss with ``num_views = 2``
      they are ``(weak, strong)`` pairs of ``(B, C)`` tensors (two augmented views of the same
      images, same order).
    - ``loss.forward_views(student_views, teacher_views, targets)``, the one entry point of
      :class:`~cskd_lightning.DistillationModule`, the same for every loss: sequences with one
      ``(B, C)`` tensor per view, exactly ``num_views`` of them. It checks the count and calls
      ``forward`` (through ``__call__``, so forward hooks see the call) with the only view's
      tensors when ``num_views == 1`` and with tuples of the views otherwise.

    A subclass implements ``forward`` only, in the form its ``num_views`` declares; it never
    has to look at what type of input it got.

    - ``teacher_logits`` is ``None`` for a loss with ``requires_teacher = False``.
    - ``targets``: ``(B,)`` int64 class indices.
    - The result's ``"loss"`` is the scalar to backpropagate; every other key is a named term or
      a detached diagnostic, logged by :class:`~cskd_lightning.DistillationModule` as
      ``train/<key>``.
    """

    requires_teacher: bool = True
    num_views: int = 1
    batch_level: bool = False
    """True when a term depends on the whole batch (and is gathered across processes)."""
    gather_same_size: bool = True
    """Gathering assumes every process's batch has this process's size (no host sync; what
    Lightning's distributed samplers and the device pipeline give). Set ``False`` for unequal
    per-process batches: each gather then exchanges the sizes (a host sync per step)."""

    def __init__(self) -> None:
        super().__init__()
        self.progress = TrainingProgress()

    def set_progress(self, epoch: int, global_step: int, max_epochs: int | None = None) -> None:
        """Record the training progress (called by the module before each training step)."""
        self.progress = TrainingProgress(epoch, global_step, max_epochs)

    def gather_pair(self, student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
        """Both ``(B, C)`` logits of every process's batch (``(N*B, C)``; the student's with
        gradients) when the loss has ``gather`` set, else as they are."""
        if not getattr(self, "gather", False):
            return student_logits, teacher_logits
        same = self.gather_same_size
        return gather_batch(student_logits, same), gather_batch(teacher_logits, same)

    def forward_views(
        self,
        student_views: Sequence[Tensor],
        teacher_views: Sequence[Tensor] | None,
        targets: Tensor,
    ) -> dict[str, Tensor]:
        """The loss on ``num_views`` views: ``student_views[v]``, ``teacher_views[v]`` ``(B, C)``.

        ``teacher_views`` is ``None`` for a loss without a teacher. One view goes to ``forward``
        as tensors, several as tuples (see the class docstring).
        """
        for role, views in (("student", student_views), ("teacher", teacher_views)):
            if views is not None and len(views) != self.num_views:
                raise InputError(
                    f"{type(self).__name__} takes {self.num_views} view(s) per image; got "
                    f"{len(views)} {role} view(s). Two-view losses need a datamodule in "
                    "two-view mode (two_view=True).",
                    key="two_view",
                )
        if self.num_views == 1:
            teacher = None if teacher_views is None else teacher_views[0]
            return self(student_views[0], teacher, targets)
        teacher = None if teacher_views is None else tuple(teacher_views)
        return self(tuple(student_views), teacher, targets)


def weighted_sum(*terms: tuple[float, Tensor]) -> Tensor:
    """``sum_k w_k * x_k`` over ``(w_k, x_k)`` pairs of a float and a 0-d tensor, without the
    product where ``w_k == 1``: the same number, and two kernel launches fewer per unit weight
    on an accelerator (the product and its backward)."""
    total = None
    for weight, value in terms:
        term = value if weight == 1.0 else weight * value
        total = term if total is None else total + term
    assert total is not None, "weighted_sum needs at least one term"
    return total


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


def check_count(name: str, value: Any, minimum: int = 1, hint: str = "") -> int:
    """Return ``value`` as an int, or raise an :class:`InputError` naming ``name`` if it is not a
    whole number ``>= minimum`` (``hint`` follows the bound in the message, e.g. "0: none")."""
    number = as_number(name, value)
    if not math.isfinite(number) or int(number) != number or number < minimum:
        bound = f" >= {minimum}" + (f" ({hint})" if hint else "")
        raise InputError(f"{name} must be a whole number{bound}; got {value}.", key=name)
    return int(number)


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
