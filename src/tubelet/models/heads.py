"""Classification heads and token pooling shared by the backbones.

MAE-ST fine-tuning (arXiv 2205.09113, Sec. 4 / A.2): mean of the patch tokens (CLS excluded),
LayerNorm, Dropout, Linear with trunc-normal(0.02) weights.
"""

from __future__ import annotations

import torch
from torch import nn


def pool_tokens(tokens: torch.Tensor, mode: str = "avg", num_prefix_tokens: int = 0) -> torch.Tensor:
    """``(B, N, D) -> (B, D)``: ``"avg"`` averages the non-prefix tokens, ``"token"`` takes token 0.

    The CLS token is excluded from the mean only when there is one (``num_prefix_tokens=1``):
    mae_st drops token 0 unconditionally, which discards a patch token when CLS is off.
    """
    if mode == "avg":
        return tokens[:, num_prefix_tokens:].mean(dim=1)
    if mode == "token":
        if num_prefix_tokens < 1:
            raise ValueError("global_pool='token' needs a class token")
        return tokens[:, 0]
    raise ValueError(f"global_pool must be 'avg' or 'token', got '{mode}'")


class ClassifierHead(nn.Module):
    """Dropout -> Linear on a pooled feature, ``(B, D) -> (B, num_classes)``; identity when num_classes=0.

    ``init_std`` is the weight std (0.02; SlowFast's MAE fine-tuning configs use 0.001 via
    ``init_scale``); the bias starts at zero.
    """

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0, init_std: float = 0.02) -> None:
        super().__init__()
        self.in_features = in_features
        self.init_std = init_std
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes)

    def reset(self, num_classes: int) -> None:
        """(Re)build the classifier for ``num_classes`` outputs, e.g. for transfer to a new label set."""
        self.num_classes = num_classes
        if num_classes <= 0:
            self.fc: nn.Module = nn.Identity()
            return
        device = self.fc.weight.device if isinstance(getattr(self, "fc", None), nn.Linear) else None
        self.fc = nn.Linear(self.in_features, num_classes, device=device)
        self.init_weights()

    def init_weights(self) -> None:
        if isinstance(self.fc, nn.Linear):
            std = self.init_std
            nn.init.trunc_normal_(self.fc.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x))
