"""A procedural, seeded video set whose classes differ only in motion.

Each clip shows 1-3 textured shapes (circle, square, triangle, diamond, cross) over a textured
background that pans (a moving camera). The *main* object (identity 0, drawn on top and largest)
carries the label: it moves left/right/up/down, rotates clockwise/counter-clockwise, or grows/shrinks.
Smaller distractor objects follow random motions of their own.

Why no single frame reveals the class: every per-frame state is drawn from a distribution that is the
same for all classes. Positions live on a torus (objects wrap around the frame edges), angles on the
circle, and log-sizes on a wrapped interval, each uniform, so adding a constant velocity, angular
velocity or log-growth per frame keeps every frame's marginal uniform. Shape, colour, texture (from
all of them, or the lists ``shapes``, ``textures``, ``colours``) and the background are drawn
independently of the label. Telling classes apart needs at least two frames,
which is what makes the set a test of temporal modelling (``tubelet demo`` compares a video model to
the same model fed one still frame).

Clip ``i`` is a pure function of ``(seed, i)``; labels are ``i % num_classes`` (exactly balanced), and
the train/val/test splits are disjoint contiguous index ranges. Every clip carries a caption, per-frame
boxes ``(x1, y1, x2, y2)`` in pixels (of the copy of the object that holds its centre, clipped to the
frame) and identities, so detection, tracking and video-text methods have a task on it too.

The set is served as a source of readers (:class:`SyntheticSource`), so a recipe's samplers, seeding
and transforms treat it exactly as a folder of real files. The one thing it adds is that a horizontal
flip mirrors the label and the caption with the clip (left <-> right, clockwise <-> counter-clockwise).
"""

from __future__ import annotations

import csv
import json
import math
import re
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from tubelet.config.schema import DataConfig, SyntheticColour, SyntheticConfig, SyntheticShape, SyntheticTexture
from tubelet.data.decoding import ConstantRateReader
from tubelet.errors import ConfigError

# Canonical class order; ``num_classes = K`` uses the first K (or ``SyntheticConfig.classes``).
MOTIONS = ("move_left", "move_right", "move_up", "move_down", "rotate_cw", "rotate_ccw", "grow", "shrink")
MOTION_PHRASES = {
    "move_left": "moves left",
    "move_right": "moves right",
    "move_up": "moves up",
    "move_down": "moves down",
    "rotate_cw": "rotates clockwise",
    "rotate_ccw": "rotates counterclockwise",
    "grow": "grows",
    "shrink": "shrinks",
}
# A horizontal flip mirrors x: left <-> right and (with y pointing down) clockwise <-> counter-clockwise.
HFLIP_MOTION = {
    "move_left": "move_right",
    "move_right": "move_left",
    "rotate_cw": "rotate_ccw",
    "rotate_ccw": "rotate_cw",
}
SHAPES: tuple[str, ...] = typing.get_args(SyntheticShape)
TEXTURES: tuple[str, ...] = typing.get_args(SyntheticTexture)  # all anisotropic, so rotation of a circle is visible
COLOURS = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.80, 0.25),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
    "cyan": (0.15, 0.85, 0.90),
    "magenta": (0.90, 0.20, 0.85),
    "orange": (0.98, 0.55, 0.10),
    "white": (0.97, 0.97, 0.97),
}
assert tuple(COLOURS) == typing.get_args(SyntheticColour), "the recipe's colour names are the rendered ones"


def class_names(cfg: SyntheticConfig) -> list[str]:
    """The label map: index -> motion name."""
    names = list(cfg.classes) if cfg.classes else list(MOTIONS[: cfg.num_classes])
    unknown = [n for n in names if n not in MOTIONS]
    if unknown:
        raise ConfigError(f"data.synthetic.classes: unknown motion(s) {unknown}; known: {', '.join(MOTIONS)}")
    if cfg.classes and len(names) != cfg.num_classes:
        raise ConfigError(
            f"data.synthetic.classes lists {len(names)} motions but data.synthetic.num_classes is {cfg.num_classes}"
        )
    if not 2 <= len(names) <= len(MOTIONS) or len(set(names)) != len(names):
        raise ConfigError(f"data.synthetic.num_classes must be 2..{len(MOTIONS)} distinct motions, got {names}")
    return names


