"""torch.distributed helpers: what the pruners need to give every process the same masks."""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["world_size", "rank", "all_reduce_sum_", "broadcast_"]


def world_size() -> int:
    """Processes in the default group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes, in place (a no-op in a single process)."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``t`` with process ``src``'s value, in place (a no-op in a single process)."""
    if world_size() > 1:
        if t.dtype == torch.bool:
            u = t.to(torch.uint8)
            dist.broadcast(u, src)
            t.copy_(u.bool())
        else:
            dist.broadcast(t, src)
    return t
