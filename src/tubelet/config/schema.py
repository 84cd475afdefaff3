"""The typed recipe schema.

A recipe is a YAML file with five sections (``model``, ``data``, ``method``, ``optim``, ``trainer``)
plus ``seed`` and ``run_dir``. Every section is a dataclass; ``config.loader`` validates YAML against
them and rejects unknown keys, values outside a ``Literal`` and numbers outside a field's
:class:`Bound` (a batch of -4 videos fails at load, naming the key, not deep inside a DataLoader). This
file holds the shared sections only: the ``method`` section is polymorphic, its ``name`` picks the
dataclass that the method declared beside itself and registered (``config.registry``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tubelet.config.registry import MethodConfig, default_method_config


DataKind = Literal["synthetic", "manifest", "folders", "frames", "images"]
# Lightning's precision names that tubelet trains and tests with; the 16-bit float ones need a GPU.
Precision = Literal["32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true"]


@dataclass(frozen=True)
class Bound:
    """The range a number field accepts, checked by the loader (``config.loader``) whatever the source.

    ``low`` and ``high`` are inclusive unless ``open_low`` / ``open_high``; ``also`` is one value outside the
    range that still has a meaning (``trainer.max_steps=-1``: no step limit), which ``note`` explains.
    """

    low: float
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    also: float | None = None
    note: str = ""

    def accepts(self, value: float) -> bool:
        if self.also is not None and value == self.also:
            return True
        above = value > self.low if self.open_low else value >= self.low
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.high is not None:
            text = f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        elif self.open_low:
            text = f"greater than {self.low:g}"
        else:
            text = f"at least {self.low:g}"
        return text + (f" (or {self.also:g}: {self.note})" if self.also is not None else "")


POSITIVE = Bound(1)  # sizes and counts: at least one
NONNEGATIVE = Bound(0)
POSITIVE_REAL = Bound(0, open_low=True)
FRACTION = Bound(0, 1)
PROBABILITY_BELOW_ONE = Bound(0, 1, open_high=True)
MAX_STEPS = Bound(1, also=-1, note="no step limit, trainer.max_epochs ends training")


def bounded(default: Any, bound: Bound) -> Any:
    """A dataclass field with ``default`` whose values the loader checks against ``bound``."""
    return field(default=default, metadata={"bound": bound})


@dataclass
class ModelConfig:
    """Which backbone to build (a name from ``tubelet.list_models()``) and how."""

    name: str = "vit_tiny"
    num_classes: int = bounded(400, NONNEGATIVE)  # 0: no classification head (pre-training)
    num_frames: int = bounded(16, POSITIVE)
    img_size: int = bounded(224, POSITIVE)
    drop_path_rate: float = bounded(0.0, PROBABILITY_BELOW_ONE)
    # Variant overrides passed to ``create_model`` (validated against the variant's dataclass).
    overrides: dict[str, Any] = field(default_factory=dict)
    # Weights to load before training (safetensors or a tubelet checkpoint); never unpickles code.
    checkpoint: str | None = None


@dataclass
class SyntheticConfig:
    """Procedural video set (``tubelet.data.synthetic``); classes differ only in the main object's motion."""

    num_videos: int = bounded(512, POSITIVE)  # clips over all splits; clip i is a pure function of (seed, i)
    num_classes: int = 8  # the first K of move_left/right/up/down, rotate_cw/ccw, grow, shrink
    classes: list[str] = field(default_factory=list)  # explicit motion names (overrides the first-K rule)
    frames: int = bounded(16, POSITIVE)  # rendered frames per clip
    size: int = bounded(64, POSITIVE)  # rendered frame side in pixels (data.crop_size crops are taken from it)
    fps: int = bounded(8, POSITIVE)
    seed: int = 0
    val_fraction: float = bounded(0.125, FRACTION)
    test_fraction: float = bounded(0.125, FRACTION)
    min_objects: int = bounded(1, POSITIVE)  # object 0 carries the label; the others are smaller distractors
    max_objects: int = bounded(3, POSITIVE)
    min_radius: float = 0.12  # main-object radius range, fraction of size (log-uniform, wrapped)
    max_radius: float = 0.24
    speed: list[float] = field(default_factory=lambda: [0.04, 0.07])  # translation, fraction of size per frame
    spin: list[float] = field(default_factory=lambda: [12.0, 20.0])  # rotation, degrees per frame
    growth: list[float] = field(default_factory=lambda: [0.06, 0.09])  # log-radius change per frame
    pan_speed: float = 0.03  # background (camera) pan, fraction of size per frame, random direction
    noise: float = bounded(0.02, NONNEGATIVE)  # per-pixel sensor noise (std, on [0, 1] values)


