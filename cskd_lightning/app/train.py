"""``cskd-train``: train (or reuse) a teacher, distil a student, test it, write a summary, in
three steps: :func:`preflight` (every check and build; nothing written), :func:`run`
(``config.yaml``, the teacher, fit, test) and :func:`record` (``student.pt``, ``summary.json``)."""

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

from cskd_lightning.app import checks, environment, jobs, resume
from cskd_lightning.app import run_dir as run_files
from cskd_lightning.app.teacher_stage import prepare_teacher
from cskd_lightning.callbacks import EpochSeed, RunClock
from cskd_lightning.checkpoint_io import AtomicCheckpointIO, CommitCheckpointsAfterLogging
from cskd_lightning.errors import config_keys
from cskd_lightning.export import save_student
from cskd_lightning.loggers import RunCSVLogger
from cskd_lightning.module import DistillationModule

log = logging.getLogger("cskd_lightning")


@dataclass
class Preflight:
    """A run built and checked, with nothing written yet."""

    output_dir: Path
    threads: environment.ThreadChoice
    inputs: checks.Inputs
    resume: resume.ResumeChoice | None
    existing: run_files.ExistingRun
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
            run_files.print_summary(ready.existing.summary)
            return dict(ready.existing.summary.get("metrics", {}))
        module, metrics, teacher_info = run(cfg, ready)
        if ready.inputs.trainer.is_global_zero:
            record(cfg, ready, module, metrics, teacher_info)
        return metrics


def preflight(cfg: DictConfig) -> Preflight:
    """Every check and build, before anything is written or trained."""
    clock = RunClock(time.time())
    output_dir = Path(cfg.paths.output_dir)
    checks.check_output_dir(output_dir, "hydra.run.dir")
    resume.resume_if_requeued(cfg, output_dir)  # a SLURM requeue continues its run
    threads = environment.choose_threads(cfg)
    L.seed_everything(cfg.seed, workers=True)

    def make_trainer(loggers: list[Any], callbacks: list[Any]) -> L.Trainer:
        return hydra.utils.instantiate(
            cfg.trainer,
            callbacks=[
                CommitCheckpointsAfterLogging(output_dir / run_files.CHECKPOINTS),
                *jobs.instantiate_group(cfg.get("callbacks")),
                resume.RunConfigRecorder(resume.relevant_config(cfg)),
                EpochSeed(cfg.seed),  # dropout & co. resume exactly (no RNG state is saved)
                clock,
                *callbacks,
            ],
            logger=loggers or False,
            plugins=[AtomicCheckpointIO()],
        )

    inputs = checks.check_inputs(cfg, make_trainer)
    resume_from = resume.resolve_resume(cfg, output_dir)
    # The other processes of a DDP run start after rank 0 has begun writing the run directory.
    zero = jobs.is_global_zero()
    existing = run_files.inspect_run_dir(cfg, output_dir) if zero else run_files.ExistingRun()
    selection = checks.selection_of(inputs.datamodule)
    if not existing.finished:
        checks.check_tuning_selection(cfg, selection)
    return Preflight(output_dir, threads, inputs, resume_from, existing, selection, clock)


# The config keys of the library arguments whose errors can only show during the fit.
RUNTIME_KEYS = {"two_view": "data.datamodule.two_view", "num_samples": "distill.loss.num_samples"}


