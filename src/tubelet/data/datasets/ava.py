"""AVA-format spatio-temporal action detection data (Gu et al., AVA, arXiv 1705.08421; v2.2 files).

Files, as the AVA release writes them:

* **Annotations** ``ava_{train,val}_v2.2.csv``: ``video_id, timestamp, x1, y1, x2, y2, action_id, person_id``,
  one row per (person box, action) of a keyframe; boxes normalised to ``[0, 1]`` of the frame, ``x2 = x1 + w``.
  A row of only ``video_id, timestamp`` lists a keyframe without actions (the 2020 format).
* **Detections / proposals**: the same first seven columns and a *score* in column 8 (a person detector's
  boxes have an empty or ``-1`` action).
* **Excluded timestamps** ``ava_*_excluded_timestamps_v2.2.csv``: ``video_id, timestamp`` rows: keyframes left
  out of training and evaluation.
* **Label map** ``ava_action_list_v2.2_for_activitynet_2019.pbtxt``: ``label { name: "..." label_id: N }`` (or
  ``item { name: "..." id: N }``) blocks: the 60 evaluated classes of the 80 action ids.

A bad row is a :class:`~tubelet.errors.DataError` of one line naming file and line.

:class:`AVADataset` serves one sample per keyframe: a clip of ``num_frames`` frames ``stride`` apart centred
on the keyframe (PySlowFast's ``get_sequence``: ``center - T*stride//2 + k*stride``, clamped to the video),
at any frame rate and any timestamp range: the keyframe at ``timestamp`` seconds is frame
``round((timestamp - time_offset) * fps)`` of the video (AVA's frame dumps start at 900 s: ``time_offset =
900``), and ``stride = round(sampling_rate * fps / target_fps)`` keeps a clip's duration in seconds. Training
clips get PySlowFast's scale jitter, random crop and flip (the kernels of ``data/transforms/geometry.py``),
and their boxes follow the crop and the flip; test clips are the whole frame at short side ``crop_size``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tubelet.errors import DataError

__all__ = [
    "AVADataset",
    "AVAKeyframeStreams",
    "AVATable",
    "Keyframe",
    "clip_frame_indices",
    "frame_keys",
    "keyframe_index",
    "read_ava_csv",
    "read_excluded",
    "read_label_map",
    "transform_boxes",
    "write_ava_csv",
    "write_label_map",
]

CSVKind = Literal["annotations", "detections", "excluded"]


@dataclass
class AVATable:
    """The rows of an AVA CSV as columns. ``boxes`` ``x1, y1, x2, y2`` float64 ``(N, 4)`` (NaN in a 2-column
    row); ``action`` int64 (``-1``: none); ``extra`` the 8th column (the person id of an annotation, the
    score of a detection; NaN where absent); ``line`` the 1-based line of each row."""

    video: np.ndarray
    time: np.ndarray
    boxes: np.ndarray
    action: np.ndarray
    extra: np.ndarray
    line: np.ndarray
    path: str = ""

    def __len__(self) -> int:
        return len(self.video)

    def select(self, mask: np.ndarray) -> "AVATable":
        return AVATable(self.video[mask], self.time[mask], self.boxes[mask], self.action[mask], self.extra[mask],
                        self.line[mask], self.path)

    @property
    def has_box(self) -> np.ndarray:
        return np.isfinite(self.boxes).all(1)

    @classmethod
    def empty(cls, path: str = "") -> "AVATable":
        return cls(np.zeros(0, dtype=object), np.zeros(0), np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0),
                   np.zeros(0, np.int64), path)

    @classmethod
    def concat(cls, tables: Sequence["AVATable"]) -> "AVATable":
        if not tables:
            return cls.empty()
        return cls(*(np.concatenate([getattr(t, k) for t in tables]) for k in
                     ("video", "time", "boxes", "action", "extra", "line")), tables[0].path)


def frame_keys(video: np.ndarray, time: np.ndarray) -> np.ndarray:
    """The evaluator's frame key ``"video,%.6f" % timestamp`` of every row (the released evaluator's
    ``make_image_key``), as a string array."""
    us = np.round(np.asarray(time, dtype=np.float64) * 1e6).astype(np.int64)
    if us.size == 0:
        return np.zeros(0, dtype="<U1")
    secs, frac = np.divmod(us, 1_000_000)
    return np.char.add(np.char.add(np.char.add(np.asarray(video).astype(str), ","), secs.astype(str)),
                       np.char.add(".", np.char.zfill(frac.astype(str), 6)))


def _bad_line(path: str, lines: np.ndarray, col: list[str], what: str, parse: Callable[[str], object]) -> DataError:
    for n, v in zip(lines, col):
        try:
            parse(v)
        except ValueError:
            return DataError(f"{path}:{n}: {what} '{v}' is not a number")
    return DataError(f"{path}: cannot read the {what} column")


def _floats(path: str, lines: np.ndarray, col: list[str], what: str) -> np.ndarray:
    try:
        out = np.asarray(col, dtype=np.float64)
    except ValueError:
        raise _bad_line(path, lines, col, what, float) from None
    bad = ~np.isfinite(out)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path}:{lines[i]}: {what} '{col[i]}' is not a finite number")
    return out


def _ints(path: str, lines: np.ndarray, col: list[str], what: str, blank: int | None = None) -> np.ndarray:
    vals = [(str(blank) if blank is not None and not v.strip() else v) for v in col]
    try:
        return np.asarray(vals, dtype=np.int64)
    except ValueError:
        raise _bad_line(path, lines, vals, what, int) from None


def read_ava_csv(path: str | os.PathLike, kind: CSVKind = "annotations", text: str | None = None) -> AVATable:
    """An AVA CSV as an :class:`AVATable` (``text``: the file's contents, when already read).

    ``annotations``: 2, 7 or 8 columns (the 8th an integer person id); ``detections``: 7 or 8 (the 8th a
    score; an empty action is ``-1``); ``excluded``: exactly 2. Boxes must lie in ``[0, 1]`` with ``x1 <= x2``
    and ``y1 <= y2``; action ids are integers ``>= 1`` (``-1``/empty only in detections)."""
    p = Path(path)
    if text is None:
        if not p.is_file():
            raise DataError(f"{p}: AVA CSV file not found")
        text = p.read_text(encoding="utf-8", errors="replace")
    rows = [(n, r) for n, r in enumerate(csv.reader(io.StringIO(text)), 1) if r and any(c.strip() for c in r)]
    widths = {"annotations": (2, 7, 8), "detections": (7, 8), "excluded": (2,)}[kind]
    for n, r in rows:
        if len(r) not in widths:
            want = " or ".join(map(str, widths))
            raise DataError(f"{p}:{n}: expected {want} columns (video_id,timestamp"
                            f"{',x1,y1,x2,y2,action_id,...' if kind != 'excluded' else ''}), got {len(r)}")
    if not rows:
        return AVATable.empty(str(p))
    lines = np.asarray([n for n, _ in rows], dtype=np.int64)
    cols = [[r[i].strip() if i < len(r) else "" for _, r in rows] for i in range(8)]
    width = np.asarray([len(r) for _, r in rows])
    video = np.asarray(cols[0], dtype=object)
    empty = np.flatnonzero(video == "")
    if empty.size:
        raise DataError(f"{p}:{lines[empty[0]]}: empty video id")
    time = _floats(str(p), lines, cols[1], "timestamp")
    N = len(rows)
    boxes = np.full((N, 4), np.nan)
    action = np.full(N, -1, dtype=np.int64)
    extra = np.full(N, np.nan)
    full = np.flatnonzero(width >= 7)
    if full.size:
        fl = lines[full]
        b = np.stack([_floats(str(p), fl, [cols[c][i] for i in full], name)
                      for c, name in zip(range(2, 6), ("x1", "y1", "x2", "y2"))], 1)
        for bad, what in (((b < 0) | (b > 1)).any(1), "a box coordinate outside [0, 1] (AVA boxes are normalised)"), \
                         ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]), "x2 < x1 or y2 < y1"):
            if bad.any():
                i = int(np.argmax(bad))
                raise DataError(f"{p}:{fl[i]}: {what}: {','.join(f'{v:g}' for v in b[i])}")
        boxes[full] = b
        a = _ints(str(p), fl, [cols[6][i] for i in full], "action id", blank=-1 if kind == "detections" else None)
        bad = (a < 1) & ~((a == -1) & (kind == "detections"))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{p}:{fl[i]}: action id {a[i]} is not >= 1")
        action[full] = a
    eight = np.flatnonzero(width == 8)
    if eight.size:
        el = lines[eight]
        col = [cols[7][i] for i in eight]
        if kind == "annotations":
            extra[eight] = _ints(str(p), el, col, "person id", blank=-1).astype(np.float64)
        else:
            extra[eight] = _floats(str(p), el, col, "score")
    if kind == "detections":
        extra[np.isnan(extra)] = 1.0  # the evaluator's default score
    return AVATable(video, time, boxes, action, extra, lines, str(p))


def read_excluded(path: str | os.PathLike | None) -> set[str]:
    """The frame keys (:func:`frame_keys`) of an excluded-timestamps CSV; an empty set for None."""
    if path is None:
        return set()
    t = read_ava_csv(path, "excluded")
    return set(frame_keys(t.video, t.time).tolist())


_NAME = re.compile(r'^\s*name\s*:\s*"(.*)"\s*$')
_ID = re.compile(r"^\s*(id|label_id)\s*:\s*(\S+)\s*$")


def read_label_map(path: str | os.PathLike) -> dict[int, str]:
    """An AVA ``pbtxt`` label map as ``{action id: name}`` in file order: each ``name:`` line followed by an
    ``id:`` or ``label_id:`` line (what the released evaluator's ``read_labelmap`` reads)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: label map not found")
    out: dict[int, str] = {}
    name: str | None = None
    for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        m = _NAME.match(line)
        if m:
            name = m.group(1)
            continue
        m = _ID.match(line)
        if m:
            if name is None:
                raise DataError(f"{p}:{n}: {m.group(1)} without a name before it")
            try:
                k = int(m.group(2))
            except ValueError:
                raise DataError(f"{p}:{n}: {m.group(1)} '{m.group(2)}' is not an integer") from None
            if k < 1:
                raise DataError(f"{p}:{n}: {m.group(1)} {k} is not >= 1 (AVA ids count from 1)")
            if k in out:
                raise DataError(f"{p}:{n}: id {k} appears twice ('{out[k]}' and '{name}')")
            out[k] = name
            name = None
    if not out:
        raise DataError(f"{p}: no 'name:'/'id:' entries (an AVA pbtxt label map has 'label {{ name: ... label_id: ... }}')")
    return out


def write_label_map(path: str | os.PathLike, names: dict[int, str]) -> Path:
    """A pbtxt label map in the v2.2 layout (``label { name: "..." label_id: N label_type: ... }``)."""
    body = "".join(f'label {{\n  name: "{v}"\n  label_id: {k}\n  label_type: PERSON_MOVEMENT\n}}\n'
                   for k, v in names.items())
    p = Path(path)
    p.write_text(body, encoding="utf-8")
    return p


def write_ava_csv(path: str | os.PathLike, table: AVATable, kind: CSVKind = "annotations") -> Path:
    """Write rows in the AVA layout: boxes with 3 decimals as the release has them, the 8th column an integer
    person id (annotations) or a score (detections); 2-column rows stay 2 columns."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    ts = [f"{t:.6f}".rstrip("0").rstrip(".") if float(t) != int(t) else f"{int(t):04d}" for t in table.time]
    for i in range(len(table)):
        if kind == "excluded" or not np.isfinite(table.boxes[i]).all():
            w.writerow([table.video[i], ts[i]])
            continue
        row = [table.video[i], ts[i], *(f"{v:.3f}" for v in table.boxes[i]),
               "" if table.action[i] < 0 else int(table.action[i])]
        e = table.extra[i]
        if np.isfinite(e):
            row.append(int(e) if kind == "annotations" else f"{e:.6f}")
        w.writerow(row)
    p = Path(path)
    p.write_text(buf.getvalue(), encoding="utf-8")
    return p


# ---------------------------------------------------------------------------------------------------------
# Keyframes and clips
# ---------------------------------------------------------------------------------------------------------


def keyframe_index(timestamp: float | np.ndarray, fps: float, time_offset: float = 0.0) -> np.ndarray:
    """The frame shown at ``timestamp`` seconds: ``round((timestamp - time_offset) * fps)`` (AVA's frame dumps:
    30 fps from 900 s, so 902 s is frame 60)."""
    return np.round((np.asarray(timestamp, dtype=np.float64) - time_offset) * float(fps)).astype(np.int64)


def clip_frame_indices(center: int, num_frames: int, stride: int, total: int) -> np.ndarray:
    """``num_frames`` indices ``stride`` apart around ``center`` (PySlowFast's ``get_sequence``:
    ``center - num_frames*stride//2 + k*stride``), clamped to ``[0, total)``."""
    k = np.arange(num_frames, dtype=np.int64)
    return np.clip(int(center) - (num_frames * stride) // 2 + k * stride, 0, max(0, int(total) - 1))


def transform_boxes(boxes: np.ndarray, frame_hw: tuple[int, int], crop: tuple[int, int, int, int],
                    out_hw: tuple[int, int], flip: bool) -> np.ndarray:
    """Normalised ``x1,y1,x2,y2`` boxes ``(M, 4)`` of an ``H x W`` frame -> pixels of the clip made by cropping
    ``crop = (y0, x0, y1, x1)`` (source pixels), resizing to ``out_hw`` and, with ``flip``, mirroring left-right;
    clipped to the clip."""
    H, W = frame_hw
    y0, x0, y1, x1 = crop
    oh, ow = out_hw
    b = np.asarray(boxes, dtype=np.float64) * np.array([W, H, W, H])
    sx, sy = ow / (x1 - x0), oh / (y1 - y0)
    b = (b - np.array([x0, y0, x0, y0])) * np.array([sx, sy, sx, sy])
    b = np.clip(b, 0, np.array([ow, oh, ow, oh]))
    if flip:
        b = np.stack([ow - b[:, 2], b[:, 1], ow - b[:, 0], b[:, 3]], 1)
    return b


@dataclass
class Keyframe:
    """One sample: a keyframe of a video and its boxes (normalised), with multi-hot labels over the model's
    classes (action id ``a`` is class ``a - 1``) for ground truth, or scores for proposals."""

    video: str
    time: float
    boxes: np.ndarray  # (M, 4) normalised x1,y1,x2,y2
    labels: np.ndarray  # (M, K) float32 multi-hot (zeros for proposals)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (M,) proposal scores (1 for ground truth)


def group_keyframes(table: AVATable, num_classes: int, excluded: set[str] | None = None,
                    time_range: Sequence[float] | None = None, proposals: bool = False,
                    min_score: float = 0.0) -> list[Keyframe]:
    """The keyframes of an annotation (or proposal) table: rows of one ``(video, timestamp, box)`` are one
    person box whose action ids make its multi-hot label (PySlowFast groups by the box's coordinates). Keyframes
    in ``excluded`` or outside ``time_range = [lo, hi]`` seconds are left out, as are proposals below
    ``min_score``; a keyframe with no box left is dropped. Action ids beyond ``num_classes`` are an error that
    names the row."""
    t = table.select(table.has_box)
    keep = np.ones(len(t), bool)
    if time_range is not None:
        lo, hi = float(time_range[0]), float(time_range[1])
        keep &= (t.time >= lo) & (t.time <= hi)
    if proposals:
        keep &= t.extra >= min_score
    else:
        big = t.action > num_classes
        if big.any():
            i = int(np.argmax(big))
            raise DataError(f"{t.path}:{t.line[i]}: action id {t.action[i]} exceeds model.num_classes={num_classes}")
    keys = frame_keys(t.video, t.time)
    if excluded:
        keep &= ~np.isin(keys, np.asarray(sorted(excluded), dtype=keys.dtype))
    t, keys = t.select(keep), keys[keep]
    if not len(t):
        return []
    # one group per (frame, box): rows of equal frame and coordinates
    frame_u, frame_first, frame_inv = np.unique(keys, return_index=True, return_inverse=True)
    box_u, box_first, box_inv = np.unique(np.concatenate([frame_inv[:, None].astype(np.float64), t.boxes], 1),
                                          axis=0, return_index=True, return_inverse=True)
    box_inv = box_inv.reshape(-1)
    box_frame = frame_inv[box_first]
    labels = np.zeros((len(box_u), num_classes), np.float32)
    has = t.action >= 1
    labels[box_inv[has], t.action[has] - 1] = 1.0
    scores = np.ones(len(box_u))
    if proposals:  # a box listed twice keeps its best score
        scores = np.zeros(len(box_u))
        np.maximum.at(scores, box_inv, t.extra)
    # frames in file order, boxes in file order inside a frame
    order = np.argsort(frame_first, kind="stable")
    box_order = np.lexsort((box_first, box_frame))
    starts = np.searchsorted(box_frame[box_order], np.arange(len(frame_u)))
    ends = np.searchsorted(box_frame[box_order], np.arange(len(frame_u)), side="right")
    out = []
    for f in order:  # one entry per keyframe (the sample list), boxes gathered by slices
        sel = box_order[starts[f]:ends[f]]
        i = frame_first[f]
        out.append(Keyframe(str(t.video[i]), float(t.time[i]), t.boxes[box_first[sel]], labels[sel], scores[sel]))
    return out


VideoOpener = Callable[[str], "object"]


class AVADataset(Dataset):
    """One sample per keyframe (see the module docstring).

    Sample: ``video`` ``(C, T, S, S)`` float (train) or ``(1, C, T, h, w)`` (test: the whole frame at short
    side ``crop_size``, one view); ``boxes`` ``(max_boxes, 4)`` pixel ``x1,y1,x2,y2`` of the clip, zero-padded;
    ``box_mask`` ``(max_boxes,)`` bool (False for padding and for boxes the crop left empty); ``labels`` ``(max_boxes, K)`` multi-hot; ``norm_boxes`` the boxes
    normalised to the original frame (for the detection file); ``index``. ``opener(video_id) -> VideoReader``;
    ``fps``: the frame rate to map timestamps with (None: the reader's).
    """

    def __init__(self, keyframes: Sequence[Keyframe], opener: VideoOpener, split: str, num_classes: int,
                 num_frames: int, sampling_rate: int, target_fps: float, crop_size: int,
                 short_side: Sequence[int] = (256, 320), hflip: float = 0.5, mean: Sequence[float] = (0.45,) * 3,
                 std: Sequence[float] = (0.225,) * 3, time_offset: float = 0.0, fps: float | None = None,
                 max_boxes: int = 100, seed: int = 0, class_names: Sequence[str] | None = None,
                 flip_classes: Sequence[int] | None = None) -> None:
        if not keyframes:
            raise DataError(f"AVA {split}: no keyframe with a box (check the CSV, the excluded timestamps, the "
                            "timestamp range and the proposal score threshold)")
        most = max(len(k.boxes) for k in keyframes)
        if most > max_boxes:
            k = next(k for k in keyframes if len(k.boxes) == most)
            raise DataError(f"AVA {split}: keyframe {k.video},{k.time:g} has {most} boxes, more than "
                            f"data.ava.max_boxes={max_boxes}")
        self.keyframes = list(keyframes)
        self.opener, self.split = opener, split
        self.num_classes = int(num_classes)
        self.num_frames, self.sampling_rate, self.target_fps = int(num_frames), int(sampling_rate), float(target_fps)
        self.crop_size, self.short_side, self.hflip = int(crop_size), tuple(int(s) for s in short_side), float(hflip)
        self.mean, self.std = tuple(mean), tuple(std)
        self.time_offset, self.fps = float(time_offset), fps
        self.max_boxes, self.seed, self.epoch = int(max_boxes), int(seed), 0
        self.class_names = list(class_names) if class_names else None
        # class c becomes flip_classes[c] when the clip is mirrored (the synthetic set's left/right motions;
        # AVA's actions do not change under a flip)
        self.flip_classes = np.asarray(flip_classes, dtype=np.int64) if flip_classes is not None else None
        self.groundtruth: AVATable | None = None
        self.excluded: set[str] = set()
        self.label_map: dict[int, str] = {}
        self._readers: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.keyframes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def reader(self, video: str):
        if video not in self._readers:
            self._readers[video] = self.opener(video)
        return self._readers[video]

    def frame_indices(self, kf: Keyframe, reader) -> np.ndarray:
        fps = float(self.fps if self.fps is not None else reader.fps)
        center = int(keyframe_index(kf.time, fps, self.time_offset))
        n = int(reader.num_frames)
        if not 0 <= center < n:
            raise DataError(f"AVA {self.split}: keyframe {kf.video},{kf.time:g} is frame {center} at {fps:g} fps "
                            f"(time_offset {self.time_offset:g} s) but the video has {n} frames")
        stride = max(1, int(round(self.sampling_rate * fps / self.target_fps)))
        return clip_frame_indices(center, self.num_frames, stride, n)

    def __getitem__(self, index: int) -> dict:
        from tubelet.data.decoding.reader import to_cthw
        from tubelet.data.sampling import sample_rng, torch_generator
        from tubelet.data.transforms.geometry import Normalize, RandomHorizontalFlip, ScaleJitterCrop, resize

        kf = self.keyframes[index]
        reader = self.reader(kf.video)
        frames = reader.get_frames(self.frame_indices(kf, reader))  # (T, H, W, 3) uint8
        x = to_cthw(frames)
        x = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
        H, W = x.shape[-2:]
        if self.split == "train":
            g = torch_generator(sample_rng(self.seed, self.epoch, index))
            lo, hi = (list(self.short_side) * 2)[:2]
            crop = ScaleJitterCrop(lo, hi, self.crop_size).box(H, W, g)
            flip = RandomHorizontalFlip(self.hflip).draw(g) if self.hflip > 0 else False
            y0, x0, y1, x1 = crop
            x = resize(x[..., y0:y1, x0:x1], (self.crop_size, self.crop_size))
            if flip:
                x = x.flip(-1)
            out_hw = (self.crop_size, self.crop_size)
        else:
            crop, flip = (0, 0, H, W), False
            s = self.crop_size
            out_hw = (s, max(1, int(math.floor(W * s / H)))) if H <= W else (max(1, int(math.floor(H * s / W))), s)
            x = resize(x, out_hw)
        video = Normalize(self.mean, self.std)(x)
        boxes = transform_boxes(kf.boxes, (H, W), crop, out_hw, flip)
        valid = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
        M = self.max_boxes
        pb = np.zeros((M, 4), np.float32)
        pn = np.zeros((M, 4), np.float32)
        pl = np.zeros((M, self.num_classes), np.float32)
        mask = np.zeros(M, bool)
        m = len(boxes)
        labels = kf.labels
        if flip and self.flip_classes is not None:
            labels = np.zeros_like(labels)
            labels[:, self.flip_classes] = kf.labels
        pb[:m], pn[:m], pl[:m], mask[:m] = boxes, kf.boxes, labels, valid
        return {"video": video if self.split == "train" else video[None], "boxes": torch.from_numpy(pb),
                "box_mask": torch.from_numpy(mask), "labels": torch.from_numpy(pl), "norm_boxes": torch.from_numpy(pn),
                "index": int(index)}


class AVAKeyframeStreams:
    """The keyframes of an :class:`AVADataset` as videos of clips in time order: the clip source of
    :class:`~tubelet.data.online.OnlineClips` for memory models (``data.ava.online``; MeMViT, arXiv 2201.08383,
    Sec. 3.1: a video is seen clip after clip, here keyframe after keyframe, as its release's AVA loader does).

    ``clips_per_video[v]`` is the number of keyframes of video ``v`` (videos in order of first appearance),
    ``clip(v, c)`` the sample of its ``c``-th keyframe by timestamp; ``order[v]`` their dataset indices."""

    def __init__(self, dataset: AVADataset) -> None:
        self.dataset = dataset
        videos = np.asarray([k.video for k in dataset.keyframes], dtype=object)
        times = np.asarray([k.time for k in dataset.keyframes], dtype=np.float64)
        names, first, inverse = np.unique(videos, return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first, kind="stable"), kind="stable")  # video number by first appearance
        vid = rank[inverse.reshape(-1)]
        order = np.lexsort((times, vid))  # by video, then by time
        counts = np.bincount(vid, minlength=len(names))
        self.order: list[np.ndarray] = np.split(order, np.cumsum(counts)[:-1])
        self.clips_per_video = counts.tolist()
        self.video_names = [str(names[i]) for i in np.argsort(rank)]

    def clip(self, video: int, clip: int) -> dict:
        return self.dataset[int(self.order[video][clip])]

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
