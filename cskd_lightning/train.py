"""``cskd-train``: train (or reuse) a teacher, distil a student, test it, write a summary.

Run ``cskd-train --help`` for the config groups, or ``cskd-train --cfg job`` to print the
composed config. ``python -m cskd_lightning.train`` is the same program.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from cskd_lightning.app import (
    instantiate_group,
    is_global_zero,
    optional_instantiate,
    run_task,
    to_float,
    write_json,
)
from cskd_lightning.logit_cache import build_logit_cache
from cskd_lightning.module import DistillationModule
from cskd_lightning.preflight import (
    check_batch_for_loss,
    check_class_counts,
    check_output_dir,
    check_per_process_batch,
    config_errors,
)
from cskd_lightning.resume import RunConfigRecorder, relevant_config, resolve_resume
from cskd_lightning.summary import print_summary
from cskd_lightning.teacher_stage import prepare_teacher

log = logging.getLogger("cskd_lightning")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train a student as ``cfg`` says and return the metrics (a sweeper reads from them).

    Steps: check the inputs (output directory, checkpoint to resume, class counts, batch size);
    seed; datamodule; teacher (given, cached or trained); student, loss and module; callbacks,
    loggers and trainer; fit (resuming ``ckpt_path``, see :mod:`cskd_lightning.resume`); test
    the best checkpoint; write ``student.pt`` and ``summary.json`` into the run directory; print
    a short table.
    """
    with config_errors():
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, Any]:
    started = time.time()
    output_dir = Path(cfg.paths.output_dir)
    # Checks first: a bad input fails before anything is written or trained.
    check_output_dir(output_dir, "hydra.run.dir")
    resume = resolve_resume(cfg, output_dir)
    if is_global_zero():
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = hydra.utils.instantiate(cfg.data.datamodule)
    loss = hydra.utils.instantiate(cfg.distill.loss)
    check_batch_for_loss(cfg, loss)
    check_class_counts(cfg, datamodule, hydra.utils.instantiate(cfg.pair.student.model))
    logit_cache = build_logit_cache(cfg, datamodule, loss)  # teacher.logit_cache=true
    teacher, teacher_info = prepare_teacher(cfg, datamodule, output_dir)

    L.seed_everything(cfg.seed, workers=True)
    student = hydra.utils.instantiate(cfg.pair.student.model)
    recipe = cfg.pair.student.recipe
    module = DistillationModule(
        student,
        teacher if loss.requires_teacher else None,
        loss,
        optimizer=optional_instantiate(recipe.get("optimizer")),
        scheduler=optional_instantiate(recipe.get("scheduler")),
        **cfg.get("module", {}),
    )
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=[
            *instantiate_group(cfg.get("callbacks")),
            RunConfigRecorder(relevant_config(cfg)),
            *([logit_cache] if logit_cache is not None else []),
        ],
        logger=instantiate_group(cfg.get("logger")) or False,
    )
    check_per_process_batch(cfg, loss, trainer.world_size)

    if cfg.get("train", True):
        trainer.fit(
            module,
            datamodule=datamodule,
            ckpt_path=str(resume.path) if resume else None,
            weights_only=not cfg.get("resume_trust_checkpoint", False),
        )
    metrics = {k: to_float(v) for k, v in trainer.callback_metrics.items()}

    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning("No best checkpoint was saved: testing the final weights.")
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update({k: to_float(v) for k, v in (results[0] if results else {}).items()})

    if trainer.is_global_zero:
        module.export_student(output_dir / "student.pt")
        summary = {
            "method": cfg.distill.name,
            "seed": cfg.seed,
            "data": cfg.data.name,
            "pair": cfg.pair.name,
            "teacher": {"model": cfg.pair.teacher.model.name, **teacher_info},
            "student": {
                "model": cfg.pair.student.model.name,
                "test_acc": metrics.get("test/acc"),
                "val_acc_best": metrics.get("val/acc_best"),
                "val_acc_last": metrics.get("val/acc"),
                "best_checkpoint": trainer.checkpoint_callback.best_model_path
                if trainer.checkpoint_callback
                else None,
            },
            "wall_time_s": round(time.time() - started, 2),
            "output_dir": str(output_dir.resolve()),
        }
        write_json(output_dir / "summary.json", summary)
        print_summary(summary)
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://cskd_lightning.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """The ``cskd-train`` console script."""
    if is_global_zero():
        log.debug("Config:\n%s", OmegaConf.to_yaml(cfg))
    return run_task(train, cfg)


if __name__ == "__main__":
    main()
