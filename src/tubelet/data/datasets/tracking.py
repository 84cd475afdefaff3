"""Tracking sequences: single-object (SOT) and multi-object (MOT) annotations as the benchmarks write them.

SOT
  * GOT-10k / LaSOT layout: a folder of frames (LaSOT: ``img/``) and ``groundtruth.txt`` with one
    ``x,y,w,h`` box per frame (comma, tab or space separated). GOT-10k's ``absence.label`` and LaSOT's
    ``full_occlusion.txt`` / ``out_of_view.txt`` mark frames without a visible target.
  * VOT: ``groundtruth.txt`` lines of 8 values, a rotated rectangle ``x1,y1,...,x4,y4``. Two conversions to
    an axis-aligned box are named (:data:`VOT_CONVENTIONS`): ``"vot"``, the min/max rectangle the VOT
    toolkit's ``Polygon.bounds()`` gives, and ``"pysot"``, the area-preserving box of pysot's and
    DaSiamRPN's ``get_axis_aligned_bbox`` (centre of the corners' mean, the min/max box scaled to the
    polygon's area, plus one pixel).
  * A video file (or frame folder) with only its first box known: :func:`sot_from_video`.
MOT
  * MOT Challenge CSV ``frame,id,x,y,w,h,conf,class,visibility[,z]`` (``gt.txt``, ``det.txt``, results),
    frames and ids 1-based, and ``seqinfo.ini``. :func:`mot_training_boxes` applies MOT16/17's rules for
    what is a target: only rows whose flag (column 7) is 1 and whose class is pedestrian (1) are targets,
    distractor classes (person on vehicle, static person, distractor, reflection) are regions to ignore,
    and an optional minimum visibility. MOT15 has no classes, so every flagged row is a target. The
    evaluation side of these rules (tracker boxes matched to distractors removed) is trackeval's, applied
    in :mod:`tubelet.eval.tracking`.
Synthetic
  * :func:`synthetic_sot_sequence`, :func:`synthetic_mot_rows` and :func:`synthetic_mot_sequence` serve the
    synthetic set's per-frame boxes and identities as SOT and MOT sequences.
MOT training and experiments
  * :class:`MOTPairDataset`: UTT's MOT training pairs (a reference frame with its targets' boxes, a later
    frame, proposals = the later boxes plus Gaussian noise with a minimum IoU, :func:`noisy_proposals`).
  * :func:`jittered_detections`: the ground truth with Gaussian box noise, random drops and false
    positives, scored: a stand-in for a detector in experiments, never a detector.

Every box here is ``x, y, w, h`` in pixels with ``x2 = x + w`` (no +1). A malformed row is a
:class:`~tubelet.errors.DataError` that names the file and line.
"""

from __future__ import annotations

import configparser
import math
import os
from fractions import Fraction
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tubelet.data.datasets.folders import IMAGE_EXTENSIONS
from tubelet.data.datasets.frames import FrameFolderReader
from tubelet.data.decoding import ConstantRateReader, VideoReader, open_video
from tubelet.errors import DataError

__all__ = [
    "ArrayReader",
    "MOT_CLASSES",
    "MOT_DISTRACTOR_CLASSES",
    "MOTPairDataset",
    "MOTRows",
    "MOTSequence",
    "SOTPairDataset",
    "SOTSequence",
    "box_in_crop",
    "crop_box",
    "crop_frame",
    "jittered_detections",
    "letterbox",
    "mot_sequences",
    "write_mot_rows",
    "write_mot_sequence",
    "noisy_proposals",
    "VOT_CONVENTIONS",
    "load_mot_sequence",
    "load_sot_sequence",
    "parse_init_box",
    "mot_training_boxes",
    "read_box_file",
    "read_mot_file",
    "read_seqinfo",
    "sot_sequences",
    "sot_from_video",
    "synthetic_mot_rows",
    "synthetic_mot_sequence",
    "synthetic_sot_sequence",
    "vot_polygon_to_box",
]

VOT_CONVENTIONS = ("vot", "pysot")
VOTConvention = Literal["vot", "pysot"]

# MOT16/17's class ids (MOT16 paper, Table 5; trackeval's MotChallenge2DBox uses the same numbers)
MOT_CLASSES = {"pedestrian": 1, "person_on_vehicle": 2, "car": 3, "bicycle": 4, "motorbike": 5,
               "non_mot_vehicle": 6, "static_person": 7, "distractor": 8, "occluder": 9,
               "occluder_on_ground": 10, "occluder_full": 11, "reflection": 12, "crowd": 13}
MOT_DISTRACTOR_CLASSES = (2, 7, 8, 12)

_SPLIT = re.compile(r"[,\s]+")


