"""UTT, the Unified Transformer Tracker (arXiv 2203.15175): the training objective and the SOT tracker
(the MOT tracker is :mod:`tubelet.methods.utt_mot`).

Training (``method.name: utt``), the batch's keys choose the step:

* SOT (``data.kind: sot``): each sample is a reference crop with its target box and a search crop
  (``data/datasets/tracking.py``: UTT's search area, centre and scale jitter); the model predicts the
  proposal and ``iterations`` refinements on the search crop, each supervised with ``giou_weight`` GIoU +
  ``l1_weight`` L1 on boxes normalised to the crop (paper: 2 and 5, summed over all outputs).
* MOT (``data.kind: mot``; a batch with ``proposals``): a reference frame with its targets' boxes and a
  later frame; the proposals (the later boxes plus Gaussian noise with a minimum IoU) skip the proposal
  decoder and the L refinements are supervised with the same box terms (i = 1..L), padded targets left
  out. The reference boxes are the ground truth, so nothing of them carries a gradient (the paper's
  reference detection runs without one); L_det belongs to the detector, trained on its own.
* Unified (``data.kind: unified``): the two alternate batch by batch, even steps SOT, odd MOT, each an
  optimiser step of its own, with one set of weights.

``model.name`` is the 2-D ResNet (``resnet18_image``, ``resnet50_image``), built and loaded by the shared
backbone builder.

Tracking (:class:`SOTTracker`): the first frame's target feature is computed once and never updated;
every frame is cropped around the last box (``data.sot.search_factor`` times its size, resized to
``data.crop_size``: the crop rule of training, so the target has the scale the model learnt), the last of
the model's boxes is kept, mapped back to the frame and clipped to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tubelet.config.bounds import NONNEGATIVE, POSITIVE, PROBABILITY_BELOW_ONE, bounded
from tubelet.config.registry import MethodConfig
from tubelet.config.schema import Recipe
from tubelet.core.batch import Batch
from tubelet.data.datasets.tracking import box_in_crop, crop_box, crop_frame
from tubelet.errors import ConfigError
from tubelet.methods.backbone import build_backbone
from tubelet.methods.base import RunContext
from tubelet.methods.registry import register_method
from tubelet.models.layers.boxes import box_iou
from tubelet.models.resnet2d import ResNet2d
from tubelet.models.utt import UTT, UTTConfig, utt_box_loss

__all__ = ["SOTTracker", "UTTMethod", "UTTMethodConfig"]


@dataclass
class UTTMethodConfig(MethodConfig):
    name: str = "utt"
    dim: int = bounded(512, POSITIVE)
    heads: int = bounded(8, POSITIVE)
    ffn_dim: int = bounded(1024, POSITIVE)
    dropout: float = bounded(0.1, PROBABILITY_BELOW_ONE)
    iterations: int = bounded(6, NONNEGATIVE)  # L
    roi_size: int = bounded(7, POSITIVE)  # K
    target_decoder_layers: int = bounded(1, POSITIVE)  # paper: 1 block (code: 6)
    giou_weight: float = bounded(2.0, NONNEGATIVE)
    l1_weight: float = bounded(5.0, NONNEGATIVE)
    # no search factor here: tracking crops with the run's data.sot.search_factor, the one it was trained on


class UTTMethod(nn.Module):
    """``forward(batch)``: SOT batches ``-> {"loss", "giou_loss", "l1_loss", "proposal_giou_loss", "iou"}``;
    MOT batches (with ``proposals``) ``-> {"loss", "mot_giou_loss", "mot_l1_loss", "mot_iou",
    "mot_proposal_iou"}`` (IoUs of the last refinement and of the proposals, over real targets)."""

    def __init__(self, utt: UTT, giou_weight: float = 2.0, l1_weight: float = 5.0) -> None:
        super().__init__()
        self.utt = utt
        self.giou_weight, self.l1_weight = float(giou_weight), float(l1_weight)

    @property
    def backbone(self) -> nn.Module:
        # a property, not a second registration: the weights file holds each tensor once
        return self.utt.backbone

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        if "proposals" in batch:
            return self.mot_step(batch)
        outs = self.utt(batch["reference"], batch["reference_box"][:, None], batch["search"])
        target = batch["search_box"][:, None]
        out = utt_box_loss(outs, target, self.giou_weight, self.l1_weight)
        out["iou"] = box_iou(outs[-1].detach(), target, aligned=True).mean()
        return out

    def mot_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        valid = batch["valid"]
        if self.utt.cfg.iterations < 1:
            raise ConfigError("method utt: a MOT step needs method.iterations >= 1 (MOT has no proposal decoder)")
        outs = self.utt(batch["reference"], batch["reference_boxes"], batch["search"], batch["proposals"])
        target = batch["search_boxes"]
        loss = utt_box_loss(outs, target, self.giou_weight, self.l1_weight, valid)
        w = valid.float()
        n = w.sum().clamp(min=1.0)
        iou = (box_iou(outs[-1].detach(), target, aligned=True) * w).sum() / n
        prop_iou = (box_iou(batch["proposals"], target, aligned=True) * w).sum() / n
        return {"loss": loss["loss"], "mot_giou_loss": loss["giou_loss"], "mot_l1_loss": loss["l1_loss"],
                "mot_iou": iou, "mot_proposal_iou": prop_iou}


@register_method("utt", UTTMethodConfig)
def build(recipe: Recipe, context: RunContext) -> UTTMethod:
    m = recipe.method
    backbone = build_backbone(recipe.model)
    if not isinstance(backbone, ResNet2d):
        raise ConfigError(f"method utt: model.name '{recipe.model.name}' is not a 2-D ResNet "
                          "(resnet18_image or resnet50_image)")
    cfg = UTTConfig(backbone=recipe.model.name, dim=m.dim, heads=m.heads, ffn_dim=m.ffn_dim, dropout=m.dropout,
                    iterations=m.iterations, roi_size=m.roi_size, target_decoder_layers=m.target_decoder_layers)
    return UTTMethod(UTT(cfg, backbone=backbone), m.giou_weight, m.l1_weight)


class SOTTracker:
    """``init(frame, box)`` then ``update(frame) -> box`` per frame; frames uint8 ``(H, W, 3)``, boxes
    ``x,y,w,h`` in frame pixels."""

    def __init__(self, utt: UTT, size: int, search_factor: float, mean, std, device: torch.device | str = "cpu"):
        self.utt = utt.eval()
        self.size, self.factor = int(size), float(search_factor)
        self.mean, self.std = tuple(mean), tuple(std)
        self.device = torch.device(device)
        self.box: np.ndarray | None = None
        self.target: torch.Tensor | None = None

    @torch.no_grad()
    def init(self, frame: np.ndarray, box: np.ndarray) -> None:
        box = np.asarray(box, np.float64)
        region = crop_box(box, self.factor)
        crop = crop_frame(frame, region, self.size, self.mean, self.std)[None].to(self.device)
        b = torch.from_numpy(box_in_crop(box, region, self.size)).float().to(self.device)[None, None]
        self.target = self.utt.target_features(self.utt.features(crop), b)
        self.box = box

    @torch.no_grad()
    def update(self, frame: np.ndarray) -> np.ndarray:
        if self.target is None or self.box is None:
            raise RuntimeError("SOTTracker.update before init")
        region = crop_box(self.box, self.factor)
        crop = crop_frame(frame, region, self.size, self.mean, self.std)[None].to(self.device)
        out = self.utt.track(self.target, self.utt.features(crop), (self.size, self.size))[-1][0, 0]
        cx, cy, side = region
        x1, y1, x2, y2 = (out.double().cpu().numpy() * side) + np.array([cx - side / 2, cy - side / 2] * 2)
        H, W = frame.shape[:2]
        x1, x2 = np.clip([x1, x2], 0, W)
        y1, y2 = np.clip([y1, y2], 0, H)
        # a box clipped to nothing keeps the previous size where it was, so the next crop stays valid
        if x2 - x1 < 1 or y2 - y1 < 1:
            box = np.array([min(max(x1, 0), W - 1), min(max(y1, 0), H - 1), *self.box[2:]])
        else:
            box = np.array([x1, y1, x2 - x1, y2 - y1])
        self.box = box
        return box
