"""A run directory: the files ``cskd-train`` writes there, and which config keys change a result.

The file names are said here once; every program of the application (train, resume, eval,
export, report, the failed-jobs record) reads them from here. What a file holds is said where
it is written.

**Which config keys change a result** (one table, used by the resume check, the report's
grouping and the teacher cache): :data:`NOT_A_RESULT` lists the keys, with everything under
them, that change where files go, what is logged or how data is loaded, never a number a run
computes. A resume whose config differs only there continues; the report does not split runs
by them; the teacher's cache key leaves them out.
"""

from __future__ import annotations

from pathlib import Path

from cskd_lightning.callbacks import CLASS_COSINE_CSV
from cskd_lightning.loggers import METRICS_FILE

__all__ = [
    "CHECKPOINTS",
    "CLASS_COSINE_CSV",
    "CONFIG",
    "ERROR",
    "EXIT",
    "HYDRA_CONFIG",
    "METRICS_FILE",
    "NOT_A_RESULT",
    "PREVIOUS_ERROR",
    "STUDENT",
    "SUMMARY",
    "changes_result",
    "checkpoint_dir",
    "last_checkpoint",
]

CONFIG = "config.yaml"
"""The resolved config, written once the run's checks pass."""
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
"""Hydra's own copy of the composed (unresolved) config."""
SUMMARY = "summary.json"
"""What was trained, how it scored, where the files are: written at the end of a run."""
STUDENT = "student.pt"
"""The best student's weights with the spec to rebuild it (:mod:`cskd_lightning.export`)."""
CHECKPOINTS = "checkpoints"
"""Lightning checkpoints: ``last.ckpt`` and ``best-epoch<NNN>.ckpt``."""
ERROR = "error.txt"
"""A failed job's traceback or one-line error."""
PREVIOUS_ERROR = "error.previous.txt"
"""The error of an earlier attempt, kept when the job is run again."""
EXIT = "exit.json"
"""How the job ended (status, time, host), read by the failed-jobs report."""


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS / "last.ckpt"


NOT_A_RESULT = (
    "hydra",
    "paths",
    "task_name",
    "threads",
    "ckpt_path",
    "resume_allow_config_change",
    "resume_trust_checkpoint",
    "resume_from_sibling",
    "teacher.logit_cache",
    "teacher.trust_checkpoint",
    "tune_on_test_set",
    "train",
    "test",
    "optimized_metric",
    "plan",
    "logger",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "data.datamodule.data_dir",
    "data.datamodule.download",
    "data.datamodule.num_workers",
    "data.datamodule.pin_memory",
    "callbacks.model_checkpoint.dirpath",
)
"""Config keys (and everything under them) that change no number a run computes. The
``callbacks.*`` other than ``model_checkpoint`` (which picks the best checkpoint, hence
``student.pt``) change none either."""


def changes_result(key: str) -> bool:
    """Whether the dotted config key ``key`` can change what a run computes (see
    :data:`NOT_A_RESULT`)."""
    if key.startswith("callbacks.") and not key.startswith("callbacks.model_checkpoint"):
        return False
    return not any(key == k or key.startswith(k + ".") for k in NOT_A_RESULT)


HYDRA_OVERRIDES = Path(".hydra") / "overrides.yaml"
"""The run's command-line overrides, as Hydra records them."""
