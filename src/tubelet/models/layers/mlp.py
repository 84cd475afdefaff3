"""Transformer feed-forward block (ViT, arXiv 2010.11929, Sec. 3.1, Eq. 3)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class Mlp(nn.Module):
    """Linear -> activation -> dropout -> Linear -> dropout, applied token-wise.

    ``(..., in_features) -> (..., out_features)``; ``hidden_features`` defaults to ``in_features``
    (callers pass ``int(dim * mlp_ratio)``). The signature follows timm so blocks stay interchangeable.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(x))
