"""Gathering logits across processes, with gradients, for batch-axis loss terms.

CSKD's per-class cosine and the CSWT min/max are taken over the batch axis, so under data
parallel training they must see the global batch. :func:`gather_batch` concatenates every
process's ``(B_k, C)`` tensor into ``(sum_k B_k, C)`` in rank order. Its backward all-reduces
(sums) the incoming gradient and returns this process's slice: every process computes the same
global loss, so after DDP averages the parameter gradients over the N processes the result is
exactly the gradient of one process holding the whole batch.

By default every process's batch is taken to have this process's size (Lightning's distributed
samplers and the device pipeline give every process the same number of samples, so the
training batches are equal): one ``all_gather`` and no host sync. ``same_size=False`` first
exchanges the sizes, which the host must read (a sync per call on an accelerator).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def distributed_world_size() -> int:
    """Processes in the default group, or 1 without an initialised group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor, same_size: bool) -> Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(), dist.get_rank()
        if same_size:
            parts = [torch.empty_like(tensor) for _ in range(world)]
            dist.all_gather(parts, tensor.contiguous())
            ctx.counts, ctx.rank = [tensor.shape[0]] * world, rank
            return torch.cat(parts, dim=0)
        size = torch.full((1,), tensor.shape[0], device=tensor.device, dtype=torch.long)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        counts = [int(s.item()) for s in sizes]  # host syncs
        longest = max(counts)
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.counts, ctx.rank = counts, rank
        return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)], dim=0)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.counts[: ctx.rank])
        return grad[start : start + ctx.counts[ctx.rank]], None


def gather_batch(tensor: Tensor, same_size: bool = True) -> Tensor:
    """Concatenate ``tensor`` ``(B_k, ...)`` from all processes along dim 0, keeping gradients.

    A no-op (returns ``tensor``) without an initialised process group of more than one process.
    ``same_size=True``: every process holds ``B_k = B`` rows (one ``all_gather``, no host sync;
    Lightning's distributed samplers and the device pipeline give every process equal batches).
    ``same_size=False``: batches of different sizes per process, at the price of a size
    exchange that the host reads (one sync per call on an accelerator).
    """
    if distributed_world_size() <= 1:
        return tensor
    return _GatherWithGrad.apply(tensor, bool(same_size))


def gather_no_grad(tensor: Tensor) -> Tensor:
    """:func:`gather_batch` without gradient (for state every process must update alike)."""
    with torch.no_grad():
        return gather_batch(tensor.detach())


def mean_across_processes(value: Tensor) -> Tensor:
    """The mean of a scalar tensor over the processes (itself without a group)."""
    if distributed_world_size() <= 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / distributed_world_size()
