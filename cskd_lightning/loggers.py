"""A CSV logger whose file survives a resumed run.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so a run resumed
in its own directory loses every epoch logged before the interruption. :class:`RunCSVLogger`
writes the same file format (one row per ``log_metrics`` call, the columns sorted, ``step``
among them) but keeps what is there: :meth:`RunCSVLogger.keep_history` says which of the
existing rows belong to the resumed training (those up to the checkpoint's epoch); the rows of
work that is redone are dropped, so the file ends up exactly as an uninterrupted run's. The
file is rewritten atomically (temporary file, then rename) on every save.
"""

from __future__ import annotations

import csv
import io
import os
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from cskd_lightning.files import write_text_atomically

METRICS_FILE = "metrics.csv"
HPARAMS_FILE = "hparams.yaml"


def _cell(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


class RunCSVLogger(Logger):
    """Log metrics to ``<save_dir>/<name>/<version>/metrics.csv`` and hyperparameters to
    ``hparams.yaml`` beside it (``name=""``, ``version=""``: straight into ``save_dir``).

    Without :meth:`keep_history` it behaves like Lightning's ``CSVLogger`` (an existing file
    is replaced by the new run's rows, at the first save).
    """

    def __init__(
        self, save_dir: str | os.PathLike, name: str = "", version: str | int = ""
    ) -> None:
        super().__init__()
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self._kept: list[dict[str, str]] = []
        self._rows: list[dict[str, Any]] = []
        self._resumed = False

    # --- identity --------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str | int:
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        return os.path.join(self._save_dir, self._name)

    @property
    def log_dir(self) -> str:
        version = self._version if isinstance(self._version, str) else f"version_{self._version}"
        return os.path.join(self.root_dir, version)

    @property
    def metrics_file(self) -> Path:
        return Path(self.log_dir) / METRICS_FILE

    # --- resuming --------------------------------------------------------------------------
    @rank_zero_only
    def keep_history(self, through_epoch: int | None) -> int:
        """Keep the rows of the existing file whose ``epoch`` is at most ``through_epoch`` (the
        epoch of the checkpoint a run resumes from); ``None`` keeps none. Rows without an
        ``epoch`` column are kept with the others. A resumed run (``through_epoch`` given) also
        keeps the ``hparams.yaml`` of its first segment. Returns the number of rows kept."""
        self._kept = []
        self._resumed = through_epoch is not None
        if through_epoch is None or not self.metrics_file.is_file():
            return 0
        with open(self.metrics_file, newline="") as handle:
            for row in csv.DictReader(handle):
                epoch = row.get("epoch") or ""
                if not epoch or float(epoch) <= through_epoch:
                    self._kept.append(row)
        return len(self._kept)

    def last_values(self) -> dict[str, float]:
        """The last logged value of every metric column (``epoch`` and ``step`` aside), over the
        kept rows and this segment's: what a run resumed at its end reports."""
        out: dict[str, float] = {}
        for row in [*self._kept, *self._rows]:
            for key, value in row.items():
                if key in ("epoch", "step") or value in (None, ""):
                    continue
                try:
                    out[key] = float(value)
                except (TypeError, ValueError):
                    continue
        return out

    # --- Logger interface ------------------------------------------------------------------
    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace | None = None) -> None:
        if params is None:
            return
        path = os.path.join(self.log_dir, HPARAMS_FILE)
        if self._resumed and os.path.isfile(path):
            return  # a resumed run keeps the hyperparameters its first segment recorded
        params = vars(params) if isinstance(params, Namespace) else dict(params)
        os.makedirs(self.log_dir, exist_ok=True)
        save_hparams_to_yaml(path, params)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        row = {key: _cell(value) for key, value in metrics.items()}
        row["step"] = len(self._kept) + len(self._rows) if step is None else step
        self._rows.append(row)

    @rank_zero_only
    def save(self) -> None:
        if not self._rows:
            return
        rows: list[Mapping[str, Any]] = [*self._kept, *self._rows]
        keys = sorted({key for row in rows for key in row})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomically(self.metrics_file, buffer.getvalue())

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()
