"""``cskd-train``: train (or reuse) a teacher, distil a student, test it, write a summary.

``cskd-train --help`` lists the config groups; ``python -m cskd_lightning.app.train`` is the
same program. A run is three steps: :func:`preflight` (every check and build; nothing written),
:func:`run` (``config.yaml``, the teacher, fit, test) and :func:`record` (``student.pt``,
``summary.json``, the table).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cskd_lightning.app import checks
from cskd_lightning.app import run_dir as files
from cskd_lightning.app.environment import (
    ThreadChoice,
    choose_threads,
    environment_record,
    log_threads,
)
from cskd_lightning.app.jobs import (
    checks_passed,
    instantiate_group,
    is_global_zero,
    optional_instantiate,
    run_task,
    to_float,
)
from cskd_lightning.app.records import (
    ExistingRun,
    inspect_run_dir,
    make_summary,
    print_summary,
    write_json,
    write_run_config,
)
from cskd_lightning.app.resume import (
    ResumeChoice,
    RunConfigRecorder,
    relevant_config,
    resolve_resume,
    resume_if_requeued,
)
from cskd_lightning.app.teacher_stage import build_logit_cache, build_teacher, prepare_teacher
from cskd_lightning.callbacks import EpochSeed, RunClock
from cskd_lightning.checkpoint_io import AtomicCheckpointIO, CommitCheckpointsAfterLogging
from cskd_lightning.export import save_student
from cskd_lightning.loggers import RunCSVLogger
from cskd_lightning.module import DistillationModule

log = logging.getLogger("cskd_lightning")


@dataclass
class Preflight:
    """Everything a run needs, built and checked, with nothing written yet."""

    output_dir: Path
    threads: ThreadChoice
    datamodule: Any
    loss: Any
    features: dict[str, Any] | None
    teacher: tuple[nn.Module, Path | None]
    loggers: list[Any]
    trainer: L.Trainer
    resume: ResumeChoice | None
    existing: ExistingRun
    selection: str
    clock: RunClock


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train a student as ``cfg`` says and return the metrics (a sweeper reads from them). A
    finished run in the run directory is reported, not redone."""
    with checks.config_errors():
        ready = preflight(cfg)
        if ready.existing.finished:
            done = "%s holds this run, finished: nothing to do (its summary follows)."
            log.info(done, ready.output_dir)
            print_summary(ready.existing.summary)
            return dict(ready.existing.summary.get("metrics", {}))
        module, metrics, teacher_info = run(cfg, ready)
        if ready.trainer.is_global_zero:
            record(cfg, ready, module, metrics, teacher_info)
        return metrics


def preflight(cfg: DictConfig) -> Preflight:
    """Every check, before anything is written or trained: the run directory is writable; every
    object the config builds (loggers, datamodule, loss, models, teacher weights, trainer); class
    counts and batch sizes; the data; the teacher cache; the checkpoint to resume; what the run
    directory holds; that an optimising sweep does not tune on the test set."""
    started = time.time()
    output_dir = Path(cfg.paths.output_dir)
    checks.check_output_dir(output_dir, "hydra.run.dir")
    resume_if_requeued(cfg, output_dir)  # a SLURM requeue continues its run
    threads = choose_threads(cfg)
    loggers = checks.build_loggers(cfg)
    checks.check_module_class(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data.datamodule)
    loss = hydra.utils.instantiate(cfg.distill.loss)
    checks.check_batch_for_loss(cfg, loss)
    checks.check_class_counts(cfg, datamodule, hydra.utils.instantiate(cfg.pair.student.model))
    features = checks.feature_layers(cfg, loss)  # a feature method: the pair's layers, checked
    teacher = build_teacher(cfg)
    logit_cache = build_logit_cache(cfg, datamodule, loss)  # teacher.logit_cache=true
    clock = RunClock(started)
    checks.check_accelerator(cfg)
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=[
            CommitCheckpointsAfterLogging(files.checkpoint_dir(output_dir)),
            *instantiate_group(cfg.get("callbacks")),
            RunConfigRecorder(relevant_config(cfg)),
            EpochSeed(cfg.seed),  # dropout & co. resume exactly (no RNG state is saved)
            clock,
            *([logit_cache] if logit_cache is not None else []),
        ],
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )
    checks.check_per_process_batch(cfg, loss, trainer.world_size)
    checks.check_world_size(datamodule, trainer.world_size)
    checks.check_data(datamodule)
    checks.check_cache_dir(cfg)
    resume = resolve_resume(cfg, output_dir)
    # The other processes of a DDP run start after rank 0 has begun writing the run directory.
    existing = inspect_run_dir(cfg, output_dir) if is_global_zero() else ExistingRun()
    selection = checks.selection_of(datamodule)
    if not existing.finished:
        checks.check_tuning_selection(cfg, selection)
    return Preflight(
        output_dir, threads, datamodule, loss, features, teacher, loggers, trainer, resume,
        existing, selection, clock,
    )  # fmt: skip


