"""Logger factories for the ``logger=wandb`` and ``logger=mlflow`` configs: Lightning's own
loggers, with defaults that work on a machine without an account or a server."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.loggers import Logger


def wandb_offline_by_default() -> bool:
    """Whether a W&B run should stay offline when the config does not say: yes unless
    ``WANDB_API_KEY`` is set; ``WANDB_MODE`` (``online`` / ``offline``), when set, decides."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode:
        return mode in ("offline", "dryrun", "disabled")
    return not os.environ.get("WANDB_API_KEY")


def wandb_logger(offline: bool | None = None, **kwargs: Any) -> Logger:
    """Lightning's ``WandbLogger``, offline by default when no W&B key is set
    (:func:`wandb_offline_by_default`); ``offline=false`` forces an online run. The offline
    run lands in ``<save_dir>/wandb/`` and can be uploaded later with ``wandb sync``."""
    from lightning.pytorch.loggers import WandbLogger

    if offline is None:
        offline = wandb_offline_by_default()
    return WandbLogger(offline=bool(offline), **kwargs)


def mlflow_logger(tracking_uri: str | None = None, **kwargs: Any) -> Logger:
    """Lightning's ``MLFlowLogger``; a ``file:`` ``tracking_uri`` (a local file store, the
    config's default) is allowed on MLflow 3, which otherwise refuses new file stores
    (``MLFLOW_ALLOW_FILE_STORE=true`` for this process, unless the variable is set)."""
    from lightning.pytorch.loggers import MLFlowLogger

    if tracking_uri and tracking_uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(tracking_uri=tracking_uri, **kwargs)
