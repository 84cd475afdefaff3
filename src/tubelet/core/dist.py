"""Cross-process helpers every layer may use (a method's gather of negatives, the engine's failure
counts). In a single process every helper is the identity."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["all_gather_no_grad", "all_gather_objects", "all_gather_with_grad", "all_reduce_sum", "is_distributed", "rank",
           "world_size"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x (N, ...)`` over processes in rank order, ``(W*N, ...)``, keeping the autograd
    graph: the gradient of each process's rows is the sum of what every process's loss sends back
    (``torch.distributed.nn.functional.all_gather``; on gloo its backward is an all-to-all, on NCCL a
    reduce-scatter). Every process must pass the same shape. This is the gather of SimCLR's global
    negatives (arXiv:2002.05709, Sec. 2) and of rho-SSL's (arXiv:2104.14558)."""
    if world_size() == 1:
        return x
    import torch.distributed.nn.functional as dnnf

    return torch.cat(dnnf.all_gather(x.contiguous()), dim=0)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """``all_gather_with_grad`` without gradients (queue keys, prototypes, monitoring)."""
    if world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sum of ``values`` over processes (itself in one process)."""
    if not is_distributed():
        return list(values)
    if dist.get_backend() == "nccl" and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def all_gather_objects(items: list[Any]) -> list[Any]:
    """Concatenate a picklable list over processes in rank order."""
    if not is_distributed():
        return list(items)
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, list(items))
    return [x for part in out for x in part]
