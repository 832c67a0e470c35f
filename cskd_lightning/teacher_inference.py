"""The frozen teacher prepared once for its forward: BatchNorm folded, weights in low precision.

A frozen teacher in eval mode computes ``BN(conv(x, W))`` with fixed statistics, which is one
convolution with folded weights:

``W' = W * gamma / sqrt(var + eps)`` (per output channel), ``b' = beta + (b - mean) * gamma /
sqrt(var + eps)``

so each BatchNorm after a convolution stops being a kernel launch of its own (34 of the 116
launches of ``resnet32x4``'s forward). Under autocast the copy's weights are also stored in
autocast's dtype once: a frozen weight does not enter autocast's cast cache (which keeps only
leaves that require grad), so the plain teacher pays one cast per convolution per step. The
folded logits differ from the plain ones by float rounding (``tests/unit/test_teacher_inference.py``
holds them within 1e-5 relative), so the option is off by default and part of the logit cache's
key.

The folding is ``torch.fx``'s (``torch.fx.experimental.optimization.fuse``): models that
``torch.fx`` cannot trace (data-dependent control flow, such as ``vgg`` and ``ShuffleV2``)
are refused in one line; a BatchNorm that does not follow a convolution (WRN's
pre-activation blocks) stays as it is.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from cskd_lightning.errors import InputError
from cskd_lightning.module_options import apply_channels_last, compile_in_place


def fold_batchnorm(teacher: nn.Module) -> nn.Module:
    """A copy of ``teacher`` in eval mode with every ``Conv -> BatchNorm`` pair folded into one
    convolution (the teacher itself, its mode included, is not changed). Refuses, in one line, a
    model ``torch.fx`` cannot trace."""
    from torch.fx.experimental.optimization import fuse

    try:
        folded = fuse(copy.deepcopy(teacher).eval(), inplace=True)
    except Exception as error:  # torch.fx raises TraceError, TypeError, ... while tracing
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise InputError(
            f"fold_teacher_batchnorm=True cannot fold {type(teacher).__name__}: torch.fx cannot "
            f"trace it ({type(error).__name__}: {first_line}). Set fold_teacher_batchnorm=False.",
            key="fold_teacher_batchnorm",
        ) from None
    return folded.requires_grad_(False).eval()


def check_foldable(teacher: nn.Module | None, loss: nn.Module) -> nn.Module | None:
    """Refuse ``fold_teacher_batchnorm=True`` in one line where it cannot work: a loss that
    reads the teacher's features (through hooks on its layers, which a folded copy has not) or
    a teacher ``torch.fx`` cannot trace. Returns the :func:`fold_batchnorm` copy it made."""
    from cskd_lightning.losses.feature_base import FeatureDistillationLoss

    if isinstance(loss, FeatureDistillationLoss):
        raise InputError(
            f"{type(loss).__name__} reads the teacher's features through hooks on its layers, "
            "which a folded copy does not have. Set fold_teacher_batchnorm=False.",
            key="fold_teacher_batchnorm",
        )
    return None if teacher is None else fold_batchnorm(teacher)


def placed(folded: nn.Module, device: torch.device, dtype: torch.dtype | None) -> nn.Module:
    """A copy of the ``folded`` teacher on ``device``, the weights and biases of its
    convolutions and linear layers in ``dtype`` (autocast's dtype, the one autocast would cast
    them to at every step; ``None``: kept as they are). Any BatchNorm left stays float32."""
    model = copy.deepcopy(folded).to(device)
    if dtype is not None:
        for module in model.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                module.to(dtype)
    return model


class FoldedTeacher:
    """What ``DistillationModule(fold_teacher_batchnorm=True)`` runs as its teacher: the folded
    teacher (traced once, by the check) :func:`placed` on the device and in the autocast dtype
    in force, at the first forward and again when either changes; folded again after
    :meth:`reset` (new weights loaded). Not an ``nn.Module``, so no copy is saved or trained."""

    def __init__(self, teacher: nn.Module | None, loss: nn.Module) -> None:
        self.folded = check_foldable(teacher, loss)
        self.key: tuple[torch.device, torch.dtype | None] | None = None
        self.model: nn.Module | None = None

    def reset(self) -> None:
        self.folded = self.key = self.model = None

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
            if self.folded is None:
                self.folded = fold_batchnorm(teacher)
            model = placed(self.folded, *key)
            if channels_last:
                apply_channels_last(model)
            compile_in_place(compile_mode, model)
            self.key, self.model = key, model
        return self.model
