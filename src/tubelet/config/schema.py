"""The typed recipe schema.

A recipe is a YAML file with five sections (``model``, ``data``, ``method``, ``optim``, ``trainer``)
plus ``seed`` and ``run_dir``. Every section is a dataclass; ``config.loader`` validates YAML against
them and rejects unknown keys, values outside a ``Literal`` and numbers outside a field's
:class:`~tubelet.config.bounds.Bound` (a batch of -4 videos fails at load, naming the key, not deep
inside a DataLoader). Every number has a bound, and the sections check them when they are built, in
Python as from YAML (``config/bounds.py``). This file holds the shared sections only: the ``method`` section is polymorphic, its ``name`` picks the
dataclass that the method declared beside itself and registered (``config.registry``).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from tubelet.config.bounds import (
    FRACTION,
    MAX_STEPS,
    NONNEGATIVE,
    POSITIVE,
    POSITIVE_REAL,
    PROBABILITY_BELOW_ONE,
    REAL,
    SEED,
    UNIT_HALF_OPEN,
    UNIT_OPEN,
    Bound,
    Checked,
    bounded,
)
from tubelet.config.registry import MethodConfig, default_method_config

__all__ = [
    "AugmentConfig", "Bound", "DataConfig", "ModelConfig", "OptimConfig", "Recipe", "RhoConfig", "SyntheticConfig",
    "TrainerConfig", "bounded",
]


DataKind = Literal["synthetic", "manifest", "folders", "frames", "images", "sot", "mot", "unified", "long_range", "ava",
                   "frame_boxes"]
# Lightning's precision names that tubelet trains and tests with; the 16-bit float ones need a GPU.
# "auto": the fastest that trains as well on this device (engine/device.py resolve_precision), recorded
# resolved in the run's config.yaml
Precision = Literal["32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "auto"]


@dataclass
class ModelConfig(Checked):
    """Which backbone to build (a name from ``tubelet.list_models()``) and how."""

    SECTION = "model"

    name: str = "vit_tiny"
    num_classes: int = bounded(400, NONNEGATIVE)  # 0: no classification head (pre-training)
    num_frames: int = bounded(16, POSITIVE)
    img_size: int = bounded(224, POSITIVE)
    drop_path_rate: float = bounded(0.0, PROBABILITY_BELOW_ONE)
    # Variant overrides passed to ``create_model`` (validated against the variant's dataclass).
    overrides: dict[str, Any] = field(default_factory=dict)
    # Weights to load before training (safetensors or a tubelet checkpoint); never unpickles code.
    checkpoint: str | None = None


# The synthetic renderer knows eight motions (``tubelet.data.synthetic.MOTIONS``); a class needs another
# to be told apart from.
SYNTHETIC_CLASSES = Bound(2, 8)
# What the renderer draws an object's appearance from, in its draw order (``tubelet.data.synthetic``).
SyntheticShape = Literal["circle", "square", "triangle", "diamond", "cross"]
SyntheticTexture = Literal["striped", "checkered", "shaded"]
SyntheticColour = Literal["red", "green", "blue", "yellow", "cyan", "magenta", "orange", "white"]


@dataclass
class LongRangeConfig(Checked):
    """The long-range synthetic task of memory models (``data.kind: long_range``;
    ``tubelet.data.synthetic.render_long_video``): a long video whose label is shown in its first clip only.
    Training walks the videos in the online order (``tubelet.data.online``); validation and test stream
    each held-out video clip by clip from an empty memory and score its last clip."""

    SECTION = "data.long_range"

    num_videos: int = bounded(100, POSITIVE)  # training videos (indices 0..N-1)
    val_videos: int = bounded(128, POSITIVE)  # held-out videos of validation (and of test: the same videos)
    clips: int = bounded(5, POSITIVE)  # clips per video; the cue is in clip 0, the label asked at the last
    frames: int = bounded(8, POSITIVE)  # frames per clip (= data.num_frames)
    size: int = bounded(32, POSITIVE)  # frame side (= data.crop_size)
    num_classes: int = bounded(4, POSITIVE)  # 2..8 cue colours; chance is 1 / num_classes
    seed: int = bounded(0, SEED)


@dataclass
class SyntheticConfig(Checked):
    """Procedural video set (``tubelet.data.synthetic``); classes differ only in the main object's motion."""

    SECTION = "data.synthetic"

    num_videos: int = bounded(512, POSITIVE)  # clips over all splits; clip i is a pure function of (seed, i)
    num_classes: int = bounded(8, SYNTHETIC_CLASSES)  # the first K of move_left/right/up/down, rotate_cw/ccw, grow, shrink
    classes: list[str] = field(default_factory=list)  # explicit motion names (overrides the first-K rule)
    frames: int = bounded(16, POSITIVE)  # rendered frames per clip
    size: int = bounded(64, POSITIVE)  # rendered frame side in pixels (data.crop_size crops are taken from it)
    fps: int = bounded(8, POSITIVE)
    seed: int = bounded(0, SEED)
    val_fraction: float = bounded(0.125, FRACTION)
    test_fraction: float = bounded(0.125, FRACTION)
    min_objects: int = bounded(1, POSITIVE)  # object 0 carries the label; the others are smaller distractors
    max_objects: int = bounded(3, POSITIVE)
    # main-object radius range, fraction of size (log-uniform, wrapped: so min < max)
    min_radius: float = bounded(0.12, UNIT_HALF_OPEN)
    max_radius: float = bounded(0.24, UNIT_HALF_OPEN)
    # [low, high] ranges drawn per object; the class gives the direction, so they are magnitudes
    speed: list[float] = bounded([0.04, 0.07], NONNEGATIVE, length=2, ordered=True)  # translation, fraction of size per frame
    spin: list[float] = bounded([12.0, 20.0], NONNEGATIVE, length=2, ordered=True)  # rotation, degrees per frame
    growth: list[float] = bounded([0.06, 0.09], NONNEGATIVE, length=2, ordered=True)  # log-radius change per frame
    pan_speed: float = bounded(0.03, NONNEGATIVE)  # background (camera) pan, fraction of size per frame, random direction
    noise: float = bounded(0.02, NONNEGATIVE)  # per-pixel sensor noise (std, on [0, 1] values)
    # The appearances objects are drawn from, uniformly (empty: all of them). Fewer of them make more
    # clips (and captions) share an appearance, so that only the motion tells them apart.
    shapes: list[SyntheticShape] = field(default_factory=list)
    textures: list[SyntheticTexture] = field(default_factory=list)
    colours: list[SyntheticColour] = field(default_factory=list)

    def _cross_rules(self):
        for key, hint in (("shapes", SyntheticShape), ("textures", SyntheticTexture), ("colours", SyntheticColour)):
            names, known = list(getattr(self, key)), typing.get_args(hint)
            unknown = [n for n in names if n not in known]
            if unknown:
                yield key, names, f"a list of {', '.join(known)} (unknown: {', '.join(map(str, unknown))})"
            elif len(set(names)) != len(names):
                yield key, names, "a list without repeats (a repeat would draw that one more often)"
        if self.min_objects > self.max_objects:
            yield "min_objects", self.min_objects, f"at most {{prefix}}max_objects ({self.max_objects})"
        if self.min_radius >= self.max_radius:
            yield "min_radius", self.min_radius, f"less than {{prefix}}max_radius ({self.max_radius:g})"
        if self.val_fraction + self.test_fraction >= 1:
            yield ("test_fraction", self.test_fraction,
                   f"less than 1 - {{prefix}}val_fraction ({1 - self.val_fraction:g}), to leave training clips")