def hflip_label_map(names: list[str]) -> list[int]:
    """``flipped[label]``: the label of a clip after a horizontal flip (identity where no mirror class exists)."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for i, n in enumerate(names):
        mirror = HFLIP_MOTION.get(n)
        out.append(index.get(mirror, i) if mirror is not None else i)
    return out


# the motion phrase of each mirrored motion, matched whole ("rotates clockwise" is not inside
# "rotates counterclockwise") and swapped in one pass so that left -> right does not turn back
_MIRRORED_PHRASES = {MOTION_PHRASES[a]: MOTION_PHRASES[b] for a, b in HFLIP_MOTION.items()}
_MIRROR_RE = re.compile(r"\b(" + "|".join(re.escape(p) for p in _MIRRORED_PHRASES) + r")\b")


def mirror_caption(caption: str) -> str:
    """The caption of a horizontally flipped clip: ``"... moves left"`` -> ``"... moves right"``,
    clockwise <-> counterclockwise; other captions are returned unchanged."""
    return _MIRROR_RE.sub(lambda m: _MIRRORED_PHRASES[m.group(1)], caption)


def flip_is_safe(names: list[str]) -> bool:
    """A flip is label-preserving or correctable only if every mirrored motion is itself a class."""
    return all(HFLIP_MOTION.get(n, n) in names for n in names)


@dataclass
class SyntheticClip:
    """One rendered clip: ``frames`` uint8 ``(T, H, W, 3)``; ``boxes`` float32 ``(T, K, 4)``; ``ids`` int64
    ``(T, K)`` with -1 (and zero boxes) for absent objects, ``K = max_objects``."""

    frames: np.ndarray
    label: int
    caption: str
    boxes: np.ndarray
    ids: np.ndarray
    objects: list[dict] = field(default_factory=list)


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index), 0x7B5]))


def _signed_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance to the shape's outline, in units of the object radius (negative inside)."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return np.sqrt(u * u + v * v) - 1.0
    if shape == "square":
        return np.maximum(au, av) - 0.8
    if shape == "diamond":
        return (au + av - 1.1) / math.sqrt(2.0)
    if shape == "triangle":  # vertices (0, -1.1), (+-0.95, 0.55) in object coordinates
        return np.maximum(v - 0.55, (-v + math.sqrt(3.0) * au - 1.1) / 2.0)
    if shape == "cross":
        return np.minimum(np.maximum(au - 0.95, av - 0.32), np.maximum(au - 0.32, av - 0.95))
    raise ValueError(shape)


def _texture(kind: str, u: np.ndarray, v: np.ndarray, freq: float, phase: float) -> np.ndarray:
    """Brightness modulation in [0.45, 1] drawn in object coordinates, so it turns and scales with the shape."""
    if kind == "striped":
        return 0.725 + 0.275 * np.sin(freq * math.pi * u + phase)
    if kind == "checkered":
        return 0.725 + 0.275 * np.sign(np.sin(freq * math.pi * u + phase) * np.sin(freq * math.pi * v + phase))
    if kind == "shaded":
        return 0.45 + 0.55 * np.clip((u + 1.0) / 2.0, 0.0, 1.0)
    raise ValueError(kind)


def _wrap(d: np.ndarray, period: float) -> np.ndarray:
    return (d + period / 2.0) % period - period / 2.0


def render_clip(cfg: SyntheticConfig, index: int, label: int | None = None) -> SyntheticClip:
    """Render clip ``index``: a pure function of ``(cfg, index)``, vectorised over objects, frames and pixels.

    ``label`` forces the main object's motion (default ``index % num_classes``). The random draws do not depend
    on the label, so frame 0 is the same for every label: the label only decides which velocity is non-zero.
    """
    names = class_names(cfg)
    rng = _rng(cfg.seed, index)
    S, T = int(cfg.size), int(cfg.frames)
    K_max = int(cfg.max_objects)
    label = index % len(names) if label is None else int(label)
    n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))

    t = np.arange(T, dtype=np.float64)[:, None, None]  # (T,1,1)
    coords = np.arange(S, dtype=np.float64) + 0.5
    X = coords[None, None, :]
    Y = coords[None, :, None]

    # Background: a periodic tile of three integer-frequency gratings between two muted colours, panned
    # with a random velocity (sub-pixel pans are exact because the tile is evaluated analytically).
    pan_angle = rng.uniform(0, 2 * math.pi)
    pan_speed = rng.uniform(0.0, cfg.pan_speed) * S
    px, py = pan_speed * math.cos(pan_angle), pan_speed * math.sin(pan_angle)
    freqs = rng.integers(-4, 5, size=(3, 2))
    freqs[np.all(freqs == 0, axis=1)] = (1, 0)
    amps = rng.uniform(0.3, 1.0, size=3)
    phases = rng.uniform(0, 2 * math.pi, size=3)
    Xs, Ys = X - px * t, Y - py * t  # (T,1,S), (T,S,1)
    g = sum(
        amps[j] * np.sin(2 * math.pi * (freqs[j, 0] * Xs + freqs[j, 1] * Ys) / S + phases[j]) for j in range(3)
    )
    g = 0.5 + 0.5 * g / amps.sum()  # (T,S,S) in [0, 1]
    c1, c2 = rng.uniform(0.15, 0.45, size=3), rng.uniform(0.35, 0.65, size=3)
    img = c1[None, None, None, :] * (1 - g[..., None]) + c2[None, None, None, :] * g[..., None]  # (T,S,S,3)

    # Restricted appearance lists pick from a generator of their own, while the clip's generator makes
    # its usual draws (how many bits an integer draw consumes depends on the range): a clip keeps its
    # positions, sizes and motions whatever the lists, and the full lists give the default set exactly.
    looks = np.random.default_rng(np.random.SeedSequence([int(cfg.seed) & 0xFFFFFFFF, int(index), 0xA77]))

    def pick(chosen: list[str], full: tuple[str, ...]) -> str:
        drawn = full[int(rng.integers(len(full)))]
        return drawn if not chosen or list(chosen) == list(full) else chosen[int(looks.integers(len(chosen)))]

    boxes = np.zeros((T, K_max, 4), dtype=np.float32)
    ids = np.full((T, K_max), -1, dtype=np.int64)
    objects: list[dict] = []
    log_lo, log_hi = math.log(cfg.min_radius * S), math.log(cfg.max_radius * S)
    # Draw distractors first and the main object last, so the labelled object is never hidden.
    for k in reversed(range(n_obj)):
        motion = names[label] if k == 0 else names[int(rng.integers(len(names)))]
        shape = pick(cfg.shapes, SHAPES)
        texture = pick(cfg.textures, TEXTURES)
        colour = pick(cfg.colours, tuple(COLOURS))
        rgb = np.clip(np.array(COLOURS[colour]) + rng.uniform(-0.06, 0.06, size=3), 0, 1)
        cx0, cy0 = rng.uniform(0, S, size=2)
        theta0 = rng.uniform(0, 2 * math.pi)
        logr0 = rng.uniform(log_lo, log_hi)
        speed = rng.uniform(*cfg.speed) * S
        omega = math.radians(rng.uniform(*cfg.spin))
        growth = rng.uniform(*cfg.growth)
        freq = rng.uniform(1.5, 2.5)
        tphase = rng.uniform(0, 2 * math.pi)
        vx = {"move_left": -speed, "move_right": speed}.get(motion, 0.0)
        vy = {"move_up": -speed, "move_down": speed}.get(motion, 0.0)
        w = {"rotate_cw": omega, "rotate_ccw": -omega}.get(motion, 0.0)  # y down: +theta turns clockwise on screen
        gr = {"grow": growth, "shrink": -growth}.get(motion, 0.0)
        tt = t[:, 0, 0]
        cx = (cx0 + vx * tt) % S  # (T,)
        cy = (cy0 + vy * tt) % S
        theta = theta0 + w * tt
        # Log-radius on a wrapped interval: uniform at every frame for every class.
        logr = log_lo + (logr0 - log_lo + gr * tt) % (log_hi - log_lo)
        r = np.exp(logr)
        if k > 0:  # distractors are never larger than the smallest main object: "the main object" is well defined
            r = r * (cfg.min_radius / cfg.max_radius)
        dx = _wrap(X - cx[:, None, None], S)  # (T,1,S)
        dy = _wrap(Y - cy[:, None, None], S)  # (T,S,1)
        cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
        rr = r[:, None, None]
        u = (cos * dx + sin * dy) / rr  # object coordinates, (T,S,S)
        v = (-sin * dx + cos * dy) / rr
        alpha = np.clip(0.5 - _signed_distance(shape, u, v) * rr, 0.0, 1.0)  # one-pixel anti-aliased edge
        fill = rgb[None, None, None, :] * _texture(texture, u, v, freq, tphase)[..., None]
        img = img * (1 - alpha[..., None]) + fill * alpha[..., None]

        inside = alpha > 0.5
        xu = np.broadcast_to(cx[:, None, None] + dx, inside.shape)
        yu = np.broadcast_to(cy[:, None, None] + dy, inside.shape)
        x1 = np.where(inside, xu, np.inf).min(axis=(1, 2)) - 0.5
        x2 = np.where(inside, xu, -np.inf).max(axis=(1, 2)) + 0.5
        y1 = np.where(inside, yu, np.inf).min(axis=(1, 2)) - 0.5
        y2 = np.where(inside, yu, -np.inf).max(axis=(1, 2)) + 0.5
        visible = np.isfinite(x1)
        box = np.clip(np.stack([x1, y1, x2, y2], axis=1), 0, S)
        boxes[:, k] = np.where(visible[:, None], box, 0.0)
        ids[:, k] = np.where(visible, k, -1)
        objects.insert(0, {"id": k, "shape": shape, "colour": colour, "texture": texture, "motion": motion})

    img = img + rng.normal(0.0, cfg.noise, size=img.shape)  # sensor noise, fresh in every frame
    frames = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    main = objects[0]
    caption = f"a {main['colour']} {main['texture']} {main['shape']} {MOTION_PHRASES[main['motion']]}"
    if n_obj > 1:
        others = " and ".join(f"a small {o['colour']} {o['shape']}" for o in objects[1:])
        caption += f" next to {others}"
    return SyntheticClip(frames, label, caption, boxes, ids, objects)


def split_indices(cfg: SyntheticConfig, split: str) -> range:
    """Disjoint contiguous index ranges: train first, then val, then test."""
    n = int(cfg.num_videos)
    n_val = int(round(n * cfg.val_fraction))
    n_test = int(round(n * cfg.test_fraction))
    n_train = n - n_val - n_test
    if n_train <= 0:
        raise ConfigError(f"data.synthetic: {n} videos leave no training clips after val/test fractions")
    ranges = {"train": range(0, n_train), "val": range(n_train, n_train + n_val), "test": range(n_train + n_val, n)}
    if split not in ranges:
        raise ConfigError(f"split must be one of {tuple(ranges)}, got '{split}'")
    return ranges[split]


class SyntheticReader(ConstantRateReader):
    """A rendered clip behind the :class:`~tubelet.data.decoding.VideoReader` interface: frame ``i`` at
    ``i / synthetic.fps``, so the synthetic set goes through the same samplers, seeding, decode-time
    crops and transforms as a real file. ``caption`` and ``clip`` (boxes, identities) come along."""

    def __init__(self, clip: SyntheticClip, path: str, fps: int) -> None:
        T, H, W, _ = clip.frames.shape
        super().__init__(path, T, Fraction(int(fps)), W, H, "synthetic")
        self.clip = clip
        self.caption = clip.caption

    def _decode(self, unique_sorted: np.ndarray) -> np.ndarray:
        return self.clip.frames[unique_sorted]


PATH_PREFIX = "synthetic:"


def clip_path(index: int) -> str:
    """The sample path of clip ``index`` (what bad-file reports and predictions name)."""
    return f"{PATH_PREFIX}{int(index):06d}"


class SyntheticSource:
    """``path -> SyntheticReader`` for the paths of :func:`clip_path`: each clip is rendered on first
    use and kept (uint8) in ``cache``, a dict by global index that datasets over the same set may share
    (clips depend on ``data.synthetic`` only). Pickles with its cache for spawn-started workers."""

    def __init__(self, cfg: SyntheticConfig, cache: dict[int, SyntheticClip] | None = None) -> None:
        self.cfg = cfg
        self.cache: dict[int, SyntheticClip] = {} if cache is None else cache

    def index(self, path: str) -> int:
        if not str(path).startswith(PATH_PREFIX):
            raise ValueError(f"'{path}' is not a synthetic clip path ({PATH_PREFIX}<index>)")
        return int(str(path)[len(PATH_PREFIX):])

    def clip(self, index: int) -> SyntheticClip:
        if index not in self.cache:
            self.cache[index] = render_clip(self.cfg, index)
        return self.cache[index]

    def __call__(self, path: str) -> SyntheticReader:
        return SyntheticReader(self.clip(self.index(path)), str(path), self.cfg.fps)

    def render_all(self, paths) -> int:
        """Render the clips of ``paths`` now (e.g. before timing training); returns how many were new."""
        before = len(self.cache)
        for path in paths:
            self.clip(self.index(path))
        return len(self.cache) - before


@dataclass(frozen=True)
class SyntheticSplit:
    """What a clip dataset needs to serve one split of the set: its rows, the opener that renders them,
    the class names and, for a flip, the mirrored label of each class."""

    samples: list
    opener: SyntheticSource
    class_names: list[str]
    flip_labels: list[int]
    flip_caption: Callable[[str], str] = mirror_caption


def synthetic_split(data_cfg: DataConfig, videos: str, cache: dict[int, SyntheticClip] | None = None) -> SyntheticSplit:
    """The rows of split ``videos`` (labels ``index % num_classes``, computed without rendering) and
    their source, after the checks that only this set can make: the clip fits the rendered frames at
    the recipe's stride, the crop fits the frame, and a flip maps every class onto a class."""
    from tubelet.data.datasets.base import Sample

    syn = data_cfg.synthetic
    names = class_names(syn)
    stride = max(1, int(round(data_cfg.sampling_rate * syn.fps / data_cfg.target_fps)))
    span = (data_cfg.num_frames - 1) * stride + 1
    if span > syn.frames:
        raise ConfigError(
            f"data.num_frames={data_cfg.num_frames} at stride {stride} needs {span} frames but "
            f"data.synthetic.frames is {syn.frames}"
        )
    if data_cfg.crop_size > syn.size:
        raise ConfigError(f"data.crop_size={data_cfg.crop_size} exceeds data.synthetic.size={syn.size}")
    if data_cfg.augment.hflip > 0 and not flip_is_safe(names):
        missing = sorted({HFLIP_MOTION[n] for n in names if HFLIP_MOTION.get(n, n) not in names})
        raise ConfigError(
            f"data.augment.hflip={data_cfg.augment.hflip} would mirror clips into motions that are not classes "
            f"({', '.join(missing)}); set data.augment.hflip=0 or add them to data.synthetic.classes"
        )
    samples = [Sample(clip_path(i), i % len(names), source=f"synthetic:{videos}:{i}") for i in split_indices(syn, videos)]
    return SyntheticSplit(samples, SyntheticSource(syn, cache), names, hflip_label_map(names))


# ---------------------------------------------------------------------------------------------------------
# Writing the set to disk as real video files
# ---------------------------------------------------------------------------------------------------------


def write_video(path: str | Path, frames: np.ndarray, fps: int, lossless: bool = False) -> Path:
    """Encode uint8 ``(T, H, W, 3)`` RGB frames with PyAV.

    ``lossless``: libx264rgb at crf 0 on rgb24 (bit-exact after decoding to rgb24; use ``.mkv``);
    otherwise H.264 yuv420p at crf 18 (``.mp4``, needs even sizes).
    """
    import av

    path = Path(path)
    T, H, W, _ = frames.shape
    if not lossless and (H % 2 or W % 2):
        raise ConfigError(f"H.264 yuv420p needs even frame sizes, got {W}x{H}; use lossless or an even size")
    with av.open(str(path), mode="w") as container:
        if lossless:
            stream = container.add_stream("libx264rgb", rate=fps)
            stream.pix_fmt = "rgb24"
            stream.options = {"crf": "0", "preset": "veryfast"}
        else:
            stream = container.add_stream("libx264", rate=fps)
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18", "preset": "veryfast"}
        stream.width, stream.height = W, H
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_dataset(out_dir: str | Path, num_videos: int, cfg: SyntheticConfig, lossless: bool = False) -> Path:
    """Write clips ``0 .. num_videos-1`` as video files plus annotations; returns ``out_dir``.

    Layout::

        out_dir/videos/000000.mp4 ...   (.mkv when lossless)
        out_dir/manifest.csv            path,label,start,end,caption for every clip (header row; path relative)
        out_dir/{train,val,test}.csv    the same rows split as the set splits them (split_indices)
        out_dir/labels.txt              one class name per line, line i = label i
        out_dir/annotations.json        per clip: caption, objects, boxes (T,K,4) and ids (T,K)

    ``start``/``end`` are seconds of the clip (the whole file).
    """
    import dataclasses

    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    names = class_names(cfg)
    cfg = dataclasses.replace(cfg, num_videos=int(num_videos))
    ext = ".mkv" if lossless else ".mp4"
    rows, annotations = [], {}
    for index in range(int(num_videos)):
        clip = render_clip(cfg, index)
        rel = f"videos/{index:06d}{ext}"
        write_video(out / rel, clip.frames, cfg.fps, lossless=lossless)
        rows.append((index, [rel, clip.label, 0.0, round(cfg.frames / cfg.fps, 6), clip.caption]))
        annotations[rel] = {
            "index": index,
            "label": clip.label,
            "caption": clip.caption,
            "objects": clip.objects,
            "boxes": np.round(clip.boxes, 3).tolist(),
            "ids": clip.ids.tolist(),
        }
    header = ["path", "label", "start", "end", "caption"]

    def write_csv(path: Path, subset: list) -> None:
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(r for _, r in subset)

    write_csv(out / "manifest.csv", rows)
    for split in ("train", "val", "test"):
        keep = set(split_indices(cfg, split))
        write_csv(out / f"{split}.csv", [r for r in rows if r[0] in keep])
    (out / "labels.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    meta = {"config": dataclasses.asdict(cfg), "lossless": lossless, "classes": names, "clips": annotations}
    (out / "annotations.json").write_text(json.dumps(meta), encoding="utf-8")
    return out


# -- the long-range task (MeMViT): the label is set by an event many clips before the last --------------------
LONG_RANGE_COLOURS = ("red", "green", "blue", "yellow", "cyan", "magenta", "orange", "white")


def render_long_video(seed: int, index: int, num_clips: int = 5, clip_frames: int = 8, size: int = 32,
                      num_classes: int = 4, label: int | None = None) -> tuple[np.ndarray, int]:
    """A long video whose label is the colour of a large square that shows only in the *first* clip.

    Uint8 frames ``(num_clips * clip_frames, size, size, 3)`` and the label ``index % num_classes``. Every
    clip, the first included, also shows two small squares drifting across a panning textured background,
    each of a colour drawn uniformly from the same ``num_classes`` colours: from any clip after the first,
    the label cannot be told better than chance, so a model must carry what it saw ``num_clips - 1`` clips
    earlier. The video is a pure function of ``(seed, index)``; ``label`` replaces the index's label and
    changes the cue's colour only (every draw is made whatever the label).
    """
    if not 2 <= num_classes <= len(LONG_RANGE_COLOURS):
        raise ConfigError(f"the long-range task has 2 to {len(LONG_RANGE_COLOURS)} classes, got {num_classes}")
    if num_clips < 2:
        raise ConfigError(f"the long-range task needs at least 2 clips per video (cue, then recall), got {num_clips}")
    rng = _rng(seed, 0x10_0000 + index)
    label = index % num_classes if label is None else int(label)
    palette = np.array([COLOURS[c] for c in LONG_RANGE_COLOURS[:num_classes]], dtype=np.float32)
    n = num_clips * clip_frames
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    # background: two grey gratings panning at a random velocity, the same distribution for every label
    f = rng.uniform(0.15, 0.4, 2).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi, 2).astype(np.float32)
    vel = rng.uniform(-1.0, 1.0, 2).astype(np.float32)
    t = np.arange(n, dtype=np.float32)[:, None, None]
    bg = 0.35 + 0.1 * (np.sin(f[0] * (xx * np.cos(theta[0]) + yy * np.sin(theta[0]) + vel[0] * t))
                       + np.sin(f[1] * (xx * np.cos(theta[1]) + yy * np.sin(theta[1]) + vel[1] * t)))
    frames = np.repeat(bg[..., None], 3, axis=-1)  # (n, H, W, 3)

    def paint(frame_sl: slice, cx: np.ndarray, cy: np.ndarray, half: float, colour: np.ndarray) -> None:
        inside = ((np.abs(xx[None] - cx[:, None, None]) <= half) & (np.abs(yy[None] - cy[:, None, None]) <= half))
        block = frames[frame_sl]
        block[inside] = colour
        frames[frame_sl] = block

    # distractors: small squares of label-independent colours, drifting with wrap-around, new ones per clip
    for c in range(num_clips):
        sl = slice(c * clip_frames, (c + 1) * clip_frames)
        for _ in range(2):
            start = rng.uniform(0, size, 2)
            v = rng.uniform(-1.5, 1.5, 2)
            tt = np.arange(clip_frames)
            colour = palette[rng.integers(num_classes)]
            paint(sl, (start[0] + v[0] * tt) % size, (start[1] + v[1] * tt) % size, size / 16, colour)
    # the cue: one large square of the label's colour, in the first clip only
    half = size / 6
    cx = np.full(clip_frames, rng.uniform(half, size - half))
    cy = np.full(clip_frames, rng.uniform(half, size - half))
    paint(slice(0, clip_frames), cx, cy, half, palette[label])
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8), label


