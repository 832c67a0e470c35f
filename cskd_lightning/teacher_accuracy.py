"""The frozen teacher's accuracy, as a callback: ``val/teacher_acc`` and ``test/teacher_acc``.

:class:`~cskd_lightning.DistillationModule` adds :class:`TeacherAccuracy` to the trainer (its
``configure_callbacks``) whenever it has a teacher. The teacher is frozen, so its accuracy on
the validation split is measured once, at the first validation after the sanity check, and
logged at every validation's end; a teacher that looks untrained is warned about then. The
measured value is the callback's state, saved in checkpoints: a resumed run logs it without
running the teacher over the validation split again. With a teacher-logit cache attached
(``module.logit_cache``) the test loop also logs ``test/teacher_acc`` (the cache's test logits
scored against the labels).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["UNTRAINED_MARGIN", "TeacherAccuracy", "untrained_threshold", "warn_if_untrained"]

UNTRAINED_MARGIN = 0.05
"""A teacher whose validation accuracy is below ``chance + max(UNTRAINED_MARGIN, chance)`` (chance
``= 1 / num_classes``: 20 % for 10 classes, 6 % for 100) looks untrained."""


def untrained_threshold(num_classes: int) -> float:
    """The validation accuracy below which a teacher looks untrained:
    ``1/C + max(0.05, 1/C)`` for ``C`` classes."""
    chance = 1.0 / num_classes
    return chance + max(UNTRAINED_MARGIN, chance)


def warn_if_untrained(teacher_acc: float, num_classes: int) -> bool:
    """Warn (once per call, on rank 0) when the teacher's accuracy is near chance: a student
    distilled from a random teacher learns from noise, silently. Returns whether it warned."""
    if teacher_acc >= untrained_threshold(num_classes):
        return False
    from lightning.pytorch.utilities import rank_zero_warn

    rank_zero_warn(
        f"The teacher's accuracy on the validation split is {100 * teacher_acc:.1f}% "
        f"(chance: {100 / num_classes:.1f}% for {num_classes} classes): it looks untrained, "
        "so the student is distilled from noise. Load its weights first (e.g. "
        "cskd_lightning.models.Pretrained(name, path, num_classes, in_channels), or "
        "load_weights(model, path)) or train it (cskd_lightning.train_teacher(model, "
        "datamodule)).",
        category=UserWarning,
    )
    return True


class TeacherAccuracy(L.Callback):
    """Log the frozen teacher's top-1 accuracy: ``val/teacher_acc`` (measured once, logged every
    validation) and, with a teacher-logit cache, ``test/teacher_acc``.

    The teacher's logits come from ``pl_module.teacher_logits(batch, [x])`` (``x``: the batch's
    first view), the module's own path (a cache serves or stores them), run under the trainer's
    precision like the module's evaluation step. The accuracy is micro-averaged over the split,
    gathered across processes by torchmetrics.
    """

    def __init__(self) -> None:
        self.val_acc: float | None = None
        """The measured validation accuracy (``None``: not measured yet)."""
        self._metrics: dict[str, MulticlassAccuracy] = {}

    # --- state: the measured value survives a resume ----------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"val_acc": self.val_acc}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.val_acc = state_dict.get("val_acc")

    # --- measuring ---------------------------------------------------------------------------
    def _start(self, stage: str, module: Any) -> None:
        """A fresh accuracy for ``stage`` on the module's device (on every process alike, so
        that the gathering in :meth:`_compute` meets all of them)."""
        metric = MulticlassAccuracy(module.num_classes, average="micro")
        self._metrics[stage] = metric.to(module.device)

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        """Score the teacher's logits of ``batch`` (the test loop's too: the same hook)."""
        stage = "test" if trainer.testing else "val"
        metric = self._metrics.get(stage)
        if metric is None:
            return
        x = batch[0]
        if isinstance(x, (tuple, list)):
            x = x[0]
        context = getattr(trainer.precision_plugin, f"{stage}_step_context")
        with context():
            logits = pl_module.teacher_logits(batch, [x])[0]  # type: ignore[operator]
        metric.update(logits, batch[1])

    on_test_batch_end = on_validation_batch_end

    def _compute(self, stage: str) -> float | None:
        metric = self._metrics.pop(stage, None)
        if metric is None or metric.update_count == 0:  # not measured, or no batch ran
            return None
        return float(metric.compute())

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.val_acc is None and not trainer.sanity_checking:
            self._start("val", pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.val_acc is None:
            self.val_acc = self._compute("val")
            if self.val_acc is None:
                return
            warn_if_untrained(self.val_acc, pl_module.num_classes)  # type: ignore[arg-type]
        pl_module.log("val/teacher_acc", self.val_acc, sync_dist=True)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(pl_module, "logit_cache", None) is not None:
            self._start("test", pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = self._compute("test")
        if value is not None:
            pl_module.log("test/teacher_acc", value, sync_dist=True)
