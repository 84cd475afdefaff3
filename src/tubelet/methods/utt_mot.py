"""UTT multi-object tracking (arXiv 2203.15175, METHODS.md section 9, "Inference, MOT"): the track
transformer moves every track's box from the previous frame into the current one, and the moved boxes are
associated with the current frame's detections.

Per frame (:class:`MOTTracker`):

1. detections with a score above ``det_threshold`` (0.1) are candidates;
2. every live track's box is propagated into the frame: by the track transformer
   (:class:`UTTPropagator`: reference = previous frame, B = the tracks' boxes there, proposals = the
   same boxes, no proposal decoder; the last of the L refinements is kept), or left where it was
   (``propagator=None``: the association alone);
3. Hungarian matching (:func:`associate`, ``scipy.optimize.linear_sum_assignment``) on the cost
   ``1 - GIoU`` between propagated boxes and candidates; a matched pair whose cost is above ``max_cost``
   (1.2, i.e. GIoU below -0.2) is rejected (the code's rule; the paper's "IoU threshold 0.9" is ambiguous);
4. a matched track takes its detection's box (decision: the detector localises the object in this frame;
   the propagated box only carried the identity); an unmatched track keeps its propagated box and one
   more miss, and is dropped once it has missed more than ``max_age`` (10) frames in a row: missed 10, it
   is still matched in the next frame; missed 11, it is gone;
5. unmatched candidates scoring above ``new_threshold`` (0.4) start tracks with new identities.

The frame's output is every track matched or started in it. The IoU-only baseline of the docs is the
same bookkeeping with ``cost="iou"`` (``1 - IoU``; pairs without overlap rejected) and no propagator.

Boxes are ``xyxy`` in frame pixels (``x2 = x + w``); the bookkeeping is numpy arrays, no loop over tracks
or boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Protocol, Sequence

import numpy as np
import torch

from tubelet.config.bounds import FRACTION, NONNEGATIVE, POSITIVE_REAL, Checked, bounded
from tubelet.data.datasets.tracking import MOTRows, letterbox
from tubelet.errors import ConfigError
from tubelet.models.utt import UTT

__all__ = ["AssociationConfig", "DetectionsByFrame", "MOTTracker", "UTTPropagator", "associate", "frame_detector", "pair_cost",
           "xywh_to_xyxy", "xyxy_to_xywh"]

Detections = tuple[np.ndarray, np.ndarray]  # boxes (K, 4) xyxy float32 pixels, scores (K,)


@dataclass
class AssociationConfig(Checked):
    """The association of UTT's MOT inference (Trackron's ``utt.yaml``)."""

    SECTION = "association"

    det_threshold: float = bounded(0.1, FRACTION)  # detections considered at all
    new_threshold: float = bounded(0.4, FRACTION)  # an unmatched detection starts a track above it
    max_cost: float = bounded(1.2, POSITIVE_REAL)  # reject matches with cost above it (1 - GIoU lies in [0, 2])
    max_age: int = bounded(10, NONNEGATIVE)  # frames a track may stay unmatched and still be matched again
    cost: Literal["giou", "iou"] = "giou"  # iou: the IoU-only baseline (1 - IoU; pairs without overlap rejected)


def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1)


def xyxy_to_xywh(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1)


def pair_cost(a: np.ndarray, b: np.ndarray, kind: Literal["giou", "iou"] = "giou") -> np.ndarray:
    """``(N, M)`` matching cost of ``xyxy`` boxes: ``1 - GIoU`` in ``[0, 2]`` or ``1 - IoU`` in ``[0, 1]``."""
    a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
    lt, rb = np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[..., 2:] - a[..., :2], 0, None).prod(-1)
    area_b = np.clip(b[..., 2:] - b[..., :2], 0, None).prod(-1)
    union = area_a + area_b - inter
    iou = inter / np.maximum(union, 1e-12)
    if kind == "iou":
        return 1.0 - iou
    if kind != "giou":
        raise ConfigError(f"association cost '{kind}' is not one of giou, iou")
    hull = (np.maximum(a[..., 2:], b[..., 2:]) - np.minimum(a[..., :2], b[..., :2])).prod(-1)
    return 1.0 - (iou - (hull - union) / np.maximum(hull, 1e-12))


def associate(cost: np.ndarray, max_cost: float) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of a ``(N, M)`` cost matrix, then the matched pairs with cost above ``max_cost``
    rejected (a cost equal to it is kept). Returns the kept ``(rows, cols)``."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as exc:
        raise ConfigError(f"MOT association needs scipy: pip install 'tubelet[tracking]' ({exc})") from None
    if cost.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, cols = linear_sum_assignment(cost)
    keep = cost[rows, cols] <= max_cost
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


class Propagator(Protocol):
    def __call__(self, frame: np.ndarray | None, boxes: np.ndarray) -> np.ndarray: ...


class MOTTracker:
    """``update(frame, boxes, scores) -> (ids, boxes, scores)`` once per frame, in order; detections and
    output boxes ``xyxy`` in frame pixels. ``propagator(frame, boxes) -> boxes`` moves the live tracks'
    boxes (those of the previous frame) into ``frame``; it is called on every frame, with no boxes too, so
    that it can keep the previous frame's features. None: the boxes stay where they were."""

    def __init__(self, cfg: AssociationConfig | None = None, propagator: Propagator | None = None) -> None:
        self.cfg = cfg or AssociationConfig()
        self.propagator = propagator
        self.ids = np.zeros(0, np.int64)
        self.boxes = np.zeros((0, 4))
        self.scores = np.zeros(0)
        self.misses = np.zeros(0, np.int64)
        self.next_id = 1

    def update(self, frame: np.ndarray | None, boxes: np.ndarray, scores: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.cfg
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        if len(boxes) != len(scores):
            raise ConfigError(f"MOT tracker: {len(boxes)} detection boxes but {len(scores)} scores")
        cand = scores > cfg.det_threshold
        boxes, scores = boxes[cand], scores[cand]
        if self.propagator is not None:
            moved = np.asarray(self.propagator(frame, self.boxes), np.float64).reshape(-1, 4)
            if len(moved) != len(self.boxes):
                raise ConfigError(f"MOT tracker: the propagator returned {len(moved)} boxes for {len(self.boxes)} tracks")
            self.boxes = moved
        cost = pair_cost(self.boxes, boxes, cfg.cost)
        rows, cols = associate(cost, cfg.max_cost)
        if cfg.cost == "iou":  # boxes that do not overlap are no evidence for IoU (their cost is 1 at any distance)
            overlap = cost[rows, cols] < 1.0
            rows, cols = rows[overlap], cols[overlap]
        matched = np.zeros(len(self.ids), bool)
        matched[rows] = True
        self.boxes[rows] = boxes[cols]
        self.scores[rows] = scores[cols]
        self.misses[rows] = 0
        self.misses[~matched] += 1
        alive = self.misses <= cfg.max_age
        free = np.ones(len(boxes), bool)
        free[cols] = False
        new = free & (scores > cfg.new_threshold)
        k = int(new.sum())
        self.ids = np.concatenate([self.ids[alive], np.arange(self.next_id, self.next_id + k)])
        self.boxes = np.concatenate([self.boxes[alive], boxes[new]])
        self.scores = np.concatenate([self.scores[alive], scores[new]])
        self.misses = np.concatenate([self.misses[alive], np.zeros(k, np.int64)])
        self.next_id += k
        out = self.misses == 0
        return self.ids[out].copy(), self.boxes[out].copy(), self.scores[out].copy()


class UTTPropagator:
    """The track transformer as a :class:`MOTTracker` propagator: each frame is letterboxed to ``size``
    (the training rule of MOT pairs) and its backbone map computed once; the previous frame's map and the
    tracks' boxes there give the target features, the boxes themselves are the proposals, and the last
    refinement, mapped back to the frame and clipped to it, is the moved box. A box that refines to nothing
    keeps its previous value."""

    def __init__(self, utt: UTT, size: int, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str = "cpu") -> None:
        if utt.cfg.iterations < 1:
            raise ConfigError("UTT MOT tracking needs at least one refinement (method.iterations >= 1)")
        self.utt = utt.eval()
        self.size, self.mean, self.std = int(size), tuple(mean), tuple(std)
        self.device = torch.device(device)
        self.prev: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, frame: np.ndarray | None, boxes: np.ndarray) -> np.ndarray:
        if frame is None:
            raise ConfigError("UTT MOT tracking needs the frames (the track transformer reads them)")
        img, scale = letterbox(frame, self.size, self.mean, self.std)
        cur = self.utt.features(img[None].to(self.device))
        prev, self.prev = self.prev, cur
        if prev is None or len(boxes) == 0:
            return boxes
        b = torch.from_numpy(np.asarray(boxes, np.float64) * scale).float().to(self.device)[None]
        target = self.utt.target_features(prev, b)
        out = self.utt.track(target, cur, (self.size, self.size), b / self.size)[-1][0]
        moved = out.double().cpu().numpy() * self.size / scale
        H, W = frame.shape[:2]
        moved = np.clip(moved, 0, [W, H, W, H])
        empty = (moved[:, 2] - moved[:, 0] < 1) | (moved[:, 3] - moved[:, 1] < 1) | ~np.isfinite(moved).all(1)
        moved[empty] = boxes[empty]
        return moved


class DetectionsByFrame:
    """A detections file (MOT ``det.txt`` rows, or :func:`~tubelet.data.datasets.tracking.jittered_detections`)
    served per frame: ``dets(t)`` (0-based) ``-> (boxes (K, 4) xyxy float32, scores (K,))``."""

    def __init__(self, rows: MOTRows) -> None:
        order = np.argsort(rows.frame, kind="stable")
        self.frame = rows.frame[order]
        self.boxes = xywh_to_xyxy(rows.boxes[order]).astype(np.float32)
        self.conf = rows.conf[order].astype(np.float32)

    def __call__(self, t: int) -> Detections:
        lo, hi = np.searchsorted(self.frame, [t + 1, t + 2])
        return self.boxes[lo:hi], self.conf[lo:hi]


def frame_detector(detect: Callable[[np.ndarray], Detections]) -> Callable[[int, np.ndarray], Detections]:
    """A detector called on frames (``detect(frame uint8 (H, W, 3)) -> (boxes, scores)``, e.g.
    ``tubelet.engine.detector.load_detector(path)``) as a per-frame source ``(t, frame) -> detections``."""
    return lambda t, frame: detect(frame)
