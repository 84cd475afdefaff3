"""Deformable DETR's set-prediction objective (Zhu et al., arXiv 2010.04159, Sec. 3 and A.4; DETR, Carion et al.,
arXiv 2005.12872, Sec. 3.1), the detector UTT tracks from (arXiv 2203.15175, Sec. 4.1; METHODS.md Sec. 9 item 4).

Training (``method.name: deformable_detr``, ``data.kind: frame_boxes``): each image's ``Q`` predictions are
matched one-to-one to its ``n`` ground-truth boxes by the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``) on the cost

    C(q, j) = 2 C_class + 5 ||b_q - b_j||_1 - 2 GIoU(b_q, b_j)
    C_class = alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma (-log(1 - p)),  p = sigmoid(logit_q, c_j)

(the focal-loss cost of Deformable DETR: the positive focal term minus the negative one), boxes ``cxcywh``
normalised for L1 and ``xyxy`` for GIoU. The loss of every decoder layer (its own matching) is

    L = 2 sum_{q, k} FL(logit_qk, [q matched to a box of class k]) / N + 5 sum_matched ||b - b*||_1 / N
        + 2 sum_matched (1 - GIoU(b, b*)) / N

with the sigmoid focal loss ``FL`` (alpha 0.25, gamma 2) over every query and class (unmatched queries learn
"no object" as all-zero targets) and ``N`` the number of boxes of the batch (with several processes,
their mean: Deformable DETR's normalisation), at least 1. The detector is ``model.name`` (``deformable_detr_r50``, ``deformable_detr_r18_tiny``, ...),
built and loaded by the shared backbone builder; ``model.num_classes`` is its class count.

Inference (:func:`postprocess`): the ``top_k`` highest of the ``Q K`` sigmoid scores, each with its
query's box, as Deformable DETR's post-processing does; with ``method.nms_iou`` set, then class-agnostic
greedy NMS at that IoU (``tubelet.models.layers.boxes.nms``; not the paper's: DETR's set loss is meant
to make it unnecessary, but a briefly trained detector still emits duplicates, and a tracker opens a false
track on each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from tubelet.config.bounds import NONNEGATIVE, POSITIVE, FRACTION, bounded
from tubelet.config.registry import MethodConfig
from tubelet.config.schema import Recipe
from tubelet.core import dist
from tubelet.core.batch import Batch
from tubelet.errors import ConfigError
from tubelet.methods.backbone import build_backbone
from tubelet.methods.base import RunContext
from tubelet.methods.registry import register_method
from tubelet.models.deformable_detr import DeformableDETR
from tubelet.models.layers.boxes import box_convert, box_iou, generalized_box_iou, nms

__all__ = ["DeformableDETRMethod", "DeformableDETRMethodConfig", "Detections", "HungarianMatcher", "check_nms_iou",
           "match_cost", "postprocess", "set_loss", "sigmoid_focal_loss"]


@dataclass
class DeformableDETRMethodConfig(MethodConfig):
    name: str = "deformable_detr"
    cost_class: float = bounded(2.0, NONNEGATIVE)
    cost_bbox: float = bounded(5.0, NONNEGATIVE)
    cost_giou: float = bounded(2.0, NONNEGATIVE)
    cls_weight: float = bounded(2.0, NONNEGATIVE)
    l1_weight: float = bounded(5.0, NONNEGATIVE)
    giou_weight: float = bounded(2.0, NONNEGATIVE)
    focal_alpha: float = bounded(0.25, FRACTION)
    focal_gamma: float = bounded(2.0, NONNEGATIVE)
    aux_loss: bool = True  # the loss on every decoder layer, not only the last
    # the paper's 0.1x learning rates (A.4): an ImageNet backbone, the sampling offsets and reference points
    backbone_lr_scale: float = bounded(0.1, NONNEGATIVE)
    offset_lr_scale: float = bounded(0.1, NONNEGATIVE)
    top_k: int = bounded(100, POSITIVE)  # detections kept per image at inference (the paper: 100)
    # class-agnostic greedy NMS of the top_k at this IoU (None: none, as DETR); a tracker opens a false track
    # on every duplicate, so MOT recipes set it
    nms_iou: float | None = bounded(None, FRACTION)


def _focal_terms(logits: torch.Tensor, alpha: float, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The focal loss of each logit as a positive and as a negative: ``(pos, neg)``, shaped as ``logits``."""
    p = logits.sigmoid()
    pos = alpha * (1 - p) ** gamma * -F.logsigmoid(logits)
    neg = (1 - alpha) * p ** gamma * -F.logsigmoid(-logits)
    return pos, neg


