"""Linear probing: a frozen backbone and one trainable linear classifier (MAE, arXiv 2111.06377, Sec. 4 /
A.2; MAE-ST, arXiv 2205.09113, uses it to compare representations).

features = mean of the backbone's patch tokens (CLS excluded) -> parameter-free standardisation ->
Linear. MAE puts a BatchNorm without affine parameters before the classifier, because MAE features
have very different scales per channel. This library avoids BatchNorm (batch-size dependent,
synchronisation across processes); ``feature_norm="layernorm"`` standardises each feature vector over
its channels instead (a LayerNorm without affine parameters), ``"none"`` feeds the pooled features as
they are. The backbone stays in eval mode (no dropout, no drop path) with ``requires_grad=False``, and
its forward runs without autograd, so a probe step costs one inference pass plus a Linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataclasses import dataclass
from typing import Literal

from tubelet.config.registry import MethodConfig
from tubelet.config.schema import Recipe
from tubelet.methods.backbone import build_backbone
from tubelet.methods.base import RunContext
from tubelet.methods.registry import register_method
from tubelet.methods.supervised import Supervised

FEATURE_NORMS = ("layernorm", "none")


@dataclass
class LinearProbeConfig(MethodConfig):
    """Frozen backbone + linear classifier on mean-pooled tokens."""

    TRAINS_ON_LABELS = True

    name: str = "linear_probe"
    feature_norm: Literal["layernorm", "none"] = "layernorm"  # layernorm: parameter-free standardisation


class LinearProbe(Supervised):
    """``classify(video (B, C, T, H, W)) -> logits (B, num_classes)`` through a frozen ``backbone``.

    The objective is the supervised one (cross entropy on hard or soft labels, repeated sampling
    flattened); only ``classify`` differs.
    """

    def __init__(
        self, backbone: nn.Module, num_classes: int, feature_norm: str = "layernorm", label_smoothing: float = 0.0
    ) -> None:
        super().__init__(backbone, label_smoothing=label_smoothing)
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"method.feature_norm must be one of {FEATURE_NORMS}, got '{feature_norm}'")
        self.feature_norm = feature_norm
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()
        self.head = nn.Linear(backbone.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)  # MAE's probe init
        nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True) -> "LinearProbe":
        super().train(mode)
        self.backbone.eval()  # frozen: never switch dropout / drop path back on
        return self

    @torch.no_grad()
    def features(self, video: torch.Tensor, video_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, D): mean of patch tokens, standardised per sample if configured.

        ``video_ids`` (B,) reach a memory backbone (MeMViT), which masks another video's memory."""
        memory = getattr(self.backbone, "uses_memory", False)
        if memory and video_ids is None:
            # unrelated clips (validation, `tubelet test`): without ids the previous batch's memory would be
            # attended unmasked, so they start from an empty memory
            self.backbone.clear_memory()
        kw = {"video_ids": video_ids} if video_ids is not None and memory else {}
        tokens = self.backbone.forward_features(video, **kw)  # (B, P + N, D)
        pooled = tokens[:, self.backbone.num_prefix_tokens :].mean(dim=1)  # (B, D)
        if self.feature_norm == "layernorm":
            pooled = F.layer_norm(pooled, pooled.shape[-1:], eps=1e-6)
        return pooled

    def classify(self, video: torch.Tensor, video_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(video, video_ids))

    @property
    def num_classes(self) -> int:
        return self.head.out_features


@register_method("linear_probe", LinearProbeConfig)
def build(recipe: Recipe, context: RunContext) -> LinearProbe:
    """Backbone ``model.name`` without a classifier, weights from ``model.checkpoint`` (a head in the
    file is ignored), frozen; the probe owns the classifier."""
    backbone = build_backbone(recipe.model, num_classes=0)
    return LinearProbe(backbone, recipe.model.num_classes, recipe.method.feature_norm,
                       recipe.data.augment.label_smoothing)
