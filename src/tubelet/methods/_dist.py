"""Cross-process helpers that methods may use without knowing about the engine.

Methods stay free of Lightning and of the engine (the layering is data -> models -> methods ->
engine); the few collectives an objective needs live here, and ``tubelet.engine.distributed``
re-exports them, so there is one implementation. In a single process every helper is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "world_size", "rank", "all_gather_with_grad", "all_gather_no_grad"]


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