@dataclass
class AugmentConfig(Checked):
    """Training-time transforms; all drawn once per clip."""

    SECTION = "data.augment"

    # short-side jitter [low, high] (one value: fixed), used when random_resized_crop is off
    short_side: list[int] = bounded([256, 320], POSITIVE, length=(1, 2), ordered=True)
    rrc_scale: list[float] = bounded([0.08, 1.0], UNIT_HALF_OPEN, length=2, ordered=True)  # crop area, fraction of the frame
    rrc_ratio: list[float] = bounded([0.75, 1.3333333], POSITIVE_REAL, length=2, ordered=True)  # crop aspect ratio
    random_resized_crop: bool = True
    hflip: float = bounded(0.5, FRACTION)  # probability
    color_jitter: float = bounded(0.0, NONNEGATIVE)  # strength s (brightness/contrast/saturation 0.8 s, hue 0.2 s)
    grayscale: float = bounded(0.0, FRACTION)  # probability
    blur: float = bounded(0.0, FRACTION)  # probability
    randaugment: str | None = None  # e.g. "rand-m7-n4-mstd0.5-inc1"
    random_erasing: float = bounded(0.0, FRACTION)  # probability
    mixup_alpha: float = bounded(0.0, NONNEGATIVE)  # Beta(alpha, alpha); 0 = off
    cutmix_alpha: float = bounded(0.0, NONNEGATIVE)
    label_smoothing: float = bounded(0.0, PROBABILITY_BELOW_ONE)  # 1 would make every target uniform


@dataclass
class RhoConfig(Checked):
    """Multi-clip views for self-supervised pre-training (rho-SSL, arXiv 2104.14558; data/rho.py).

    ``clips`` = rho > 0 replaces the train split by rho clips per video (``data.clip_max_span`` bounds their
    spread); rho = 1 gives two differently augmented views of one clip. The other fields add the
    asymmetric views of arXiv 2204.00613 (source = the branch with gradients, target = the key branch).
    """

    SECTION = "data.rho"

    clips: int = bounded(0, NONNEGATIVE)  # rho; 0 = off
    target_augment: AugmentConfig | None = None  # AsymAug: weak pipeline for the target views
    small_crops: int = bounded(0, NONNEGATIVE)  # MultiCrop: small source crops per clip
    small_size: int = bounded(96, POSITIVE)
    small_scale: list[float] = bounded([0.05, 0.14], UNIT_HALF_OPEN, length=2, ordered=True)
    mix_views: bool = False  # ScaleMix: a second source view per clip to mix with


@dataclass
class SOTDataConfig(Checked):
    """Single-object tracking pairs (``data.kind: sot``; ``data/datasets/tracking.py``). ``data.train`` is
    ``synthetic`` (the main object of each synthetic clip) or a GOT-10k/LaSOT/VOT sequence folder or a
    folder of them; ``data.crop_size`` is the search size (UTT: 352)."""

    SECTION = "data.sot"

    samples_per_epoch: int = bounded(1024, POSITIVE)
    search_factor: float = bounded(6.0, POSITIVE_REAL)  # crop side = ceil(sqrt(w h) * factor) (UTT: 6)
    centre_jitter: float = bounded(5.5, NONNEGATIVE)  # search centre shift, times the jittered size (UTT code)
    scale_jitter: float = bounded(0.5, NONNEGATIVE)  # log-normal size jitter of the search box (UTT code)
    max_gap: int = bounded(200, NONNEGATIVE)  # frames between reference and search (UTT: < 200)
    vot_convention: Literal["vot", "pysot"] = "vot"  # how VOT polygons become boxes


@dataclass
class MOTDataConfig(Checked):
    """Multi-object tracking pairs (``data.kind: mot``; with ``unified``, alternated with ``data.sot``'s
    pairs, even steps SOT, odd MOT). ``data.train`` is ``synthetic`` (every object of each synthetic clip)
    or a MOT Challenge sequence folder or a folder of them; whole frames are letterboxed to
    ``data.crop_size``. Under ``unified`` the MOT source is ``mot.train`` (None: ``synthetic``)."""

    SECTION = "data.mot"

    samples_per_epoch: int = bounded(1024, POSITIVE)
    max_objects: int = bounded(8, POSITIVE)  # targets per pair (padded; a random subset beyond it)
    max_gap: int = bounded(1, POSITIVE)  # frames from reference to search (tracking: the previous frame)
    proposal_sigma: float = bounded(0.1, NONNEGATIVE)  # Gaussian noise of the proposals, times the box size
    proposal_min_iou: float = bounded(0.1, FRACTION)  # paper 0.1, code 0.05
    train: str | None = None  # the MOT source of data.kind unified (data.train is then the SOT one)


