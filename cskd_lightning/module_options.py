"""The arguments of :class:`~cskd_lightning.DistillationModule`, checked: the optimizer and
scheduler types, the class count, ``channels_last`` and ``compile_models``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from cskd_lightning.errors import InputError

# The same types as Lightning's ``OptimizerCallable`` / ``LRSchedulerCallable``, written here
# because importing ``lightning.pytorch.cli`` for them would import jsonargparse (the ``cli``
# extra) with the library. LightningCLI / jsonargparse accept a ``class_path`` for them
# (``--model.scheduler=CosineAnnealingLR --model.scheduler.T_max=20``), and a Hydra
# ``_partial_`` or ``functools.partial`` is such a callable too.
OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]
LRSchedulerCallable = Callable[
    [torch.optim.Optimizer],
    torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau,
]
OptimizerFactory = OptimizerCallable
SchedulerFactory = LRSchedulerCallable

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD, lr 0.05, momentum 0.9, weight decay 5e-4 (the CIFAR KD protocol), in torch's
    multi-tensor form (``foreach=True``: a few ops for all the parameters instead of a few per
    parameter; torch's default on CUDA, here on every device)."""
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4, foreach=True)


def logits_of(output: Tensor | tuple | list) -> Tensor:
    """Models may return logits or a ``(logits, features)`` tuple; return the logits."""
    return output[0] if isinstance(output, (tuple, list)) else output


def infer_num_classes(model: nn.Module) -> int | None:
    """The class count of a classifier: ``model.num_classes`` or its last Linear's outputs."""
    if isinstance(getattr(model, "num_classes", None), int):
        return model.num_classes
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def resolve_num_classes(
    student: nn.Module, teacher: nn.Module | None, num_classes: int | None
) -> int:
    """``num_classes``, else the student's; refused when the teacher's differs."""
    student_classes = num_classes or infer_num_classes(student)
    if student_classes is None:
        raise InputError(
            "Could not infer the class count from the student (no nn.Linear head): "
            "pass num_classes=... to DistillationModule.",
            key="num_classes",
        )
    teacher_classes = infer_num_classes(teacher) if teacher is not None else None
    if teacher_classes is not None and teacher_classes != student_classes:
        raise InputError(
            f"Teacher predicts {teacher_classes} classes but the student {student_classes}. "
            "Build both models with the data's num_classes."
        )
    return int(student_classes)


def check_channels_last(value: bool | str) -> bool | str:
    """``channels_last`` as ``True``, ``False`` or ``"auto"``."""
    if isinstance(value, str) and value != "auto":
        raise InputError(
            f"channels_last must be true, false or auto (on with a GPU); got {value!r}.",
            key="channels_last",
        )
    return "auto" if value == "auto" else bool(value)


def compile_mode(value: bool | str | None) -> str | None:
    """``compile_models``' value as a ``torch.compile`` mode (``None``: eager)."""
    if value is None or value is False or value in ("false", "False", "none", "None"):
        return None
    if value is True or value in ("true", "True"):
        return "default"
    if value in COMPILE_MODES:
        return str(value)
    raise InputError(
        f"compile_models must be true, false or a torch.compile mode ({', '.join(COMPILE_MODES)})"
        f"; got {value!r}.",
        key="compile_models",
    )


def apply_channels_last(*models: nn.Module | None) -> None:
    """Put the weights of ``models`` in ``torch.channels_last`` format (``None``s skipped)."""
    for model in models:
        if model is not None:
            model.to(memory_format=torch.channels_last)


def format_input(x: Any, channels_last: bool | str) -> Any:
    """``x`` in channels-last format if ``channels_last is True`` and 4-D (a no-op if it
    already is)."""
    if channels_last is True and isinstance(x, Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def compile_in_place(mode: str | None, *models: nn.Module | None) -> None:
    """``nn.Module.compile`` each of ``models`` with static shapes (``mode=None``: eager; the
    ``state_dict`` keys stay the same)."""
    if mode is None:
        return
    for model in models:
        if model is not None:
            model.compile(mode=None if mode == "default" else mode, dynamic=False)