def match_cost(logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
               cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0, alpha: float = 0.25,
               gamma: float = 2.0) -> torch.Tensor:
    """The matching cost ``(N, M)`` of ``N`` predictions (``logits`` ``(N, K)``, ``boxes`` ``(N, 4)`` cxcywh)
    against ``M`` ground truths (``labels`` ``(M,)``, ``targets`` ``(M, 4)`` cxcywh)."""
    pos, neg = _focal_terms(logits.float(), alpha, gamma)
    c_cls = (pos - neg)[:, labels]
    c_l1 = torch.cdist(boxes.float(), targets.float(), p=1)
    c_giou = -generalized_box_iou(box_convert(boxes.float(), "cxcywh", "xyxy"),
                                  box_convert(targets.float(), "cxcywh", "xyxy"))
    return cost_class * c_cls + cost_bbox * c_l1 + cost_giou * c_giou


class HungarianMatcher:
    """``matcher(logits (B, Q, K), boxes (B, Q, 4), labels (B, M), targets (B, M, 4), mask (B, M)) -> [(queries,
    boxes)]``: per image, the index arrays (int64, ``min(Q, n)`` long) of the optimal one-to-one assignment of
    its ``n`` valid boxes (``mask``) to queries. The costs of the whole batch are one tensor computation; only
    the assignment itself runs per image (scipy)."""

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0, alpha: float = 0.25,
                 gamma: float = 2.0) -> None:
        self.weights = dict(cost_class=cost_class, cost_bbox=cost_bbox, cost_giou=cost_giou, alpha=alpha, gamma=gamma)

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                 mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        B, Q, K = logits.shape
        sizes = mask.sum(1).tolist()
        cost = match_cost(logits.reshape(B * Q, K), boxes.reshape(B * Q, 4), labels[mask], targets[mask],
                          **self.weights).view(B, Q, -1).cpu()
        out, start = [], 0
        for b, n in enumerate(sizes):
            rows, cols = linear_sum_assignment(cost[b, :, start:start + n].numpy())
            start += n
            out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return out


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al., arXiv 1708.02002, eq. 5) of every logit against its 0/1 target, unreduced."""
    pos, neg = _focal_terms(logits, alpha, gamma)
    return targets * pos + (1 - targets) * neg


def set_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
             matcher: HungarianMatcher, num_boxes: float, alpha: float = 0.25, gamma: float = 2.0
             ) -> dict[str, torch.Tensor]:
    """``{"loss_ce", "loss_bbox", "loss_giou"}`` of one decoder layer's ``{"logits", "boxes"}``, each summed
    and divided by ``num_boxes``, and the (detached) ``matched_iou``; ``labels`` ``(B, M)``, ``targets``
    ``(B, M, 4)`` cxcywh with ``mask``."""
    logits, boxes = out["logits"], out["boxes"]
    B, Q, K = logits.shape
    matches = matcher(logits, boxes, labels, targets, mask)
    b_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(matches)]).to(logits.device)
    q_idx = torch.cat([q for q, _ in matches]).to(logits.device)
    # the j-th valid box of image b sits at position j among the True entries of mask[b]
    slots = [torch.nonzero(mask[b]).flatten() for b in range(B)]
    t_idx = torch.cat([slots[b][j.to(mask.device)] for b, (_, j) in enumerate(matches)]).to(logits.device)
    onehot = torch.zeros_like(logits)
    onehot[b_idx, q_idx, labels[b_idx, t_idx]] = 1.0
    loss_ce = sigmoid_focal_loss(logits, onehot, alpha, gamma).sum() / num_boxes
    pred, gt = boxes[b_idx, q_idx], targets[b_idx, t_idx].to(boxes.dtype)
    loss_bbox = F.l1_loss(pred, gt, reduction="sum") / num_boxes
    giou = generalized_box_iou(box_convert(pred, "cxcywh", "xyxy"), box_convert(gt, "cxcywh", "xyxy"), aligned=True)
    loss_giou = (1 - giou).sum() / num_boxes
    with torch.no_grad():  # whether boxes are learnt: the mean IoU of the matched pairs (logged, not a loss)
        iou = box_iou(box_convert(pred, "cxcywh", "xyxy"), box_convert(gt, "cxcywh", "xyxy"), aligned=True)
    return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou,
            "matched_iou": iou.mean() if iou.numel() else logits.new_zeros(())}


class Detections(NamedTuple):
    """Per image the ``k = min(top_k, Q K)`` best detections, scores descending: ``boxes`` ``(B, k, 4)`` xyxy
    normalised, ``scores`` ``(B, k)`` sigmoid probabilities, ``labels`` ``(B, k)`` int64 and ``keep``
    ``(B, k)`` bool, False where NMS suppressed the detection (all True without NMS)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    keep: torch.Tensor


