"""Spatio-temporal action detection on person boxes (AVA): the objective of SlowFast (arXiv 1812.03982,
Sec. 5.1), MViTv2 (arXiv 2112.01526, Sec. 6.3), MaskFeat (arXiv 2112.09133), MAE-ST (arXiv 2205.09113,
Sec. 5) and MeMViT (arXiv 2201.08383, Sec. 5).

Training (``method.name: detection``, ``data.kind: ava``): each keyframe's clip goes through the backbone,
its ground-truth person boxes through the RoI head (``models/detection.py``), and every box's ``K`` logits
get a multi-label binary cross-entropy against its multi-hot actions, averaged over boxes and classes
(SlowFast's ``BCELoss`` with a sigmoid head; padded boxes and boxes the crop emptied are left out). At test
the boxes are person proposals and the scores the sigmoids; ``tubelet test`` writes them as an AVA detection
CSV and scores it with the official frame-mAP (``eval/ava.py``).

``box_blocks: 1`` adds MeMViT's box Transformer block, which with a memory backbone also attends to the box
features of earlier clips of the same video (the online order: ``data.ava.online``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tubelet.config.bounds import NONNEGATIVE, POSITIVE, PROBABILITY_BELOW_ONE, bounded
from tubelet.config.registry import MethodConfig
from tubelet.config.schema import Recipe
from tubelet.core.batch import Batch
from tubelet.errors import ConfigError
from tubelet.methods.backbone import build_backbone
from tubelet.methods.base import RunContext
from tubelet.methods.registry import register_method
from tubelet.models.detection import ActionDetector, BoxMemoryBlock, RoIHead

__all__ = ["Detection", "DetectionConfig"]


@dataclass
class DetectionConfig(MethodConfig):
    name: str = "detection"
    head_dropout: float = bounded(0.5, PROBABILITY_BELOW_ONE)  # SlowFast/MViTv2/MeMViT AVA: 0.5
    roi_resolution: int = bounded(7, POSITIVE)  # DETECTION.ROI_XFORM_RESOLUTION
    aligned: bool = True
    box_blocks: int = bounded(0, NONNEGATIVE)  # MeMViT: 1 (MVIT.BOX_DEPTH)
    box_heads: int = bounded(8, POSITIVE)  # heads of the box block (the last MViT stage's: 8)
    box_drop_path: float = bounded(0.0, PROBABILITY_BELOW_ONE)
    box_memory: bool = True  # the box block reads earlier clips' boxes when the backbone keeps memory


class Detection(nn.Module):
    """``forward(batch) -> {"loss", "boxes"}``; ``detect(video, boxes, mask, video_ids=None) -> (B, M, K)``
    sigmoid scores. Batches: ``video`` ``(B, 3, T, H, W)``, ``boxes`` ``(B, M, 4)`` pixels, ``box_mask``
    ``(B, M)``, ``labels`` ``(B, M, K)`` multi-hot."""

    def __init__(self, detector: ActionDetector) -> None:
        super().__init__()
        self.detector = detector

    @property
    def backbone(self) -> nn.Module:
        return self.detector.backbone

    @property
    def num_classes(self) -> int:
        return int(self.detector.head.proj.out_features)

    def logits(self, video: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor,
               video_ids: torch.Tensor | None = None) -> torch.Tensor:
        if video.dim() == 6:  # one test view: (B, 1, C, T, H, W)
            if video.shape[1] != 1:
                raise ConfigError(f"detection takes one view per keyframe, got {video.shape[1]}")
            video = video[:, 0]
        return self.detector(video, boxes, mask.bool(), video_ids if self.detector.uses_memory else None)

    @torch.no_grad()
    def detect(self, video: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor,
               video_ids: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.logits(video, boxes, mask, video_ids).float())

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        ids = batch.get("video_id")
        if ids is None and self.detector.uses_memory:
            self.detector.clear_memory()
        logits = self.logits(batch["video"], batch["boxes"], batch["box_mask"], ids)
        mask = batch["box_mask"].bool()
        n = mask.sum()
        per = F.binary_cross_entropy_with_logits(logits.float(), batch["labels"].float(), reduction="none")
        loss = (per * mask[..., None]).sum() / (n.clamp(min=1) * logits.shape[-1])
        return {"loss": loss, "boxes": n.float()}


@register_method("detection", DetectionConfig)
def build(recipe: Recipe, context: RunContext) -> Detection:
    m = recipe.method
    K = recipe.model.num_classes
    if context.num_classes is not None and K != context.num_classes:
        raise ConfigError(f"model.num_classes={K} but the detection set's label map has {context.num_classes} "
                          "action ids (its largest id)")
    if K < 1:
        raise ConfigError("method detection needs model.num_classes >= 1 (AVA: 80 action ids)")
    backbone = build_backbone(recipe.model, num_classes=0)
    dim = int(getattr(backbone, "num_features", 0) or _out_dim(backbone))
    head = RoIHead(dim, K, m.roi_resolution, m.head_dropout, m.aligned)
    memory = bool(getattr(backbone, "uses_memory", False)) and m.box_memory
    cfg = getattr(backbone, "cfg", None)
    blocks = nn.ModuleList(
        BoxMemoryBlock(dim, m.box_heads, drop_path=m.box_drop_path, memory=memory,
                       gap=int(getattr(cfg, "memory_gap", 2)), attn_max_len=int(getattr(cfg, "attn_max_len", 3)))
        for _ in range(m.box_blocks))
    return Detection(ActionDetector(backbone, head, blocks))


def _out_dim(backbone: nn.Module) -> int:
    """Channels of the backbone's last feature map (what its classifier sees)."""
    head = getattr(backbone, "head", None)
    for attr in ("in_features",):
        v = getattr(head, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    fc = getattr(head, "fc", None)
    if isinstance(fc, nn.Linear):
        return fc.in_features
    norm = getattr(backbone, "norm", None)
    if isinstance(norm, nn.LayerNorm):
        return int(norm.normalized_shape[0])
    raise ConfigError(f"method detection: cannot tell the feature width of {type(backbone).__name__}")
