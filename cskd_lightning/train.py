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
from cskd_lightning.module import DistillationModule
from cskd_lightning.summary import print_summary
from cskd_lightning.teacher_stage import prepare_teacher

log = logging.getLogger("cskd_lightning")


def resolve_resume_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``ckpt_path`` as given, or for ``"last"`` this run's ``checkpoints/last.ckpt``."""
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        candidate = output_dir / "checkpoints" / "last.ckpt"
        if not candidate.is_file():
            raise FileNotFoundError(
                f"ckpt_path=last: no {candidate}. Resume inside the run's directory "
                "(hydra.run.dir=<that run dir>) or give the checkpoint's path."
            )
        return str(candidate)
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint at {ckpt_path}")
    return ckpt_path


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train a student as ``cfg`` says and return the metrics (a sweeper reads from them).

    Steps: seed; datamodule; teacher (given, cached or trained); student, loss and module;
    callbacks, loggers and trainer; fit; test the best checkpoint; write ``student.pt`` and
    ``summary.json`` into the run directory; print a short table.
    """
    started = time.time()
    output_dir = Path(cfg.paths.output_dir)
    if is_global_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    L.seed_everything(cfg.seed, workers=True)
    resume = resolve_resume_path(cfg.get("ckpt_path"), output_dir)

    datamodule = hydra.utils.instantiate(cfg.data.datamodule)
    loss = hydra.utils.instantiate(cfg.distill.loss)
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
    )
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=instantiate_group(cfg.get("callbacks")),
        logger=instantiate_group(cfg.get("logger")) or False,
    )

    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
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