def check_nms_iou(value: object, where: str) -> float | None:
    """``value`` as an NMS IoU threshold (a number in [0, 1], or None: no NMS); anything else is a one-line
    ``ConfigError`` naming ``where`` it came from."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{where}: the NMS IoU threshold must be a number in [0, 1] or none, got {value!r}")
    return float(value)


@torch.no_grad()
def postprocess(out: dict[str, torch.Tensor], top_k: int = 100, nms_iou: float | None = None) -> Detections:
    """The ``top_k`` best of the ``Q K`` query-class scores per image (each with its query's box) and, with
    ``nms_iou``, which of them survive class-agnostic greedy NMS at that IoU (:class:`Detections`)."""
    logits, boxes = out["logits"], out["boxes"]
    B, Q, K = logits.shape
    scores, idx = logits.sigmoid().flatten(1).topk(min(int(top_k), Q * K), dim=1)
    query = torch.div(idx, K, rounding_mode="floor")
    picked = box_convert(boxes.gather(1, query[..., None].expand(-1, -1, 4)), "cxcywh", "xyxy")
    keep = torch.ones_like(scores, dtype=torch.bool) if nms_iou is None else nms(picked, scores, nms_iou)
    return Detections(picked, scores, idx % K, keep)


class DeformableDETRMethod(nn.Module):
    """``forward(batch) -> {"loss", "loss_ce", "loss_bbox", "loss_giou", "matched_iou"}``. The batch holds
    ``image`` ``(B, 3, H, W)`` normalised, ``boxes`` ``(B, M, 4)`` cxcywh normalised, ``labels`` ``(B, M)`` and
    ``box_mask`` ``(B, M)`` bool (padding False); the last three are the ``frame_boxes`` data kind's."""

    def __init__(self, detr: DeformableDETR, cfg: DeformableDETRMethodConfig) -> None:
        super().__init__()
        self.detr = detr
        self.cfg = cfg
        self.matcher = HungarianMatcher(cfg.cost_class, cfg.cost_bbox, cfg.cost_giou, cfg.focal_alpha, cfg.focal_gamma)
        self.weights = {"loss_ce": cfg.cls_weight, "loss_bbox": cfg.l1_weight, "loss_giou": cfg.giou_weight}

    @property
    def backbone(self) -> nn.Module:
        # the whole detector is what the run's backbone.safetensors holds (load_model returns it)
        return self.detr

    def lr_scales(self) -> dict[str, float]:
        scales = {}
        for name, _ in self.named_parameters():
            if name.startswith("detr.backbone."):
                scales[name] = self.cfg.backbone_lr_scale
            elif ".sampling_offsets." in name or name.startswith("detr.reference_points."):
                scales[name] = self.cfg.offset_lr_scale
        return scales

    def _num_boxes(self, mask: torch.Tensor) -> float:
        n = float(mask.sum())
        if dist.is_distributed():
            n = dist.all_reduce_sum([n], mask.device)[0] / dist.world_size()
        return max(n, 1.0)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        images, targets = batch["image"], batch["boxes"]
        labels, mask = batch["labels"], batch["box_mask"].bool()
        K = self.detr.cfg.num_classes
        if mask.any() and int(labels[mask].max()) >= K:
            raise ConfigError(f"a box has class {int(labels[mask].max())} but model.num_classes is {K}")
        out = self.detr(images)
        n = self._num_boxes(mask)
        layers = [out, *out["aux"]] if self.cfg.aux_loss else [out]
        total = images.new_zeros(())
        logs: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(layers):
            terms = set_loss(layer, labels, targets, mask, self.matcher, n, self.cfg.focal_alpha,
                             self.cfg.focal_gamma)
            total = total + sum(w * terms[k] for k, w in self.weights.items())
            if i == 0:  # the last decoder layer's terms are what is logged
                logs = {k: v.detach() for k, v in terms.items()}
        return {"loss": total, **logs}

    @torch.no_grad()
    def detect(self, images: torch.Tensor, top_k: int | None = None,
               nms_iou: float | None | Literal["config"] = "config") -> Detections:
        """:func:`postprocess` of the detector's last layer, with ``method.top_k`` and ``method.nms_iou``
        unless given (``nms_iou=None``: no NMS)."""
        iou = self.cfg.nms_iou if nms_iou == "config" else check_nms_iou(nms_iou, "detect(nms_iou=...)")
        return postprocess(self.detr(images), self.cfg.top_k if top_k is None else top_k, iou)


@register_method("deformable_detr", DeformableDETRMethodConfig)
def build(recipe: Recipe, context: RunContext) -> DeformableDETRMethod:
    detr = build_backbone(recipe.model)
    if not isinstance(detr, DeformableDETR):
        raise ConfigError(f"method deformable_detr: model.name '{recipe.model.name}' is not a Deformable DETR "
                          "(deformable_detr_r50, deformable_detr_r18, deformable_detr_r18_tiny)")
    if context.num_classes is not None and context.num_classes != detr.cfg.num_classes:
        raise ConfigError(f"model.num_classes={detr.cfg.num_classes} but the training set has "
                          f"{context.num_classes} classes")
    return DeformableDETRMethod(detr, recipe.method)  # type: ignore[arg-type]

