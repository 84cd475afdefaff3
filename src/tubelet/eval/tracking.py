"""Tracking metrics as the field's tools compute them.

MOT: HOTA, CLEAR (MOTA, MOTP, MT/PT/ML, Frag) and Identity (IDF1, IDP, IDR) from ``trackeval`` (the
``tracking`` extra), fed by trackeval's own MOT Challenge preprocessing and box IoU: nothing of the metrics
is written here. Matching threshold 0.5 IoU (trackeval's default, as py-motmetrics' ``distth=0.5``).

SOT, one-pass evaluation (OPE) over sequences of ``x,y,w,h`` boxes, two named conventions:

``"toolkit"`` (default): LaSOT's / pysot's / mmtracking's ``eval_sot_ope``: ``x2 = x + w``, IoU without +1,
    centres ``(x1 + x2) / 2``; success = mean over IoU thresholds 0, 0.05 ... 1 of the share of frames with
    IoU > threshold (a frame whose ground truth is empty has IoU -1, a miss); precision = share with centre
    error <= 20 px, normalised precision = share with the error of centres divided by the ground truth's
    w, h <= 0.2 (a frame whose ground-truth centre is not positive has error -1, which these tools count
    as a hit); each averaged over sequences.
``"pytracking"``: the pytracking-style evaluator's (Trackron's): the +/-1 pixel rule (``x2 = x + w - 1``,
    intersections ``+ 1``, centres ``x + (w - 1) / 2``; for boxes on the pixel grid these give the same IoU
    and centre errors as the toolkit's), the prediction of frame 0 replaced by the ground truth, and every
    frame whose ground truth is empty (w or h <= 0) counted as a hit for both centre errors, where the
    toolkit counts it as a hit only when its centre is not positive.

GOT-10k: AO = mean IoU, SR0.5 / SR0.75 = share of frames with IoU > 0.5 / 0.75, over the frames of all
sequences pooled (frame-weighted, as its toolkit concatenates them), frame 0 (the initialisation) and
frames without a visible target excluded.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from tubelet.data.datasets.tracking import MOTRows
from tubelet.errors import ConfigError, DataError

__all__ = ["SOT_CONVENTIONS", "got10k_metrics", "mot_metrics", "sot_ope", "sot_iou"]

SOT_CONVENTIONS = ("toolkit", "pytracking")
SOTConvention = Literal["toolkit", "pytracking"]
Benchmark = Literal["MOT15", "MOT16", "MOT17", "MOT20"]

# what mot_metrics returns per sequence and combined (trackeval's field names)
MOT_FIELDS = ("HOTA", "DetA", "AssA", "LocA", "MOTA", "MOTP", "IDF1", "IDP", "IDR", "CLR_Re", "CLR_Pr", "MT",
              "PT", "ML", "CLR_FP", "CLR_FN", "IDSW", "Frag", "CLR_TP", "GT_IDs", "IDs", "Dets", "GT_Dets")


def _trackeval():
    try:
        import trackeval
    except ImportError as exc:
        raise ConfigError("MOT metrics need trackeval: pip install 'tubelet[tracking]' "
                          f"({type(exc).__name__}: {exc})") from None
    return trackeval


def _raw_seq(gt: MOTRows, tracks: MOTRows, num_frames: int, name: str, benchmark: Benchmark) -> dict:
    """The ``raw_data`` dict trackeval's MotChallenge2DBox builds from the two files, built from rows."""
    te = _trackeval()
    for rows, what in ((gt, "ground truth"), (tracks, "tracker output")):
        if len(rows) and int(rows.frame.max()) > num_frames:
            raise DataError(f"{rows.path or name}: {what} has frame {int(rows.frame.max())} beyond the sequence's "
                            f"{num_frames} frames")
    g_order, t_order = np.argsort(gt.frame, kind="stable"), np.argsort(tracks.frame, kind="stable")
    g_split = np.searchsorted(gt.frame[g_order], np.arange(1, num_frames + 2))
    t_split = np.searchsorted(tracks.frame[t_order], np.arange(1, num_frames + 2))
    raw: dict = {k: [] for k in ("gt_ids", "gt_dets", "gt_classes", "gt_extras", "gt_crowd_ignore_regions",
                                 "tracker_ids", "tracker_dets", "tracker_classes", "tracker_confidences",
                                 "similarity_scores")}
    for t in range(num_frames):
        gi = g_order[g_split[t]:g_split[t + 1]]
        ti = t_order[t_split[t]:t_split[t + 1]]
        raw["gt_ids"].append(gt.id[gi])
        raw["gt_dets"].append(gt.boxes[gi])
        raw["gt_classes"].append(gt.cls[gi])
        raw["gt_extras"].append({"zero_marked": gt.conf[gi].astype(int)})
        raw["gt_crowd_ignore_regions"].append(np.empty((0, 4)))
        raw["tracker_ids"].append(tracks.id[ti])
        raw["tracker_dets"].append(tracks.boxes[ti])
        # trackeval reads classes from column 8 for every benchmark, but MOT15's columns 8-10 are world
        # coordinates (a results file copied from a gt.txt holds them), so MOT15 rows are all pedestrians
        raw["tracker_classes"].append(np.ones(len(ti), np.int64) if benchmark == "MOT15" else tracks.cls[ti])
        raw["tracker_confidences"].append(tracks.conf[ti])
        raw["similarity_scores"].append(
            te.datasets._base_dataset._BaseDataset._calculate_box_ious(gt.boxes[gi], tracks.boxes[ti], "xywh"))
    raw["num_timesteps"] = num_frames
    raw["seq"] = name
    return raw