def read_box_file(path: str | os.PathLike, widths: tuple[int, ...] = (4,)) -> np.ndarray:
    """The numeric rows of a text annotation file as float64 ``(N, k)``; every row must have one of ``widths``
    values (comma, tab or space separated, ``nan`` allowed) and all rows the same. Blank lines at the end are
    ignored; anything else that is not a row of numbers is a :class:`DataError` naming file and line."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: annotation file not found")
    lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{p}: annotation file has no rows")
    rows: list[list[float]] = []
    for n, line in enumerate(lines, 1):
        toks = [t for t in _SPLIT.split(line.strip()) if t]
        if len(toks) not in widths:
            want = " or ".join(str(w) for w in widths)
            raise DataError(f"{p}:{n}: expected {want} numbers, got {len(toks)} ('{line.strip()[:60]}')")
        try:
            vals = [float(t) for t in toks]
        except ValueError:
            raise DataError(f"{p}:{n}: not a number in '{line.strip()[:60]}'") from None
        if rows and len(vals) != len(rows[0]):
            raise DataError(f"{p}:{n}: {len(vals)} values where line 1 has {len(rows[0])}")
        rows.append(vals)
    return np.asarray(rows, dtype=np.float64)


def vot_polygon_to_box(poly: np.ndarray, convention: VOTConvention = "vot") -> np.ndarray:
    """VOT regions ``(N, 8)`` (corners) or ``(N, 4)`` (``x,y,w,h`` already) as ``x,y,w,h`` ``(N, 4)``.

    ``"vot"``: the polygon's min/max bounding rectangle (VOT toolkit). ``"pysot"``: pysot's
    ``get_axis_aligned_bbox``: centre = mean of the corners, size = the min/max box scaled by
    ``sqrt(polygon area / box area)`` plus 1, and ``x = cx - (w - 1) / 2`` as pysot's trackers start from it.
    """
    poly = np.asarray(poly, dtype=np.float64)
    if poly.ndim != 2 or poly.shape[1] not in (4, 8):
        raise DataError(f"VOT regions must be (N, 8) polygons or (N, 4) boxes, got shape {tuple(poly.shape)}")
    if convention not in VOT_CONVENTIONS:
        raise DataError(f"VOT convention '{convention}' is not one of {', '.join(VOT_CONVENTIONS)}")
    if poly.shape[1] == 4:
        return poly.copy()
    xs, ys = poly[:, 0::2], poly[:, 1::2]
    x1, x2, y1, y2 = xs.min(1), xs.max(1), ys.min(1), ys.max(1)
    if convention == "vot":
        return np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
    cx, cy = xs.mean(1), ys.mean(1)
    # pysot takes the area as the product of two adjacent side lengths (exact for a rectangle)
    a1 = np.hypot(xs[:, 0] - xs[:, 1], ys[:, 0] - ys[:, 1]) * np.hypot(xs[:, 1] - xs[:, 2], ys[:, 1] - ys[:, 2])
    a2 = (x2 - x1) * (y2 - y1)
    s = np.sqrt(a1 / np.where(a2 > 0, a2, 1.0))
    w, h = s * (x2 - x1) + 1, s * (y2 - y1) + 1
    return np.stack([cx - (w - 1) / 2, cy - (h - 1) / 2, w, h], axis=1)


class ArrayReader(ConstantRateReader):
    """uint8 frames ``(T, H, W, 3)`` held in memory (a rendered synthetic clip) as a video."""

    def __init__(self, frames: np.ndarray, path: str, fps: float) -> None:
        T, H, W, _ = frames.shape
        super().__init__(path, T, Fraction(fps).limit_denominator(1001000), W, H, "array")
        self.frames = frames

    def _decode(self, unique_sorted: np.ndarray) -> np.ndarray:
        return self.frames[unique_sorted]


@dataclass
class SOTSequence:
    """One single-object sequence. ``source``: a frame folder, a video file, or uint8 frames ``(T, H, W, 3)``;
    ``boxes``: ``x,y,w,h`` float64 ``(N, 4)`` for the first ``N`` frames (``N = 1`` when only the initial box
    is known); ``visible``: bool ``(N,)``, False where the target is absent or the box is empty or NaN."""

    name: str
    source: str | np.ndarray
    boxes: np.ndarray
    visible: np.ndarray
    fps: float = 30.0

    @property
    def init_box(self) -> np.ndarray:
        return self.boxes[0]

    def reader(self) -> VideoReader:
        """The frames behind the :class:`VideoReader` interface."""
        if isinstance(self.source, np.ndarray):
            return ArrayReader(self.source, self.name, self.fps)
        if Path(self.source).is_dir():
            return FrameFolderReader(self.source, self.fps)
        return open_video(self.source)


def _valid_boxes(boxes: np.ndarray) -> np.ndarray:
    return np.isfinite(boxes).all(1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)


def _read_flags(path: Path, n: int) -> np.ndarray | None:
    """A per-frame 0/1 label file (GOT-10k ``absence.label``; LaSOT ``full_occlusion.txt``, one line of commas)."""
    if not path.is_file():
        return None
    vals = np.asarray([t for t in _SPLIT.split(path.read_text(encoding="utf-8").strip()) if t])
    if vals.size != n or not np.isin(vals, ["0", "1"]).all():
        raise DataError(f"{path}: expected {n} flags of 0 or 1 (one per line of groundtruth.txt), got {vals.size}"
                        + ("" if vals.size != n else " with other values"))
    return vals == "1"


def load_sot_sequence(folder: str | os.PathLike, vot_convention: VOTConvention = "vot",
                      fps: float = 30.0) -> SOTSequence:
    """A GOT-10k, LaSOT or VOT sequence folder: ``groundtruth.txt`` beside the frames (or an ``img/`` folder
    of them). 8-value rows are VOT polygons, converted with ``vot_convention``."""
    d = Path(folder)
    gt = d / "groundtruth.txt"
    if not gt.is_file():
        raise DataError(f"{d}: no groundtruth.txt (a GOT-10k, LaSOT or VOT sequence folder has one beside its "
                        "frames)")
    rows = read_box_file(gt, widths=(4, 8))
    boxes = vot_polygon_to_box(rows, vot_convention) if rows.shape[1] == 8 else rows
    frames = d / "img" if (d / "img").is_dir() else d
    count = sum(1 for f in frames.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
    if count < len(boxes):
        raise DataError(f"{gt}: {len(boxes)} boxes but only {count} frames in {frames}")
    visible = _valid_boxes(boxes)
    for flags in (d / "absence.label", d / "full_occlusion.txt", d / "out_of_view.txt"):
        hidden = _read_flags(flags, len(boxes))
        if hidden is not None:
            visible &= ~hidden
    return SOTSequence(d.name, str(frames), boxes, visible, fps)


def parse_init_box(text: str) -> np.ndarray:
    """``"x,y,w,h"`` as a float64 ``(4,)``; a :class:`DataError` saying what is wrong otherwise."""
    toks = [t for t in _SPLIT.split(text.strip()) if t]
    try:
        box = np.asarray([float(t) for t in toks], dtype=np.float64)
    except ValueError:
        box = np.zeros(0)
    if box.shape != (4,) or not np.isfinite(box).all():
        raise DataError(f"initial box '{text}' must be four numbers x,y,w,h")
    if box[2] <= 0 or box[3] <= 0:
        raise DataError(f"initial box '{text}' has width {box[2]:g} and height {box[3]:g}: both must be > 0")
    return box


def sot_from_video(path: str | os.PathLike, init: str | np.ndarray) -> SOTSequence:
    """A video file or frame folder whose first frame's box is ``init`` (``x,y,w,h``) and nothing else."""
    p = Path(path)
    box = parse_init_box(init) if isinstance(init, str) else np.asarray(init, dtype=np.float64).reshape(4)
    seq = SOTSequence(p.stem if p.is_file() else p.name, str(p), box[None], np.ones(1, bool))
    meta = seq.reader().metadata
    x, y, w, h = box
    if x >= meta.width or y >= meta.height or x + w <= 0 or y + h <= 0:
        raise DataError(f"initial box {x:g},{y:g},{w:g},{h:g} lies outside the {meta.width}x{meta.height} frames "
                        f"of {p}")
    seq.fps = float(meta.fps)
    return seq


