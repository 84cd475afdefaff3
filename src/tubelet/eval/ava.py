"""Frame-level mAP of AVA action detection, as the official evaluator computes it (vectorised, numpy 2).

The official evaluator is ActivityNet's ``Evaluation/get_ava_performance.py`` with its Pascal VOC
``ObjectDetectionEvaluation`` (the TF object detection API's, ``matching_iou_threshold=0.5``). Its rules,
each reproduced here:

1. **Classes.** Only the label map's ids count (60 of AVA v2.2's 80); rows of other actions are dropped from
   ground truth and detections alike. A class without ground truth has no AP (NaN) and is left out of the
   mean (``np.nanmean``).
2. **50 detections per frame.** Per frame key (``"video,%.6f" % timestamp``), detections stream through a
   min-heap of capacity 50 on ``(score, action_id, y1, x1, y2, x2)``: a new row replaces the heap's least
   entry only if its score is strictly greater than the least score, so at a tie on the boundary the earlier
   rows stay. The kept rows are then ordered by descending score (stable over the heap's array order).
   Frames whose scores are all distinct (every real model's) keep their top 50 here by one lexsort; a frame
   with tied scores is streamed through the same heap as the evaluator's, so ties land exactly where they do
   there.
3. **Excluded timestamps** (the v2.1/v2.2 evaluator's ``-e`` file) drop their frames from both sides; the 2020
   evaluator's 2-column rows mark frames without actions. Detections on frames the ground truth does not
   list are false positives (v2.2's rule); ``ignore_unlisted=True`` ignores them instead (the 2020 rule).
4. **Invalid boxes**: detections with ``y1 >= y2`` or ``x1 >= x2`` are removed.
5. **Matching** per frame and class: in the frame's order, each detection takes the ground-truth box of its
   largest IoU (the first on ties, ``np.argmax``); it is a true positive if that IoU is ``>= 0.5`` and the box is
   not taken yet, else a false positive (a duplicate is a false positive even if another box would fit). IoU
   is area-based without the +1.
6. **AP** per class: detections of all frames concatenated in frame order, sorted ascending by score and
   reversed (so among equal scores the later detection comes first); precision and recall by cumulative sums;
   precision made non-increasing from the right, and AP = sum over recall steps of ``delta recall x
   precision``, with recall padded by 0 and 1 and precision by 0 and 0 (VOCdevkit, no 11-point sampling).

Equal scores: the evaluator sorts with ``np.argsort``'s default kind, whose order among equal scores depends
on the numpy build and the CPU (insertion sort below 17 elements; introsort, or on AVX-512 machines a SIMD
sort that scrambles ties, above). Here the sort is the stable one, which is what the default gives wherever
it keeps equal scores in place; a model's float scores are practically never equal within a class.

Released evaluators call ``np.float`` and ``np.bool``, which numpy 2 removed; this module has no such call.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tubelet.data.datasets.ava import AVATable, frame_keys, read_ava_csv, read_excluded, read_label_map

__all__ = ["AVAResult", "average_precision", "cap_detections", "evaluate_ava_files", "frame_map", "match_detections"]


@dataclass
class AVAResult:
    """``mAP`` over the label-map classes with ground truth; ``ap``: per class id (NaN without ground truth);
    ``num_gt`` and ``num_det``: per class id, after the evaluator's filters."""

    mAP: float
    ap: dict[int, float]
    names: dict[int, str]
    num_gt: dict[int, int] = field(default_factory=dict)
    num_det: dict[int, int] = field(default_factory=dict)
    num_frames: int = 0

    def table(self) -> list[tuple[int, str, float, int]]:
        return [(k, self.names[k], self.ap[k], self.num_gt.get(k, 0)) for k in self.names]

    def to_dict(self) -> dict[str, Any]:
        return {"mAP": self.mAP, "num_frames": self.num_frames,
                "per_class": [{"id": k, "name": n, "ap": None if np.isnan(a) else a, "num_gt": g,
                               "num_det": self.num_det.get(k, 0)} for k, n, a, g in self.table()]}


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """VOC AP of one class (``metrics.compute_precision_recall`` then ``compute_average_precision`` of the
    evaluator): NaN when ``num_gt`` is 0, 0 without detections."""
    if num_gt == 0:
        return float("nan")
    if scores.size == 0:
        return 0.0
    order = np.argsort(scores, kind="stable")[::-1]
    t = tp.astype(int)[order]
    ctp, cfp = np.cumsum(t), np.cumsum(1 - t)
    precision = ctp.astype(float) / (ctp + cfp)
    recall = ctp.astype(float) / num_gt
    recall = np.concatenate([[0], recall, [1]])
    precision = np.concatenate([[0], precision, [0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[idx] - recall[idx - 1]) * precision[idx]))


