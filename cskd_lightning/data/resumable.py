"""A training data stream that resumes exactly: the loaders' shuffle and RNG state in the
checkpoint.

Lightning stores a datamodule's :meth:`~ResumableDataModule.state_dict` in every checkpoint
(under the class's name) and hands it back through ``load_state_dict`` when
``trainer.fit(ckpt_path=...)`` restores one. :class:`ResumableDataModule` keeps there the state
of its active training loader: the shuffle generator, the sampler's epoch, and the global
torch, numpy and Python RNG states (CUDA's too, once initialised); the state is applied right
before the resumed run's first training iterator draws anything, so the next epoch sees the
permutation and augmentation it would have seen without the interruption. Everything stored is
plain data (tensors, numbers, strings, lists, dicts), so checkpoints load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

log = logging.getLogger(__name__)

STATE_FORMAT = 1
"""The version of the data-stream state stored in checkpoints."""


# --------------------------------------------------------------------------- RNG state
def capture_rng_state() -> dict[str, Any]:
    """The global torch, numpy and Python RNG states (and CUDA's once initialised), as plain
    tensors, numbers and lists."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["bit_generator"],
            np.asarray(np_state["keys"].numpy(), dtype=np.uint32),
            int(np_state["pos"]),
            int(np_state["has_gauss"]),
            float(np_state["cached_gaussian"]),
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning(
                "The checkpoint holds the CUDA RNG state of %d devices but %d are visible: "
                "CUDA RNG not restored.",
                len(cuda),
                torch.cuda.device_count(),
            )


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose shuffle order and augmentation randomness survive a restart.

    Its state (:meth:`get_resume_state`): the loader's and its sampler's ``torch.Generator``,
    the sampler's epoch (``DistributedSampler``) and the global RNG states
    (:func:`capture_rng_state`). ``resume_box`` is shared with the datamodule that made the
    loader (and with Lightning's re-instantiated copy under DDP): a state put there on resume is
    applied when the loader's first iterator is created, before anything is drawn.
    """

    def __init__(self, *args: Any, resume_box: LoaderStateBox | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.resume_box = resume_box

    def __iter__(self) -> Any:
        box = self.resume_box
        if box is not None:
            box.active = self
            if box.pending is not None:
                state, box.pending = box.pending, None
                self.set_resume_state(state)
        return super().__iter__()

    def get_resume_state(self, next_epoch: int | None = None) -> dict[str, Any]:
        """The state; ``next_epoch``: the epoch Lightning will give ``sampler.set_epoch`` on
        resume (it does so only after the first iterator exists, too late for a resume)."""
        state: dict[str, Any] = {"format": STATE_FORMAT, "rng": capture_rng_state()}
        if isinstance(self.generator, torch.Generator):
            state["generator"] = self.generator.get_state()
        sampler_gen = getattr(self.sampler, "generator", None)
        if isinstance(sampler_gen, torch.Generator) and sampler_gen is not self.generator:
            state["sampler_generator"] = sampler_gen.get_state()
        if hasattr(self.sampler, "set_epoch"):
            epoch = next_epoch if next_epoch is not None else getattr(self.sampler, "epoch", None)
            if isinstance(epoch, int):
                state["sampler_epoch"] = epoch
        return state

    def set_resume_state(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            log.warning("Unknown data-loader state in the checkpoint: data order not restored.")
            return
        if "generator" in state and isinstance(self.generator, torch.Generator):
            self.generator.set_state(state["generator"])
        sampler_gen = getattr(self.sampler, "generator", None)
        if "sampler_generator" in state and isinstance(sampler_gen, torch.Generator):
            sampler_gen.set_state(state["sampler_generator"])
        if "sampler_epoch" in state and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(int(state["sampler_epoch"]))
        restore_rng_state(state["rng"])


class LoaderStateBox:
    """The link between a datamodule and its training loaders: which loader iterates now
    (``active``) and the state to give the next one on resume (``pending``)."""

    def __init__(self) -> None:
        self.active: ResumableDataLoader | None = None
        self.pending: dict[str, Any] | None = None


class ResumableDataModule(L.LightningDataModule):
    """A datamodule whose training data stream resumes exactly.

    Lightning stores :meth:`state_dict` in every checkpoint (under the class's name) and calls
    :meth:`load_state_dict` when ``trainer.fit(ckpt_path=...)`` restores one. Build the training
    loader as ``ResumableDataLoader(..., **self.resume_loader_kwargs())``.

    Why not Lightning's own stateful-loader support: Lightning restores a loader's state only
    when resuming *mid*-epoch, and ``cskd-train`` checkpoints at epoch ends.
    """

    def __init__(self) -> None:
        super().__init__()
        self._resume_box = LoaderStateBox()

    def resume_loader_kwargs(self) -> dict[str, Any]:
        return {"resume_box": self._resume_box}

    def state_dict(self) -> dict[str, Any]:
        active = self._resume_box.active
        if active is None:
            return {}
        trainer = self.trainer
        # The epoch counter Lightning hands to sampler.set_epoch when this state is resumed.
        next_epoch = (
            int(trainer.fit_loop.epoch_progress.current.processed) if trainer is not None else None
        )
        return {"train_loader": active.get_resume_state(next_epoch)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        trainer = self.trainer
        if trainer is not None and trainer.state.fn != "fit":
            return  # testing a checkpoint: no training data stream to restore
        self._resume_box.pending = state_dict.get("train_loader")