@dataclass
class AugmentConfig:
    """Training-time transforms; all drawn once per clip."""

    short_side: list[int] = field(default_factory=lambda: [256, 320])
    rrc_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    rrc_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333])
    random_resized_crop: bool = True
    hflip: float = 0.5
    color_jitter: float = 0.0
    grayscale: float = 0.0
    blur: float = 0.0
    randaugment: str | None = None  # e.g. "rand-m7-n4-mstd0.5-inc1"
    random_erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    label_smoothing: float = 0.0


@dataclass
class RhoConfig:
    """Multi-clip views for self-supervised pre-training (rho-SSL, arXiv 2104.14558; data/rho.py).

    ``clips`` = rho > 0 replaces the train split by rho clips per video (``data.clip_max_span`` bounds their
    spread); rho = 1 gives two differently augmented views of one clip. The other fields add the
    asymmetric views of arXiv 2204.00613 (source = the branch with gradients, target = the key branch).
    """

    clips: int = bounded(0, NONNEGATIVE)  # rho; 0 = off
    target_augment: AugmentConfig | None = None  # AsymAug: weak pipeline for the target views
    small_crops: int = bounded(0, NONNEGATIVE)  # MultiCrop: small source crops per clip
    small_size: int = bounded(96, POSITIVE)
    small_scale: list[float] = field(default_factory=lambda: [0.05, 0.14])
    mix_views: bool = False  # ScaleMix: a second source view per clip to mix with


@dataclass
class DataConfig:
    """Where clips come from and how they are sampled.

    ``kind`` is one of ``synthetic``, ``manifest``, ``folders``, ``frames``, ``images``.
    """

    kind: DataKind = "synthetic"
    train: str | None = None  # manifest path or root folder
    val: str | None = None
    root: str | None = None  # data root: manifest paths are resolved under it and may not escape it
    label_map: str | None = None
    num_frames: int = bounded(16, POSITIVE)
    sampling_rate: int = bounded(4, POSITIVE)  # "T x tau": one frame every tau frames at a 30 fps reference
    target_fps: float = bounded(30.0, POSITIVE_REAL)
    crop_size: int = bounded(224, POSITIVE)
    test_short_side: int = bounded(256, POSITIVE)
    mean: list[float] = field(default_factory=lambda: [0.45, 0.45, 0.45])
    std: list[float] = field(default_factory=lambda: [0.225, 0.225, 0.225])
    repeated_sampling: int = bounded(1, POSITIVE)  # clips per decoded video (MAE-ST r)
    test_clips: int = bounded(1, POSITIVE)  # multi-view testing: temporal clips ...
    test_crops: int = bounded(1, POSITIVE)  # ... x spatial crops
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


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd", "lars"] = "adamw"
    lr: float | None = bounded(None, POSITIVE_REAL)  # absolute LR; when None, base_lr * (videos per step) / 256
    base_lr: float = bounded(1e-3, POSITIVE_REAL)
    min_lr: float = bounded(1e-6, NONNEGATIVE)
    warmup_lr: float = bounded(1e-6, NONNEGATIVE)
    weight_decay: float = bounded(0.05, NONNEGATIVE)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9  # SGD / LARS
    warmup_steps: int = bounded(0, NONNEGATIVE)
    schedule: Literal["cosine", "constant"] = "cosine"
    clip_grad: float | None = bounded(None, POSITIVE_REAL)
    layer_decay: float | None = None
    ema_decay: float | None = None


@dataclass
class TrainerConfig:
    max_steps: int = bounded(100, MAX_STEPS)
    max_epochs: int | None = bounded(None, POSITIVE)
    precision: Precision = "32-true"
    accelerator: str = "auto"
    devices: int | str = 1
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


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=default_method_config)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    run_dir: str = "runs/default"