def _heap_frame(score: np.ndarray, action: np.ndarray, yx: np.ndarray, capacity: int) -> list[tuple]:
    """The evaluator's ``read_csv`` heap for one frame's rows in file order, then its sort by -score."""
    entries: list[tuple] = []
    for s, a, (y1, x1, y2, x2) in zip(score.tolist(), action.tolist(), yx.tolist()):
        if capacity < 1 or len(entries) < capacity:
            heapq.heappush(entries, (s, a, y1, x1, y2, x2))
        elif s > entries[0][0]:
            heapq.heapreplace(entries, (s, a, y1, x1, y2, x2))
    return sorted(entries, key=lambda e: -e[0])


def cap_detections(frame: np.ndarray, score: np.ndarray, action: np.ndarray, boxes: np.ndarray,
                   capacity: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """At most ``capacity`` detections per frame id, in the evaluator's order: frames in order of first
    appearance, then descending score. Inputs are rows in file order (``boxes`` ``x1,y1,x2,y2``); returns
    ``(frame, score, action, boxes)`` of the kept rows."""
    n = len(frame)
    if n == 0:
        return frame, score, action, boxes
    _, first, inv = np.unique(frame, return_index=True, return_inverse=True)
    rank_of_frame = np.argsort(np.argsort(first, kind="stable"), kind="stable")  # appearance order
    fo = rank_of_frame[inv]
    order = np.lexsort((np.arange(n), -score, fo))  # by frame, then descending score (file order on ties)
    s_sorted, f_sorted = score[order], fo[order]
    same_frame = f_sorted[1:] == f_sorted[:-1]
    tied = np.zeros(fo.max() + 1, bool)
    tied[f_sorted[1:][same_frame & (s_sorted[1:] == s_sorted[:-1])]] = True
    start = np.searchsorted(f_sorted, f_sorted, side="left")
    pos = np.arange(n) - start
    keep = order[(pos < capacity if capacity > 0 else np.ones(n, bool)) & ~tied[f_sorted]]
    out_f, out_s, out_a, out_b = [frame[keep]], [score[keep]], [action[keep]], [boxes[keep]]
    by_frame = np.argsort(fo, kind="stable")  # rows of one frame together, in file order
    bounds = np.searchsorted(fo[by_frame], np.arange(fo.max() + 2))
    for f in np.flatnonzero(tied):  # frames with tied scores: the evaluator's own heap
        rows = by_frame[bounds[f]:bounds[f + 1]]
        yx = boxes[rows][:, [1, 0, 3, 2]]
        kept = _heap_frame(score[rows], action[rows], yx, capacity)
        k = len(kept)
        arr = np.asarray([e[2:] for e in kept], dtype=np.float64).reshape(k, 4)
        out_f.append(np.full(k, frame[rows[0]], dtype=frame.dtype))
        out_s.append(np.asarray([e[0] for e in kept], dtype=np.float64))
        out_a.append(np.asarray([e[1] for e in kept], dtype=action.dtype))
        out_b.append(arr[:, [1, 0, 3, 2]])
    f_all, s_all, a_all, b_all = (np.concatenate(v) for v in (out_f, out_s, out_a, out_b))
    # back to frame order; inside a frame the order given above (descending score, heap order on ties)
    fo_all = rank_of_frame[np.searchsorted(np.unique(frame), f_all)]
    o = np.argsort(fo_all, kind="stable")
    return f_all[o], s_all[o], a_all[o], b_all[o]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of ``(..., 4)`` boxes (np_box_ops.iou: no +1)."""
    ih = np.maximum(0.0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]))
    iw = np.maximum(0.0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]))
    inter = ih * iw
    area = lambda x: (x[..., 3] - x[..., 1]) * (x[..., 2] - x[..., 0])  # noqa: E731
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (area(a) + area(b) - inter)


def match_detections(det_frame: np.ndarray, det_class: np.ndarray, det_boxes: np.ndarray, gt_frame: np.ndarray,
                     gt_class: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """True-positive flags of detections given in the evaluator's order: per (frame, class), each detection
    takes its largest-IoU ground-truth box (first on ties); the first detection to take a box with IoU >=
    ``iou_threshold`` is a true positive, the others false positives. Frame ids are integers."""
    n = len(det_frame)
    tp = np.zeros(n, bool)
    if n == 0 or len(gt_frame) == 0:
        return tp
    C = int(max(det_class.max(), gt_class.max())) + 1
    gkey = gt_frame.astype(np.int64) * C + gt_class
    dkey = det_frame.astype(np.int64) * C + det_class
    g_order = np.argsort(gkey, kind="stable")  # ground truth of one (frame, class) together, in file order
    gk = gkey[g_order]
    lo = np.searchsorted(gk, dkey, side="left")
    hi = np.searchsorted(gk, dkey, side="right")
    count = hi - lo
    G = int(count.max()) if n else 0
    if G == 0:
        return tp
    j = np.arange(G)
    claimed = np.zeros(n, np.int64)
    hit = np.zeros(n, bool)
    step = max(1, 4_000_000 // G)  # detections per block: the (block, G, 4) gather stays ~100 MB
    for s0 in range(0, n, step):
        sl = slice(s0, s0 + step)
        valid = j[None, :] < count[sl, None]
        gi = g_order[np.minimum(lo[sl, None] + j[None, :], len(gk) - 1)]
        iou = np.where(valid, _iou(det_boxes[sl, None, :], gt_boxes[gi]), -np.inf)
        best = np.argmax(iou, axis=1)
        r = np.arange(best.size)
        hit[sl] = (count[sl] > 0) & (iou[r, best] >= iou_threshold)
        claimed[sl] = gi[r, best]
    idx = np.flatnonzero(hit)
    _, first = np.unique(claimed[idx], return_index=True)  # earliest detection per ground-truth box
    tp[idx[first]] = True
    return tp


def frame_map(groundtruth: AVATable, detections: AVATable, label_map: dict[int, str],
              excluded: set[str] | None = None, capacity: int = 50, iou_threshold: float = 0.5,
              ignore_unlisted: bool = False) -> AVAResult:
    """Frame-mAP at ``iou_threshold`` of ``detections`` against ``groundtruth`` over the ids of ``label_map``
    (the rules in the module docstring). ``excluded``: frame keys (:func:`~tubelet.data.datasets.ava.frame_keys`)."""
    ids = np.asarray(sorted(label_map), dtype=np.int64)
    excluded = excluded or set()
    ex = np.asarray(sorted(excluded), dtype=str)

    g_keys = frame_keys(groundtruth.video, groundtruth.time)
    listed = np.unique(g_keys[~np.isin(g_keys, ex)]) if len(g_keys) else np.zeros(0, str)
    gsel = groundtruth.has_box & np.isin(groundtruth.action, ids) & ~np.isin(g_keys, ex)
    gt = groundtruth.select(gsel)
    gk = g_keys[gsel]

    d_keys = frame_keys(detections.video, detections.time)
    dsel = detections.has_box & np.isin(detections.action, ids)
    det, dk = detections.select(dsel), d_keys[dsel]
    # the cap runs on every whitelisted row of a frame (read_csv), exclusions then drop whole frames
    all_keys, inv = np.unique(np.concatenate([gk, dk]), return_inverse=True)
    g_frame, d_frame = inv[: len(gk)], inv[len(gk):]
    f, s, a, b = cap_detections(d_frame, det.extra.astype(np.float64), det.action, det.boxes, capacity)
    fk = all_keys[f] if len(f) else np.zeros(0, str)
    keep = ~np.isin(fk, ex)
    if ignore_unlisted:
        keep &= np.isin(fk, listed)
    keep &= (b[:, 1] < b[:, 3]) & (b[:, 0] < b[:, 2])  # _remove_invalid_boxes
    f, s, a, b = f[keep], s[keep], a[keep], b[keep]
    tp = match_detections(f, a, b, g_frame, gt.action, gt.boxes, iou_threshold)

    ap: dict[int, float] = {}
    num_gt = dict(zip(*np.unique(gt.action, return_counts=True)))
    num_det: dict[int, int] = {}
    c_order = np.argsort(a, kind="stable")  # per class, the frame order kept
    ca = a[c_order]
    for k in ids.tolist():  # one vector op per class
        sl = c_order[np.searchsorted(ca, k, "left"):np.searchsorted(ca, k, "right")]
        num_det[k] = int(sl.size)
        ap[k] = average_precision(s[sl], tp[sl], int(num_gt.get(k, 0)))
    vals = np.asarray([ap[k] for k in ids.tolist()], dtype=np.float64)
    mean = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return AVAResult(mean, ap, {int(k): label_map[int(k)] for k in ids}, {int(k): int(num_gt.get(k, 0)) for k in ids},
                     num_det, int(len(listed)))


def evaluate_ava_files(label_map: str | os.PathLike, groundtruth: str | os.PathLike, detections: str | os.PathLike,
                       excluded: str | os.PathLike | None = None, capacity: int = 50,
                       ignore_unlisted: bool = False) -> AVAResult:
    """:func:`frame_map` of the files the official evaluator takes (``-l``, ``-g``, ``-d`` and ``-e``)."""
    return frame_map(read_ava_csv(groundtruth, "annotations"), read_ava_csv(detections, "detections"),
                     read_label_map(label_map), read_excluded(excluded), capacity, ignore_unlisted=ignore_unlisted)


def format_ap_table(result: AVAResult, digits: int = 2) -> str:
    """Per-class AP lines and the mAP, in percent."""
    w = max((len(n) for n in result.names.values()), default=4)
    lines = [f"{'id':>3}  {'class':<{w}}  {'AP (%)':>7}  {'GT':>6}"]
    for k, n, a, g in result.table():
        lines.append(f"{k:>3}  {n:<{w}}  {('n/a' if np.isnan(a) else f'{100 * a:.{digits}f}'):>7}  {g:>6}")
    lines.append(f"frame-mAP@0.5 (%): {100 * result.mAP:.{digits}f} over "
                 f"{int(np.isfinite(list(result.ap.values())).sum())} classes with ground truth")
    return "\n".join(lines)