@dataclass
class AVADataConfig(Checked):
    """Spatio-temporal action detection in the AVA format (``data.kind: ava``; ``data/datasets/ava.py``).

    ``data.train`` / ``data.val`` are the annotation CSVs (``ava_train_v2.2.csv``; or ``synthetic``: the
    synthetic set's objects, written as AVA CSVs under ``data.root``), ``data.label_map`` the pbtxt of the
    evaluated classes, ``data.root`` the folder the files are relative to; videos are
    ``root/videos/<video_id>.<ext>`` files or ``root/videos/<video_id>/`` frame folders (at
    ``data.frames_fps``). Training uses the ground-truth boxes; val/test the proposals of ``proposals`` with a
    score of at least ``proposal_threshold``."""

    SECTION = "data.ava"

    videos: str = "videos"  # folder of the videos (or frame folders), under data.root
    proposals: str | None = None  # person boxes with scores for val/test (e.g. ava_val_predicted_boxes.csv)
    proposal_threshold: float = bounded(0.8, FRACTION)  # SlowFast 0.8, MeMViT 0.9
    train_excluded: str | None = None  # ava_train_excluded_timestamps_v2.2.csv
    val_excluded: str | None = None  # ava_val_excluded_timestamps_v2.2.csv
    time_offset: float = bounded(0.0, REAL)  # the CSV's timestamp of video frame 0 (AVA's frame dumps: 900)
    fps: float | None = bounded(None, POSITIVE_REAL)  # None: the video's own rate
    timestamps: list[float] | None = None  # [lo, hi] keyframe seconds kept (AVA: [902, 1798]); None: all
    max_boxes: int = bounded(100, POSITIVE)  # boxes per keyframe, padded (MeMViT's box block: 100)
    ignore_unlisted: bool = False  # evaluation: ignore detections on frames the ground truth does not list (2020 rule)
    online: bool = False  # serve keyframes in the online order of memory models (MeMViT)

    def _cross_rules(self):
        if self.timestamps is not None and (len(self.timestamps) != 2 or self.timestamps[0] > self.timestamps[1]):
            yield "timestamps", self.timestamps, "two seconds [lo, hi] with lo <= hi"


@dataclass
class FrameBoxesConfig(Checked):
    """Single frames with their object boxes, a detector's images (``data.kind: frame_boxes``;
    ``data/datasets/frame_boxes.py``). ``data.train`` / ``data.val`` are ``synthetic`` (every object of the
    synthetic set's clips, one class) or a MOT Challenge sequence folder or a folder of them (pedestrians,
    one class); ``data.crop_size`` is the side images are resized to."""

    SECTION = "data.frame_boxes"

    max_boxes: int = bounded(20, POSITIVE)  # boxes per image, padded; a frame with more is an error
    frame_stride: int = bounded(1, POSITIVE)  # one sample every this many frames of a sequence
    min_size: float = bounded(2.0, NONNEGATIVE)  # boxes narrower or lower than this (frame pixels) are dropped
    # MOT Challenge sources: which rows of gt.txt are targets (mot_training_boxes)
    benchmark: Literal["MOT15", "MOT16", "MOT17", "MOT20"] = "MOT17"
    min_visibility: float = bounded(0.0, FRACTION)


@dataclass
class DataConfig(Checked):
    """Where clips come from and how they are sampled.

    ``kind`` is one of ``synthetic``, ``manifest``, ``folders``, ``frames``, ``images``, ``sot``, ``mot``,
    ``unified`` (SOT and MOT pairs alternated), ``long_range``, ``ava``, ``frame_boxes``.
    """

    SECTION = "data"

    kind: DataKind = "synthetic"
    train: str | None = None  # manifest path or root folder
    val: str | None = None
    root: str | None = None  # data root: manifest paths are resolved under it and may not escape it
    label_map: str | None = None
    # every clip carries a caption (video-text methods): a manifest row without one is an error naming it,
    # and the label column becomes optional
    captions: bool = False
    num_frames: int = bounded(16, POSITIVE)
    sampling_rate: int = bounded(4, POSITIVE)  # "T x tau": one frame every tau frames at a 30 fps reference
    target_fps: float = bounded(30.0, POSITIVE_REAL)
    crop_size: int = bounded(224, POSITIVE)
    test_short_side: int = bounded(256, POSITIVE)
    # per RGB channel, on [0, 1] pixel values
    mean: list[float] = bounded([0.45, 0.45, 0.45], REAL, length=3)
    std: list[float] = bounded([0.225, 0.225, 0.225], POSITIVE_REAL, length=3)
    repeated_sampling: int = bounded(1, POSITIVE)  # clips per decoded video (MAE-ST r)
    test_clips: int = bounded(1, POSITIVE)  # multi-view testing: temporal clips ...
    test_crops: Literal[1, 3] = 1  # ... x spatial crops (1: centre, 3: left/centre/right)
    batch_size: int = bounded(8, POSITIVE)  # videos per step per process
    num_workers: int = bounded(0, NONNEGATIVE)
    decoder: Literal["pyav", "torchcodec", "auto"] = "pyav"
    # FFmpeg threads per reader; 1 per DataLoader worker avoids oversubscription
    decode_threads: int = bounded(1, NONNEGATIVE)
    decode_crop: bool = True  # train: crop, resize and flip each frame while decoding (else on the RGB clip)
    device_transforms: bool = False  # train: uint8 crops out of the loader; the rest of the pipeline on the batch
    frames_fps: float = bounded(30.0, POSITIVE_REAL)  # frame rate of frame-folder videos (kind "frames")
    single_frame: bool = False  # each clip shows one of its frames repeated: the still-image baseline
    # train clips of one video lie within this many seconds (rho-SSL)
    clip_max_span: float | None = bounded(None, POSITIVE_REAL)
    max_failure_fraction: float = bounded(0.01, FRACTION)
    # A clip read whose frames FFmpeg concealed damage in: skip it like an unreadable file (counted
    # against max_failure_fraction), keep it (reported once), or fail (stop, naming the file).
    on_damaged: Literal["skip", "keep", "fail"] = "skip"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    rho: RhoConfig = field(default_factory=RhoConfig)
    sot: SOTDataConfig = field(default_factory=SOTDataConfig)
    mot: MOTDataConfig = field(default_factory=MOTDataConfig)
    long_range: LongRangeConfig = field(default_factory=LongRangeConfig)
    ava: AVADataConfig = field(default_factory=AVADataConfig)
    frame_boxes: FrameBoxesConfig = field(default_factory=FrameBoxesConfig)