def _preprocessor(benchmark: Benchmark):
    """trackeval's MotChallenge2DBox with only the attributes its per-sequence preprocessing reads, so rows
    already in memory go through the benchmark's rules without the folder layout its constructor wants."""
    te = _trackeval()
    ds = object.__new__(te.datasets.MotChallenge2DBox)
    ds.benchmark = benchmark
    ds.do_preproc = True
    ds.class_name_to_class_id = {'pedestrian': 1, 'person_on_vehicle': 2, 'car': 3, 'bicycle': 4, 'motorbike': 5,
                                 'non_mot_vehicle': 6, 'static_person': 7, 'distractor': 8, 'occluder': 9,
                                 'occluder_on_ground': 10, 'occluder_full': 11, 'reflection': 12, 'crowd': 13}
    ds.valid_class_numbers = list(ds.class_name_to_class_id.values())
    return ds


def mot_metrics(sequences: dict[str, tuple[MOTRows, MOTRows, int]], benchmark: Benchmark = "MOT15",
                threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """HOTA, CLEAR and Identity per sequence and ``"COMBINED"``: ``sequences`` maps a name to
    ``(ground truth, tracker output, number of frames)``. Values are trackeval's: fractions in [0, 1] (HOTA,
    DetA, AssA, LocA are means over its 19 alphas), counts as counts. MOTP is the mean IoU of matches
    (MOT Challenge's convention; py-motmetrics reports 1 - it)."""
    if benchmark not in ("MOT15", "MOT16", "MOT17", "MOT20"):
        raise ConfigError(f"benchmark '{benchmark}' is not one of MOT15, MOT16, MOT17, MOT20")
    if not sequences:
        raise DataError("mot_metrics: no sequences to evaluate")
    te = _trackeval()
    metrics = [te.metrics.HOTA(), te.metrics.CLEAR({"THRESHOLD": threshold, "PRINT_CONFIG": False}),
               te.metrics.Identity({"THRESHOLD": threshold, "PRINT_CONFIG": False}), te.metrics.Count()]
    ds = _preprocessor(benchmark)
    per_seq: dict[str, dict[str, dict]] = {}
    for name, (gt, tracks, n) in sequences.items():
        try:
            data = ds.get_preprocessed_seq_data(_raw_seq(gt, tracks, int(n), name, benchmark), "pedestrian")
        except te.utils.TrackEvalException as exc:
            raise DataError(f"{gt.path or name}: {exc}".splitlines()[0]) from None
        per_seq[name] = {m.get_name(): m.eval_sequence(data) for m in metrics}
    combined = {m.get_name(): m.combine_sequences({s: r[m.get_name()] for s, r in per_seq.items()})
                for m in metrics}
    out = {}
    for name, res in [*per_seq.items(), ("COMBINED", combined)]:
        flat: dict[str, float] = {}
        for group in res.values():
            for k, v in group.items():
                if k in MOT_FIELDS:
                    flat[k] = float(np.mean(v))
        out[name] = flat
    return out


def _xyxy(b: np.ndarray, plus_one: bool) -> np.ndarray:
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:] - (1.0 if plus_one else 0.0)], axis=1)


