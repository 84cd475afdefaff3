"""LARS: layer-wise adaptive rate scaling (You et al., arXiv 1708.03888, Algorithm 1), as used by
SimCLR/BYOL/SwAV and by rho-SSL (arXiv 2104.14558: LARS with trust coefficient 0.001, not applied to
biases or BN parameters).

For each parameter tensor w with gradient g (weight decay folded in first, ``g <- g + wd * w``):

    local_lr = trust * ||w|| / ||g||      (1 when either norm is 0)
    v <- momentum * v + local_lr * g
    w <- w - lr * v

1-D tensors (biases, norm scales) skip the trust ratio (``exclude_1d``, rho-SSL's "not on bias or
BN"); a group's ``lars_exclude`` key overrides that per group. Their weight decay is 0 in the groups
built by ``engine.optim.param_groups``.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class LARS(Optimizer):
    """SGD with momentum and per-tensor trust ratios. Param-group keys: ``lr``, ``momentum``,
    ``weight_decay``, ``trust_coefficient``, ``lars_exclude`` (skip the trust ratio), ``eps``."""

    def __init__(
        self,
        params,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
        exclude_1d: bool = True,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError("LARS needs lr >= 0, momentum >= 0, weight_decay >= 0, trust_coefficient > 0")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        eps=eps, lars_exclude=None, exclude_1d=exclude_1d)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"] != 0:
                    g = g.add(p, alpha=group["weight_decay"])
                exclude = group["lars_exclude"]
                if exclude is None:
                    exclude = group["exclude_1d"] and p.ndim <= 1
                if not exclude:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    ratio = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * w_norm / (g_norm + group["eps"]),
                        torch.ones_like(w_norm),
                    )
                    g = g.mul(ratio)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss
