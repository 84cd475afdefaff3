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

from tubelet.config.schema import LinearProbeConfig, Recipe
from tubelet.methods.supervised import Supervised, load_backbone_checkpoint
from tubelet.models import create_model

FEATURE_NORMS = ("layernorm", "none")


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
    def features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, D): mean of patch tokens, standardised per sample if configured."""
        tokens = self.backbone.forward_features(video)  # (B, P + N, D)
        pooled = tokens[:, self.backbone.num_prefix_tokens :].mean(dim=1)  # (B, D)
        if self.feature_norm == "layernorm":
            pooled = F.layer_norm(pooled, pooled.shape[-1:], eps=1e-6)
        return pooled

    def classify(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(video))

    @property
    def num_classes(self) -> int:
        return self.head.out_features


def build(recipe: Recipe) -> LinearProbe:
    """Backbone ``model.name`` with weights from ``model.checkpoint`` (head keys ignored), frozen."""
    cfg = recipe.method
    if not isinstance(cfg, LinearProbeConfig):
        raise TypeError(f"linear_probe needs a LinearProbeConfig method section, got {type(cfg).__name__}")
    m = recipe.model
    overrides = dict(m.overrides)
    overrides.setdefault("num_frames", m.num_frames)
    overrides.setdefault("img_size", m.img_size)
    overrides["num_classes"] = 0  # the probe owns the classifier
    backbone = create_model(m.name, **overrides)
    if m.checkpoint:  # every encoder weight must fit; a classifier head in the file is ignored
        load_backbone_checkpoint(backbone, m.checkpoint)
    return LinearProbe(backbone, m.num_classes, cfg.feature_norm, recipe.data.augment.label_smoothing)