def sot_iou(pred: np.ndarray, gt: np.ndarray, convention: SOTConvention = "toolkit") -> np.ndarray:
    """Row-wise IoU of ``x,y,w,h`` boxes under a convention (see the module docstring)."""
    one = 1.0 if convention == "pytracking" else 0.0
    p, g = _xyxy(pred, bool(one)), _xyxy(gt, bool(one))
    iw = np.clip(np.minimum(p[:, 2], g[:, 2]) - np.maximum(p[:, 0], g[:, 0]) + one, 0, None)
    ih = np.clip(np.minimum(p[:, 3], g[:, 3]) - np.maximum(p[:, 1], g[:, 1]) + one, 0, None)
    inter = iw * ih
    union = pred[:, 2] * pred[:, 3] + gt[:, 2] * gt[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _check(pred: np.ndarray, gt: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.ndim != 2 or pred.shape[1] != 4 or pred.shape != gt.shape:
        raise DataError(f"{name}: predictions {tuple(pred.shape)} and ground truth {tuple(gt.shape)} must both be "
                        "(frames, 4) x,y,w,h")
    return pred, gt


IOU_THRESHOLDS = np.arange(0, 1.05, 0.05)
PIXEL_THRESHOLDS = np.arange(0, 51, dtype=np.float64)
NORM_THRESHOLDS = np.arange(0, 51) / 100


def sot_ope(pred: Sequence[np.ndarray], gt: Sequence[np.ndarray], convention: SOTConvention = "toolkit",
            names: Sequence[str] | None = None) -> dict[str, float | np.ndarray]:
    """OPE success (AUC, %), precision at 20 px (%) and normalised precision at 0.2 (%) over sequences
    (``pred[i]``, ``gt[i]``: ``(frames, 4)`` x,y,w,h), and the three curves averaged over sequences."""
    if convention not in SOT_CONVENTIONS:
        raise ConfigError(f"SOT convention '{convention}' is not one of {', '.join(SOT_CONVENTIONS)}")
    if len(pred) != len(gt) or not len(gt):
        raise DataError(f"sot_ope: {len(pred)} predicted sequences for {len(gt)} ground-truth sequences")
    names = list(names) if names is not None else [f"sequence {i}" for i in range(len(gt))]
    succ, prec, norm = [], [], []
    for p, g, name in zip(pred, gt, names):
        p, g = _check(p, g, name)
        pyt = convention == "pytracking"
        if pyt:
            p = p.copy()
            p[0] = g[0]
        n = len(g)
        valid = (g[:, 2] > 0) & (g[:, 3] > 0) & np.isfinite(g).all(1)
        iou = np.full(n, -1.0)
        iou[valid] = sot_iou(p[valid], g[valid], convention)
        off = 1.0 if pyt else 0.0
        gc = g[:, :2] + (g[:, 2:] - off) / 2
        pc = p[:, :2] + (p[:, 2:] - off) / 2
        centre_ok = valid if pyt else (gc > 0).all(1)
        dist = np.full(n, -1.0)
        dist[centre_ok] = np.linalg.norm(gc[centre_ok] - pc[centre_ok], axis=1)
        wh = g[:, 2:]
        ndist = np.full(n, -1.0)
        ndist[centre_ok] = np.linalg.norm(gc[centre_ok] / (wh[centre_ok] + 1e-16)
                                          - pc[centre_ok] / (wh[centre_ok] + 1e-16), axis=1)
        succ.append((iou[:, None] > IOU_THRESHOLDS[None]).mean(0))
        prec.append((dist[:, None] <= PIXEL_THRESHOLDS[None]).mean(0))
        norm.append((ndist[:, None] <= NORM_THRESHOLDS[None]).mean(0))
    s, pr, nm = np.mean(succ, 0), np.mean(prec, 0), np.mean(norm, 0)
    return {"success": float(s.mean() * 100), "precision": float(pr[20] * 100), "norm_precision": float(nm[20] * 100),
            "success_curve": s, "precision_curve": pr, "norm_precision_curve": nm}


def got10k_metrics(pred: Sequence[np.ndarray], gt: Sequence[np.ndarray],
                   visible: Sequence[np.ndarray] | None = None) -> dict[str, float]:
    """GOT-10k's AO, SR0.5 and SR0.75 (%) as its toolkit computes them: the IoUs of all sequences pooled
    (a frame-weighted mean, not a mean over sequences), frame 0 excluded, only frames whose target is
    visible (``visible[i]``; default: the ground-truth box is non-empty)."""
    if len(pred) != len(gt) or not len(gt):
        raise DataError(f"got10k_metrics: {len(pred)} predicted sequences for {len(gt)} ground-truth sequences")
    ious = []
    for i, (p, g) in enumerate(zip(pred, gt)):
        p, g = _check(p, g, f"sequence {i}")
        keep = (g[:, 2] > 0) & (g[:, 3] > 0) if visible is None else np.asarray(visible[i], bool).copy()
        keep[0] = False
        ious.append(sot_iou(p[keep], g[keep]))
    iou = np.concatenate(ious)
    if not iou.size:
        raise DataError("got10k_metrics: no visible frame after the first in any sequence")
    return {"AO": float(iou.mean() * 100), "SR0.5": float((iou > 0.5).mean() * 100),
            "SR0.75": float((iou > 0.75).mean() * 100)}
