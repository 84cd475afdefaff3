"""The synthetic set as an AVA-format detection task: every object a "person", its actions what it does.

Each synthetic clip (``data/synthetic.py``) is a video; its keyframes lie at whole seconds ``1, 2, ...`` (frame
``t * fps``) while a whole clip around them fits the video. Every object present at a keyframe is one box
(its per-frame box, normalised), with multi-label actions:

* its **motion** (``move_left`` ... ``shrink``: action id ``motion index + 1``), which only a clip, not the
  keyframe, shows;
* **overlap** (id ``K + 1``) when its box intersects another object's box at the keyframe.

:func:`write_synthetic_ava` writes the AVA files for every split under a folder: ``{train,val,test}.csv``
(annotations, 8 columns with the object id as person id), ``proposals_{val,test}.csv`` (the boxes jittered by
about 1% of the frame, scores in [0.85, 1], plus one random box per keyframe scored below 0.6, which the 0.8
threshold removes), ``excluded_{split}.csv`` (the first keyframe of every 8th clip), and ``labels.pbtxt``.
The frames are rendered, not encoded: video id ``synthetic:000123`` opens clip 123.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tubelet.config.schema import DataConfig
from tubelet.core.io import temp_path
from tubelet.data.datasets.ava import AVATable, write_ava_csv, write_label_map
from tubelet.data.synthetic import SyntheticSource, class_names, clip_path, hflip_label_map, split_indices
from tubelet.errors import ConfigError

__all__ = ["keyframe_seconds", "synthetic_ava_classes", "synthetic_ava_flip", "synthetic_ava_tables",
           "write_synthetic_ava"]

OVERLAP = "overlap"


def synthetic_ava_classes(data: DataConfig) -> list[str]:
    """Class ``i`` (action id ``i + 1``): the motions, then ``overlap``."""
    return class_names(data.synthetic) + [OVERLAP]


def synthetic_ava_flip(data: DataConfig) -> list[int]:
    """The class of each class after a horizontal flip (left <-> right, clockwise <-> counter-clockwise)."""
    names = class_names(data.synthetic)
    return hflip_label_map(names) + [len(names)]


def keyframe_seconds(data: DataConfig) -> list[int]:
    """Whole seconds whose keyframe has a clip of ``num_frames`` at the recipe's stride inside the video."""
    syn = data.synthetic
    stride = max(1, int(round(data.sampling_rate * syn.fps / data.target_fps)))
    half = (data.num_frames * stride) // 2
    out = [t for t in range(1, int(syn.frames // syn.fps) + 1)
           if t * syn.fps - half >= 0 and t * syn.fps - half + (data.num_frames - 1) * stride < syn.frames]
    if not out:
        raise ConfigError(f"data.synthetic.frames={syn.frames} at {syn.fps} fps leaves no keyframe (at whole seconds) "
                          f"with a {data.num_frames}-frame clip at stride {stride} around it: render more frames")
    return out


def _overlaps(boxes: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Whether each box ``(K, 4)`` intersects another present box (positive area)."""
    lt = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    both = present[:, None] & present[None, :] & ~np.eye(len(boxes), dtype=bool)
    return ((inter > 0) & both).any(1)


def synthetic_ava_tables(data: DataConfig, split: str, source: SyntheticSource | None = None) -> dict[str, AVATable]:
    """``annotations``, ``proposals`` and ``excluded`` tables of one split (see the module docstring); ``source``
    renders (and caches) the clips."""
    syn = data.synthetic
    source = source if source is not None else SyntheticSource(syn)
    names = class_names(syn)
    seconds = keyframe_seconds(data)
    S = float(syn.size)
    ann, props, excl = [], [], []
    for i in split_indices(syn, split):
        clip = source.clip(i)
        motion = np.array([names.index(o["motion"]) + 1 for o in clip.objects])
        rng = np.random.default_rng(np.random.SeedSequence([int(syn.seed) & 0xFFFFFFFF, int(i), 0xA7A]))
        vid = clip_path(i)
        for t in seconds:
            f = t * syn.fps
            present = (clip.ids[f] >= 0) & ((clip.boxes[f, :, 2:] - clip.boxes[f, :, :2]) > 0).all(1)
            present[len(motion):] = False
            b = np.round(clip.boxes[f].astype(np.float64) / S, 3)
            over = _overlaps(b, present)
            for k in np.flatnonzero(present):
                ann.append((vid, t, b[k], int(motion[k]), float(k)))
                if over[k]:
                    ann.append((vid, t, b[k], len(names) + 1, float(k)))
                jit = np.clip(b[k] + rng.normal(0, 0.01, 4), 0, 1)
                jit = np.array([min(jit[0], jit[2]), min(jit[1], jit[3]), max(jit[0], jit[2]), max(jit[1], jit[3])])
                props.append((vid, t, np.round(jit, 3), -1, float(np.round(rng.uniform(0.85, 1.0), 6))))
            c = rng.uniform(0, 1, 2)
            props.append((vid, t, np.round(np.concatenate([c * 0.7, c * 0.7 + 0.3]), 3), -1,
                          float(np.round(rng.uniform(0.2, 0.6), 6))))
        if i % 8 == 3:
            excl.append((vid, seconds[0]))

    def table(rows, with_box=True) -> AVATable:
        n = len(rows)
        if not with_box:
            return AVATable(np.asarray([r[0] for r in rows], dtype=object), np.asarray([r[1] for r in rows], float),
                            np.full((n, 4), np.nan), np.full(n, -1, np.int64), np.full(n, np.nan),
                            np.arange(1, n + 1), "synthetic")
        return AVATable(np.asarray([r[0] for r in rows], dtype=object), np.asarray([r[1] for r in rows], float),
                        np.asarray([r[2] for r in rows], float).reshape(n, 4), np.asarray([r[3] for r in rows], np.int64),
                        np.asarray([r[4] for r in rows], float), np.arange(1, n + 1), "synthetic")

    return {"annotations": table(ann), "proposals": table(props), "excluded": table(excl, with_box=False)}


def write_synthetic_ava(root: str | Path, data: DataConfig, source: SyntheticSource | None = None) -> dict[str, Path]:
    """Write the AVA files of every split under ``root`` (rewritten only when their contents change); returns
    their paths by name (``train``, ``val``, ``test``, ``proposals_val``, ``excluded_train``, ``label_map``...)."""
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def put(name: str, write) -> None:
        p = out / name
        # A temporary name of this writer's own: two runs share one data root (the synthetic ViT and MeMViT
        # recipes read the MViTv2 recipe's), and with one fixed name the second writer truncated or removed
        # the first one's file between its write and its rename.
        tmp = temp_path(p)
        try:
            write(tmp)
            if not (p.is_file() and p.read_bytes() == tmp.read_bytes()):
                tmp.replace(p)
        finally:
            tmp.unlink(missing_ok=True)  # unchanged contents (or a failed write): the temporary file goes
        paths[name.rsplit(".", 1)[0]] = p

    for split in ("train", "val", "test"):
        t = synthetic_ava_tables(data, split, source)
        put(f"{split}.csv", lambda p, t=t: write_ava_csv(p, t["annotations"], "annotations"))
        if split != "train":
            put(f"proposals_{split}.csv", lambda p, t=t: write_ava_csv(p, t["proposals"], "detections"))
        put(f"excluded_{split}.csv", lambda p, t=t: write_ava_csv(p, t["excluded"], "excluded"))
    names = synthetic_ava_classes(data)
    put("labels.pbtxt", lambda p: write_label_map(p, {i + 1: n for i, n in enumerate(names)}))
    paths["label_map"] = paths.pop("labels")
    return paths


def synthetic_opener(data: DataConfig, cache: dict | None = None):
    """``video_id -> reader`` for the ``synthetic:<index>`` ids of the tables."""
    return SyntheticSource(data.synthetic, cache)

