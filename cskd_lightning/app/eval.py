"""``cskd-eval run_dir=<run>``: the run's student (its best checkpoint, or ``ckpt_path=``: a
``.ckpt`` or ``student.pt``) tested on its data; the metrics in ``<run_dir>/eval/metrics.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Column, Table

from cskd_lightning.app import run_dir as run_files
from cskd_lightning.app.checks import DATA_KEYS, config_errors
from cskd_lightning.app.environment import choose_threads, log_threads
from cskd_lightning.app.jobs import exit_on_input_error, quiet_logs, to_float
from cskd_lightning.app.run_dir import write_json
from cskd_lightning.checkpoints import load_weights, read_checkpoint
from cskd_lightning.errors import MissingInputError, config_keys
from cskd_lightning.losses import CELoss
from cskd_lightning.module import DistillationModule

log = logging.getLogger("cskd_lightning")


def find_run_checkpoint(run_dir: Path) -> Path:
    """The checkpoint the run's own test used (``summary.json``'s, relative to the run
    directory); without a summary the best one ``last.ckpt`` records, ``last.ckpt``, or
    ``student.pt``."""
    summary_file = run_dir / run_files.SUMMARY
    if summary_file.is_file():
        named = json.loads(summary_file.read_text()).get("student", {}).get("best_checkpoint")
        if named:
            path = run_dir / named  # an absolute `named` stays as it is
            if not path.is_file():
                raise MissingInputError(
                    f"{summary_file} names the best checkpoint {named}, but {path} is not there. "
                    "Give the file to test with ckpt_path=<file>."
                )
            return path
    last = run_dir / run_files.CHECKPOINTS / "last.ckpt"
    if last.is_file():
        for key, state in read_checkpoint(last).get("callbacks", {}).items():
            if "ModelCheckpoint" in key and isinstance(state, dict) and state.get("monitor"):
                best = last.parent / Path(str(state.get("best_model_path") or "")).name
                if best.is_file():  # no best yet: "" names the folder
                    return best
        return last
    if (run_dir / run_files.STUDENT).is_file():
        return run_dir / run_files.STUDENT
    raise MissingInputError(
        f"No checkpoint in {run_dir} (looked for summary.json's best checkpoint, "
        "checkpoints/last.ckpt and student.pt). Is it a cskd-train run directory?"
    )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test the student of ``cfg.run_dir``; print and return the test metrics (accuracies as
    ``97.22%``)."""
    run_dir = Path(cfg.run_dir)
    saved = (run_dir / run_files.CONFIG, run_dir / run_files.HYDRA_CONFIG)  # else Hydra's copy
    saved = next((path for path in saved if path.is_file()), None)
    if saved is None:
        raise MissingInputError(
            f"No config.yaml in {run_dir}: run_dir must be a cskd-train run directory."
        )
    run_cfg = OmegaConf.load(saved)
    run_cfg.paths.output_dir = str(run_dir)
    ckpt = Path(cfg.ckpt_path) if cfg.get("ckpt_path") else find_run_checkpoint(run_dir)
    L.seed_everything(int(run_cfg.seed), workers=True)
    with config_errors():  # e.g. the user's own datamodule without PYTHONPATH=.
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
    module = DistillationModule(student, None, CELoss())
    with config_keys(DATA_KEYS):  # the data is loaded here: a missing folder names its key
        results = trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = {k: to_float(v) for k, v in (results[0] if results else {}).items()}
    write_json(run_dir / run_files.EVAL_METRICS, {"checkpoint": str(ckpt), **metrics})
    title = f"{run_cfg.pair.student.model.name} on the test set"
    table = Table("metric", Column("value", justify="right"), title=title, min_width=40)
    for name, value in metrics.items():
        shown = "-" if value is None else f"{100 * value:.2f}%" if "acc" in name else f"{value:.4f}"
        table.add_row(f"test {name.removeprefix('test/').replace('_', ' ')}", shown)
    console = Console()
    console.print(table)
    console.print(f"checkpoint: {ckpt}")
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://cskd_lightning.conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    """The ``cskd-eval`` console script."""
    quiet_logs()
    log_threads(choose_threads(cfg))  # OMP_NUM_THREADS if set, else from the free cores
    exit_on_input_error(evaluate, cfg)


if __name__ == "__main__":
    main()
