"""The LightningModule that trains a student against a frozen teacher."""

from __future__ import annotations

import logging
import math
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from cskd_lightning.errors import InputError, NonFiniteLossError
from cskd_lightning.features import FeatureHooks, check_feature_map
from cskd_lightning.losses.base import DistillationLoss
from cskd_lightning.losses.feature_base import FeatureBatch, FeatureDistillationLoss

log = logging.getLogger(__name__)

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

TEACHER_PREFIX = "teacher."
TEACHER_ACC_LOGGED_KEY = "teacher_val_acc_logged"
"""Checkpoint key: ``val/teacher_acc`` was logged already (it is logged once per run)."""
TEACHER_RECORD_KEY = "teacher_record"
"""Checkpoint key: which teacher trained it (class and weight hash), its weights stripped."""


def logits_of(output: Tensor | tuple | list) -> Tensor:
    """Models may return logits or a ``(logits, features)`` tuple; return the logits."""
    return output[0] if isinstance(output, (tuple, list)) else output


def infer_num_classes(model: nn.Module) -> int | None:
    """The class count of a classifier: ``model.num_classes`` or its last Linear's outputs."""
    if isinstance(getattr(model, "num_classes", None), int):
        return model.num_classes
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _teacher_record(teacher: nn.Module) -> dict[str, str]:
    """The teacher's class and a content hash of its ``state_dict`` (blake2b, 128 bits)."""
    from cskd_lightning.logit_cache import state_dict_hash

    return {"class": type(teacher).__name__, "weights": state_dict_hash(teacher)}


def _train_size(datamodule: Any) -> int | None:
    """The training set's sample count, where the datamodule tells it (else None)."""
    train_set = getattr(datamodule, "train_set", None)
    if train_set is not None:
        return len(train_set)
    split = getattr(datamodule, "split_tensors", None)
    if callable(split):
        tensors = split("train")
        return None if tensors is None else int(tensors[0].shape[0])
    return None


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


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


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
        f"; got {value!r}."
    )


def default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD, lr 0.05, momentum 0.9, weight decay 5e-4 (the CIFAR KD protocol), in torch's
    multi-tensor form (``foreach=True``: a few ops for all the parameters instead of a few per
    parameter; torch's default on CUDA, here on every device)."""
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4, foreach=True)


def _refuse_ignored_cli_scheduler(trainer: Any) -> None:
    """LightningCLI's own ``--lr_scheduler`` without ``--optimizer`` is dropped by Lightning
    (it only replaces ``configure_optimizers`` when an optimizer is given): refuse it."""
    cli = sys.modules.get("lightning.pytorch.cli")
    if cli is None:  # no LightningCLI in this process
        return
    for callback in getattr(trainer, "callbacks", None) or []:
        if not isinstance(callback, cli.SaveConfigCallback):
            continue
        config = getattr(callback, "config", None)
        if config is not None and config.get("lr_scheduler") is not None:
            raise InputError(
                "LightningCLI's --lr_scheduler was given without --optimizer, and Lightning "
                "ignores it then. Give the module's own scheduler instead "
                "(--model.scheduler=<class> --model.scheduler.<arg>=..., or model.scheduler in the "
                "YAML), or use cskd_lightning.lightning_cli.DistillationCLI, which hands "
                "--optimizer and --lr_scheduler to the module."
            )


