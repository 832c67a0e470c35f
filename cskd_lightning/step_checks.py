"""What :class:`~cskd_lightning.DistillationModule` keeps per training epoch: the loss terms'
sums (logged once, at the epoch's end) and the input checks (labels in range, finite loss).

On the CPU every step is checked at once. On an accelerator a check read at every step stalls
the device (a host sync), so after an epoch's first step the labels' range and the loss's sum
stay on the device and are read once, at the epoch's last training step (:meth:`InputChecks.
read_deferred`); an error then names the epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from cskd_lightning.errors import InputError, NonFiniteLossError

__all__ = ["EpochTerms", "InputChecks"]


class EpochTerms:
    """The sample-weighted sum of every loss term over a training epoch, kept on the device.

    Logging every term every step through ``self.log`` costs more than a small model's step; the
    running sum of all the terms (stacked into one ``(K,)`` tensor) costs two tensor ops per
    step and no host sync.
    """

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()
        self.total: Tensor | None = None
        self.by_name: dict[str, Tensor] = {}
        self.count = 0

    def add(self, terms: Mapping[str, Tensor], batch_size: int) -> None:
        """Add a step's 0-d ``terms``, each weighted by ``batch_size``."""
        names = tuple(terms)
        self.count += batch_size
        with torch.no_grad():
            values = [v if v.dim() == 0 else v.reshape(()) for v in terms.values()]
            step = torch.stack(values).float()  # (K,)
            if self.total is not None and names == self.names:
                self.total = torch.add(self.total, step, alpha=batch_size)  # one fused kernel
                return
            step = step * batch_size
        if self.total is None:
            self.names, self.total = names, step
        else:  # the terms changed within the epoch: sum them by name from now on
            sums = self.sums()
            self.names, self.total = (), None
            for name, value in zip(names, step, strict=True):
                sums[name] = sums[name] + value if name in sums else value
            self.by_name = sums

    def sums(self) -> dict[str, Tensor]:
        """The epoch's sample-weighted sum of every term so far, by name."""
        sums = dict(self.by_name)
        if self.total is not None:
            for name, value in zip(self.names, self.total, strict=True):
                sums[name] = sums[name] + value if name in sums else value
        return sums

    def means(self) -> dict[str, Tensor]:
        """Each term's sample-weighted mean over the epoch so far."""
        return {name: total / max(self.count, 1) for name, total in self.sums().items()}


class InputChecks:
    """The labels' range and the loss's finiteness, checked at once or deferred (see the module
    docstring). ``enabled=False`` checks nothing; ``deferred`` is set by the training step."""

    def __init__(self, num_classes: int, enabled: bool = True) -> None:
        self.num_classes = num_classes
        self.enabled = enabled
        self.deferred = False
        self.label_range: tuple[Tensor, Tensor] | None = None

    def targets(self, y: Tensor) -> None:
        """Check that the labels ``y`` ``(B,)`` lie in ``[0, num_classes)``."""
        if not self.enabled or y.numel() == 0:
            return
        if self.deferred:  # the range stays on the device until the epoch's check
            low, high = torch.aminmax(y)
            if self.label_range is not None:
                low = torch.minimum(low, self.label_range[0])
                high = torch.maximum(high, self.label_range[1])
            self.label_range = (low, high)
            return
        if not bool(((y < 0) | (y >= self.num_classes)).any()):  # one host sync
            return
        self.raise_label_range(int(y.min()), int(y.max()))

    def raise_label_range(self, low: int, high: int) -> None:
        raise InputError(
            f"Labels out of range: found labels in [{low}, {high}] but the models predict "
            f"{self.num_classes} classes (labels must be in [0, {self.num_classes - 1}]). "
            "Check the dataset's labels or the models' num_classes."
        )

    def finite(self, terms: Mapping[str, Tensor], global_step: int, epoch: int) -> None:
        """Check that ``terms["loss"]`` is finite (deferred: the epoch's sum of the loss turns
        non-finite with it, read at the epoch's check, so the step adds no op)."""
        if not self.enabled or self.deferred:
            return
        if bool(torch.isfinite(terms["loss"]).all()):
            return
        values = {k: float(v.detach()) for k, v in terms.items() if v.numel() == 1}
        raise_non_finite(f"at global step {global_step}", epoch, values)

    def read_deferred(self, terms: EpochTerms, global_step: int, epoch: int) -> None:
        """The epoch's deferred checks: the labels' range and the loss's sum (one host read)."""
        label_range, self.label_range = self.label_range, None
        if label_range is not None:
            low, high = torch.stack(label_range).tolist()
            if low < 0 or high >= self.num_classes:
                self.raise_label_range(low, high)
        totals = terms.sums()
        if not self.enabled or "loss" not in totals:
            return
        names = list(totals)
        sums = torch.stack([totals[k] for k in names]).tolist()
        if not math.isfinite(sums[names.index("loss")]):
            count = max(terms.count, 1)
            where = f"in one of the training steps up to global step {global_step}"
            raise_non_finite(where, epoch, {k: v / count for k, v in zip(names, sums, strict=True)})


def raise_non_finite(where: str, epoch: int, values: Mapping[str, float]) -> None:
    """Raise a :class:`NonFiniteLossError` naming where, the epoch and the non-finite terms."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    raise NonFiniteLossError(
        f"Non-finite loss {where} (epoch {epoch}): "
        + ", ".join(f"{k}={v}" for k, v in bad.items())
        + ". Lower the learning rate, check the inputs for NaN/inf, or use 32-bit precision."
    )
