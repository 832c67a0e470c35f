"""The LightningModule that trains a student against a frozen teacher."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from cskd_lightning.checkpoints import (
    LEGACY_TEACHER_ACC,
    TEACHER_PREFIX,
    TEACHER_RECORD_KEY,
    teacher_record,
)
from cskd_lightning.errors import InputError
from cskd_lightning.feature_setup import (
    example_input,
    make_feature_hooks,
    prepare_from_batch,
    train_size,
)
from cskd_lightning.files import save_atomically
from cskd_lightning.losses.base import DistillationLoss
from cskd_lightning.losses.feature_base import FeatureBatch, FeatureDistillationLoss
from cskd_lightning.module_options import (
    LRSchedulerCallable,
    OptimizerCallable,
    apply_channels_last,
    check_channels_last,
    compile_in_place,
    compile_mode,
    default_optimizer,
    format_input,
    infer_num_classes,
    logits_of,
    resolve_num_classes,
)
from cskd_lightning.step_checks import EpochTerms, InputChecks
from cskd_lightning.teacher_accuracy import TeacherAccuracy
from cskd_lightning.teacher_inference import FoldedTeacher

__all__ = ["DistillationModule", "infer_num_classes", "logits_of"]  # the last two: module_options


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
            ``False``: eager. Each is compiled in place (``nn.Module.compile``: its ``__call__``
            runs the compiled forward), so the ``state_dict`` keys (and checkpoints) stay the
            same. A batch of a new shape (the last, partial one) compiles once more.
        features: for a :class:`~cskd_lightning.losses.FeatureDistillationLoss`, the layers to
            read each feature role from: ``{"student": {role: [layer, ...]}, "teacher": {...}}``
            (submodule names; ``"fc:input"`` for a submodule's input; see
            :mod:`cskd_lightning.features`). Ignored by the logit losses.
        fold_teacher_batchnorm: run the teacher on a copy prepared once, BatchNorm folded into
            its convolutions and, under autocast, its weights cast once
            (:mod:`cskd_lightning.teacher_inference`; logit methods only). Its logits differ by
            float rounding, so it is off by default and part of the logit cache's key.

    Feature distillation (:mod:`cskd_lightning.feature_setup`): hooks read the named layers
    during the training step's forwards; the loss's modules, sized in :meth:`setup` from one
    batch, are in :meth:`trainable_modules` and checkpoints (``loss.*``), not in the student
    artifact. The teacher-logit cache holds no features: the combination is refused.

    Mixed precision (``trainer.precision="bf16-mixed"`` / ``"16-mixed"``): Lightning runs
    ``training_step`` / ``validation_step`` under autocast, and both the student and the teacher
    forward happen inside them, so both run in the low precision; the losses upcast the logits
    and compute in float32.

    The teacher is frozen three ways: ``requires_grad_(False)``, eval mode kept by :meth:`train`,
    ``torch.no_grad()``. Its tensors are stripped from checkpoints and re-attached on load.

    Teacher logits from a cache: :meth:`teacher_logits` reads a batch's logits from
    :attr:`logit_cache` (a :class:`~cskd_lightning.logit_cache.TeacherLogitCache` sets itself
    there) instead of running the teacher, and stores those it computes.

    The teacher's accuracy (``val/teacher_acc``, and ``test/teacher_acc`` with a cache) is
    logged by the :class:`~cskd_lightning.teacher_accuracy.TeacherAccuracy` callback, which
    :meth:`configure_callbacks` adds when there is a teacher.

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
        fold_teacher_batchnorm: bool = False,
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
        self.channels_last: bool | str = check_channels_last(channels_last)
        self.compile_mode = compile_mode(compile_models)
        self.compile_models = self.compile_mode is not None
        if self.channels_last is True:
            apply_channels_last(student, teacher)
        self.num_classes = resolve_num_classes(student, teacher, num_classes)
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self._make_metrics()
        self.checks = InputChecks(self.num_classes, check_inputs)
        self.epoch_terms = EpochTerms()
        self.feature_hooks = make_feature_hooks(
            loss, student, teacher, features, self.compile_models
        )
        self.fold_teacher_batchnorm = bool(fold_teacher_batchnorm)
        self.folded_teacher = FoldedTeacher(teacher, loss) if fold_teacher_batchnorm else None
        compile_in_place(self.compile_mode, student, teacher, loss)

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

    def configure_callbacks(self) -> list[L.Callback]:
        """:class:`~cskd_lightning.teacher_accuracy.TeacherAccuracy` when there is a teacher."""
        return [TeacherAccuracy()] if self.teacher is not None else []

    def setup(self, stage: str) -> None:
        """Decide ``channels_last="auto"``, then prepare a feature loss (nothing for the logit
        losses): both before the optimizer is built."""
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached to a Trainer (called directly)
            trainer = None
        if "lightning.pytorch.cli" in sys.modules:  # run by LightningCLI
            from cskd_lightning.lightning_cli import refuse_dropped_lr_scheduler

            refuse_dropped_lr_scheduler(trainer)
        self._resolve_channels_last(trainer)
        self._prepare_feature_loss(trainer)

    def _resolve_channels_last(self, trainer: L.Trainer | None) -> None:
        """``channels_last="auto"``: on when the trainer's device is a CUDA GPU."""
        if self.channels_last == "auto":
            strategy = getattr(trainer, "strategy", None)
            device = getattr(strategy, "root_device", None)
            self.channels_last = device is not None and torch.device(device).type == "cuda"
            if self.channels_last:
                apply_channels_last(self.student, self.teacher)

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
        return logits_of(self.student(self._format_input(x)))

    def forward_teacher(self, x: Tensor) -> Tensor:
        """Run the frozen teacher without gradient; return its logits ``(B, C)``. With
        ``fold_teacher_batchnorm``, its copy prepared once for this device and autocast dtype
        (:mod:`cskd_lightning.teacher_inference`) runs instead."""
        teacher = self.teacher
        assert teacher is not None
        if self.folded_teacher is not None:
            teacher = self.folded_teacher.get(
                teacher, x.device, self.channels_last is True, self.compile_mode
            )
        with torch.no_grad():
            return logits_of(teacher(self._format_input(x))).detach()

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

    def _format_input(self, x: Tensor) -> Tensor:
        """``x`` in channels-last format if ``channels_last`` and 4-D (a no-op if it already is)."""
        return format_input(x, self.channels_last)

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
                f"have {len(views)}. Give it a datamodule in two-view mode (two_view=True).",
                key="two_view",
            )
        views = [self._format_input(v) for v in views[:needed]]
        self.checks.targets(y)
        if self.feature_hooks is not None:
            return self._compute_feature_loss(batch, views[0], y)
        # Teacher first: its activations are freed before the student's are kept for backward,
        # which lowers the step's peak memory.
        teacher = self.teacher_logits(batch, views) if self.loss.requires_teacher else None
        student = [self.forward_student(v) for v in views]
        if teacher is not None:
            self._check_class_counts(student[0], teacher[0])
        return student[0], self.loss.forward_views(student, teacher, y)

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
    def _prepare_feature_loss(self, trainer: L.Trainer | None) -> None:
        """Prepare a feature loss (see the class docstring); nothing for the logit losses."""
        if self.feature_hooks is None:
            return
        if self.logit_cache is not None:
            raise InputError(
                f"{type(self.loss).__name__} needs the teacher's features, which the "
                "teacher-logit cache does not hold: train a feature method without a "
                "TeacherLogitCache."
            )
        datamodule = getattr(trainer, "datamodule", None)
        if self.loss.needs_index and hasattr(datamodule, "with_indices"):
            datamodule.with_indices = True
        if not self.loss.is_prepared:
            x = example_input(self.loss, datamodule, self.example_input_array)
            self.prepare_feature_loss(x, train_size(datamodule))

    def prepare_feature_loss(self, x: Tensor, num_samples: int | None = None) -> None:
        """Run both models on ``x`` (eval mode, no gradient) and prepare the feature loss with
        their features and the training set's size ``num_samples``."""
        assert self.feature_hooks is not None and self.teacher is not None
        device = next(self.student.parameters()).device
        x = self._format_input(x.to(device))
        prepare_from_batch(
            self.loss, self.feature_hooks, self.student, self.teacher, x, num_samples
        )

    # --- checks ---------------------------------------------------------------------------
    def _checks_deferred(self, device: torch.device) -> bool:
        """Whether the training checks are read once per epoch (see ``check_inputs``)."""
        if self.defer_checks is not None:
            return bool(self.defer_checks)
        return device.type != "cpu"

    def _check_class_counts(self, student: Tensor, teacher: Tensor) -> None:
        if teacher.shape[-1] != student.shape[-1]:
            raise InputError(
                f"Teacher predicts {teacher.shape[-1]} classes but the student "
                f"{student.shape[-1]}. Build both models with the data's num_classes."
            )

    def check_finite(self, terms: Mapping[str, Tensor]) -> None:
        """Raise a :class:`~cskd_lightning.errors.NonFiniteLossError` when ``terms["loss"]``
        is not finite (nothing while the step's checks are deferred)."""
        self.checks.finite(terms, self.global_step, self.current_epoch)

    def read_deferred_checks(self) -> None:
        """The epoch's deferred checks: the labels' range and the loss's sum (one host read)."""
        self.checks.read_deferred(self.epoch_terms, self.global_step, self.current_epoch)

    # --- steps ----------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self.loss.set_progress(self.current_epoch, self.global_step, self.trainer.max_epochs)
        y = batch[1]
        self.checks.deferred = batch_idx > 0 and self._checks_deferred(y.device)
        try:
            logits, terms = self.compute_loss(batch)
            self.check_finite(terms)
        finally:
            self.checks.deferred = False
        self.epoch_terms.add({**terms, **self._train_accuracy(logits, y)}, y.shape[0])
        return terms["loss"]

    @torch.no_grad()
    def _train_accuracy(self, logits: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The step's top-1 and top-k accuracy ``acc``, ``acc_top<k>`` (0-d, fractions of the
        batch); summed over the epoch with the loss terms, logged as ``train/acc`` ..."""
        hits = (logits.topk(self._top_k, dim=1).indices == y[:, None]).float()  # (B, k)
        rates = hits.mean(0)  # (k,): how often the label is the j-th guess
        return {"acc": rates[0], f"acc_top{self._top_k}": rates.sum()}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Read the deferred checks at the epoch's last training step (before validation)."""
        if self.checks.label_range is not None or self._checks_deferred(self.device):
            last = self.trainer.num_training_batches
            if isinstance(last, int) and batch_idx + 1 >= last:
                self.read_deferred_checks()

    def on_fit_start(self) -> None:
        """The frozen teacher reads "train" until :meth:`on_train_start`, so that Lightning's
        warning about submodules in eval mode (checked in between) does not name it; no
        teacher forward happens in between."""
        if self.teacher is not None:
            self.teacher.train()

    def on_train_start(self) -> None:
        """The teacher back in eval mode before the first training batch (see
        :meth:`on_fit_start`); :meth:`train` keeps it there from now on."""
        if self.teacher is not None:
            self.teacher.eval()

    def on_train_epoch_start(self) -> None:
        self.epoch_terms = EpochTerms()
        self.checks.label_range = None

    def on_train_epoch_end(self) -> None:
        """Log each term's sample-weighted epoch mean as ``train/<name>``, and the accuracy
        (``train/acc``, ``train/acc_top<k>``: the same sums)."""
        if self.checks.label_range is not None:
            self.read_deferred_checks()
        for name, mean in self.epoch_terms.means().items():
            self.log(f"train/{name}", mean, prog_bar=name == "loss", sync_dist=True)

    def _eval_step(self, batch: Any, metrics: MetricCollection) -> None:
        x, y = batch
        if isinstance(x, (tuple, list)):
            x = x[0]
        self.checks.targets(y)
        metrics.update(self.forward_student(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best.update(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)
        self.log_dict(self.test_metrics, on_step=False, on_epoch=True)

    # --- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
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
        """:func:`~cskd_lightning.checkpoints.teacher_record` of the frozen teacher, hashed once
        (not at every save: the hash reads every teacher weight, a device-to-host copy on an
        accelerator)."""
        cached = self.__dict__.get("_teacher_record_cache")
        if cached is None or cached[0] is not self.teacher:
            cached = (self.teacher, teacher_record(self.teacher))
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
        if self.teacher is not None:
            checkpoint[TEACHER_RECORD_KEY] = self._frozen_teacher_record()
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.folded_teacher is not None:
            self.folded_teacher.reset()  # folded again from the weights loaded
        state = checkpoint.setdefault("state_dict", {})
        # Checkpoints from before val_acc_best was persistent: start its record afresh.
        for key, value in self.val_acc_best.state_dict(prefix="val_acc_best.").items():
            state.setdefault(key, value)
        for key in [k for k in state if k.startswith(LEGACY_TEACHER_ACC)]:
            del state[key]
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
        if self.teacher is None:
            return
        recorded = checkpoint.get(TEACHER_RECORD_KEY)
        if isinstance(recorded, dict) and recorded != teacher_record(self.teacher):
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
        save_atomically(self.student.state_dict(), path)
        return path