def run(cfg: DictConfig, ready: Preflight) -> tuple[DistillationModule, dict[str, Any], dict]:
    """Write ``config.yaml`` (a new run), give the teacher its weights, fit the student
    (resuming ``ckpt_path``), test the best checkpoint: the module, the metrics, the teacher's
    record."""
    jobs.checks_passed()
    environment.log_threads(ready.threads)
    if jobs.is_global_zero() and ready.existing.config is None:
        run_files.write_run_config(cfg, ready.output_dir)
    inputs, trainer = ready.inputs, ready.inputs.trainer
    history = _open_logs(cfg, inputs.loggers, ready.resume)
    teacher, teacher_info = prepare_teacher(
        cfg, inputs.datamodule, ready.output_dir, inputs.teacher
    )
    L.seed_everything(cfg.seed, workers=True)
    recipe = cfg.pair.student.recipe
    module: DistillationModule = hydra.utils.instantiate(  # conf/module: a subclass, perhaps
        cfg.module,
        student=hydra.utils.instantiate(cfg.pair.student.model),
        teacher=teacher if inputs.loss.requires_teacher else None,
        loss=inputs.loss,
        optimizer=hydra.utils.instantiate(recipe.get("optimizer")),  # None: none
        scheduler=hydra.utils.instantiate(recipe.get("scheduler")),
        **({"features": inputs.features} if inputs.features is not None else {}),
    )
    if cfg.get("train", True):
        with config_keys(RUNTIME_KEYS):  # errors the library raises once the fit has begun
            trainer.fit(
                module,
                datamodule=inputs.datamodule,
                ckpt_path=str(ready.resume.path) if ready.resume else None,
                weights_only=not cfg.get("resume_trust_checkpoint", False),
            )
    # The last value of every metric: from the whole record (a run resumed at its very end
    # trains no further epoch, so Lightning's callback_metrics are empty), then this segment's.
    metrics = history.last_values() if history is not None else {}
    if "val/acc_best" not in metrics:  # no CSV record: the best so far is in the module's state
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "compute before update" after a restore
            metrics["val/acc_best"] = jobs.to_float(module.val_acc_best.compute())
    results = [dict(trainer.callback_metrics)]
    if cfg.get("test", True):
        best = _best_checkpoint(trainer)
        if not best:
            log.warning("No best checkpoint was saved: testing the final weights.")
        results += trainer.test(  # [] with trainer.limit_test_batches=0
            module, datamodule=inputs.datamodule, ckpt_path=best or None, verbose=False
        )
    for result in results:
        metrics.update({k: jobs.to_float(v) for k, v in result.items()})
    return module, metrics, teacher_info


def _open_logs(
    cfg: DictConfig, loggers: list[Any], resume_from: resume.ResumeChoice | None
) -> RunCSVLogger | None:
    """Keep the CSV rows of the epochs a resumed run did, give every logger the resolved config
    as its hyperparameters; return the CSV log (the run's history)."""
    csv_logs = [lg for lg in loggers if isinstance(lg, RunCSVLogger)]
    through_epoch = resume_from.epoch if resume_from else None  # None: a new run keeps none
    for csv_log in csv_logs:
        if kept := csv_log.keep_history(through_epoch):
            log.info(
                "Kept %d rows of %s (epochs up to %s).", kept, csv_log.metrics_file, through_epoch
            )
    if loggers and jobs.is_global_zero():
        hparams = OmegaConf.to_container(cfg, resolve=True)
        for logger in loggers:
            logger.log_hyperparams(hparams)
    return csv_logs[0] if csv_logs else None


def _best_checkpoint(trainer: L.Trainer) -> str:
    """The best checkpoint's path; ``""``: none saved, or checkpointing off."""
    return getattr(trainer.checkpoint_callback, "best_model_path", "")


def record(
    cfg: DictConfig,
    ready: Preflight,
    module: DistillationModule,
    metrics: dict[str, Any],
    teacher_info: dict[str, Any],
) -> None:
    """Write ``student.pt`` (a :mod:`cskd_lightning.export` artifact) and ``summary.json``, and
    print the summary's table."""
    out, best = ready.output_dir, _best_checkpoint(ready.inputs.trainer)
    run_info = {"method": cfg.distill.name, "seed": cfg.seed, "data": cfg.data.name}
    run_info["teacher"] = cfg.pair.teacher.model.name
    run_info |= {"test_acc": metrics.get("test/acc"), "val_acc_best": metrics.get("val/acc_best")}
    model_cfg = OmegaConf.to_container(cfg.pair.student.model, resolve=True)
    path, datamodule, clock = out / run_files.STUDENT, ready.inputs.datamodule, ready.clock
    save_student(path, module.student, model_cfg, module.num_classes, datamodule, run=run_info)
    summary = run_files.make_summary(cfg, out, metrics, teacher_info, best, ready.selection, clock)
    summary["environment"] = environment.environment_record(cfg, ready.threads)
    run_files.write_json(out / run_files.SUMMARY, summary)
    run_files.print_summary(summary)


@hydra.main(version_base="1.3", config_path="pkg://cskd_lightning.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """The ``cskd-train`` console script."""
    if jobs.is_global_zero():
        log.debug("Config:\n%s", OmegaConf.to_yaml(cfg))
    return jobs.run_task(train, cfg)


if __name__ == "__main__":
    main()