@dataclass
class MOTRows:
    """MOT Challenge rows as columns: ``frame`` and ``id`` int64 (1-based; detections have id -1),
    ``boxes`` ``x,y,w,h`` float64 ``(N, 4)``, ``conf`` (gt: the consider flag), ``cls`` and ``vis``
    (columns 8 and 9, -1 where the file has none; in MOT15 files they are world coordinates)."""

    frame: np.ndarray
    id: np.ndarray
    boxes: np.ndarray
    conf: np.ndarray
    cls: np.ndarray
    vis: np.ndarray
    path: str = ""

    def __len__(self) -> int:
        return len(self.frame)

    def select(self, mask: np.ndarray) -> MOTRows:
        return MOTRows(self.frame[mask], self.id[mask], self.boxes[mask], self.conf[mask], self.cls[mask],
                       self.vis[mask], self.path)


def read_mot_file(path: str | os.PathLike, kind: Literal["gt", "det", "results"] = "gt",
                  num_frames: int | None = None) -> MOTRows:
    """A MOT Challenge ``gt.txt``, ``det.txt`` or results file. Frames count from 1 (and are at most
    ``num_frames``), ids from 1 except detections' -1; an id twice in one frame, a negative size or a row
    of fewer than 6 numbers is a :class:`DataError` naming file and line."""
    p = Path(path)
    a = read_box_file(p, widths=tuple(range(6, 11)))
    a = np.concatenate([a, np.full((len(a), 10 - a.shape[1]), -1.0)], axis=1)
    frame, ids = a[:, 0], a[:, 1]
    for bad, what in ((frame != np.round(frame), "frame is not an integer"),
                      (frame < 1, "frame < 1 (MOT frames count from 1)"),
                      (ids != np.round(ids), "id is not an integer"),
                      ((ids < 1) if kind != "det" else np.zeros(len(a), bool), "id < 1 (MOT ids count from 1)"),
                      ((a[:, 4] < 0) | (a[:, 5] < 0), "negative width or height"),
                      (~np.isfinite(a[:, :6]).all(1), "NaN or infinite value"),
                      ((frame > num_frames) if num_frames else np.zeros(len(a), bool),
                       f"frame beyond seqLength {num_frames}")):
        if bad.any():
            n = int(np.argmax(bad))
            raise DataError(f"{p}:{n + 1}: {what} (frame {a[n, 0]:g}, id {a[n, 1]:g})")
    if kind != "det":
        key = frame.astype(np.int64) * (int(ids.max()) + 2) + ids.astype(np.int64)
        _, first, counts = np.unique(key, return_index=True, return_counts=True)
        if (counts > 1).any():
            dup = np.sort(np.flatnonzero(key == key[first[counts > 1][0]]))[1]
            raise DataError(f"{p}:{dup + 1}: id {a[dup, 1]:g} appears twice in frame {a[dup, 0]:g}")
    return MOTRows(frame.astype(np.int64), ids.astype(np.int64), a[:, 2:6].copy(), a[:, 6].copy(),
                   a[:, 7].astype(np.int64), a[:, 8].copy(), str(p))


