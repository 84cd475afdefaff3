"""Supervised classification: a backbone trained with (soft-target) cross entropy.

The fine-tuning objective shared by every video transformer paper the library follows (e.g. MAE-ST,
arXiv 2205.09113, Sec. 4 and Appendix A.2; MViTv2, arXiv 2112.01526, Sec. 5): cross entropy with label
smoothing on hard labels, or soft-target cross entropy when mixup/cutmix turned labels into ``(B, K)``
distributions. Repeated sampling (``r`` clips per video) is flattened into the batch.

``build(recipe, context)`` creates the backbone from ``recipe.model`` with the shared builder
(``methods/backbone.py``): a ``model.checkpoint`` (e.g. from MAE-ST) must fit everything but a
classifier head that is missing or has another shape, which keeps its fresh initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tubelet.config.bounds import PROBABILITY_BELOW_ONE, bounded
from tubelet.config.registry import MethodConfig
from tubelet.config.schema import Recipe
from tubelet.core.batch import Batch
from tubelet.errors import ConfigError
from tubelet.methods.backbone import build_backbone
from tubelet.methods.base import RunContext
from tubelet.methods.registry import register_method


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_b sum_k -target[b,k] * log_softmax(logits)[b,k]`` for ``(B, K)`` targets (timm's SoftTargetCE)."""
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


class Supervised(nn.Module):
    """``forward(batch) -> {"loss", "acc"}``; ``classify(video (B,C,T,H,W)) -> logits (B, K)``."""

    def __init__(self, backbone: nn.Module, label_smoothing: float = 0.0, head_dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.label_smoothing = float(label_smoothing)
        self.head_drop = nn.Dropout(head_dropout) if head_dropout > 0 else None

    @property
    def num_classes(self) -> int:
        return int(self.backbone.num_classes)

    def classify(self, video: torch.Tensor, video_ids: torch.Tensor | None = None) -> torch.Tensor:
        # A memory backbone (MeMViT) gets each clip's video id, so that it masks another video's memory.
        memory = getattr(self.backbone, "uses_memory", False)
        if memory and video_ids is None:
            # No stream order (validation and `tubelet test` call classify on batches of unrelated videos):
            # nothing in the memory belongs to these clips, and without ids the backbone would attend to
            # the previous batch's clips unmasked (or refuse a last batch of another size).
            self.backbone.clear_memory()
        kw = {"video_ids": video_ids} if video_ids is not None and memory else {}
        if self.head_drop is None:
            return self.backbone(video, **kw)
        # Dropout sits between the pooled feature and the linear classifier (MAE-ST fine-tuning).
        feats = self.backbone.forward_head(self.backbone.forward_features(video, **kw), pre_logits=True)
        return self.backbone.head(self.head_drop(feats))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        video, label = batch["video"], batch["label"]
        if video.dim() == 6:  # repeated sampling: (B, r, C, T, H, W) -> (B*r, C, T, H, W)
            B, r = video.shape[:2]
            video = video.flatten(0, 1)
            if label.shape[:2] == (B, r):  # per-clip labels (B, r) or soft (B, r, K)
                label = label.flatten(0, 1)
            else:  # one label per video, shared by its r clips
                label = label.repeat_interleave(r, dim=0)
        # without a video id per clip (no stream order), classify starts a memory backbone from empty memory
        ids = batch.get("video_id") if video.dim() == 5 else None
        logits = self.classify(video, ids)
        if label.dim() == 2 and label.is_floating_point():
            loss = soft_target_cross_entropy(logits, label)
            hard = label.argmax(dim=-1)  # accuracy against the dominant class of a mixed target
        else:
            hard = label.long()
            loss = F.cross_entropy(logits, hard, label_smoothing=self.label_smoothing)
        acc = (logits.detach().argmax(dim=-1) == hard).float().mean()
        return {"loss": loss, "acc": acc}


@dataclass
class SupervisedConfig(MethodConfig):
    TRAINS_ON_LABELS = True

    name: str = "supervised"
    head_dropout: float = bounded(0.0, PROBABILITY_BELOW_ONE)


@register_method("supervised", SupervisedConfig)
def build(recipe: Recipe, context: RunContext) -> Supervised:
    if context.num_classes is not None and recipe.model.num_classes != context.num_classes:
        raise ConfigError(
            f"model.num_classes={recipe.model.num_classes} but the training set has {context.num_classes} classes"
        )
    return Supervised(
        build_backbone(recipe.model),
        label_smoothing=recipe.data.augment.label_smoothing,
        head_dropout=recipe.method.head_dropout,
    )