@dataclass
class OptimConfig(Checked):
    SECTION = "optim"

    name: Literal["adamw", "sgd", "lars"] = "adamw"
    lr: float | None = bounded(None, POSITIVE_REAL)  # absolute LR; when None, base_lr * (videos per step) / 256
    base_lr: float = bounded(1e-3, POSITIVE_REAL)
    min_lr: float = bounded(1e-6, NONNEGATIVE)
    warmup_lr: float = bounded(1e-6, NONNEGATIVE)
    weight_decay: float = bounded(0.05, NONNEGATIVE)
    betas: list[float] = bounded([0.9, 0.999], PROBABILITY_BELOW_ONE, length=2)  # AdamW
    momentum: float = bounded(0.9, PROBABILITY_BELOW_ONE)  # SGD / LARS
    warmup_steps: int = bounded(0, NONNEGATIVE)
    schedule: Literal["cosine", "constant"] = "cosine"
    clip_grad: float | None = bounded(None, POSITIVE_REAL)
    layer_decay: float | None = bounded(None, UNIT_HALF_OPEN)  # LR x decay^(depth - layer); 1 = none
    ema_decay: float | None = bounded(None, UNIT_OPEN)


# trainer.devices: a count, or -1 for every device of the accelerator (a string such as "auto" or "0,1"
# is passed to Lightning as it is)
DEVICES = Bound(1, also=-1, note="every device the accelerator has")


@dataclass
class TrainerConfig(Checked):
    SECTION = "trainer"

    max_steps: int = bounded(100, MAX_STEPS)
    max_epochs: int | None = bounded(None, POSITIVE)
    precision: Precision = "32-true"
    accelerator: str = "auto"
    devices: int | str = bounded(1, DEVICES)
    num_nodes: int = bounded(1, POSITIVE)
    strategy: str = "auto"  # auto | ddp | fsdp
    accumulate_grad_batches: int = bounded(1, POSITIVE)
    log_every_n_steps: int = bounded(10, POSITIVE)
    val_check_interval: int | None = bounded(None, POSITIVE)  # steps; None = end of each epoch
    checkpoint_every_n_steps: int = bounded(50, POSITIVE)
    keep_last_k: int = bounded(3, POSITIVE)
    num_threads: int | None = bounded(None, POSITIVE)  # torch intra-op threads; None: cores minus data workers and busy cores
    sync_batchnorm: bool = False
    deterministic: bool = True
    collective_timeout_s: float = bounded(1800.0, POSITIVE_REAL)
    nonfinite: Literal["stop", "skip"] = "stop"
    max_skipped_steps: int = bounded(10, NONNEGATIVE)
    enable_progress_bar: bool = True

    def _cross_rules(self):
        if self.max_steps == -1 and self.max_epochs is None:
            # Lightning would then train without end
            yield "max_epochs", None, "set when {prefix}max_steps is -1 (no step limit)"


@dataclass
class Recipe(Checked):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=default_method_config)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = bounded(0, SEED)
    run_dir: str = "runs/default"