class DistillationModule(L.LightningModule):
    """Train ``student`` against a frozen ``teacher`` with a swappable ``loss``.

    Args:
        student: the model to train; returns logits ``(B, C)`` or ``(logits, features)``.
        teacher: the frozen model, or ``None`` with a teacher-free loss (e.g. ``CELoss``).
        loss: a :class:`~cskd_lightning.losses.DistillationLoss`.
        optimizer: a callable taking parameters (a Hydra ``_partial_``); default SGD lr 0.05,
            momentum 0.9, weight decay 5e-4. It only ever sees the student's parameters (and the
            loss's, if it has any).
        scheduler: a callable taking the optimizer, stepped once per epoch; or ``None``. Both
            are typed as Lightning's ``OptimizerCallable`` / ``LRSchedulerCallable``, so a
            LightningCLI YAML gives them as a ``class_path`` with ``init_args``.
        num_classes: the class count; inferred from the student's last ``nn.Linear`` if omitted.
        check_inputs: check every batch's targets (in ``[0, num_classes)``) and every loss for
            finiteness. On the CPU at every step. On an accelerator without a host sync in the
            steady-state step: the first training step of each epoch is checked at once, and
            for the others the labels' range and the loss's epoch sum stay on the device and
            are read at the epoch's last training step (an error then names the epoch).
        channels_last: put the student's and teacher's weights and every input batch in
            ``torch.channels_last`` memory format (faster convolutions on tensor-core GPUs,
            above all with mixed precision). The ``state_dict`` is unchanged. ``"auto"``: on
            when the trainer trains on a CUDA GPU, off otherwise (decided at ``setup``).
        compile_models: run the student's and the teacher's forward and the loss through
            ``torch.compile`` with static shapes (``dynamic=False``): ``True`` or ``"default"``,
            or a ``torch.compile`` mode: ``"reduce-overhead"`` (CUDA graphs: the step's kernels
            replayed in one launch), ``"max-autotune"``, ``"max-autotune-no-cudagraphs"``.
            ``False``: eager. The compiled callables wrap ``self.student`` / ``self.teacher`` /
            ``self.loss`` without being registered as submodules, so the ``state_dict`` keys
            (and checkpoints) stay the same. A batch of a new shape (the last, partial one)
            compiles once more.
        features: for a :class:`~cskd_lightning.losses.FeatureDistillationLoss`, the layers to
            read each feature role from: ``{"student": {role: [layer, ...]}, "teacher": {...}}``
            (submodule names; ``"fc:input"`` for a submodule's input; see
            :mod:`cskd_lightning.features`). Ignored by the logit losses.

    Feature distillation: the named layers are read by forward hooks that exist only during the
    training step's forwards (the models stay unchanged). In :meth:`setup`, before the optimizer
    is built, one batch of the datamodule's validation loader runs through both models (eval
    mode, no gradient) and :meth:`~cskd_lightning.losses.FeatureDistillationLoss.prepare` sizes
    the loss's trainable modules from the real shapes; they are in :meth:`trainable_modules`,
    saved in checkpoints (``loss.*``) and not in the student artifact. A loss that
    ``needs_index`` gets the batches' sample indices (the module switches the datamodule's
    ``with_indices`` on). The teacher-logit cache cannot serve a feature loss (it holds no
    features): the combination is refused in :meth:`setup`.

    Mixed precision (``trainer.precision="bf16-mixed"`` / ``"16-mixed"``): Lightning runs
    ``training_step`` / ``validation_step`` under autocast, and both the student and the teacher
    forward happen inside them, so both run in the low precision; the losses upcast the logits
    and compute in float32.

    The teacher is frozen three ways: ``requires_grad_(False)``; kept in eval mode by
    :meth:`train` (its BatchNorm statistics never move); run under ``torch.no_grad()``. Its
    tensors are stripped from Lightning checkpoints and re-attached on load.

    Teacher logits from a cache: when :attr:`logit_cache` is set (a
    :class:`~cskd_lightning.logit_cache.TeacherLogitCache` sets itself there) and a batch carries
    its sample indices (:class:`~cskd_lightning.data.device.SampleBatch`), :meth:`teacher_logits`
    takes the teacher's logits from the cache instead of running the teacher, and stores those
    it computes. With a cache attached, the test loop also logs ``test/teacher_acc``.

    Subclass hooks: :meth:`forward_student`, :meth:`forward_teacher`, :meth:`teacher_logits`,
    :meth:`compute_loss`.
    """

    #: Read the training checks once per epoch instead of at every step (``check_inputs``);
    #: ``None``: on an accelerator (where a read stalls the device), not on the CPU.
    defer_checks: bool | None = None

    #: Where :meth:`teacher_logits` looks first: an object with ``lookup(batch, views) ->
    #: list[Tensor] | None`` and ``record(batch, logits) -> list[Tensor] | None`` (the logits to
    #: use instead, or ``None`` for ``logits``); ``None``: the teacher always runs.
    logit_cache: Any = None

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        loss: DistillationLoss,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        num_classes: int | None = None,
        check_inputs: bool = True,
        channels_last: bool | str = False,
        compile_models: bool | str = False,
        features: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=["student", "teacher", "loss", "optimizer", "scheduler", "features"],
            logger=False,
        )
        if getattr(loss, "requires_teacher", True) and teacher is None:
            raise InputError(
                f"{type(loss).__name__} distils from a teacher, but teacher=None. Pass a teacher "
                "model, or use a teacher-free loss such as CELoss."
            )
        self.student = student
        self.teacher = teacher
        self.loss = loss
        self.optimizer_factory = optimizer or default_optimizer
        self.scheduler_factory = scheduler
        self.check_inputs = check_inputs
        if isinstance(channels_last, str) and channels_last != "auto":
            raise InputError(
                f"channels_last must be true, false or auto (on with a GPU); got {channels_last!r}."
            )
        auto = channels_last == "auto"
        self.channels_last: bool | str = "auto" if auto else bool(channels_last)
        self.compile_mode = compile_mode(compile_models)
        self.compile_models = self.compile_mode is not None
        self._apply_channels_last()
        self.num_classes = self._resolve_num_classes(num_classes)
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self._make_metrics()
        self._teacher_acc_pending = teacher is not None
        self._defer_now = False
        self._reset_epoch_sums()  # the per-epoch sums of the loss terms
        self.feature_hooks = self._make_feature_hooks(features)

    def _apply_channels_last(self) -> None:
        if self.channels_last is True:
            for model in (self.student, self.teacher):
                if model is not None:
                    model.to(memory_format=torch.channels_last)

    def _make_feature_hooks(
        self, features: Mapping[str, Any] | None
    ) -> tuple[FeatureHooks, FeatureHooks] | None:
        """The student's and teacher's :class:`FeatureHooks` for a feature loss, else None."""
        if not isinstance(self.loss, FeatureDistillationLoss):
            return None
        if getattr(self.loss, "num_views", 1) != 1:
            raise InputError(f"{type(self.loss).__name__}: feature losses take one view.")
        if self.compile_models:
            raise InputError(
                f"{type(self.loss).__name__} reads features through forward hooks, which "
                "compile_models (torch.compile) would recompile around at every step: use "
                "compile_models=false (module.compile_models=false) with a feature method."
            )
        features = features or {}
        assert self.teacher is not None
        return (
            FeatureHooks(
                self.student,
                check_feature_map(features.get("student"), self.loss.student_features, "student"),
                "student",
            ),
            FeatureHooks(
                self.teacher,
                check_feature_map(features.get("teacher"), self.loss.teacher_features, "teacher"),
                "teacher",
            ),
        )

    # --- construction helpers -------------------------------------------------------------
    def _resolve_num_classes(self, num_classes: int | None) -> int:
        student_classes = num_classes or infer_num_classes(self.student)
        if student_classes is None:
            raise InputError(
                "Could not infer the class count from the student (no nn.Linear head): "
                "pass num_classes=... to DistillationModule."
            )
        teacher_classes = infer_num_classes(self.teacher) if self.teacher is not None else None
        if teacher_classes is not None and teacher_classes != student_classes:
            raise InputError(
                f"Teacher predicts {teacher_classes} classes but the student {student_classes}. "
                "Build both models with the data's num_classes."
            )
        return int(student_classes)

    def _make_metrics(self) -> None:
        top_k = min(5, self.num_classes)

        def accuracy_pair() -> MetricCollection:
            return MetricCollection(
                {
                    "acc": MulticlassAccuracy(self.num_classes, top_k=1, average="micro"),
                    f"acc_top{top_k}": MulticlassAccuracy(
                        self.num_classes, top_k=top_k, average="micro"
                    ),
                }
            )

        # The training accuracy is two more epoch sums beside the loss terms (see
        # training_step): a few ops per step instead of torchmetrics' ~60.
        self._top_k = top_k
        self.val_metrics = accuracy_pair().clone(prefix="val/")
        self.test_metrics = accuracy_pair().clone(prefix="test/")
        # Persistent: the best accuracy so far is part of the training state, so a resumed run
        # reports the best over the whole run, not over the epochs after the restart.
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)
        # Measured once, at the first validation (the teacher is frozen), logged every epoch.
        self.teacher_val_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.teacher_val_acc.persistent(True)
        self.teacher_test_acc = MulticlassAccuracy(self.num_classes, average="micro")

    def setup(self, stage: str) -> None:
        """Decide ``channels_last="auto"``, then prepare a feature loss (nothing for the logit
        losses): both before the optimizer is built."""
        self._resolve_channels_last()
        self._prepare_feature_loss()

    def _resolve_channels_last(self) -> None:
        """``channels_last="auto"``: on when the trainer's device is a CUDA GPU."""
        if self.channels_last == "auto":
            try:
                trainer = self.trainer
            except RuntimeError:  # not attached to a Trainer
                trainer = None
            strategy = getattr(trainer, "strategy", None)
            device = getattr(strategy, "root_device", None)
            self.channels_last = device is not None and torch.device(device).type == "cuda"
            self._apply_channels_last()

    # --- the teacher stays frozen ---------------------------------------------------------
    def train(self, mode: bool = True) -> DistillationModule:
        """Switch train/eval mode for everything except the teacher, which stays in eval."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def trainable_modules(self) -> list[nn.Module]:
        """The modules whose parameters the optimizer updates: the student and the loss."""
        return [self.student, self.loss]

    # --- hooks for subclasses -------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """The student's logits ``(B, C)`` (inference)."""
        return self.forward_student(x)

    def forward_student(self, x: Tensor) -> Tensor:
        """Run the student on a batch ``(B, ...)``; return its logits ``(B, C)``."""
        return logits_of(self._runner("student")(self._format_input(x)))

    def forward_teacher(self, x: Tensor) -> Tensor:
        """Run the frozen teacher without gradient; return its logits ``(B, C)``."""
        assert self.teacher is not None
        with torch.no_grad():
            return logits_of(self._runner("teacher")(self._format_input(x))).detach()

    def teacher_logits(self, batch: Any, views: list[Tensor]) -> list[Tensor]:
        """The teacher's logits ``(B, C)`` for each of ``views`` (the batch's views, formatted):
        from :attr:`logit_cache` when it holds all of them for ``batch``; else one
        :meth:`forward_teacher` per view, handed to the cache to store."""
        cache = self.logit_cache
        if cache is not None:
            cached = cache.lookup(batch, len(views))
            if cached is not None:
                return cached
        logits = [self.forward_teacher(v) for v in views]
        if cache is not None:
            # The cache may hand back what it stores (a top-k cache: the rebuilt logits), so
            # that the run that stores trains on what the runs that read will get.
            stored = cache.record(batch, logits)
            logits = logits if stored is None else stored
        return logits

    # --- speed options --------------------------------------------------------------------
    def _format_input(self, x: Tensor) -> Tensor:
        """``x`` in channels-last format if ``channels_last`` and 4-D (a no-op if it already is)."""
        if self.channels_last is True and isinstance(x, Tensor) and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _runner(self, name: str) -> Callable[..., Any]:
        """``self.<name>`` (``self.loss.forward_views`` for the loss), or its ``torch.compile``
        wrapper with ``compile_models``.

        The wrapper is kept in ``__dict__`` (not a registered submodule): it shares the module's
        parameters, and the ``state_dict`` keys stay ``student.*`` / ``teacher.*``.
        """
        model = getattr(self, name)
        if not self.compile_models:
            return model.forward_views if name == "loss" else model
        compiled = self.__dict__.setdefault("_compiled_models", {})
        entry = compiled.get(name)
        if entry is None or entry[0] is not model:
            mode = None if self.compile_mode == "default" else self.compile_mode
            target = model.forward_views if name == "loss" else model
            entry = (model, torch.compile(target, mode=mode, dynamic=False))
            compiled[name] = entry
        return entry[1]

    def compute_loss(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """From a training batch ``(x, y)`` to ``(student logits of the first view, terms)``.

        ``x`` is a tensor, or a ``(weak, strong)`` tuple from a two-view datamodule. The loss
        gets the first ``loss.num_views`` views through
        :meth:`~cskd_lightning.losses.DistillationLoss.forward_views`: lists of ``(B, C)``
        logits, one per view, whatever the count. ``terms["loss"]`` is what is backpropagated.
        """
        x, y = batch
        views = list(x) if isinstance(x, (tuple, list)) else [x]
        needed = getattr(self.loss, "num_views", 1)
        if len(views) < needed:
            raise InputError(
                f"{type(self.loss).__name__} needs {needed} views per image but the batches "
                f"have {len(views)}. Turn on the datamodule's two-view mode "
                "(data.datamodule.two_view=true)."
            )
        views = [self._format_input(v) for v in views[:needed]]
        self._check_targets(y)
        if self.feature_hooks is not None:
            return self._compute_feature_loss(batch, views[0], y)
        # Teacher first: its activations are freed before the student's are kept for backward,
        # which lowers the step's peak memory.
        teacher = self.teacher_logits(batch, views) if self.loss.requires_teacher else None
        student = [self.forward_student(v) for v in views]
        if teacher is not None:
            self._check_class_counts(student[0], teacher[0])
        return student[0], self._runner("loss")(student, teacher, y)

    def _compute_feature_loss(
        self, batch: Any, x: Tensor, y: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Both models on ``x`` with their feature hooks; the loss gets logits and features."""
        assert self.feature_hooks is not None
        student_hooks, teacher_hooks = self.feature_hooks
        with teacher_hooks.capture() as teacher_feats:
            teacher = self.forward_teacher(x)
        with student_hooks.capture() as student_feats:
            student = self.forward_student(x)
        self._check_class_counts(student, teacher)
        index = getattr(batch, "index", None) if self.loss.needs_index else None
        features = FeatureBatch(student_feats, teacher_feats, index)
        return student, self.loss.forward_views([student], [teacher], y, features=features)

    # --- feature losses: sized before the optimizer is built ------------------------------
    def _prepare_feature_loss(self) -> None:
        """Prepare a feature loss (see the class docstring); nothing for the logit losses."""
        if self.feature_hooks is None:
            return
        if self.logit_cache is not None:
            raise InputError(
                f"{type(self.loss).__name__} needs the teacher's features, which the "
                "teacher-logit cache does not hold: switch the cache off "
                "(teacher.logit_cache=false) for a feature method."
            )
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.loss.needs_index and hasattr(datamodule, "with_indices"):
            datamodule.with_indices = True
        if not self.loss.is_prepared:
            self.prepare_feature_loss(self._example_input(datamodule), _train_size(datamodule))

    def _example_input(self, datamodule: Any) -> Tensor:
        """Two images of the first validation batch (or of ``example_input_array``)."""
        if self.example_input_array is not None:
            return self.example_input_array
        loader = None
        for name in ("val_dataloader", "train_dataloader"):
            if datamodule is not None and hasattr(datamodule, name):
                loader = getattr(datamodule, name)()
                break
        if loader is None:
            raise InputError(
                f"{type(self.loss).__name__} sizes its modules from one batch before training, "
                "but the Trainer has no datamodule: pass datamodule= to fit, or set the module's "
                "example_input_array to a batch of inputs."
            )
        x = next(iter(loader))[0]
        if isinstance(x, (tuple, list)):
            x = x[0]
        return x[:2]

    def prepare_feature_loss(self, x: Tensor, num_samples: int | None = None) -> None:
        """Run both models on ``x`` (eval mode, no gradient) and prepare the feature loss with
        their features and the training set's size ``num_samples``."""
        assert self.feature_hooks is not None and self.teacher is not None
        student_hooks, teacher_hooks = self.feature_hooks
        device = next(self.student.parameters()).device
        x = self._format_input(x.to(device))
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                with teacher_hooks.capture() as teacher_feats:
                    self.teacher(x)
                with student_hooks.capture() as student_feats:
                    self.student(x)
        finally:
            self.student.train(was_training)
        self.loss.prepare(student_feats, teacher_feats, num_samples)
        self.loss.to(device)

    # --- checks ---------------------------------------------------------------------------
    def _checks_deferred(self, device: torch.device) -> bool:
        """Whether the training checks are read once per epoch (see ``check_inputs``)."""
        if self.defer_checks is not None:
            return bool(self.defer_checks)
        return device.type != "cpu"

    def _check_targets(self, y: Tensor) -> None:
        if not self.check_inputs or y.numel() == 0:
            return
        if self._defer_now:  # the range stays on the device until the epoch's check
            low, high = torch.aminmax(y)
            if self._label_range is not None:
                low = torch.minimum(low, self._label_range[0])
                high = torch.maximum(high, self._label_range[1])
            self._label_range = (low, high)
            return
        if not bool(((y < 0) | (y >= self.num_classes)).any()):  # one host sync
            return
        self._raise_label_range(int(y.min()), int(y.max()))

    def _raise_label_range(self, low: int, high: int) -> None:
        raise InputError(
            f"Labels out of range: found labels in [{low}, {high}] but the models predict "
            f"{self.num_classes} classes (labels must be in [0, {self.num_classes - 1}]). "
            "Check the dataset's labels or the models' num_classes."
        )

    def _check_class_counts(self, student: Tensor, teacher: Tensor) -> None:
        if teacher.shape[-1] != student.shape[-1]:
            raise InputError(
                f"Teacher predicts {teacher.shape[-1]} classes but the student "
                f"{student.shape[-1]}. Build both models with the data's num_classes."
            )

    def _check_finite(self, terms: Mapping[str, Tensor]) -> None:
        # Deferred: a non-finite loss makes the epoch's sum of the loss non-finite, read at the
        # epoch's check (no op of its own in the step).
        if not self.check_inputs or self._defer_now:
            return
        if bool(torch.isfinite(terms["loss"]).all()):
            return
        values = {k: float(v.detach()) for k, v in terms.items() if v.numel() == 1}
        self._raise_non_finite(f"at global step {self.global_step}", values)

    def _raise_non_finite(self, where: str, values: Mapping[str, float]) -> None:
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        raise NonFiniteLossError(
            f"Non-finite loss {where} (epoch {self.current_epoch}): "
            + ", ".join(f"{k}={v}" for k, v in bad.items())
            + ". Lower the learning rate, check the inputs for NaN/inf, or use 32-bit precision."
        )

    def _read_deferred_checks(self) -> None:
        """The epoch's deferred checks: the labels' range and the loss's sum (one host read)."""
        label_range, self._label_range = self._label_range, None
        if label_range is not None:
            low, high = torch.stack(label_range).tolist()
            if low < 0 or high >= self.num_classes:
                self._raise_label_range(low, high)
        if not self.check_inputs or not self._term_sums:
            return
        totals = self._term_sums
        if "loss" not in totals:
            return
        names = list(totals)
        sums = torch.stack([totals[k] for k in names]).tolist()
        if not math.isfinite(sums[names.index("loss")]):
            count = max(self._term_count, 1)
            where = f"in one of the training steps up to global step {self.global_step}"
            self._raise_non_finite(where, {k: v / count for k, v in zip(names, sums, strict=True)})

    # --- steps ----------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self.loss.set_progress(self.current_epoch, self.global_step, self.trainer.max_epochs)
        y = batch[1]
        self._defer_now = batch_idx > 0 and self._checks_deferred(y.device)
        try:
            logits, terms = self.compute_loss(batch)
            self._check_finite(terms)
        finally:
            self._defer_now = False
        self._accumulate_terms({**terms, **self._train_accuracy(logits, y)}, y.shape[0])
        return terms["loss"]

    @torch.no_grad()
    def _train_accuracy(self, logits: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The step's top-1 and top-k accuracy ``acc``, ``acc_top<k>`` (0-d, fractions of the
        batch); summed over the epoch with the loss terms, logged as ``train/acc`` ..."""
        hits = (logits.topk(self._top_k, dim=1).indices == y[:, None]).float()  # (B, k)
        return {"acc": hits[:, 0].mean(), f"acc_top{self._top_k}": hits.sum(1).mean()}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Read the deferred checks at the epoch's last training step (before validation)."""
        if self._label_range is not None or self._checks_deferred(self.device):
            last = self.trainer.num_training_batches
            if isinstance(last, int) and batch_idx + 1 >= last:
                self._read_deferred_checks()

    def _accumulate_terms(self, terms: Mapping[str, Tensor], batch_size: int) -> None:
        """Sum the step's terms on the device; they are logged once, at the epoch's end.

        Logging every term every step through ``self.log`` costs more than a small model's
        step; the running sum of all the terms (stacked into one ``(K,)`` tensor) costs three
        tensor ops per step and no host sync.
        """
        names = tuple(terms)
        with torch.no_grad():
            values = [v if v.dim() == 0 else v.reshape(()) for v in terms.values()]
            step = torch.stack(values).float() * batch_size
        if self._term_total is None:
            self._term_names, self._term_total = names, step
        elif names == self._term_names:
            self._term_total = self._term_total + step
        else:  # the terms changed within the epoch: sum them by name from now on
            sums = self._term_sums
            self._term_names, self._term_total = (), None
            for name, value in zip(names, step, strict=True):
                sums[name] = sums[name] + value if name in sums else value
            self._term_by_name = sums
        self._term_count += batch_size

    @property
    def _term_sums(self) -> dict[str, Tensor]:
        """The epoch's sample-weighted sum of every term so far, by name."""
        sums = dict(self._term_by_name)
        if self._term_total is not None:
            for name, value in zip(self._term_names, self._term_total, strict=True):
                sums[name] = sums[name] + value if name in sums else value
        return sums

    def on_fit_start(self) -> None:
        """Lightning warns about every submodule in eval mode when training starts ("Found N
        module(s) in eval mode"); the frozen teacher is one on purpose. Its mode flag reads
        "train" from here until :meth:`on_train_start`, which runs right after that check and
        before any batch; no teacher forward happens in between (the sanity check's
        validation switches the whole module to eval, the teacher with it)."""
        if self.teacher is not None:
            self.teacher.train()

    def on_train_start(self) -> None:
        """The teacher back in eval mode before the first training batch (see
        :meth:`on_fit_start`); :meth:`train` keeps it there from now on."""
        if self.teacher is not None:
            self.teacher.eval()

    def on_train_epoch_start(self) -> None:
        self._reset_epoch_sums()

    def _reset_epoch_sums(self) -> None:
        self._term_names: tuple[str, ...] = ()
        self._term_total: Tensor | None = None
        self._term_by_name: dict[str, Tensor] = {}
        self._term_count = 0
        self._label_range: tuple[Tensor, Tensor] | None = None

    def on_train_epoch_end(self) -> None:
        """Log each term's sample-weighted epoch mean as ``train/<name>``, and the accuracy
        (``train/acc``, ``train/acc_top<k>``: the same sums)."""
        if self._label_range is not None:
            self._read_deferred_checks()
        for name, total in self._term_sums.items():
            self.log(
                f"train/{name}",
                total / max(self._term_count, 1),
                prog_bar=name == "loss",
                sync_dist=True,
            )

    def _eval_step(self, batch: Any, metrics: MetricCollection) -> Tensor:
        x, y = batch
        if isinstance(x, (tuple, list)):
            x = x[0]
        self._check_targets(y)
        logits = self.forward_student(x)
        metrics.update(logits, y)
        return x

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x = self._eval_step(batch, self.val_metrics)
        if self._teacher_acc_pending and not self.trainer.sanity_checking:
            self.teacher_val_acc.update(self.teacher_logits(batch, [x])[0], batch[1])
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best.update(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)
        if self.teacher is not None:
            with warnings.catch_warnings():
                # A resumed run restores the measured state without calling update().
                warnings.filterwarnings("ignore", message=r".*was called before the ``update``")
                teacher_acc = self.teacher_val_acc.compute()
            self.log("val/teacher_acc", teacher_acc, sync_dist=True)
            if self._teacher_acc_pending:
                warn_if_untrained(float(teacher_acc), self.num_classes)
            self._teacher_acc_pending = False

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x = self._eval_step(batch, self.test_metrics)
        self.log_dict(self.test_metrics, on_step=False, on_epoch=True)
        if self.logit_cache is not None and self.teacher is not None:
            self.teacher_test_acc.update(self.teacher_logits(batch, [x])[0], batch[1])
            self.log("test/teacher_acc", self.teacher_test_acc, on_step=False, on_epoch=True)

    # --- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached to a Trainer (called directly)
            trainer = None
        _refuse_ignored_cli_scheduler(trainer)
        params = [p for m in self.trainable_modules() for p in m.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }

    # --- checkpoints stay student-sized -------------------------------------------------------
    def _frozen_teacher_record(self) -> dict[str, str]:
        """:func:`_teacher_record` of the frozen teacher, hashed once (not at every save: the
        hash reads every teacher weight, a device-to-host copy on an accelerator)."""
        cached = self.__dict__.get("_teacher_record_cache")
        if cached is None or cached[0] is not self.teacher:
            cached = (self.teacher, _teacher_record(self.teacher))
            self.__dict__["_teacher_record_cache"] = cached
        return cached[1]

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: Any, *args: Any, **kwargs: Any
    ) -> DistillationModule:
        """Lightning's ``load_from_checkpoint``, with the models and loss passed in.

        A checkpoint holds the student's weights and the hyperparameters, but not the models'
        construction, the loss or the teacher's weights (they are stripped to keep it
        student-sized): pass ``student=`` (the architecture; its weights are loaded),
        ``teacher=`` (the trained teacher, weights loaded, or ``None`` with a teacher-free loss
        to evaluate the student only) and ``loss=``. A teacher whose weights differ from the
        one the checkpoint was trained with gets a warning (see :meth:`on_load_checkpoint`).
        """
        missing = [name for name in ("student", "teacher", "loss") if name not in kwargs]
        if missing:
            raise InputError(
                f"{cls.__name__}.load_from_checkpoint needs {', '.join(m + '=' for m in missing)}"
                ": a checkpoint holds the student's weights but not the models, the loss or the "
                "teacher's weights. Pass student=<the architecture, e.g. create_model(name, "
                "num_classes=...)>, teacher=<the trained teacher, e.g. load_weights(create_model"
                "(...), teacher_checkpoint)> or teacher=None with loss=CELoss() to evaluate the "
                "student alone, and loss=<the loss>."
            )
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[TEACHER_ACC_LOGGED_KEY] = (
            self.teacher is not None and not self._teacher_acc_pending
        )
        if self.teacher is not None:
            checkpoint[TEACHER_RECORD_KEY] = self._frozen_teacher_record()
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.setdefault("state_dict", {})
        # Checkpoints from before these metrics were persistent: start their records afresh.
        for name in ("val_acc_best", "teacher_val_acc"):
            for key, value in getattr(self, name).state_dict(prefix=f"{name}.").items():
                state.setdefault(key, value)
        # A feature loss not prepared yet (load_from_checkpoint runs no setup hook) has no
        # modules to take its saved ones: they are left out (the student loads as always).
        loss = self.loss
        if isinstance(loss, FeatureDistillationLoss) and not loss.is_prepared:
            dropped = [k for k in state if k.startswith("loss.")]
            for key in dropped:
                del state[key]
            if dropped:
                warnings.warn(
                    f"{type(loss).__name__}'s own modules were not restored from the checkpoint "
                    f"({len(dropped)} tensors): the loss is sized in the module's setup hook, "
                    "which Trainer.fit/validate/test run (pass ckpt_path= to them to resume "
                    "with the loss's state); the student's weights are loaded.",
                    UserWarning,
                    stacklevel=2,
                )
        # The teacher's validation accuracy is logged once, at the run's first validation.
        if checkpoint.get(TEACHER_ACC_LOGGED_KEY):
            self._teacher_acc_pending = False
        if self.teacher is None:
            return
        recorded = checkpoint.get(TEACHER_RECORD_KEY)
        if isinstance(recorded, dict) and recorded != _teacher_record(self.teacher):
            warnings.warn(
                f"The teacher given to {type(self).__name__} ({type(self.teacher).__name__}) is "
                f"not the one this checkpoint was trained with ({recorded.get('class')}, weights "
                f"{recorded.get('weights')}); checkpoints hold no teacher weights, so it keeps "
                "the weights it has (random, if it was just built). Load the trained teacher's "
                "weights first (e.g. cskd_lightning.checkpoints.load_weights(teacher, path)) and "
                "pass teacher=teacher, or pass teacher=None with loss=CELoss() to only evaluate.",
                UserWarning,
                stacklevel=2,
            )
        for key, value in self.teacher.state_dict().items():
            state.setdefault(TEACHER_PREFIX + key, value)

    def export_student(self, path: str | Path) -> Path:
        """Write the student's weights alone (a plain ``state_dict``) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.student.state_dict(), path)
        return path
