"""The frozen teacher prepared once for its forward: BatchNorm folded, weights in low precision.

A frozen teacher in eval mode computes ``BN(conv(x, W))`` with fixed statistics, which is one
convolution with folded weights:

``W' = W * gamma / sqrt(var + eps)`` (per output channel), ``b' = beta + (b - mean) * gamma /
sqrt(var + eps)``

so each BatchNorm after a convolution stops being a kernel launch of its own (34 of the 116
launches of ``resnet32x4``'s forward). Under autocast the copy's weights are also stored in
autocast's dtype once: a frozen weight does not enter autocast's cast cache (which keeps only
leaves that require grad), so the plain teacher pays one cast per convolution per step. The
folded logits differ from the plain ones by float rounding (about 3e-7 of their size in
float32), so the option is off by default and part of the teacher-logit cache's key.

The folding is ``torch.fx``'s (``torch.fx.experimental.optimization.fuse``): models that
``torch.fx`` cannot trace (data-dependent control flow, such as ``vgg`` and ``ShuffleV2``)
are refused in one line; a BatchNorm that does not follow a convolution (WRN's
pre-activation blocks) stays as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from cskd_lightning.errors import InputError
from cskd_lightning.module_options import apply_channels_last, compile_in_place


def fold_batchnorm(teacher: nn.Module) -> nn.Module:
    """A copy of the eval-mode ``teacher`` with every ``Conv -> BatchNorm`` pair folded into one
    convolution (the teacher is not changed). Refuses, in one line, a model ``torch.fx`` cannot
    trace."""
    from torch.fx.experimental.optimization import fuse

    try:
        folded = fuse(teacher.eval(), inplace=False)
    except Exception as error:  # torch.fx raises TraceError, TypeError, ... while tracing
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise InputError(
            f"fold_teacher_batchnorm=True cannot fold {type(teacher).__name__}: torch.fx cannot "
            f"trace it ({type(error).__name__}: {first_line}). Set fold_teacher_batchnorm=False.",
            key="fold_teacher_batchnorm",
        ) from None
    return folded.requires_grad_(False).eval()


def check_foldable(teacher: nn.Module | None, loss: nn.Module) -> None:
    """Refuse ``fold_teacher_batchnorm=True`` in one line where it cannot work: a loss that
    reads the teacher's features (through hooks on its layers, which a folded copy has not) or
    a teacher ``torch.fx`` cannot trace (:func:`fold_batchnorm` is tried once)."""
    from cskd_lightning.losses.feature_base import FeatureDistillationLoss

    if isinstance(loss, FeatureDistillationLoss):
        raise InputError(
            f"{type(loss).__name__} reads the teacher's features through hooks on its layers, "
            "which a folded copy does not have. Set fold_teacher_batchnorm=False.",
            key="fold_teacher_batchnorm",
        )
    if teacher is not None:
        fold_batchnorm(teacher)


def inference_teacher(
    teacher: nn.Module, device: torch.device, dtype: torch.dtype | None
) -> nn.Module:
    """:func:`fold_batchnorm` of ``teacher`` on ``device``, the weights and biases of its
    convolutions and linear layers in ``dtype`` (autocast's dtype, the one autocast would cast
    them to at every step; ``None``: kept as they are). Any BatchNorm left stays float32."""
    folded = fold_batchnorm(teacher).to(device)
    if dtype is not None:
        for module in folded.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                module.to(dtype)
    return folded


class FoldedTeacher:
    """What ``DistillationModule(fold_teacher_batchnorm=True)`` runs as its teacher: the
    :func:`inference_teacher` of ``teacher`` for the device and the autocast dtype in force,
    made at the first forward and again when either changes or after :meth:`reset` (new
    weights loaded). Not an ``nn.Module``, so the copy is neither saved nor trained."""

    def __init__(self, teacher: nn.Module | None, loss: nn.Module) -> None:
        check_foldable(teacher, loss)
        self.key: tuple[torch.device, torch.dtype | None] | None = None
        self.model: nn.Module | None = None

    def reset(self) -> None:
        self.key = self.model = None

    def get(
        self,
        teacher: nn.Module,
        device: torch.device,
        channels_last: bool,
        compile_mode: str | None,
    ) -> nn.Module:
        """The folded copy for ``device`` (channels-last and compiled like the teacher)."""
        autocast = torch.is_autocast_enabled(device.type)
        key = (device, torch.get_autocast_dtype(device.type) if autocast else None)
        if self.model is None or key != self.key:
            model = inference_teacher(teacher, *key)
            if channels_last:
                apply_channels_last(model)
            compile_in_place(compile_mode, model)
            self.key, self.model = key, model
        return self.model
