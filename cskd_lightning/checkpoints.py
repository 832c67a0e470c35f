"""Reading model weights from the checkpoint formats users bring.

Supported files (all read with ``torch.load(weights_only=True)`` unless the caller trusts the
file): a Lightning ``.ckpt`` (weights under ``"state_dict"``, prefixed ``student.`` when written
by :class:`~cskd_lightning.DistillationModule`), a plain ``state_dict``, a reference-zoo file
(``<name>_vanilla/ckpt_epoch_240.pth``, weights under ``"model"``) and this package's teacher
cache files (weights under ``"state_dict"`` beside ``"meta"``).

For resuming, :func:`newest_good_checkpoint` finds the training checkpoint of a directory that
is furthest into training (by the progress recorded inside each file), skipping and naming the
files that do not load: ``trainer.fit(module, ckpt_path=newest_good_checkpoint(dir)[0])``.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cskd_lightning.errors import InputError, MissingInputError
from cskd_lightning.logit_store import state_dict_hash

log = logging.getLogger(__name__)

STRIP_PREFIXES = ("student.", "model.", "module.")


class CheckpointError(InputError):
    """A checkpoint file that cannot be read or does not fit its model."""


ZIP_MAGIC = b"PK\x03\x04"
"""The start of a ``torch.save`` file (a zip archive) since PyTorch 1.6."""
LFS_POINTER = b"version https://git-lfs"


# ------------------------------------------------ DistillationModule's student-sized checkpoints
TEACHER_PREFIX = "teacher."
TEACHER_RECORD_KEY = "teacher_record"
"""Checkpoint key: which teacher trained it (class and weight hash), its weights stripped."""
LEGACY_TEACHER_ACC = "teacher_val_acc."
"""The ``state_dict`` prefix of the teacher's accuracy in checkpoints written while
:class:`~cskd_lightning.DistillationModule` held it (now a callback's state; dropped on load:
measured again)."""


def teacher_record(teacher: nn.Module) -> dict[str, str]:
    """The teacher's class and a content hash of its ``state_dict`` (blake2b, 128 bits)."""
    return {"class": type(teacher).__name__, "weights": state_dict_hash(teacher)}


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


def read_checkpoint(path: str | Path, trust: bool = False, trust_flag: str = "trust=True") -> Any:
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
                f"loaded: unpickling it could run code. If you trust the file, pass {trust_flag}"
                # a command-line flag gets the Python argument beside it
                + ("." if "True" in trust_flag else " (Python: trust=True).")
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


def load_weights(
    model: nn.Module, path: str | Path, trust: bool = False, trust_flag: str = "trust=True"
) -> nn.Module:
    """Load the weights in ``path`` into ``model`` strictly, with a readable error on mismatch
    (``trust_flag``: how the caller's user allows full unpickling, see :func:`read_checkpoint`)."""
    state = extract_state_dict(read_checkpoint(path, trust, trust_flag), source=str(path))
    problems = describe_mismatch(model, state)
    if problems:
        raise CheckpointError(
            f"The weights in {path} do not fit {type(model).__name__}:\n  {problems}\n"
            "Check that the checkpoint was made for this architecture and class count."
        )
    model.load_state_dict(state, strict=True)
    return model


# --------------------------------------------------------------------------- resuming
def checkpoint_candidates(ckpt_dir: Path) -> list[Path]:
    """The ``*.ckpt`` files in ``ckpt_dir`` (sorted by name; which is newest is decided by the
    progress recorded inside them, :func:`newest_good_checkpoint`)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.glob("*.ckpt") if p.is_file())


def _check_resumable(checkpoint: Any, path: Path) -> None:
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path} is not a Lightning training checkpoint (no 'state_dict'): a run resumes "
            "from one of its own checkpoints/*.ckpt files."
        )
    if "optimizer_states" not in checkpoint or "loops" not in checkpoint:
        raise CheckpointError(
            f"{path} holds weights only (no optimizer or loop state), so training cannot resume "
            "from it. Use a checkpoint saved with ModelCheckpoint(save_weights_only=False)."
        )


def load_resumable(
    path: Path, trust: bool = False, trust_flag: str = "trust=True"
) -> dict[str, Any]:
    """Read a training checkpoint (weights_only unless ``trust``; ``trust_flag`` is the option
    the refusal names) and check that training can resume from it."""
    checkpoint = read_checkpoint(path, trust=trust, trust_flag=trust_flag)
    _check_resumable(checkpoint, path)
    return checkpoint


def progress_of(checkpoint: Mapping[str, Any]) -> tuple[int, int]:
    """``(global_step, epoch)`` recorded in a training checkpoint (``-1`` where absent)."""

    def number(key: str) -> int:
        try:
            return int(checkpoint.get(key, -1))
        except (TypeError, ValueError):
            return -1

    return number("global_step"), number("epoch")


def newest_good_checkpoint(
    ckpt_dir: Path,
    trust: bool = False,
    trust_flag: str = "trust=True",
    extra: Sequence[Path] = (),
) -> tuple[Path, dict[str, Any]]:
    """The checkpoint in ``ckpt_dir`` (or among ``extra`` files) that is furthest into
    training, by the global step and epoch recorded inside it (never by file time: a copy
    keeps the progress, not the time); ``last*.ckpt`` wins a tie. Files that do not load are
    logged and skipped."""
    problems, good = [], []
    for path in [*checkpoint_candidates(ckpt_dir), *extra]:
        try:
            checkpoint = load_resumable(path, trust, trust_flag)
        except CheckpointError as err:
            problems.append(str(err))
            log.warning("Skipping %s: %s", path, err)
            continue
        good.append(((*progress_of(checkpoint), path.name.startswith("last")), path, checkpoint))
    if not good:
        raise CheckpointError(
            f"No usable checkpoint in {ckpt_dir}: "
            + (" | ".join(problems) if problems else "no *.ckpt files")
        )
    _, path, checkpoint = max(good, key=lambda item: item[0])
    if problems:
        log.warning("Falling back to the furthest good checkpoint: %s", path)
    return path, checkpoint
