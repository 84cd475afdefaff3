"""The typed recipe schema.

A recipe is a YAML file with five sections (``model``, ``data``, ``method``, ``optim``, ``trainer``)
plus ``seed`` and ``run_dir``. Every section is a dataclass; ``config.loader`` validates YAML against
them and rejects unknown keys and values outside a ``Literal``. This file holds the shared sections
only: the ``method`` section is polymorphic, its ``name`` picks the dataclass that the method declared
beside itself and registered (``config.registry``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tubelet.config.registry import MethodConfig, default_method_config


DataKind = Literal["synthetic", "manifest", "folders", "frames", "images"]


@dataclass
class ModelConfig:
    """Which backbone to build (a name from ``tubelet.list_models()``) and how."""

    name: str = "vit_tiny"
    num_classes: int = 400
    num_frames: int = 16
    img_size: int = 224
    drop_path_rate: float = 0.0
    # Variant overrides passed to ``create_model`` (validated against the variant's dataclass).
    overrides: dict[str, Any] = field(default_factory=dict)
    # Weights to load before training (safetensors or a tubelet checkpoint); never unpickles code.
    checkpoint: str | None = None


@dataclass
class SyntheticConfig:
    """Procedural video set (``tubelet.data.synthetic``); classes differ only in the main object's motion."""

    num_videos: int = 512  # clips over all splits; clip i is a pure function of (seed, i)
    num_classes: int = 8  # the first K of move_left/right/up/down, rotate_cw/ccw, grow, shrink
    classes: list[str] = field(default_factory=list)  # explicit motion names (overrides the first-K rule)
    frames: int = 16  # rendered frames per clip
    size: int = 64  # rendered frame side in pixels (crops of data.crop_size are taken from it)
    fps: int = 8
    seed: int = 0
    val_fraction: float = 0.125
    test_fraction: float = 0.125
    min_objects: int = 1  # object 0 carries the label; the others are smaller distractors
    max_objects: int = 3
    min_radius: float = 0.12  # main-object radius range, fraction of size (log-uniform, wrapped)
    max_radius: float = 0.24
    speed: list[float] = field(default_factory=lambda: [0.04, 0.07])  # translation, fraction of size per frame
    spin: list[float] = field(default_factory=lambda: [12.0, 20.0])  # rotation, degrees per frame
    growth: list[float] = field(default_factory=lambda: [0.06, 0.09])  # log-radius change per frame
    pan_speed: float = 0.03  # background (camera) pan, fraction of size per frame, random direction
    noise: float = 0.02  # per-pixel sensor noise (std, on [0, 1] values)


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

    clips: int = 0  # rho; 0 = off
    target_augment: AugmentConfig | None = None  # AsymAug: weak pipeline for the target views
    small_crops: int = 0  # MultiCrop: small source crops per clip
    small_size: int = 96
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
    num_frames: int = 16
    sampling_rate: int = 4  # "T x tau": one frame every tau frames at a 30 fps reference
    target_fps: float = 30.0
    crop_size: int = 224
    test_short_side: int = 256
    mean: list[float] = field(default_factory=lambda: [0.45, 0.45, 0.45])
    std: list[float] = field(default_factory=lambda: [0.225, 0.225, 0.225])
    repeated_sampling: int = 1  # clips per decoded video (MAE-ST r)
    test_clips: int = 1  # multi-view testing: temporal clips ...
    test_crops: int = 1  # ... x spatial crops
    batch_size: int = 8  # videos per step per process
    num_workers: int = 0
    decoder: Literal["pyav", "torchcodec", "auto"] = "pyav"
    decode_threads: int = 1  # FFmpeg threads per reader; 1 per DataLoader worker avoids oversubscription
    decode_crop: bool = True  # train: crop, resize and flip each frame while decoding (else on the RGB clip)
    device_transforms: bool = False  # train: uint8 crops out of the loader; the rest of the pipeline on the batch
    frames_fps: float = 30.0  # frame rate of frame-folder videos (kind "frames")
    single_frame: bool = False  # each clip shows one of its frames repeated: the still-image baseline
    clip_max_span: float | None = None  # train clips of one video lie within this many seconds (rho-SSL)
    max_failure_fraction: float = 0.01
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    rho: RhoConfig = field(default_factory=RhoConfig)


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd", "lars"] = "adamw"
    lr: float | None = None  # absolute LR; when None, base_lr * (videos per step) / 256
    base_lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9  # SGD / LARS
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    clip_grad: float | None = None
    layer_decay: float | None = None
    ema_decay: float | None = None


@dataclass
class TrainerConfig:
    max_steps: int = 100
    max_epochs: int | None = None
    precision: str = "32-true"  # "32-true" | "bf16-mixed"
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    val_check_interval: int | None = None  # steps; None = end of each epoch
    checkpoint_every_n_steps: int = 50
    keep_last_k: int = 3
    num_threads: int | None = None  # torch intra-op threads; None = cores minus data workers
    sync_batchnorm: bool = False
    deterministic: bool = True
    collective_timeout_s: float = 1800.0
    nonfinite: Literal["stop", "skip"] = "stop"
    max_skipped_steps: int = 10
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
