"""A detached FIFO memory of recent (student, teacher) logits that extends the batch axis.

CSKD's per-class cosine and the CSWT min/max are taken over the batch axis, so their value
depends on how many samples the batch holds. :class:`LogitMemory` keeps
the last ``size`` rows of logits seen in training (after gathering, under DDP) and puts them
below the current batch, like MoCo's queue of keys: the batch-axis terms then see
``B + len(memory)`` rows at any batch size ``B``. Only the current rows carry gradient.

The memory is plain tensor state on the loss object, NOT a registered buffer: it is not in the
``state_dict`` (checkpoints of runs with and without a memory are interchangeable), DDP does not
broadcast it (it is identical on every rank anyway, being made of gathered logits), and
``module.to(device)`` does not move it (it follows the device of the incoming logits instead).
A resumed run starts with an empty memory and refills it within ``size / B`` steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cskd_lightning.errors import InputError


class LogitMemory:
    """The last ``size`` rows of ``(student, teacher)`` logits, detached, oldest first.

    - :meth:`extend` returns ``cat([current, memory])`` for each side, ``(B + n, C)`` with
      ``n = len(self)``, in float32 (float64 if the current logits are float64); the current
      rows keep their gradient, the memory rows have none.
    - :meth:`push` appends rows (detached copies) and drops the oldest beyond ``size``.
    - Logits of another class count than the stored ones empty the memory first.
    """

    def __init__(self, size: int) -> None:
        size = int(size)
        if size <= 0:
            raise InputError(f"LogitMemory needs a positive size; got {size}.")
        self.size = size
        self.student: Tensor | None = None
        self.teacher: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.student is None else int(self.student.shape[0])

    def clear(self) -> None:
        """Forget every stored row."""
        self.student = self.teacher = None

    def _stored_like(self, like: Tensor) -> tuple[Tensor, Tensor] | None:
        """The stored rows on ``like``'s device and in its dtype, or None if empty/incompatible."""
        if self.student is None or self.teacher is None:
            return None
        if self.student.shape[1] != like.shape[1]:
            self.clear()
            return None
        return (
            self.student.to(device=like.device, dtype=like.dtype),
            self.teacher.to(device=like.device, dtype=like.dtype),
        )

    @staticmethod
    def _dtype(student_logits: Tensor) -> torch.dtype:
        return torch.float64 if student_logits.dtype == torch.float64 else torch.float32

    def extend(self, student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
        """``(cat([z_s, memory_s]), cat([z_t, memory_t]))``: the current batch first."""
        dtype = self._dtype(student_logits)
        zs, zt = student_logits.to(dtype), teacher_logits.to(dtype)
        stored = self._stored_like(zs)
        if stored is None:
            return zs, zt
        return torch.cat([zs, stored[0]], dim=0), torch.cat([zt, stored[1]], dim=0)

    @torch.no_grad()
    def push(self, student_logits: Tensor, teacher_logits: Tensor) -> None:
        """Append the rows of ``(B, C)`` logits; keep the newest ``size`` rows."""
        dtype = self._dtype(student_logits)
        zs = student_logits.detach().to(dtype)
        zt = teacher_logits.detach().to(dtype)
        stored = self._stored_like(zs)
        if stored is not None:
            zs, zt = torch.cat([stored[0], zs], dim=0), torch.cat([stored[1], zt], dim=0)
        self.student = zs[-self.size :].clone()
        self.teacher = zt[-self.size :].clone()
