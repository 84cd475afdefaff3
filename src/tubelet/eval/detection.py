"""Box detection metrics over frames: recall, precision and AP at one IoU threshold (VOC's matching rule).

Detections are matched as the PASCAL VOC / AVA evaluator does (``eval/ava.py``'s ``match_detections``, the same
code): within a frame, in descending score order, each detection takes the ground-truth box it overlaps most;
the first to take a box with IoU >= ``iou`` is a true positive, any later one a false positive. AP is VOC's
area under the interpolated precision-recall curve (``average_precision``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tubelet.eval.ava import average_precision, match_detections

__all__ = ["detection_metrics"]


def detection_metrics(preds: Sequence[tuple[np.ndarray, np.ndarray]], gts: Sequence[np.ndarray], iou: float = 0.5,
                      score_threshold: float = 0.3) -> dict[str, float]:
    """``preds``: per frame ``(boxes (K, 4) xyxy, scores (K,))``; ``gts``: per frame ``(n, 4)`` xyxy (one class).
    Returns ``recall`` and ``precision`` of the detections scoring at least ``score_threshold``,
    ``recall_all`` (every detection given), ``ap`` (AP at ``iou``), ``num_gt``, ``num_frames``."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} frames of detections but {len(gts)} of ground truth")
    det_frame = np.concatenate([np.full(len(s), f, np.int64) for f, (_, s) in enumerate(preds)] or [np.zeros(0, np.int64)])
    det_boxes = np.concatenate([np.asarray(b, np.float64).reshape(-1, 4) for b, _ in preds] or [np.zeros((0, 4))])
    det_score = np.concatenate([np.asarray(s, np.float64).reshape(-1) for _, s in preds] or [np.zeros(0)])
    gt_frame = np.concatenate([np.full(len(g), f, np.int64) for f, g in enumerate(gts)] or [np.zeros(0, np.int64)])
    gt_boxes = np.concatenate([np.asarray(g, np.float64).reshape(-1, 4) for g in gts] or [np.zeros((0, 4))])
    order = np.lexsort((-det_score, det_frame))  # the evaluator's order: by frame, then descending score
    det_frame, det_boxes, det_score = det_frame[order], det_boxes[order], det_score[order]
    tp = match_detections(det_frame, np.zeros_like(det_frame), det_boxes, gt_frame, np.zeros_like(gt_frame),
                          gt_boxes, iou)
    # a detection's flag depends only on those scoring higher in its frame, so a threshold keeps the flags
    kept = det_score >= score_threshold
    n_gt = len(gt_frame)
    hits = int(tp[kept].sum())
    return {"recall": hits / n_gt if n_gt else float("nan"),
            "precision": hits / int(kept.sum()) if kept.any() else float("nan"),
            "recall_all": int(tp.sum()) / n_gt if n_gt else float("nan"),
            "ap": average_precision(det_score, tp, n_gt), "num_gt": float(n_gt), "num_frames": float(len(gts))}