def read_seqinfo(path: str | os.PathLike) -> dict[str, str | int | float]:
    """``seqinfo.ini``'s ``[Sequence]`` section; ``seqLength`` (required), ``frameRate``, ``imWidth`` and
    ``imHeight`` as numbers."""
    p = Path(path)
    cp = configparser.ConfigParser()
    try:
        cp.read_string(p.read_text(encoding="utf-8"), source=str(p))
    except (OSError, configparser.Error) as exc:
        raise DataError(f"{p}: cannot read seqinfo.ini: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if not cp.has_section("Sequence"):
        raise DataError(f"{p}: no [Sequence] section")
    info: dict[str, str | int | float] = dict(cp["Sequence"].items())
    out: dict[str, str | int | float] = {k: v for k, v in info.items()}
    for key, typ in (("seqlength", int), ("framerate", float), ("imwidth", int), ("imheight", int)):
        if key in info:
            try:
                out[key] = typ(info[key])
            except ValueError:
                raise DataError(f"{p}: {key}={info[key]} is not a number") from None
    if "seqlength" not in out or int(out["seqlength"]) < 1:
        raise DataError(f"{p}: seqLength missing or < 1 (the number of frames of the sequence)")
    return out


@dataclass
class MOTSequence:
    """A MOT Challenge sequence folder: ``seqinfo.ini``, ``gt/gt.txt`` (or ``gt.txt``), ``det/det.txt``
    when present and the frames in ``imDir`` (default ``img1``) when present; or a synthetic clip, whose
    ``frames`` are uint8 ``(T, H, W, 3)``."""

    name: str
    num_frames: int
    gt: MOTRows | None
    det: MOTRows | None = None
    frames: str | np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return float(self.info.get("framerate", 30.0))

    def reader(self) -> VideoReader:
        """The frames behind the :class:`VideoReader` interface; a :class:`DataError` when there are none."""
        if self.frames is None:
            raise DataError(f"{self.name}: the sequence has no frames (no {self.info.get('imdir', 'img1')}/ folder)")
        if isinstance(self.frames, np.ndarray):
            return ArrayReader(self.frames, self.name, self.fps)
        return FrameFolderReader(self.frames, self.fps)


def load_mot_sequence(folder: str | os.PathLike) -> MOTSequence:
    d = Path(folder)
    info = read_seqinfo(d / "seqinfo.ini")
    n = int(info["seqlength"])
    gt_path = next((q for q in (d / "gt" / "gt.txt", d / "gt.txt") if q.is_file()), None)
    det_path = next((q for q in (d / "det" / "det.txt", d / "det.txt") if q.is_file()), None)
    frames = d / str(info.get("imdir", "img1"))
    return MOTSequence(str(info.get("name", d.name)), n,
                       read_mot_file(gt_path, "gt", n) if gt_path else None,
                       read_mot_file(det_path, "det", n) if det_path else None,
                       str(frames) if frames.is_dir() else None, info)


def mot_training_boxes(gt: MOTRows, benchmark: Literal["MOT15", "MOT16", "MOT17", "MOT20"] = "MOT17",
                       min_visibility: float = 0.0) -> tuple[MOTRows, MOTRows]:
    """(targets, ignore regions) of a ground truth under the benchmark's rules. MOT16/17/20: targets are
    rows flagged 1 (column 7) of class pedestrian with visibility >= ``min_visibility``; ignore regions are
    the distractor classes (MOT20 adds non-MOT vehicles) and pedestrians below the visibility bound.
    MOT15 has no classes or visibility: every row flagged 1 is a target (a -1 flag, as MOT15's files have,
    counts as 1)."""
    flagged = gt.conf != 0
    if benchmark == "MOT15":
        return gt.select(flagged), gt.select(~flagged)
    if benchmark not in ("MOT16", "MOT17", "MOT20"):
        raise DataError(f"benchmark '{benchmark}' is not one of MOT15, MOT16, MOT17, MOT20")
    unknown = ~np.isin(gt.cls, list(MOT_CLASSES.values()))
    if unknown.any():
        n = int(np.argmax(unknown))
        raise DataError(f"{gt.path}: row {n + 1} has class {gt.cls[n]}, not one of {benchmark}'s 1-13 "
                        "(a MOT15 file? pass benchmark='MOT15')")
    distract = MOT_DISTRACTOR_CLASSES + ((6,) if benchmark == "MOT20" else ())
    ped = gt.cls == MOT_CLASSES["pedestrian"]
    target = flagged & ped & (gt.vis >= min_visibility)
    ignore = np.isin(gt.cls, distract) | (flagged & ped & ~target)
    return gt.select(target), gt.select(ignore)


def synthetic_sot_sequence(clip, name: str, object_id: int = 0, fps: float = 30.0) -> SOTSequence:
    """One object of a :class:`~tubelet.data.synthetic.SyntheticClip` as an SOT sequence: its frames and
    its per-frame box (``x1,y1,x2,y2`` there, ``x,y,w,h`` here), invisible where it is absent."""
    k = int(object_id)
    if not 0 <= k < clip.boxes.shape[1]:
        raise DataError(f"{name}: object {k} does not exist (the clip has objects 0..{clip.boxes.shape[1] - 1})")
    b = clip.boxes[:, k].astype(np.float64)
    boxes = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
    visible = (clip.ids[:, k] >= 0) & _valid_boxes(boxes)
    return SOTSequence(name, clip.frames, boxes, visible, fps)


def synthetic_mot_rows(clip) -> MOTRows:
    """All objects of a synthetic clip as MOT ground truth: frame ``t + 1``, id ``k + 1``, flag 1, class
    pedestrian (1), visibility 1, one row per present object per frame."""
    t, k = np.nonzero(clip.ids >= 0)
    b = clip.boxes[t, k].astype(np.float64)
    boxes = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
    n = len(t)
    return MOTRows(t.astype(np.int64) + 1, clip.ids[t, k].astype(np.int64) + 1, boxes, np.ones(n), np.ones(n, np.int64),
                   np.ones(n), "synthetic")


def synthetic_mot_sequence(clip, name: str, fps: float = 30.0) -> MOTSequence:
    """A synthetic clip as a MOT sequence: its frames and all its objects (:func:`synthetic_mot_rows`)."""
    T, H, W = clip.frames.shape[:3]
    return MOTSequence(name, T, synthetic_mot_rows(clip), None, clip.frames,
                       {"framerate": float(fps), "imwidth": W, "imheight": H, "seqlength": T})


def write_mot_rows(path: str | os.PathLike, rows: MOTRows) -> Path:
    """MOT rows as a MOT Challenge CSV (``frame,id,x,y,w,h,conf,class,visibility,-1``), atomically."""
    from tubelet.core.io import atomic_write_text

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, "".join(f"{f},{i},{x:.3f},{y:.3f},{w:.3f},{h:.3f},{c:.4g},{k},{v:.4g},-1\n" for f, i, (x, y, w, h), c, k, v
                                 in zip(rows.frame, rows.id, rows.boxes, rows.conf, rows.cls, rows.vis)))
    return p


def write_mot_sequence(seq: MOTSequence, folder: str | os.PathLike) -> Path:
    """A sequence with in-memory frames (a synthetic clip) as a MOT Challenge folder: ``seqinfo.ini``,
    ``img1/000001.png ...``, ``gt/gt.txt`` and, when it has detections, ``det/det.txt``."""
    from PIL import Image

    if not isinstance(seq.frames, np.ndarray):
        raise DataError(f"{seq.name}: only a sequence with its frames in memory can be written")
    d = Path(folder)
    (d / "img1").mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(seq.frames):
        Image.fromarray(frame).save(d / "img1" / f"{t + 1:06d}.png")
    T, H, W = seq.frames.shape[:3]
    (d / "seqinfo.ini").write_text(f"[Sequence]\nname={seq.name}\nimDir=img1\nframeRate={seq.fps:g}\nseqLength={T}\n"
                                   f"imWidth={W}\nimHeight={H}\nimExt=.png\n", encoding="utf-8")
    if seq.gt is not None:
        write_mot_rows(d / "gt" / "gt.txt", seq.gt)
    if seq.det is not None:
        write_mot_rows(d / "det" / "det.txt", seq.det)
    return d


def mot_sequences(source: str, synthetic=None, split: str = "train", cache: dict | None = None) -> list[MOTSequence]:
    """The MOT sequences of a source: ``"synthetic"`` (every clip of ``split`` of the synthetic set
    ``synthetic``, a :class:`SyntheticConfig`), a MOT Challenge sequence folder (``seqinfo.ini``, ground
    truth and frames), or a folder of them. Folder ground truth keeps only its targets
    (:func:`mot_training_boxes`: MOT17's rules, MOT15's where the class column is empty). ``cache``:
    rendered synthetic clips shared with other datasets over the same set."""
    if source == "synthetic":
        from tubelet.data.synthetic import SyntheticSource, clip_path, split_indices

        src = SyntheticSource(synthetic, cache)
        return [synthetic_mot_sequence(src.clip(i), clip_path(i), float(synthetic.fps))
                for i in split_indices(synthetic, split)]
    d = Path(source)
    folders = [d] if (d / "seqinfo.ini").is_file() else sorted(q for q in d.iterdir() if (q / "seqinfo.ini").is_file()) \
        if d.is_dir() else []
    if not folders:
        raise DataError(f"MOT source '{source}' is neither 'synthetic' nor a sequence folder (with a seqinfo.ini) "
                        "or a folder of them")
    seqs = []
    for q in folders:
        seq = load_mot_sequence(q)
        if seq.gt is None or seq.frames is None:
            raise DataError(f"{q}: MOT training needs gt/gt.txt and the frames ({seq.info.get('imdir', 'img1')}/)")
        seq.gt = mot_training_boxes(seq.gt, "MOT15" if (seq.gt.cls == -1).all() else "MOT17")[0]
        seqs.append(seq)
    return seqs


