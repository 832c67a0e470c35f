"""The ``logger=wandb`` and ``logger=mlflow`` factories: Lightning's own loggers, with defaults
that work without an account or a server. Each imports its package when built (Lightning checks
only that the distribution is installed), so a missing one fails before anything trains."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.loggers import Logger


def wandb_offline_by_default() -> bool:
    """Offline unless ``WANDB_API_KEY`` is set; ``WANDB_MODE``, when set, decides."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode:
        return mode in ("offline", "dryrun", "disabled")
    return not os.environ.get("WANDB_API_KEY")


def wandb_logger(offline: bool | None = None, **kwargs: Any) -> Logger:
    """``WandbLogger``, offline by default (:func:`wandb_offline_by_default`); an offline run
    lands in ``<save_dir>/wandb/`` for a later ``wandb sync``."""
    import wandb  # noqa: F401
    from lightning.pytorch.loggers import WandbLogger

    if offline is None:
        offline = wandb_offline_by_default()
    return WandbLogger(offline=bool(offline), **kwargs)


def mlflow_logger(tracking_uri: str | None = None, **kwargs: Any) -> Logger:
    """``MLFlowLogger``; a ``file:`` store (the config's default), which MLflow 3 refuses unless
    ``MLFLOW_ALLOW_FILE_STORE`` is set, is allowed for this process."""
    import mlflow  # noqa: F401
    from lightning.pytorch.loggers import MLFlowLogger

    if tracking_uri and tracking_uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(tracking_uri=tracking_uri, **kwargs)
