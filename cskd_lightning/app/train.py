"""``cskd-train``: train (or reuse) a teacher, distil a student, test it, write a summary.

Run ``cskd-train --help`` for the config groups, or ``cskd-train --cfg job`` to print the
composed config. ``python -m cskd_lightning.app.train`` is the same program.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from cskd_lightning.app.checks import (
    check_accelerator,
    check_batch_for_loss,
    check_cache_dir,
    check_class_counts,
    check_data,
    check_logger_packages,
    check_module_class,
    check_output_dir,
    check_per_process_batch,
    check_tuning_selection,
    check_world_size,
    config_errors,
    feature_layers,
    selection_of,
)
from cskd_lightning.app.environment import choose_threads, environment_record, log_threads
from cskd_lightning.app.jobs import (
    checks_passed,
    instantiate_group,
    is_global_zero,
    optional_instantiate,
    run_task,
    to_float,
)
from cskd_lightning.app.records import (
    RUN_SUMMARY,
    ExistingRun,
    inspect_run_dir,
    make_summary,
    print_summary,
    write_json,
    write_run_config,
)
from cskd_lightning.app.resume import (
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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train a student as ``cfg`` says and return the metrics (a sweeper reads from them).

    1. Checks, before anything is written or trained: the run directory is writable; every
       object the config builds (datamodule, loss, models, teacher weights, loggers, trainer);
       class counts and batch sizes; the data itself; the teacher cache; the checkpoint to
       resume; what the run directory holds (the same settings, or nothing: a finished run is
       reported, not redone, and an unfinished one only resumed); and that an optimising sweep
       does not tune on the test set.
    2. Then: ``config.yaml`` (a new run), the teacher (given, cached or trained), the student
       run (fit, resuming ``ckpt_path``; see :mod:`cskd_lightning.app.resume`), the test of the
       best checkpoint, ``student.pt`` (a :mod:`cskd_lightning.export` artifact) and
       ``summary.json``, and a short table.
    """
    with config_errors():
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, Any]:
    started = time.time()
    output_dir = Path(cfg.paths.output_dir)
    # --- 1. checks: a bad input fails here, with the run directory as it was -----------------
    check_output_dir(output_dir, "hydra.run.dir")
    resume_if_requeued(cfg, output_dir)  # a SLURM requeue continues its run
    threads = choose_threads(cfg)
    check_logger_packages(cfg)
    check_module_class(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data.datamodule)
    loss = hydra.utils.instantiate(cfg.distill.loss)
    check_batch_for_loss(cfg, loss)
    check_class_counts(cfg, datamodule, hydra.utils.instantiate(cfg.pair.student.model))
    features = feature_layers(cfg, loss)  # a feature method: the pair's layers, checked
    teacher = build_teacher(cfg)
    logit_cache = build_logit_cache(cfg, datamodule, loss)  # teacher.logit_cache=true
    clock = RunClock(started)
    loggers = instantiate_group(cfg.get("logger"))
    check_accelerator(cfg)
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=[
            CommitCheckpointsAfterLogging(output_dir / "checkpoints"),
            *instantiate_group(cfg.get("callbacks")),
            RunConfigRecorder(relevant_config(cfg)),
            EpochSeed(cfg.seed),  # dropout & co. resume exactly (no RNG state is saved)
            clock,
            *([logit_cache] if logit_cache is not None else []),
        ],
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )
    check_per_process_batch(cfg, loss, trainer.world_size)
    check_world_size(datamodule, trainer.world_size)
    check_data(datamodule)
    check_cache_dir(cfg)
    resume = resolve_resume(cfg, output_dir)
    # The other processes of a DDP run start after rank 0 has begun writing the run directory.
    existing = inspect_run_dir(cfg, output_dir) if is_global_zero() else ExistingRun()
    if existing.finished:
        log.info("%s holds this run, finished: nothing to do (its summary follows).", output_dir)
        print_summary(existing.summary)
        return dict(existing.summary.get("metrics", {}))
    selection = selection_of(datamodule)
    check_tuning_selection(cfg, selection)

    # --- 2. the run ---------------------------------------------------------------------------
    checks_passed()
    log_threads(threads)
    if is_global_zero() and existing.config is None:
        write_run_config(cfg, output_dir)
    for logger in loggers:
        if isinstance(logger, RunCSVLogger):
            kept = logger.keep_history(resume.epoch if resume else None)
            if kept and resume:
                log.info(
                    "Kept %d rows of %s (epochs up to %s).", kept, logger.metrics_file, resume.epoch
                )
    log_run_hyperparams(loggers, cfg)
    teacher_model, teacher_info = prepare_teacher(cfg, datamodule, output_dir, teacher)

    L.seed_everything(cfg.seed, workers=True)
    student = hydra.utils.instantiate(cfg.pair.student.model)
    recipe = cfg.pair.student.recipe
    # The module group (conf/module): DistillationModule or a subclass (module._target_).
    module: DistillationModule = hydra.utils.instantiate(
        cfg.module,
        student=student,
        teacher=teacher_model if loss.requires_teacher else None,
        loss=loss,
        optimizer=optional_instantiate(recipe.get("optimizer")),
        scheduler=optional_instantiate(recipe.get("scheduler")),
        **({"features": features} if features is not None else {}),
    )
    if cfg.get("train", True):
        trainer.fit(
            module,
            datamodule=datamodule,
            ckpt_path=str(resume.path) if resume else None,
            weights_only=not cfg.get("resume_trust_checkpoint", False),
        )
    # The last value of every metric: from the whole record (a run resumed at its very end
    # trains no further epoch, so Lightning's callback_metrics are empty), then this segment's.
    history = next((lg for lg in loggers if isinstance(lg, RunCSVLogger)), None)
    metrics = history.last_values() if history is not None else {}
    if "val/acc_best" not in metrics:  # no CSV record: the best so far is in the module's state
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "compute before update" after a restore
            metrics["val/acc_best"] = to_float(module.val_acc_best.compute())
    metrics.update({k: to_float(v) for k, v in trainer.callback_metrics.items()})

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.get("test", True):
        if not best:
            log.warning("No best checkpoint was saved: testing the final weights.")
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update({k: to_float(v) for k, v in (results[0] if results else {}).items()})

    if trainer.is_global_zero:
        save_student(
            output_dir / "student.pt",
            module.student,
            OmegaConf.to_container(cfg.pair.student.model, resolve=True),
            module.num_classes,
            datamodule,
            run={
                "method": cfg.distill.name,
                "seed": cfg.seed,
                "data": cfg.data.name,
                "teacher": cfg.pair.teacher.model.name,
                "test_acc": metrics.get("test/acc"),
                "val_acc_best": metrics.get("val/acc_best"),
            },
        )
        summary = make_summary(cfg, output_dir, metrics, teacher_info, best, selection, clock)
        summary["environment"] = environment_record(cfg, threads)
        write_json(output_dir / RUN_SUMMARY, summary)
        print_summary(summary)
    return metrics


def log_run_hyperparams(loggers: list[Any], cfg: DictConfig) -> None:
    """Give every logger the run's resolved config as its hyperparameters (``hparams.yaml``
    of the CSV log, TensorBoard's HPARAMS tab, the W&B run config, MLflow params)."""
    if not loggers or not is_global_zero():
        return
    hparams = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(hparams)


@hydra.main(version_base="1.3", config_path="pkg://cskd_lightning.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """The ``cskd-train`` console script."""
    if is_global_zero():
        log.debug("Config:\n%s", OmegaConf.to_yaml(cfg))
    return run_task(train, cfg)


if __name__ == "__main__":
    main()
