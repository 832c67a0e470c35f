"""``cskd-eval``: test a trained student from a ``cskd-train`` run directory.

``cskd-eval run_dir=outputs/train/runs/<time>`` rebuilds the data and the student from the run's
saved config, loads its best checkpoint (or ``ckpt_path=...``: a ``.ckpt`` or ``student.pt``)
and prints and returns the test metrics; they are also written to ``<run_dir>/eval/metrics.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from cskd_lightning.app import quiet_logs, to_float, write_json
from cskd_lightning.checkpoints import load_weights
from cskd_lightning.losses import CELoss
from cskd_lightning.module import DistillationModule

log = logging.getLogger("cskd_lightning")


def find_run_checkpoint(run_dir: Path) -> Path:
    """A run's best checkpoint (``checkpoints/best-*.ckpt``), else ``last.ckpt``, ``student.pt``."""
    candidates = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    candidates += [run_dir / "checkpoints" / "last.ckpt", run_dir / "student.pt"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"No checkpoint in {run_dir} (looked for checkpoints/best-*.ckpt, checkpoints/last.ckpt "
        "and student.pt). Is it a cskd-train run directory?"
    )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test the student of ``cfg.run_dir``; return the test metrics."""
    run_dir = Path(cfg.run_dir)
    # config.yaml is written once the run's checks pass; .hydra/ holds Hydra's own copy.
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(
            f"No config.yaml in {run_dir}: run_dir must be a cskd-train run directory."
        )
    run_cfg = OmegaConf.load(saved)
    run_cfg.paths.output_dir = str(run_dir)
    ckpt = Path(cfg.ckpt_path) if cfg.get("ckpt_path") else find_run_checkpoint(run_dir)

    L.seed_everything(int(run_cfg.seed), workers=True)
    datamodule = hydra.utils.instantiate(run_cfg.data.datamodule)
    student = hydra.utils.instantiate(run_cfg.pair.student.model)
    load_weights(student, ckpt)
    log.info("Testing %s from %s", run_cfg.pair.student.model.name, ckpt)
    trainer = L.Trainer(
        accelerator=cfg.get("accelerator", "cpu"),
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    results = trainer.test(DistillationModule(student, None, CELoss()), datamodule=datamodule)
    metrics = {k: to_float(v) for k, v in (results[0] if results else {}).items()}
    write_json(run_dir / "eval" / "metrics.json", {"checkpoint": str(ckpt), **metrics})
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://cskd_lightning.conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    """The ``cskd-eval`` console script."""
    quiet_logs()
    try:
        evaluate(cfg)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"Error: {err}") from None


if __name__ == "__main__":
    main()
