"""``cskd-export run_dir=<run> format=onnx``: the run's ``student.pt`` as TorchScript (the
default) or ONNX under ``<run_dir>/export/``, its logits checked against PyTorch's, recorded in
``export.json`` (with the normalisation: the exported model takes *preprocessed* input)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from cskd_lightning.app.jobs import exit_on_input_error, quiet_logs
from cskd_lightning.app.run_dir import STUDENT, write_json
from cskd_lightning.errors import InputError
from cskd_lightning.export import EXPORT_FORMATS, check_export, export_model, load_student

log = logging.getLogger("cskd_lightning")


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export the student of ``cfg.run_dir`` (or ``cfg.student``) as ``cfg.format``; return the
    record written to ``export.json``."""
    fmt = str(cfg.format)
    if fmt not in EXPORT_FORMATS:
        raise InputError(
            f"format={fmt} is not an export format: choose one of {', '.join(EXPORT_FORMATS)} "
            "(e.g. format=onnx)."
        )
    source = Path(cfg.student) if cfg.get("student") else Path(cfg.run_dir) / STUDENT
    loaded = load_student(source, trust=bool(cfg.get("trust", False)))
    shape = loaded.info.get("input_shape")
    if not shape:
        raise InputError(
            f"{source} does not record the model's input shape, so no example batch can be "
            "made to trace and check it."
        )
    default = Path(cfg.run_dir) / "export" / f"student{EXPORT_FORMATS[fmt]}"
    output = Path(cfg.output) if cfg.get("output") else default
    batch = int(cfg.check_batch_size)
    export_model(loaded.model, output, fmt, shape, opset=cfg.get("opset"))
    diff = check_export(loaded.model, output, fmt, shape, batch, atol=float(cfg.atol))
    message = "Wrote %s (%s); its logits match PyTorch's to %.2g on a batch of %d."
    log.info(message, output, fmt, diff, batch)
    record = {"source": str(source), "output": str(output), "format": fmt, "input_shape": shape}
    record |= {"max_abs_diff": diff, "check_batch_size": batch}
    record |= {k: loaded.info.get(k) for k in ("preprocessing", "class_names")}
    write_json(output.parent / "export.json", record)
    return record


@hydra.main(version_base="1.3", config_path="pkg://cskd_lightning.conf", config_name="export")
def main(cfg: DictConfig) -> None:
    """The ``cskd-export`` console script."""
    quiet_logs()
    # format=torchscript is a request for torch.jit, deprecated or not (the README says so).
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
    for name in ("onnx_ir", "onnxscript"):  # the ONNX exporter's per-pass notes
        logging.getLogger(name).setLevel(logging.WARNING)
    exit_on_input_error(export, cfg)


if __name__ == "__main__":
    main()
