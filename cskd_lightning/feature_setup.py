"""The module's side of a feature-distillation loss: its hooks, and sizing it before training.

:class:`~cskd_lightning.DistillationModule` reads the layers a
:class:`~cskd_lightning.losses.FeatureDistillationLoss` asks for through forward hooks
(:class:`~cskd_lightning.features.FeatureHooks`) that exist only during the training step's
forwards. Before the optimizer is built, one batch runs through both models (eval mode, no
gradient) and :meth:`~cskd_lightning.losses.FeatureDistillationLoss.prepare` sizes the loss's
trainable modules from the real shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from cskd_lightning.errors import InputError
from cskd_lightning.features import FeatureHooks, check_feature_map
from cskd_lightning.losses.feature_base import FeatureDistillationLoss

__all__ = ["example_input", "make_feature_hooks", "prepare_from_batch", "train_size"]


def make_feature_hooks(
    loss: nn.Module,
    student: nn.Module,
    teacher: nn.Module | None,
    features: Mapping[str, Any] | None,
    compiled: bool,
) -> tuple[FeatureHooks, FeatureHooks] | None:
    """The student's and teacher's :class:`FeatureHooks` for a feature ``loss`` (``features``:
    ``{"student": {role: [layer, ...]}, "teacher": {...}}``), else ``None``."""
    if not isinstance(loss, FeatureDistillationLoss):
        return None
    if getattr(loss, "num_views", 1) != 1:
        raise InputError(f"{type(loss).__name__}: feature losses take one view.")
    if compiled:
        raise InputError(
            f"{type(loss).__name__} reads features through forward hooks, which "
            "torch.compile would recompile around at every step: use "
            "DistillationModule(compile_models=False) with a feature method.",
            key="compile_models",
        )
    features = features or {}
    assert teacher is not None
    return (
        FeatureHooks(
            student,
            check_feature_map(features.get("student"), loss.student_features, "student"),
            "student",
        ),
        FeatureHooks(
            teacher,
            check_feature_map(features.get("teacher"), loss.teacher_features, "teacher"),
            "teacher",
        ),
    )


def train_size(datamodule: Any) -> int | None:
    """The training set's sample count, where the datamodule tells it (else None)."""
    train_set = getattr(datamodule, "train_set", None)
    if train_set is not None:
        return len(train_set)
    split = getattr(datamodule, "split_tensors", None)
    if callable(split):
        tensors = split("train")
        return None if tensors is None else int(tensors[0].shape[0])
    return None


def example_input(loss: nn.Module, datamodule: Any, given: Tensor | None) -> Tensor:
    """Two images of the datamodule's first validation (else training) batch, or ``given``
    (the module's ``example_input_array``) when set."""
    if given is not None:
        return given
    loader = None
    for name in ("val_dataloader", "train_dataloader"):
        if datamodule is not None and hasattr(datamodule, name):
            loader = getattr(datamodule, name)()
            break
    if loader is None:
        raise InputError(
            f"{type(loss).__name__} sizes its modules from one batch before training, "
            "but the Trainer has no datamodule: pass datamodule= to fit, or set the module's "
            "example_input_array to a batch of inputs."
        )
    x = next(iter(loader))[0]
    if isinstance(x, (tuple, list)):
        x = x[0]
    return x[:2]


def prepare_from_batch(
    loss: FeatureDistillationLoss,
    hooks: tuple[FeatureHooks, FeatureHooks],
    student: nn.Module,
    teacher: nn.Module,
    x: Tensor,
    num_samples: int | None,
) -> None:
    """Run both models on ``x`` ``(B, ...)`` (already on the models' device and in their
    memory format; eval mode, no gradient) and prepare ``loss`` with their features and the
    training set's size ``num_samples``."""
    student_hooks, teacher_hooks = hooks
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            with teacher_hooks.capture() as teacher_feats:
                teacher(x)
            with student_hooks.capture() as student_feats:
                student(x)
    finally:
        student.train(was_training)
    loss.prepare(student_feats, teacher_feats, num_samples)
    loss.to(x.device)
