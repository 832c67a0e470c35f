"""Training diagnostics and reproducibility as Lightning callbacks.

:class:`TemperatureMonitor` records, per training epoch, how the CSWT temperatures are spread
and how well the student's batch predictions line up with the teacher's, class by class.
Enable it from the command line with ``callbacks=monitor``.

:class:`EpochSeed` makes the randomness drawn from the global RNGs during training (dropout,
stochastic depth) a function of the seed and the epoch, so that a run resumed at an epoch's
end draws what the uninterrupted run drew (``cskd-train`` always adds it).
"""

from __future__ import annotations

import csv
import logging
import math
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from cskd_lightning.data.sample_random import sample_seed
from cskd_lightning.errors import InputError
from cskd_lightning.loggers import RunCSVLogger
from cskd_lightning.losses import functional
from cskd_lightning.losses.distributed import distributed_world_size, gather_batch
from cskd_lightning.losses.functional import cswt_temperature, per_class_batch_cosine

log = logging.getLogger(__name__)

PREFIX = "monitor/"
QUANTILES = (0.1, 0.5, 0.9)
CLASS_COSINE_CSV = "class_cosine.csv"
DEFAULT_T_LOW, DEFAULT_T_HIGH, DEFAULT_COS_TEMPERATURE = 2.0, 6.0, 4.0


