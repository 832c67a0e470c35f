"""Reading model weights from the checkpoint formats users bring.

Supported files (all read with ``torch.load(weights_only=True)`` unless the caller trusts the
file): a Lightning ``.ckpt`` (weights under ``"state_dict"``, prefixed ``student.`` when written
by :class:`~cskd_lightning.DistillationModule`), a plain ``state_dict``, a reference-zoo file
(``<name>_vanilla/ckpt_epoch_240.pth``, weights under ``"model"``) and this package's teacher
cache files (weights under ``"state_dict"`` beside ``"meta"``).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cskd_lightning.errors import InputError, MissingInputError

STRIP_PREFIXES = ("student.", "model.", "module.")


class CheckpointError(InputError):
    """A checkpoint file that cannot be read or does not fit its model."""


ZIP_MAGIC = b"PK\x03\x04"
"""The start of a ``torch.save`` file (a zip archive) since PyTorch 1.6."""
LFS_POINTER = b"version https://git-lfs"


def describe_file(path: Path, head: bytes) -> str | None:
    """Why ``path`` (whose first bytes are ``head``) is not a PyTorch file, or ``None`` if it
    may be one: a zip archive (``torch.save``) or a pickle (the legacy format)."""
    if not head:
        return "it is empty (0 bytes)"
    if head.startswith(ZIP_MAGIC) or (head[0] == 0x80 and len(head) > 1 and head[1] <= 5):
        return None
    if head.startswith(LFS_POINTER):
        return (
            "it is a Git LFS pointer, not the file itself: fetch the real file with "
            "`git lfs pull` in its repository"
        )
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")):
        return (
            "it is an HTML/XML page, not a checkpoint: a download that went wrong (a login, "
            "error or redirect page); download it again"
        )
    try:
        sample = head.decode("utf-8")
    except UnicodeDecodeError:
        return "it is not a PyTorch file (neither a zip archive nor a pickle)"
    first = sample.strip().splitlines()[0][:60] if sample.strip() else ""
    return f"it is a text file (it starts with {first!r}), not a PyTorch file"


def read_checkpoint(
    path: str | Path, trust: bool = False, trust_flag: str = "teacher.trust_checkpoint=true"
) -> Any:
    """``torch.load`` a file on the CPU, safely unless ``trust`` is set.

    The file's first bytes are looked at first: an empty file, a text, YAML, CSV or HTML file
    or a Git LFS pointer is named for what it is. Raises :class:`MissingInputError` for a
    missing path and :class:`CheckpointError` for a file that is not a PyTorch file, is
    truncated, or needs full unpickling while ``trust`` is off (the message names
    ``trust_flag``, the option that allows it).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"Checkpoint not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(512)
    problem = describe_file(path, head)
    if problem is not None:
        raise CheckpointError(f"{path} is not a checkpoint: {problem}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) and not trust:
            raise CheckpointError(
                f"{path} holds more than weights (arbitrary Python objects), so it was not "
                f"loaded: unpickling it could run code. If you trust the file, pass {trust_flag} "
                "(Python: trust=True)."
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint ({err}).") from None
    except Exception as err:  # noqa: BLE001 - torch.load fails in many ways on a damaged file
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"{path} is truncated or corrupt and could not be read ({type(err).__name__}: "
            f"{first}). Re-create or re-download it."
        ) from None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(v, Tensor) for v in obj.values())
    )


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """Find the model weights inside a loaded checkpoint object; strip wrapper prefixes."""
    if _is_state_dict(obj):
        state = dict(obj)
    elif isinstance(obj, Mapping) and _is_state_dict(obj.get("state_dict")):
        state = dict(obj["state_dict"])
    elif isinstance(obj, Mapping) and _is_state_dict(obj.get("model")):
        state = dict(obj["model"])
    else:
        keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"Unknown checkpoint format in {source}: expected a state_dict, a Lightning .ckpt "
            f"('state_dict') or a model-zoo file ('model'); found {keys}."
        )
    for prefix in STRIP_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    # A DistillationModule checkpoint of a distilled student: keep the student's weights only.
    if any(k.startswith("student.") for k in state):
        state = {k[len("student.") :]: v for k, v in state.items() if k.startswith("student.")}
    return state


def describe_mismatch(model: nn.Module, state: Mapping[str, Tensor], limit: int = 5) -> str:
    """A readable list of the first missing, unexpected and wrongly shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{title} keys [{len(items)}]: " + "; ".join(items[:limit]) + more)
    return "\n  ".join(parts)


def load_weights(model: nn.Module, path: str | Path, trust: bool = False) -> nn.Module:
    """Load the weights in ``path`` into ``model`` strictly, with a readable error on mismatch."""
    state = extract_state_dict(read_checkpoint(path, trust=trust), source=str(path))
    problems = describe_mismatch(model, state)
    if problems:
        raise CheckpointError(
            f"The weights in {path} do not fit {type(model).__name__}:\n  {problems}\n"
            "Check that the checkpoint was made for this architecture and class count."
        )
    model.load_state_dict(state, strict=True)
    return model
