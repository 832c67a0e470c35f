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

STRIP_PREFIXES = ("student.", "model.", "module.")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit its model."""


def read_checkpoint(
    path: str | Path, trust: bool = False, trust_flag: str = "teacher.trust_checkpoint=true"
) -> Any:
    """``torch.load`` a file on the CPU, safely unless ``trust`` is set.

    Raises :class:`FileNotFoundError` naming a missing path and :class:`CheckpointError` for a
    truncated file or one that needs full unpickling while ``trust`` is off (the message names
    ``trust_flag``, the option that allows it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
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
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(
            f"{path} is truncated or corrupt and could not be read ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Re-create or re-download it."
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