def run(cfg: DictConfig, ready: Preflight) -> tuple[DistillationModule, dict[str, Any], dict]:
    """Write ``config.yaml`` (a new run), give the teacher its weights, fit the student
    (resuming ``ckpt_path``) and test the best checkpoint. Returns the student's module, the
    last value of every metric and the teacher's record."""
    checks_passed()
    log_threads(ready.threads)
    if is_global_zero() and ready.existing.config is None:
        write_run_config(cfg, ready.output_dir)
    resume, loggers, trainer = ready.resume, ready.loggers, ready.trainer
    csv_logs = [lg for lg in loggers if isinstance(lg, RunCSVLogger)]
    for csv_log in csv_logs:
        kept = csv_log.keep_history(resume.epoch if resume else None)
        if kept and resume:
            message = "Kept %d rows of %s (epochs up to %s)."
            log.info(message, kept, csv_log.metrics_file, resume.epoch)
    if loggers and is_global_zero():  # hparams.yaml, TensorBoard's HPARAMS, W&B, MLflow
        hparams = OmegaConf.to_container(cfg, resolve=True)
        for logger in loggers:
            logger.log_hyperparams(hparams)
    teacher, teacher_info = prepare_teacher(cfg, ready.datamodule, ready.output_dir, ready.teacher)

    L.seed_everything(cfg.seed, workers=True)
    recipe = cfg.pair.student.recipe
    module: DistillationModule = hydra.utils.instantiate(  # conf/module: a subclass, perhaps
        cfg.module,
        student=hydra.utils.instantiate(cfg.pair.student.model),
        teacher=teacher if ready.loss.requires_teacher else None,
        loss=ready.loss,
        optimizer=optional_instantiate(recipe.get("optimizer")),
        scheduler=optional_instantiate(recipe.get("scheduler")),
        **({"features": ready.features} if ready.features is not None else {}),
    )
    if cfg.get("train", True):
        trainer.fit(
            module,
            datamodule=ready.datamodule,
            ckpt_path=str(resume.path) if resume else None,
            weights_only=not cfg.get("resume_trust_checkpoint", False),
        )
    # The last value of every metric: from the whole record (a run resumed at its very end
    # trains no further epoch, so Lightning's callback_metrics are empty), then this segment's.
    metrics = csv_logs[0].last_values() if csv_logs else {}
    if "val/acc_best" not in metrics:  # no CSV record: the best so far is in the module's state
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "compute before update" after a restore
            metrics["val/acc_best"] = to_float(module.val_acc_best.compute())
    metrics.update({k: to_float(v) for k, v in trainer.callback_metrics.items()})
    if cfg.get("test", True):
        best = _best_checkpoint(trainer)
        if not best:
            log.warning("No best checkpoint was saved: testing the final weights.")
        results = trainer.test(
            module, datamodule=ready.datamodule, ckpt_path=best or None, verbose=False
        )
        metrics.update({k: to_float(v) for k, v in (results[0] if results else {}).items()})
    return module, metrics, teacher_info


def _best_checkpoint(trainer: L.Trainer) -> str:
    return trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""


def record(
    cfg: DictConfig,
    ready: Preflight,
    module: DistillationModule,
    metrics: dict[str, Any],
    teacher_info: dict[str, Any],
) -> None:
    """Write ``student.pt`` (a :mod:`cskd_lightning.export` artifact) and ``summary.json``, and
    print the summary's table."""
    output_dir, best = ready.output_dir, _best_checkpoint(ready.trainer)
    run_info = {
        "method": cfg.distill.name,
        "seed": cfg.seed,
        "data": cfg.data.name,
        "teacher": cfg.pair.teacher.model.name,
        "test_acc": metrics.get("test/acc"),
        "val_acc_best": metrics.get("val/acc_best"),
    }
    model_cfg = OmegaConf.to_container(cfg.pair.student.model, resolve=True)
    save_student(
        output_dir / files.STUDENT,
        module.student,
        model_cfg,
        module.num_classes,
        ready.datamodule,
        run=run_info,
    )
    summary = make_summary(
        cfg, output_dir, metrics, teacher_info, best, ready.selection, ready.clock
    )
    summary["environment"] = environment_record(cfg, ready.threads)
    write_json(output_dir / files.SUMMARY, summary)
    print_summary(summary)


@hydra.main(version_base="1.3", config_path="pkg://cskd_lightning.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """The ``cskd-train`` console script."""
    if is_global_zero():
        log.debug("Config:\n%s", OmegaConf.to_yaml(cfg))
    return run_task(train, cfg)


if __name__ == "__main__":
    main()
