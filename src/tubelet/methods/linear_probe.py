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
from tubelet.models import create_model
from tubelet.models.weights import load_weights

FEATURE_NORMS = ("layernorm", "none")


class LinearProbe(nn.Module):
    """``classify(video (B, C, T, H, W)) -> logits (B, num_classes)`` through a frozen ``backbone``."""

    def __init__(self, backbone: nn.Module, num_classes: int, feature_norm: str = "layernorm") -> None:
        super().__init__()
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"method.feature_norm must be one of {FEATURE_NORMS}, got '{feature_norm}'")
        self.backbone = backbone
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

    def forward(self, batch: dict) -> dict:
        video, label = batch["video"], batch["label"]
        if video.ndim == 6:  # repeated sampling: (B, r, C, T, H, W)
            video = video.flatten(0, 1)
            label = label.flatten(0, 1) if label.ndim == 2 and label.dtype != torch.float32 else label
        logits = self.classify(video)
        loss = F.cross_entropy(logits, label)  # hard (B,) or soft (B, K) targets
        with torch.no_grad():
            hard = label.argmax(-1) if label.ndim == 2 else label
            acc = (logits.argmax(-1) == hard).float().mean()
        return {"loss": loss, "acc": acc}


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
    if m.checkpoint:
        load_weights(backbone, m.checkpoint, strict=False)
    return LinearProbe(backbone, m.num_classes, cfg.feature_norm)
