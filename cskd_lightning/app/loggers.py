"""The ``logger=wandb`` and ``logger=mlflow`` factories: Lightning's loggers with defaults that
need no account or server; each imports its package when built, so a missing one fails first."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.loggers import Logger


def wandb_logger(offline: bool | None = None, **kwargs: Any) -> Logger:
    """``WandbLogger``, offline (in ``<save_dir>/wandb/`` for a later ``wandb sync``) unless
    ``WANDB_API_KEY`` is set; ``WANDB_MODE``, when set, decides."""
    import wandb  # noqa: F401
    from lightning.pytorch.loggers import WandbLogger

    if offline is None:
        mode = os.environ.get("WANDB_MODE", "").strip().lower()
        has_key = bool(os.environ.get("WANDB_API_KEY"))
        offline = mode in ("offline", "dryrun", "disabled") if mode else not has_key
    return WandbLogger(offline=bool(offline), **kwargs)


def mlflow_logger(tracking_uri: str | None = None, **kwargs: Any) -> Logger:
    """``MLFlowLogger``; a ``file:`` store (the config's default), which MLflow 3 refuses unless
    ``MLFLOW_ALLOW_FILE_STORE`` is set, is allowed for this process."""
    import mlflow  # noqa: F401
    from lightning.pytorch.loggers import MLFlowLogger

    if tracking_uri and tracking_uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(tracking_uri=tracking_uri, **kwargs)