class EpochSeed(L.Callback):
    """Seed torch (CPU and every accelerator), numpy and Python's ``random`` at the start of
    every training epoch with ``sample_seed(seed, epoch, global_rank)``.

    The data pipelines draw nothing from these generators (their order and augmentation are
    functions of the seed and the epoch already), but a model may: dropout (``SmallCNN``'s
    ``dropout``, WRN's ``drop_rate``, torchvision's MobileNet and EfficientNet classifiers),
    stochastic depth, or a hook of your own. Their draws then depend only on the seed, the
    epoch, the rank and the steps taken within the epoch, not on what earlier epochs drew, so
    a run resumed at an epoch's end repeats them exactly, with no RNG state in the checkpoint.
    Each process gets its own numbers.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = sample_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        torch.manual_seed(value)
        np.random.seed(value % 2**32)
        random.seed(value)


class TemperatureMonitor(L.Callback):
    """Log the CSWT temperature distribution and the per-class batch cosine once per epoch.

    **What is measured.** At every training step the callback takes the student and teacher
    logits the loss was called with (for a two-view loss, the weak view, where CSWT's
    temperatures come from) and computes, detached and without gradient:

    - the per-sample CSWT temperatures ``T_i`` with the loss's ``t_low``/``t_high`` (the
      defaults 2/6 when the loss has none, e.g. KD: then it is a "what CSWT would do"
      diagnostic);
    - the per-class cosine ``cos(P_s[:, j], P_t[:, j])`` of the batch predictions at the loss's
      ``temperature`` (4 when the loss has none), on the z-scored logits when the loss has
      ``logit_standardization`` switched on (as the loss's cosine terms; CSWT stays on the raw
      logits, as in the loss).

    At the end of each training epoch it logs, to every logger:

    - ``monitor/cswt_t_mean`` and the quantiles ``monitor/cswt_t_q10``, ``_q50``, ``_q90`` of
      all the epoch's ``T_i`` (exact, numpy's linear interpolation);
    - ``monitor/class_cos_min``, ``_mean``, ``_max``: over classes, of the epoch's per-class
      cosine (each class's cosine averaged over the steps, weighted by batch size);
    - ``monitor/class_cos/<j>`` for every class ``j`` when there are at most
      ``max_logged_classes`` classes; with more, the whole vector goes to ``class_cosine.csv``
      (columns ``epoch, class, cos``) in the log directory of the first CSV logger (the
      trainer's ``log_dir`` without one) instead.

    With :class:`~cskd_lightning.losses.CSKDLoss` the epoch means reproduce the loss's own
    ``train/cswt_t_mean`` and ``train/cos_mean`` (single process): the numbers are the ones the
    loss used, not a re-run.

    **Cost.** No extra forward pass: a forward hook on ``pl_module.loss`` reads the logits the
    step already computed. Per step: two softmaxes and two cosines on ``(B, C)`` logits, on the
    logits' device and without a host sync; the temperatures (``B`` floats a step) are kept
    on the device and copied to the host once per epoch.

    **Distributed training (DDP).** The metrics are synchronised, not rank-0 only: every
    process logs the same global values. When the loss gathers the batch across processes
    (``loss.gather``, true by default, or a loss without that attribute) the hook gathers the
    detached logits the same way (one extra all-gather of two ``(B, C)`` tensors per step), so
    the temperatures are those of the global batch, exactly as the loss computes them. With
    ``loss.gather = False`` each process uses its own slice, like the loss does, and the
    per-epoch results are combined across processes at the end of the epoch. The CSV file is
    written by global rank 0 only.

    Without a teacher (``pl_module.teacher is None`` or a teacher-free loss) it does nothing.

    Args:
        max_logged_classes: up to this many classes, one ``monitor/class_cos/<j>`` metric per
            class; above it, summary statistics plus ``class_cosine.csv``.
    """

    def __init__(self, max_logged_classes: int = 20) -> None:
        super().__init__()
        if max_logged_classes < 0:
            raise InputError(f"max_logged_classes must be >= 0; got {max_logged_classes}.")
        self.max_logged_classes = int(max_logged_classes)
        self.t_low = DEFAULT_T_LOW
        self.t_high = DEFAULT_T_HIGH
        self.cos_temperature = DEFAULT_COS_TEMPERATURE
        self.gather = True
        self.standardize = False
        self._handle: RemovableHandle | None = None
        self._trainer: L.Trainer | None = None
        self._csv_started = False
        self.reset()

    # --- accumulation (usable without a Trainer) --------------------------------------------
    def reset(self) -> None:
        """Forget the current epoch's statistics."""
        self._temps: list[Tensor] = []
        self._cos_sum: Tensor | None = None
        self._weight = 0  # samples seen (a host int: no device transfer per step)

    @torch.no_grad()
    def update(self, student_logits: Tensor, teacher_logits: Tensor) -> None:
        """Add one step's ``(B, C)`` logits (gathered across processes when ``self.gather``)."""
        s, t = student_logits.detach(), teacher_logits.detach()
        if self.gather and distributed_world_size() > 1:
            s, t = gather_batch(s), gather_batch(t)
        if s.shape[0] == 0:
            return
        temps = cswt_temperature(s, t, self.t_low, self.t_high)
        if self.standardize:
            s, t = functional.standardize_logits(s), functional.standardize_logits(t)
        cos = per_class_batch_cosine(s, t, self.cos_temperature) * s.shape[0]
        self._temps.append(temps.float())
        self._cos_sum = cos if self._cos_sum is None else self._cos_sum + cos
        self._weight += s.shape[0]

    def compute(self) -> dict[str, Any] | None:
        """The epoch's statistics, combined across processes; ``None`` before any step.

        Returns ``{"t_mean", "t_q10", "t_q50", "t_q90": float, "class_cos": np.ndarray (C,)}``.
        Every process must call it (it communicates under DDP with ``gather=False``).
        """
        reduce = not self.gather and distributed_world_size() > 1
        temps = torch.cat(self._temps) if self._temps else None
        cos_sum = self._cos_sum
        if temps is None or cos_sum is None:
            # DistributedSampler gives every process the same number of steps, so under DDP
            # either all processes have statistics here or none has.
            return None
        weight = torch.tensor(float(self._weight), device=cos_sum.device, dtype=cos_sum.dtype)
        if reduce:
            # Each process holds its own slice: pool the temperatures and sum the cosines.
            temps = gather_batch(temps)
            cos_sum = cos_sum.clone()
            dist.all_reduce(cos_sum)
            dist.all_reduce(weight)
        values = temps.double().cpu().numpy()
        q10, q50, q90 = np.quantile(values, QUANTILES)
        class_cos = (cos_sum / weight).double().cpu().numpy()
        return {
            "t_mean": float(values.mean()),
            "t_q10": float(q10),
            "t_q50": float(q50),
            "t_q90": float(q90),
            "class_cos": class_cos,
        }

    # --- reading the loss's inputs ----------------------------------------------------------
    def _loss_hook(
        self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any
    ) -> None:
        """Forward hook on the loss: take its (student, teacher) logits during training."""
        trainer = self._trainer
        if trainer is None or not trainer.training or not module.training:
            return
        student = args[0] if len(args) > 0 else kwargs.get("student_logits")
        teacher = args[1] if len(args) > 1 else kwargs.get("teacher_logits")
        if isinstance(student, (tuple, list)):  # two views: (weak, strong); CSWT uses weak
            student = student[0]
            teacher = teacher[0] if isinstance(teacher, (tuple, list)) else teacher
        if not isinstance(student, Tensor) or not isinstance(teacher, Tensor):
            return
        self.update(student, teacher)

    # --- Lightning hooks --------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = getattr(pl_module, "loss", None)
        teacher = getattr(pl_module, "teacher", None)
        if (
            not isinstance(loss, nn.Module)
            or teacher is None
            or not getattr(loss, "requires_teacher", True)
        ):
            rank_zero_info("TemperatureMonitor: no teacher (or no loss module): nothing to log.")
            return
        self.t_low = _positive(getattr(loss, "t_low", None), DEFAULT_T_LOW)
        self.t_high = _positive(getattr(loss, "t_high", None), DEFAULT_T_HIGH)
        if self.t_low > self.t_high:
            self.t_low, self.t_high = DEFAULT_T_LOW, DEFAULT_T_HIGH
        self.cos_temperature = _positive(getattr(loss, "temperature", None), 4.0)
        self.gather = bool(getattr(loss, "gather", True))
        self.standardize = bool(getattr(loss, "logit_standardization", False)) and hasattr(
            functional, "standardize_logits"
        )
        self._trainer = trainer
        self._csv_started = False
        self._handle = loss.register_forward_hook(self._loss_hook, with_kwargs=True)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reset()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._handle is None:
            return
        stats = self.compute()
        self.reset()
        if stats is None:
            return
        class_cos = stats.pop("class_cos")
        metrics = {f"{PREFIX}cswt_{k}": v for k, v in stats.items()}
        metrics[f"{PREFIX}class_cos_min"] = float(class_cos.min())
        metrics[f"{PREFIX}class_cos_mean"] = float(class_cos.mean())
        metrics[f"{PREFIX}class_cos_max"] = float(class_cos.max())
        if len(class_cos) <= self.max_logged_classes:
            metrics.update({f"{PREFIX}class_cos/{j}": float(c) for j, c in enumerate(class_cos)})
        elif trainer.is_global_zero:
            self._write_csv(trainer, trainer.current_epoch, class_cos)
        # Identical on every process already; sync_dist keeps Lightning's DDP checks quiet.
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._trainer = None
        self.reset()

    # --- the per-class CSV for many classes -------------------------------------------------
    @staticmethod
    def csv_path(trainer: L.Trainer) -> Path:
        """Where ``class_cosine.csv`` goes: the first CSV logger's directory, else log_dir."""
        for logger in trainer.loggers:
            if isinstance(logger, (CSVLogger, RunCSVLogger)):
                return Path(logger.log_dir) / CLASS_COSINE_CSV
        return Path(trainer.log_dir or trainer.default_root_dir) / CLASS_COSINE_CSV

    def _write_csv(self, trainer: L.Trainer, epoch: int, class_cos: np.ndarray) -> None:
        path = self.csv_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self._csv_started:
            # First write of this fit: keep earlier epochs only (a resumed run), drop the rest.
            kept = []
            if path.is_file():
                with path.open(newline="") as f:
                    kept = [row for row in csv.DictReader(f) if int(row["epoch"]) < epoch]
            with path.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["epoch", "class", "cos"])
                writer.writerows([row["epoch"], row["class"], row["cos"]] for row in kept)
            self._csv_started = True
        with path.open("a", newline="") as f:
            writer = csv.writer(f)
            writer.writerows([epoch, j, f"{c:.6g}"] for j, c in enumerate(class_cos))


def _positive(value: Any, default: float) -> float:
    """``value`` as a float if it is a finite positive number, else ``default``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) and value > 0 else default