def _xyxy_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-by-row IoU of ``xyxy`` boxes ``(N, 4)``."""
    lt, rb = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    union = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(1) + np.clip(b[:, 2:] - b[:, :2], 0, None).prod(1) - inter
    return inter / np.maximum(union, 1e-12)


def noisy_proposals(boxes: np.ndarray, rng: np.random.Generator, sigma: float = 0.1, min_iou: float = 0.1,
                    attempts: int = 10) -> np.ndarray:
    """UTT's MOT training proposals: ``xyxy`` boxes ``(N, 4)`` moved by Gaussian noise (centre ``N(0, sigma)``
    times the size, log-size ``N(0, sigma)``) with at least ``min_iou`` IoU to their box (paper: 0.1, code:
    0.05). A box whose noise falls below it is drawn again, up to ``attempts`` times, then left exact."""
    boxes = np.asarray(boxes, np.float64)
    out = boxes.copy()
    todo = np.ones(len(boxes), bool)
    wh = boxes[:, 2:] - boxes[:, :2]
    centre = boxes[:, :2] + wh / 2
    for _ in range(attempts):
        if not todo.any():
            break
        noise = rng.standard_normal((len(boxes), 4)) * sigma
        c = centre + noise[:, :2] * wh
        size = wh * np.exp(noise[:, 2:])
        cand = np.concatenate([c - size / 2, c + size / 2], 1)
        ok = todo & (_xyxy_iou(cand, boxes) >= min_iou)
        out[ok] = cand[ok]
        todo &= ~ok
    return out


def letterbox(frame: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, float]:
    """A whole frame for MOT: resized so that its longer side is ``size``, at the top left of a ``size`` x
    ``size`` image padded with the mean colour; normalised ``(3, size, size)`` and the scale (frame pixels
    times it are image pixels)."""
    H, W = frame.shape[:2]
    side = float(max(H, W))
    return crop_frame(frame, np.array([side / 2, side / 2, side]), size, mean, std), size / side


class _SequencePairs(Dataset):
    """What the SOT and MOT pair sets share: ``n`` samples an epoch drawn per ``(seed, epoch, index)``, and
    one reader per sequence opened on first use (in the worker that reads it)."""

    sequences: list
    n: int
    epoch: int
    _readers: dict

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _frames(self, k: int, idx: list[int]) -> np.ndarray:
        if k not in self._readers:
            self._readers[k] = self.sequences[k].reader()
        return self._readers[k].get_frames(idx)


class MOTPairDataset(_SequencePairs):
    """UTT's MOT training pairs: a reference frame ``r`` with the boxes of its targets and a search frame
    ``s`` at most ``max_gap`` frames later (``s = r`` only where no later frame shares a target), both whole
    frames through :func:`letterbox`. Targets are the ids present in both (at most ``max_objects``, a random
    subset of them); proposals are their search boxes through :func:`noisy_proposals` (no proposal decoder
    in MOT).

    Samples: ``reference`` and ``search`` ``(3, S, S)``, ``reference_boxes`` ``(M, 4)`` xyxy in reference
    pixels, ``search_boxes`` and ``proposals`` ``(M, 4)`` xyxy normalised to the search image, ``valid``
    ``(M,)`` (padded slots False, their boxes a dummy), ``index``; ``M = max_objects``. Item ``i`` of epoch
    ``e`` draws from a generator seeded by ``(seed, e, i)``."""

    def __init__(self, sequences: Sequence[MOTSequence], size: int, samples_per_epoch: int, max_objects: int = 8,
                 max_gap: int = 1, proposal_sigma: float = 0.1, proposal_min_iou: float = 0.1, seed: int = 0,
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225)) -> None:
        self.sequences = [q for q in sequences if q.gt is not None and len(q.gt)]
        if not self.sequences:
            raise DataError("MOT training: no sequence has a ground-truth box")
        self.size, self.n, self.max_objects = int(size), int(samples_per_epoch), int(max_objects)
        self.max_gap, self.sigma, self.min_iou = int(max_gap), float(proposal_sigma), float(proposal_min_iou)
        self.seed, self.epoch = int(seed), 0
        self.mean, self.std = tuple(mean), tuple(std)
        self._readers: dict[int, VideoReader] = {}

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, int(i), 1])
        k = int(rng.integers(len(self.sequences)))
        gt = self.sequences[k].gt
        r = int(rng.choice(np.unique(gt.frame)))
        ref_ids = gt.id[gt.frame == r]
        later = (gt.frame > r) & (gt.frame <= r + self.max_gap) & np.isin(gt.id, ref_ids)
        s = int(rng.choice(np.unique(gt.frame[later]))) if later.any() else r
        at_s = gt.frame == s
        ids = np.intersect1d(ref_ids, gt.id[at_s])
        if len(ids) > self.max_objects:
            ids = np.sort(rng.choice(ids, self.max_objects, replace=False))
        m = len(ids)

        def boxes_of(frame: int) -> np.ndarray:
            sel = gt.frame == frame
            order = np.argsort(gt.id[sel])
            fid, fb = gt.id[sel][order], gt.boxes[sel][order]
            b = fb[np.searchsorted(fid, ids)]
            return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1)

        ref_img, search_img = self._frames(k, [r - 1, s - 1]) if r != s else np.repeat(self._frames(k, [r - 1]), 2, 0)
        ref_t, ref_scale = letterbox(ref_img, self.size, self.mean, self.std)
        search_t, search_scale = letterbox(search_img, self.size, self.mean, self.std)
        target = boxes_of(s) * search_scale / self.size
        prop = noisy_proposals(target, rng, self.sigma, self.min_iou)
        pad = np.tile([[0.25, 0.25, 0.75, 0.75]], (self.max_objects, 1))
        full = [pad.copy() for _ in range(3)]
        full[0][:m] = boxes_of(r) * ref_scale
        full[0][m:] *= self.size
        full[1][:m], full[2][:m] = target, prop
        valid = np.zeros(self.max_objects, bool)
        valid[:m] = True
        return {"reference": ref_t, "reference_boxes": torch.from_numpy(full[0]).float(), "search": search_t,
                "search_boxes": torch.from_numpy(full[1]).float(), "proposals": torch.from_numpy(full[2]).float(),
                "valid": torch.from_numpy(valid), "index": int(i)}


def jittered_detections(gt: MOTRows, seed: int = 0, box_noise: float = 0.05, drop: float = 0.1,
                        false_positives: float = 0.5, frame_size: tuple[int, int] | None = None,
                        num_frames: int | None = None) -> MOTRows:
    """A STAND-IN for a detector, for experiments only: the ground-truth boxes ``gt`` moved by Gaussian
    noise (centre ``N(0, box_noise)`` times the size, log-size ``N(0, box_noise)``), each dropped with
    probability ``drop``, scored ``U(0.3, 1)``, plus a Poisson(``false_positives``) number of false boxes
    per frame scored ``U(0.1, 0.6)``, of ground-truth sizes at uniform positions in the frame
    (``frame_size`` (W, H); default: the ground truth's extent). Detection rows (id -1), seeded by ``seed``."""
    rng = np.random.default_rng([int(seed), 7])
    n = len(gt)
    keep = rng.random(n) >= drop
    b = gt.boxes[keep]
    wh = b[:, 2:]
    noise = rng.standard_normal((len(b), 4)) * box_noise
    size = wh * np.exp(noise[:, 2:])
    centre = b[:, :2] + wh / 2 + noise[:, :2] * wh
    true_boxes = np.concatenate([centre - size / 2, size], 1)
    true_frames = gt.frame[keep]
    true_scores = rng.uniform(0.3, 1.0, len(b))
    frames = int(num_frames or (gt.frame.max() if n else 1))
    W, H = frame_size if frame_size is not None else (float((gt.boxes[:, 0] + gt.boxes[:, 2]).max()) if n else 1.0,
                                                       float((gt.boxes[:, 1] + gt.boxes[:, 3]).max()) if n else 1.0)
    counts = rng.poisson(false_positives, frames)
    total = int(counts.sum())
    fp_frames = np.repeat(np.arange(1, frames + 1), counts)
    fp_size = gt.boxes[rng.integers(0, n, total), 2:] if n else np.ones((total, 2))
    fp_xy = rng.random((total, 2)) * np.maximum(np.array([W, H]) - fp_size, 1.0)
    frame = np.concatenate([true_frames, fp_frames]).astype(np.int64)
    boxes = np.concatenate([true_boxes, np.concatenate([fp_xy, fp_size], 1)])
    conf = np.concatenate([true_scores, rng.uniform(0.1, 0.6, total)])
    order = np.argsort(frame, kind="stable")
    m = len(frame)
    return MOTRows(frame[order], -np.ones(m, np.int64), boxes[order], conf[order], -np.ones(m, np.int64),
                   -np.ones(m), "jittered ground truth")


def crop_box(box: np.ndarray, factor: float) -> np.ndarray:
    """The square search region ``(cx, cy, side)`` of an ``x,y,w,h`` box: side ``ceil(sqrt(w h) factor)``
    (UTT's and pytracking's search area), centred on the box."""
    x, y, w, h = (float(v) for v in box)
    return np.array([x + w / 2, y + h / 2, math.ceil(math.sqrt(max(w * h, 1e-6)) * factor)])


def crop_frame(frame: np.ndarray, region: np.ndarray, size: int, mean: Sequence[float],
               std: Sequence[float]) -> torch.Tensor:
    """The square ``region`` ``(cx, cy, side)`` of a uint8 frame ``(H, W, 3)`` resized (bilinear) to
    ``size``, normalised ``(3, size, size)``; outside the frame it is the mean colour (0 after
    normalisation), as trackers pad their crops."""
    img = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    img = (img - m) / s
    H, W = frame.shape[:2]
    cx, cy, side = (float(v) for v in region)
    # pixel centres of the output in frame coordinates, then grid_sample's [-1, 1] (align_corners=False)
    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size * side - side / 2
    gx = (cx + t) / W * 2 - 1
    gy = (cy + t) / H * 2 - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1)[None]
    return F.grid_sample(img[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def box_in_crop(box: np.ndarray, region: np.ndarray, size: int) -> np.ndarray:
    """An ``x,y,w,h`` frame box as ``xyxy`` in the pixels of the ``size`` crop of ``region``."""
    cx, cy, side = (float(v) for v in region)
    k = size / side
    x1, y1 = (box[0] - (cx - side / 2)) * k, (box[1] - (cy - side / 2)) * k
    return np.array([x1, y1, x1 + box[2] * k, y1 + box[3] * k])


class SOTPairDataset(_SequencePairs):
    """Training pairs of single-object sequences, UTT's SOT sampling: a reference and a search frame of one
    sequence at most ``max_gap`` frames apart, both with a visible target. The reference is cropped around
    its box (``search_factor`` times its size); the search crop around the search box after a jitter of
    its size (``exp(N(0, 1) scale_jitter)``) and centre (uniform within ``centre_jitter`` times the
    jittered size, as pytracking's processing does), so the target is not always centred.

    Samples: ``reference`` and ``search`` ``(3, S, S)`` normalised, ``reference_box`` ``(4,)`` xyxy in
    reference-crop pixels, ``search_box`` ``(4,)`` xyxy normalised to the search crop, ``index``. Item ``i``
    of epoch ``e`` draws from a generator seeded by ``(seed, e, i)``."""

    def __init__(self, sequences: Sequence[SOTSequence], size: int, samples_per_epoch: int,
                 search_factor: float = 6.0, centre_jitter: float = 5.5, scale_jitter: float = 0.5,
                 max_gap: int = 200, seed: int = 0, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225)) -> None:
        usable = [s for s in sequences if int(s.visible.sum()) >= 1]
        if not usable:
            raise DataError("SOT training: no sequence has a frame with a visible target")
        self.sequences = usable
        self.size, self.n = int(size), int(samples_per_epoch)
        self.search_factor, self.centre_jitter, self.scale_jitter = search_factor, centre_jitter, scale_jitter
        self.max_gap, self.seed, self.epoch = int(max_gap), int(seed), 0
        self.mean, self.std = tuple(mean), tuple(std)
        self._readers: dict[int, VideoReader] = {}

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        k = int(rng.integers(len(self.sequences)))
        seq = self.sequences[k]
        vis = np.flatnonzero(seq.visible)
        r = int(rng.choice(vis))
        near = vis[np.abs(vis - r) <= self.max_gap]
        s = int(rng.choice(near))
        ref_img, search_img = self._frames(k, [r, s]) if r != s else np.repeat(self._frames(k, [r]), 2, 0)
        ref_region = crop_box(seq.boxes[r], self.search_factor)
        box = seq.boxes[s]
        size = box[2:] * np.exp(rng.standard_normal(2) * self.scale_jitter)
        centre = box[:2] + box[2:] / 2 + math.sqrt(float(size.prod())) * self.centre_jitter * (rng.random(2) - 0.5)
        search_region = np.array([centre[0], centre[1],
                                  math.ceil(math.sqrt(float(size.prod())) * self.search_factor)])
        return {
            "reference": crop_frame(ref_img, ref_region, self.size, self.mean, self.std),
            "reference_box": torch.from_numpy(box_in_crop(seq.boxes[r], ref_region, self.size)).float(),
            "search": crop_frame(search_img, search_region, self.size, self.mean, self.std),
            "search_box": torch.from_numpy(box_in_crop(box, search_region, self.size) / self.size).float(),
            "index": int(i),
        }


def sot_sequences(source: str, synthetic=None, split: str = "train",
                  vot_convention: VOTConvention = "vot", cache: dict | None = None) -> list[SOTSequence]:
    """The SOT sequences of a source: ``"synthetic"`` (the main object of each clip of ``split`` of the
    synthetic set ``synthetic``, a :class:`SyntheticConfig`), a sequence folder, or a folder of them."""
    if source == "synthetic":
        from tubelet.data.synthetic import SyntheticSource, clip_path, split_indices

        src = SyntheticSource(synthetic, cache)
        return [synthetic_sot_sequence(src.clip(i), clip_path(i), 0, float(synthetic.fps))
                for i in split_indices(synthetic, split)]
    d = Path(source)
    if (d / "groundtruth.txt").is_file():
        return [load_sot_sequence(d, vot_convention)]
    if not d.is_dir():
        raise DataError(f"SOT source '{source}' is neither 'synthetic' nor a folder")
    seqs = [load_sot_sequence(q, vot_convention) for q in sorted(d.iterdir()) if (q / "groundtruth.txt").is_file()]
    if not seqs:
        raise DataError(f"{d}: no sequence folder (one with a groundtruth.txt) in it")
    return seqs
