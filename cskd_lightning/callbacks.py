"""Training diagnostics and reproducibility as Lightning callbacks.

:class:`TemperatureMonitor` records, per training epoch, how the CSWT temperatures are spread
and how well the student's batch predictions line up with the teacher's, class by class.
Enable it from the command line with ``callbacks=monitor``.

:class:`EpochSeed` makes the randomness drawn from the global RNGs during training (dropout,
stochastic depth) a function of the seed and the epoch, so that a run resumed at an epoch's
end draws what the uninterrupted run drew (``cskd-train`` always adds it).

:class:`RunClock` counts a run's wall time over all its segments (a resumed run continues it).

:class:`ProgressLog` logs progress at a steady interval where no terminal shows a progress bar.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import time
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
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from cskd_lightning.data.sample_random import sample_seed
from cskd_lightning.errors import InputError
from cskd_lightning.loggers import RunCSVLogger
from cskd_lightning.losses.functional import (
    COS_EPS,
    cswt_from_similarity,
    sample_cosine,
    softened_probs,
    standardize_logits,
)

log = logging.getLogger(__name__)

PREFIX = "monitor/"
QUANTILES = (0.1, 0.5, 0.9)
CLASS_COSINE_CSV = "class_cosine.csv"
DEFAULT_T_LOW, DEFAULT_T_HIGH, DEFAULT_COS_TEMPERATURE = 2.0, 6.0, 4.0


class EpochStatistics(Metric):
    """What :class:`TemperatureMonitor` collects in an epoch, gathered across processes.

    A *group* is the batch one CSWT range and one set of batch cosines are taken over: a
    training step's global batch when the loss gathers across processes, each process's own
    slice when it does not. Each step adds, under its group key ``(step, rank)`` (``rank`` 0
    for a gathered loss, so every process's slice of a step shares the key):

    - ``similarity``: every sample's CSWT similarity ``c_i``, ``(B,)``;
    - ``class_sums``: ``(3, C)``, per class ``j`` the sums over the slice of
      ``P_s[i, j] P_t[i, j]``, ``P_s[i, j]^2`` and ``P_t[i, j]^2``;
    - ``step_key`` ``(2,)`` and ``step_size`` (``B``).

    They are list states that torchmetrics concatenates across processes (``"cat"``) when
    :meth:`compute` runs, so a step needs no communication at all. The sums are additive, so a
    group's sums over its processes give the global batch's cosine exactly, and the min and
    max of a group's ``c_i`` its CSWT range. Memory: ``3 C`` floats per step and one per
    sample.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("similarity", "class_sums", "step_key", "step_size"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, similarity: Tensor, class_sums: Tensor, key: tuple[int, int]) -> None:
        """Add one step's slice: ``similarity`` ``(B,)``, ``class_sums`` ``(3, C)``."""
        device = similarity.device
        self.similarity.append(similarity)
        self.class_sums.append(class_sums.unsqueeze(0))
        # Filled on the device (torch.tensor would copy host memory: a sync on an accelerator).
        step_key = torch.full((1, 2), key[0], dtype=torch.long, device=device)
        if key[1] != key[0]:
            step_key[:, 1] = key[1]
        self.step_key.append(step_key)
        self.step_size.append(
            torch.full((1,), similarity.shape[0], dtype=torch.long, device=device)
        )

    def compute(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c, c_min, c_max, class_cos)``: every sample's ``c_i`` with its group's min and
        max ``(N,)``, and the per-class cosine ``(C,)``, each group's weighted by its size."""
        c = dim_zero_cat(self.similarity)
        class_sums = dim_zero_cat(self.class_sums)
        # Processes concatenate in rank order, each in step order, for every state alike: the
        # samples of row k of step_key are the next step_size[k] entries of c.
        _, step_group = torch.unique(dim_zero_cat(self.step_key), dim=0, return_inverse=True)
        sizes = dim_zero_cat(self.step_size)
        sample_group = step_group.repeat_interleave(sizes)
        groups = int(step_group.max()) + 1

        def extreme(reduce: str) -> Tensor:
            out = c.new_zeros(groups).scatter_reduce(0, sample_group, c, reduce, include_self=False)
            return out[sample_group]

        sums = class_sums.new_zeros(groups, *class_sums.shape[1:])
        dot, sq_s, sq_t = sums.index_add_(0, step_group, class_sums).unbind(1)
        cos = dot / (sq_s.sqrt() * sq_t.sqrt() + COS_EPS)  # (groups, C): functional.cosine
        weight = torch.zeros(groups, dtype=cos.dtype, device=cos.device)
        weight.index_add_(0, step_group, sizes.to(cos.dtype))
        class_cos = (cos * weight[:, None]).sum(0) / weight.sum()
        return c, extreme("amin"), extreme("amax"), class_cos


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
    step already computed. Per step: three softmaxes and a few sums on ``(B, C)`` logits, on
    the logits' device and without a host sync; ``B + 3 C`` floats a step are kept on the
    device until the end of the epoch, when the temperatures are rebuilt and copied to the
    host.

    **Distributed training (DDP).** The metrics are synchronised, not rank-0 only: every
    process logs the same global values. Each process keeps its own slice's statistics
    (:class:`EpochStatistics`, a torchmetrics ``Metric``) and torchmetrics gathers them once,
    at the end of the epoch; no step communicates. When the loss gathers the batch across
    processes (``loss.gather``, true by default, or a loss without that attribute) the slices
    of a step are recombined into the global batch, so the temperatures and cosines are those
    of the global batch, exactly as the loss computes them. With ``loss.gather = False`` each
    process's slice stays a batch of its own, like the loss's. The CSV file is written by
    global rank 0 only.

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
        self.statistics = EpochStatistics()
        self.reset()

    # --- accumulation (usable without a Trainer) --------------------------------------------
    def reset(self) -> None:
        """Forget the current epoch's statistics."""
        self.statistics.reset()
        self._steps = 0

    @torch.no_grad()
    def update(self, student_logits: Tensor, teacher_logits: Tensor) -> None:
        """Add one step's ``(B, C)`` logits (this process's slice under DDP)."""
        s, t = student_logits.detach(), teacher_logits.detach()
        similarity = sample_cosine(s, t)  # CSWT's c_i, on the raw logits as in the loss
        if self.standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        ps = softened_probs(s, self.cos_temperature)
        pt = softened_probs(t, self.cos_temperature)
        sums = torch.stack([(ps * pt).sum(0), ps.square().sum(0), pt.square().sum(0)])
        # A gathered loss sees a step's slices as one batch: one key for all processes.
        distributed = dist.is_available() and dist.is_initialized()
        rank = dist.get_rank() if distributed and not self.gather else 0
        self.statistics.update(similarity, sums, (self._steps, rank))
        self._steps += 1

    def compute(self) -> dict[str, Any] | None:
        """The epoch's statistics, combined across processes; ``None`` before any sample.

        Returns ``{"t_mean", "t_q10", "t_q50", "t_q90": float, "class_cos": np.ndarray (C,)}``.
        Every process must call it (it communicates under DDP).
        """
        if self.statistics.update_count == 0:
            # DistributedSampler gives every process the same number of steps, so under DDP
            # either all processes have statistics here or none has.
            return None
        # reshape: torchmetrics hands one-element results back as 0-d tensors.
        c, c_min, c_max, class_cos = (v.reshape(-1) for v in self.statistics.compute())
        if c.numel() == 0:
            return None
        temps = cswt_from_similarity(c, c_min, c_max, self.t_low, self.t_high)
        values = temps.double().cpu().numpy()
        q10, q50, q90 = np.quantile(values, QUANTILES)
        return {
            "t_mean": float(values.mean()),
            "t_q10": float(q10),
            "t_q50": float(q50),
            "t_q90": float(q90),
            "class_cos": class_cos.double().cpu().numpy(),
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
        if student is None or teacher is None:
            return
        if getattr(module, "num_views", 1) > 1:  # (weak, strong) pairs; CSWT uses the weak view
            student, teacher = student[0], teacher[0]
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
        self.standardize = bool(getattr(loss, "logit_standardization", False))
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


class RunClock(L.Callback):
    """The run's wall time over all its segments (a resumed run continues the count).

    Its state, saved in every checkpoint, is the time from the first segment's start to that
    checkpoint; a resumed run adds its own time to the state of the checkpoint it resumed
    from. Work that was redone after a crash is counted once.
    """

    def __init__(self, started: float) -> None:
        self.started = float(started)
        self.before = 0.0
        self.segments = 1
        self._restored: dict[str, Any] | None = None

    def elapsed(self) -> float:
        """Seconds of this run so far, earlier segments included."""
        return self.before + time.time() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_s": self.elapsed(), "segments": self.segments}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Also called when a checkpoint is loaded for testing: only a resumed fit counts.
        self._restored = dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restored is not None:
            self.before = float(self._restored.get("elapsed_s", 0.0))
            self.segments = int(self._restored.get("segments", 1)) + 1
            self._restored = None


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class ProgressLog(L.Callback):
    """Progress as log lines, at a steady interval, where no terminal shows a progress bar
    (output to a file, ``nohup``, a cluster job): within an epoch, every ``interval_s``
    seconds, the batch reached and the time the epoch still needs; after an epoch (the first,
    the last, and one at least every ``interval_s``), its time, its metrics and an estimate of
    the time left, ``(max_epochs - epochs done) x mean time per epoch so far``.

    Lines go to the ``cskd_lightning`` logger (``cskd-train`` writes them to the console and
    ``train.log``), from the global-zero process only.

    Args:
        interval_s: the most seconds between two lines while training runs.
        only_without_terminal: stay silent when standard output is a terminal (Lightning's
            progress bar shows the same there); ``False`` logs always.
        metrics: the metric names shown after an epoch, when logged.
    """

    def __init__(
        self,
        interval_s: float = 60.0,
        only_without_terminal: bool = True,
        metrics: tuple[str, ...] = ("train/loss", "val/acc", "val/acc_best"),
    ) -> None:
        self.interval_s = float(interval_s)
        self.only_without_terminal = bool(only_without_terminal)
        self.metrics = tuple(metrics)
        # Not self.log: Lightning sets that attribute of every callback to the module's log().
        self.lines = logging.getLogger("cskd_lightning")
        self._last = self._epoch_start = self._fit_start = 0.0
        self._epochs_timed: list[float] = []
        self._pending: str | None = None

    def _active(self, trainer: L.Trainer) -> bool:
        import sys

        if not trainer.is_global_zero:
            return False
        return not (self.only_without_terminal and sys.stdout.isatty())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = self._last = time.monotonic()
        self._epochs_timed, self._pending = [], None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_line(trainer)
        self._epoch_start = time.monotonic()

    def _epochs(self, trainer: L.Trainer) -> str:
        total = trainer.max_epochs
        return f"{trainer.current_epoch + 1}/{total}" if total and total > 0 else "?"

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s or not self._active(trainer):
            return
        self._last = now
        done = args[-1] + 1 if args else 0  # batch_idx
        batches = trainer.num_training_batches
        line = f"epoch {self._epochs(trainer)}: batch {done}"
        if isinstance(batches, int) and batches > 0:
            per_batch = (now - self._epoch_start) / max(done, 1)
            line += (
                f"/{batches} ({100 * done / batches:.0f}%), {per_batch:.2f} s per batch, "
                f"about {_duration(per_batch * (batches - done))} left in this epoch"
            )
        self.lines.info(line)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The module logs its epoch's training metrics after the callbacks' hook: the epoch's
        # line is written at the next epoch's start or at the end of training.
        self._epochs_timed.append(time.monotonic() - self._epoch_start)
        self._pending = self._epochs(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_line(trainer, final=True)

    def _epoch_line(self, trainer: L.Trainer, final: bool = False) -> None:
        pending, self._pending = self._pending, None
        if pending is None or not self._active(trainer):
            return
        now = time.monotonic()
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        done = len(self._epochs_timed)
        if not (done == 1 or final or now - self._last >= self.interval_s):
            return
        self._last = now
        values = trainer.callback_metrics
        shown = ", ".join(
            f"{name} {float(values[name]):.4f}" for name in self.metrics if name in values
        )
        mean = sum(self._epochs_timed) / done
        remaining = total - trainer.current_epoch if total else None
        left = f"; about {_duration(mean * remaining)} left" if remaining and not final else ""
        self.lines.info(
            "epoch %s done in %s (%s per epoch)%s%s",
            pending,
            _duration(self._epochs_timed[-1]),
            _duration(mean),
            f": {shown}" if shown else "",
            left,
        )