class LongRangeVideos:
    """The long-range task as a clip source of :class:`tubelet.data.online.OnlineClips`: ``clip(v, c)`` is clip
    ``c`` of long video ``first + v`` as ``{"video": (3, T, H, W) float, "label"}``, normalised with the
    Kinetics mean and std like every clip of the library. Videos are rendered once and kept (small)."""

    MEAN = np.array([0.45, 0.45, 0.45], dtype=np.float32)
    STD = np.array([0.225, 0.225, 0.225], dtype=np.float32)

    def __init__(self, num_videos: int, seed: int = 0, first: int = 0, num_clips: int = 5, clip_frames: int = 8,
                 size: int = 32, num_classes: int = 4) -> None:
        self.seed, self.first = int(seed), int(first)
        self.num_clips, self.clip_frames, self.size, self.num_classes = num_clips, clip_frames, size, num_classes
        self.clips_per_video = [num_clips] * int(num_videos)
        self._cache: dict[int, tuple[np.ndarray, int]] = {}

    def video(self, v: int) -> tuple[np.ndarray, int]:
        if v not in self._cache:
            self._cache[v] = render_long_video(self.seed, self.first + v, self.num_clips, self.clip_frames, self.size,
                                               self.num_classes)
        return self._cache[v]

    def clip(self, video: int, clip: int) -> dict:
        import torch

        frames, label = self.video(video)
        x = frames[clip * self.clip_frames:(clip + 1) * self.clip_frames].astype(np.float32) / 255.0
        x = (x - self.MEAN) / self.STD
        return {"video": torch.from_numpy(np.ascontiguousarray(x.transpose(3, 0, 1, 2))), "label": label}


