r"""Low-level ``torch.distributed`` helpers shared by the DDP layer and synchronised BatchNorm.

Process information and the row gathers (with and without gradient) live here, below both
:mod:`graphkd.distributed` (which re-exports them as its public API) and
:mod:`graphkd.sync_batchnorm`, so that neither of those two imports the other's internals:
``distributed -> sync_batchnorm -> _collectives``, no cycle. This module imports nothing from
graphkd.

Outside ``torch.distributed`` (not initialised, or one process) every function here is the
identity, so single-process code needs no branch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["is_distributed", "rank", "world_size", "group_size", "is_main_process", "gather",
           "gather_with_grad"]


def is_distributed() -> bool:
    """Whether a process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside ``torch.distributed``)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 outside ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def group_size(group: Any = None) -> int:
    """Number of processes of ``group`` (default: the world; 1 outside ``torch.distributed``)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def is_main_process() -> bool:
    """Rank 0 (the process that logs, writes checkpoints and reports)."""
    return rank() == 0


def _sizes(n: int, device: torch.device, group: Any) -> list[int]:
    """Row counts of every rank (one small all_gather; ranks may hold different counts)."""
    mine = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, mine, group=group)
    return [int(s) for s in torch.cat(out).tolist()]


def _all_gather_rows(x: Tensor, sizes: list[int], group: Any) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0 (padded to the largest, then trimmed)."""
    m = max(sizes)
    if x.shape[0] < m:
        x = torch.cat([x, x.new_zeros(m - x.shape[0], *x.shape[1:])])
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def gather(x: Tensor, *, group: Any = None) -> Tensor:
    """All ranks' ``x`` ``[B_r, *]`` concatenated in rank order, ``[sum_r B_r, *]``, no gradient.

    The identity (``x`` itself) outside ``torch.distributed`` or with one process.
    """
    if not is_distributed():
        return x
    x = x.detach()
    return _all_gather_rows(x, _sizes(x.shape[0], x.device, group), group)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, group: Any) -> Tensor:
        sizes = _sizes(x.shape[0], x.device, group)
        r = dist.get_rank(group)
        ctx.group, ctx.start, ctx.n = group, sum(sizes[:r]), x.shape[0]
        return _all_gather_rows(x, sizes, group)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.start:ctx.start + ctx.n], None


def gather_with_grad(x: Tensor, *, group: Any = None) -> Tensor:
    r"""All ranks' ``x`` ``[B_r, *]`` concatenated in rank order, differentiable w.r.t. the
    local part.

    Forward: ``all_gather`` (ranks may hold different ``B_r``). Backward: the gradient of the
    gathered ``[B, *]`` tensor is summed over ranks (``all_reduce``) and the rows of this rank
    are returned, so that with DDP's gradient averaging the parameters get exactly the
    single-process gradient of a loss every rank computes on the gathered batch (see
    :mod:`graphkd.distributed`). Every rank must call backward (as under DDP).

    The identity outside ``torch.distributed`` or with one process.

    Example:
        >>> z = gather_with_grad(student_embeddings)     # [B_global, D]
        >>> loss = sp_loss(z, gather(teacher_embeddings))
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x, group)