class LongRangeStreams:
    """Held-out long videos for validation and test: sample ``i`` is every clip of video ``first + i`` in
    time order, ``{"video": (N, C, T, H, W), "label", "index", "streamed": True}``. ``streamed`` tells the
    evaluation (``tubelet.eval.multiview.stream_scores``) that the N clips are one video's in time order,
    to be run one after another from an empty memory and scored at the last: they are not views to
    average, and a memory model asked about them one at a time would start each from nothing."""

    def __init__(self, source: LongRangeVideos) -> None:
        self.source = source
        self.num_classes = source.num_classes
        self.class_names = list(LONG_RANGE_COLOURS[: source.num_classes])

    def __len__(self) -> int:
        return len(self.source.clips_per_video)

    def __getitem__(self, index: int) -> dict:
        import torch

        clips = [self.source.clip(index, c) for c in range(self.source.num_clips)]
        return {"video": torch.stack([c["video"] for c in clips]), "label": clips[0]["label"], "index": index,
                "streamed": True}


def write_long_range(out_dir: str | Path, num_videos: int, num_val: int = 0, seed: int = 0, num_clips: int = 5,
                     clip_frames: int = 8, size: int = 32, num_classes: int = 4, fps: int = 8,
                     held_out: int = 1_000_000) -> Path:
    """Write long-range videos as H.264 files: training videos ``0 .. num_videos-1`` and ``num_val`` held-out
    ones (indices from ``held_out``, the ones ``data.kind: long_range`` validates on). Layout::

        out_dir/videos/long_000000.mp4 ...   (val: long_val_000000.mp4 ...)
        out_dir/train.csv, val.csv           path,label,start,end (the whole long video; header row)
        out_dir/labels.txt                   the cue colours, line i = label i

    Each file is ``num_clips * clip_frames`` frames at ``fps``; the cue shows in the first ``clip_frames``.
    """
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    seconds = round(num_clips * clip_frames / fps, 6)
    for split, count, first, stem in (("train", num_videos, 0, "long"), ("val", num_val, held_out, "long_val")):
        rows = []
        for i in range(int(count)):
            frames, label = render_long_video(seed, first + i, num_clips, clip_frames, size, num_classes)
            rel = f"videos/{stem}_{i:06d}.mp4"
            write_video(out / rel, frames, fps)
            rows.append([rel, label, 0.0, seconds])
        if count:
            with (out / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["path", "label", "start", "end"])
                writer.writerows(rows)
    (out / "labels.txt").write_text("\n".join(LONG_RANGE_COLOURS[:num_classes]) + "\n", encoding="utf-8")
    return out
