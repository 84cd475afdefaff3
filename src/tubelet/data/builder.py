"""Build datasets and collate functions from the ``data`` section of a recipe."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from tubelet.config.schema import DataConfig, Recipe
from tubelet.errors import ConfigError

if TYPE_CHECKING:
    from tubelet.data.datasets import LabelMap, Sample

SPLITS = ("train", "val", "test")


def build_dataset(cfg: DataConfig, split: str, seed: int = 0, cache: dict | None = None) -> Dataset:
    """A map-style dataset of samples ``{"video": (C,T,H,W) float, "label": int, "index": int, ...}``.

    With ``repeated_sampling = r > 1`` on the train split, ``video`` is ``(r, C, T, H, W)`` and
    ``label`` has shape ``(r,)``. Val/test samples hold ``V = test_clips x test_crops`` views
    ``(V, C, T, H, W)``. ``seed`` seeds the per-sample draws (with ``set_epoch``). ``cache``: rendered
    synthetic clips to share between datasets over the same set (``SyntheticSource``).
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got '{split}'")
    if cfg.kind == "sot":
        return build_sot_dataset(cfg, split, seed=seed, cache=cache)
    if cfg.kind == "mot":
        return build_mot_dataset(cfg, split, seed=seed, cache=cache)
    if cfg.kind == "unified":
        from tubelet.data.alternating import AlternatingTasks

        clips = {} if cache is None else cache  # both tasks read the same rendered clips
        return AlternatingTasks({"sot": build_sot_dataset(cfg, split, seed=seed, cache=clips),
                                 "mot": build_mot_dataset(cfg, split, seed=seed, cache=clips)}, cfg.batch_size, seed=seed)
    if cfg.kind == "long_range":
        return build_long_range_dataset(cfg, split, seed=seed)
    if cfg.kind == "ava":
        return build_ava_dataset(cfg, split, seed=seed, cache=cache)
    if cfg.kind == "frame_boxes":
        return build_frame_box_dataset(cfg, split, seed=seed, cache=cache)
    if cfg.kind not in CLIP_KINDS:
        raise ConfigError(f"data.kind '{cfg.kind}' is not supported; use {', '.join(CLIP_KINDS)}")
    if cfg.device_transforms and cfg.rho.clips > 0:
        raise ConfigError(
            f"data.device_transforms applies to single-stream clip datasets; got data.rho.clips {cfg.rho.clips}"
        )
    if split == "train" and cfg.rho.clips > 0:  # rho clips per video for SSL pre-training (data/rho.py)
        return build_rho_dataset(cfg, split, seed=seed, cache=cache)
    return build_clip_dataset(cfg, split, seed=seed, cache=cache)


CLIP_KINDS = ("synthetic", "manifest", "folders", "frames", "images")


# held-out long videos start far past any training index, so that no split shares a video
LONG_RANGE_HELD_OUT = 1_000_000


def build_long_range_dataset(cfg: DataConfig, split: str, seed: int = 0) -> Dataset:
    """The long-range task of memory models (``data.long_range``). Train: the online order over
    ``num_videos`` long videos (``OnlineClips``, one stream per batch slot of one process: each slot walks
    one video's clips in time order). Val and test: the same ``val_videos`` held-out videos, each a
    :class:`~tubelet.data.synthetic.LongRangeStreams` sample of all its clips."""
    from tubelet.data.online import OnlineClips
    from tubelet.data.synthetic import LongRangeStreams, LongRangeVideos

    lr = cfg.long_range
    if lr.frames != cfg.num_frames or lr.size != cfg.crop_size:
        raise ConfigError(f"data.long_range renders {lr.frames}x{lr.size}x{lr.size} clips but data.num_frames is "
                          f"{cfg.num_frames} and data.crop_size {cfg.crop_size}: set them equal")
    if cfg.augment.mixup_alpha > 0 or cfg.augment.cutmix_alpha > 0:
        raise ConfigError("data.kind 'long_range' has no augmentation: set data.augment.mixup_alpha and "
                          "cutmix_alpha to 0")
    kw = dict(num_clips=lr.clips, clip_frames=lr.frames, size=lr.size, num_classes=lr.num_classes)
    if split == "train":
        data = OnlineClips(LongRangeVideos(lr.num_videos, seed=lr.seed, **kw), num_streams=cfg.batch_size, seed=seed)
        data.num_classes = lr.num_classes  # type: ignore[attr-defined]
        data.class_names = LongRangeStreams(data.source).class_names  # type: ignore[attr-defined]
        return data
    return LongRangeStreams(LongRangeVideos(lr.val_videos, seed=lr.seed, first=LONG_RANGE_HELD_OUT, **kw))


def build_sot_dataset(cfg: DataConfig, split: str, seed: int = 0, cache: dict | None = None) -> Dataset:
    """Single-object tracking pairs (``data.kind: sot``) of ``data.train`` / ``data.val``."""
    from tubelet.data.datasets.tracking import SOTPairDataset, sot_sequences

    src = (cfg.train if split == "train" else cfg.val) or "synthetic"
    seqs = sot_sequences(src, cfg.synthetic, split, cfg.sot.vot_convention, cache)
    s = cfg.sot
    return SOTPairDataset(seqs, cfg.crop_size, s.samples_per_epoch, s.search_factor, s.centre_jitter, s.scale_jitter,
                          s.max_gap, seed, cfg.mean, cfg.std)


def build_frame_box_dataset(cfg: DataConfig, split: str, seed: int = 0, cache: dict | None = None) -> Dataset:
    """Frames with their boxes (``data.kind: frame_boxes``): of the synthetic set's clips of ``split``, or of
    the MOT Challenge sequences ``data.train`` / ``data.val`` name (a sequence folder or a folder of them)."""
    from tubelet.data.datasets.frame_boxes import FrameBoxDataset, SyntheticFrames, mot_frame_sequences
    from tubelet.data.synthetic import SyntheticSource, split_indices

    src = (cfg.train if split == "train" else cfg.val) or "synthetic"
    fb = cfg.frame_boxes
    if src == "synthetic":
        if cfg.synthetic.max_objects > fb.max_boxes:
            raise ConfigError(f"data.synthetic.max_objects={cfg.synthetic.max_objects} exceeds "
                              f"data.frame_boxes.max_boxes={fb.max_boxes}")
        source = SyntheticSource(cfg.synthetic, cache)
        seqs = [SyntheticFrames(source, i) for i in split_indices(cfg.synthetic, split)]
        if not seqs:
            raise ConfigError(f"data.synthetic: the {split} split has no clips (num_videos={cfg.synthetic.num_videos})")
    else:
        path = src if not cfg.root or os.path.isabs(src) else os.path.join(cfg.root, src)
        seqs = mot_frame_sequences(path, fb.benchmark, fb.min_visibility)
    return FrameBoxDataset(seqs, cfg.crop_size, cfg.mean, cfg.std, fb.max_boxes, fb.frame_stride, fb.min_size,
                           cfg.augment.hflip if split == "train" else 0.0, seed)


def build_mot_dataset(cfg: DataConfig, split: str, seed: int = 0, cache: dict | None = None) -> Dataset:
    """Multi-object tracking pairs (``data.kind: mot``, or the MOT half of ``unified``)."""
    from tubelet.data.datasets.tracking import MOTPairDataset, mot_sequences

    if cfg.kind == "unified":
        src = cfg.mot.train or "synthetic"
    else:
        src = (cfg.train if split == "train" else cfg.val) or "synthetic"
    m = cfg.mot
    return MOTPairDataset(mot_sequences(src, cfg.synthetic, split, cache), cfg.crop_size, m.samples_per_epoch, m.max_objects,
                          m.max_gap, m.proposal_sigma, m.proposal_min_iou, seed, cfg.mean, cfg.std)


def _ava_file(cfg: DataConfig, key: str, value: str | None, required: bool = True):
    from pathlib import Path

    if value is None:
        if required:
            raise ConfigError(f"data.{key} must name a file for data.kind 'ava'")
        return None
    p = Path(value)
    if cfg.root and not p.is_absolute() and not p.exists():
        p = Path(cfg.root) / p
    if not p.is_file():
        raise ConfigError(f"data.{key}={value}: file not found" + (f" (also not under data.root={cfg.root})" if cfg.root else ""))
    return p


def ava_video_opener(cfg: DataConfig):
    """``video_id -> VideoReader`` over ``data.root/data.ava.videos``: ``<id>.<ext>`` files, else ``<id>/``
    frame folders at ``data.frames_fps``."""
    from pathlib import Path

    from tubelet.data.datasets.folders import VIDEO_EXTENSIONS
    from tubelet.data.datasets.frames import FrameFolderReader
    from tubelet.data.decoding import open_video
    from tubelet.errors import DataError

    folder = Path(cfg.root or ".") / cfg.ava.videos

    def open_(video_id: str):
        for ext in VIDEO_EXTENSIONS:
            p = folder / f"{video_id}{ext}"
            if p.is_file():
                return open_video(p, cfg.decoder if cfg.decoder != "auto" else "auto", cfg.decode_threads)
        if (folder / video_id).is_dir():
            return FrameFolderReader(folder / video_id, cfg.frames_fps)
        raise DataError(f"AVA video '{video_id}': neither {folder / video_id}.<{'|'.join(e[1:] for e in VIDEO_EXTENSIONS)}> "
                        f"nor a frame folder {folder / video_id}/ exists (data.root/data.ava.videos)")

    return open_


def build_ava_dataset(cfg: DataConfig, split: str, seed: int = 0, cache: dict | None = None) -> Dataset:
    """AVA keyframes (``data.kind: ava``, ``data/datasets/ava.py``): the ground-truth boxes of ``data.train``
    for training; for val/test the proposals of ``data.ava.proposals`` above ``proposal_threshold``, scored
    against ``data.val`` (held as ``groundtruth``, ``excluded`` and ``label_map`` on the dataset). With
    ``data.train: synthetic`` the synthetic set's AVA files are written under ``data.root`` first
    (``data/synthetic_ava.py``) and read back like any AVA files."""
    from tubelet.data.datasets.ava import AVADataset, group_keyframes, read_ava_csv, read_excluded, read_label_map

    a = cfg.ava
    flip = None
    if cfg.train == "synthetic":
        from tubelet.data.synthetic_ava import synthetic_ava_flip, synthetic_opener, write_synthetic_ava

        if not cfg.root:
            raise ConfigError("data.kind 'ava' with data.train 'synthetic' writes its AVA files under data.root: set it")
        if cfg.crop_size > cfg.synthetic.size:
            raise ConfigError(f"data.crop_size={cfg.crop_size} exceeds data.synthetic.size={cfg.synthetic.size}")
        opener = synthetic_opener(cfg, cache)
        files = write_synthetic_ava(cfg.root, cfg, opener)
        ann = files[split]
        proposals = files.get(f"proposals_{split}")
        excluded_file = files[f"excluded_{split}"]
        lm_file = files["label_map"]
        fps, offset = float(cfg.synthetic.fps), 0.0
        flip = synthetic_ava_flip(cfg)
    else:
        ann = _ava_file(cfg, "train" if split == "train" else "val", cfg.train if split == "train" else cfg.val)
        proposals = None if split == "train" else _ava_file(cfg, "ava.proposals", a.proposals)
        excluded_file = _ava_file(cfg, f"ava.{'train' if split == 'train' else 'val'}_excluded",
                                  a.train_excluded if split == "train" else a.val_excluded, required=False)
        lm_file = _ava_file(cfg, "label_map", cfg.label_map)
        opener, fps, offset = ava_video_opener(cfg), a.fps, a.time_offset
    label_map = read_label_map(lm_file)
    num_classes = max(label_map)
    table = read_ava_csv(ann, "annotations")
    excluded = read_excluded(excluded_file)
    if split == "train":
        keyframes = group_keyframes(table, num_classes, excluded, a.timestamps)
    else:
        group_keyframes(table, num_classes)  # action ids beyond the label map: named now
        keyframes = group_keyframes(read_ava_csv(proposals, "detections"), num_classes, excluded, a.timestamps,
                                    proposals=True, min_score=a.proposal_threshold)
    aug = cfg.augment
    names = [label_map.get(k + 1, f"action {k + 1}") for k in range(num_classes)]
    ds = AVADataset(keyframes, opener, split, num_classes, cfg.num_frames, cfg.sampling_rate, cfg.target_fps,
                    cfg.crop_size, aug.short_side, aug.hflip, cfg.mean, cfg.std, offset, fps, a.max_boxes, seed,
                    class_names=names, flip_classes=flip)
    if split != "train" and a.timestamps is not None:
        lo, hi = a.timestamps
        table = table.select((table.time >= lo) & (table.time <= hi))
    ds.groundtruth, ds.excluded, ds.label_map = table, excluded, label_map
    if a.online and split == "train":
        # memory models: each batch slot walks one video's keyframes in time order (data/online.py); val and
        # test stay keyframe datasets, which the detection evaluator streams in the same order
        from tubelet.data.datasets.ava import AVAKeyframeStreams
        from tubelet.data.online import OnlineClips

        online = OnlineClips(AVAKeyframeStreams(ds), num_streams=cfg.batch_size, seed=seed)
        online.num_classes, online.class_names = ds.num_classes, ds.class_names  # type: ignore[attr-defined]
        online.keyframes = ds.keyframes  # type: ignore[attr-defined]  # the class prior of the evaluator
        return online
    return ds


def build_eval_views(cfg: DataConfig, videos: str = "train", seed: int = 0) -> Dataset:
    """Deterministic single-clip views (the val split's pipeline: centre window and crop) of the videos of
    split ``videos``, e.g. the memory bank of a kNN monitor over the training videos."""
    cfg = dataclasses.replace(cfg, rho=dataclasses.replace(cfg.rho, clips=0), test_clips=1, test_crops=1)
    return build_clip_dataset(cfg, "val", seed=seed, videos=videos)


def _source(cfg: DataConfig, split: str) -> str:
    src = cfg.train if split == "train" else cfg.val
    if not src:
        key = "train" if split == "train" else "val"
        raise ConfigError(f"data.{key} must name a manifest or folder for data.kind '{cfg.kind}' (split '{split}')")
    return src


def build_clip_dataset(cfg: DataConfig, split: str, seed: int = 0, cache: dict | None = None,
                       videos: str | None = None):
    """The clip dataset of every kind: ``synthetic`` (rendered clips, ``data/synthetic.py``),
    ``manifest`` (CSV/JSONL of videos), ``folders`` (root/class/video), ``frames`` (frame folders,
    from a manifest of folders or root/class/video_folder/) and ``images`` (root/class/image or a
    manifest of images). Paths are resolved under ``data.root``. ``videos``: the split whose videos
    are served through ``split``'s pipeline (default: ``split``'s own)."""
    from tubelet.data.datasets import ClipDataset, FrameFolderReader, ImageDataset
    from tubelet.data.transforms import build_transforms

    from tubelet.data.decoding import BACKENDS, torchcodec_available

    if cfg.decoder not in BACKENDS:
        raise ConfigError(f"data.decoder must be one of {BACKENDS}, got '{cfg.decoder}'")
    if cfg.decoder == "torchcodec" and not torchcodec_available():
        raise ConfigError(
            "data.decoder 'torchcodec' needs torchcodec and FFmpeg's shared libraries; use 'pyav' or 'auto'"
        )
    if int(cfg.test_crops) not in (1, 3):
        raise ConfigError(f"data.test_crops must be 1 or 3, got {cfg.test_crops}")
    transform = build_transforms(cfg, "train" if split == "train" else "test")
    kw = dict(transform=transform, seed=seed)
    if cfg.kind == "synthetic":
        from tubelet.data.synthetic import synthetic_split

        syn = synthetic_split(cfg, videos or split, cache)
        return ClipDataset(syn.samples, cfg, split, opener=syn.opener, num_classes=len(syn.class_names),
                           class_names=syn.class_names, flip_labels=syn.flip_labels, flip_caption=syn.flip_caption,
                           **kw)
    if videos is not None:  # split's pipeline over the files of split videos
        own = "train" if split == "train" else "val"
        cfg = dataclasses.replace(cfg, **{own: cfg.train if videos == "train" else cfg.val})
    src = _source(cfg, split)
    _refuse_non_manifest(cfg, split, src)
    samples, lmap = source_samples(cfg, src)
    names = lmap.names if lmap is not None else None
    num_classes = len(names) if names is not None else max(s.label for s in samples) + 1
    kw.update(num_classes=num_classes, class_names=names)
    if cfg.kind == "images":
        return ImageDataset(samples, cfg, split, **kw)
    if cfg.kind == "frames":
        from functools import partial

        return ClipDataset(samples, cfg, split, opener=partial(FrameFolderReader, fps=cfg.frames_fps, root=cfg.root),
                           **kw)
    return ClipDataset(samples, cfg, split, **kw)


def _refuse_non_manifest(cfg: DataConfig, split: str, src: str) -> None:
    """A video (or other binary file) given where a manifest is expected, named by its recipe key."""
    from pathlib import Path

    from tubelet.data.datasets.manifest import not_a_manifest

    path = Path(src)
    if cfg.root and not path.is_absolute() and not path.exists():
        path = Path(cfg.root) / path
    reason = not_a_manifest(path) if path.is_file() else None
    if reason is not None:
        raise ConfigError(f"data.{'train' if split == 'train' else 'val'}={src} {reason}")


def source_samples(
    cfg: DataConfig, src: str, row_errors: list[tuple[str, str]] | None = None
) -> tuple[list[Sample], LabelMap | None]:
    """The samples and label map (``None`` for integer labels) of ``src``, a manifest file or a
    class-folder root of ``cfg.kind`` (relative to the working directory, else to ``data.root``).

    Files are manifests of any format ``read_manifest`` reads; folders are ``root/<class>/<entry>``
    with entries that are videos (``folders``), frame folders (``frames``) or images (``images``).
    With ``data.root`` set, no entry may lie outside it. A bad row or entry raises
    :class:`~tubelet.errors.DataError`; with ``row_errors`` given it is appended as
    ``(where, message)`` and left out instead (``tubelet data check``).
    """
    from pathlib import Path

    from tubelet.data.datasets import check_under_root, read_manifest, scan_class_folders
    from tubelet.data.datasets.folders import is_image_file, is_video_file
    from tubelet.errors import DataError

    path = Path(src)
    if cfg.root and not path.is_absolute() and not path.exists():
        path = Path(cfg.root) / path
    if cfg.kind == "manifest" or path.is_file():
        return read_manifest(path, root=cfg.root, label_map=cfg.label_map, row_errors=row_errors,
                             captions=bool(getattr(cfg, "captions", False)))
    accept = {
        "folders": is_video_file,
        "frames": lambda p: p.is_dir(),
        "images": is_image_file,
    }
    if cfg.kind not in accept:
        raise ConfigError(f"data.kind '{cfg.kind}' has no class folders; use one of {', '.join(accept)}")
    samples, lmap = scan_class_folders(path, accept[cfg.kind], cfg.label_map)
    if not cfg.root:
        return samples, lmap
    kept = []
    for s in samples:  # an entry linked out of data.root is refused like a manifest row
        try:
            check_under_root(s.path, cfg.root, s.source)
            kept.append(s)
        except DataError as exc:
            if row_errors is None:
                raise
            row_errors.append((s.source, str(exc)))
    return kept, lmap


def dataset_samples(dataset: Dataset | None) -> list[Sample] | None:
    """The :class:`Sample` rows behind a dataset (a wrapper's, such as the rho views', from its ``base``;
    a ``Subset``'s, those it selects), or None for a dataset that has none (one built by hand)."""
    from torch.utils.data import Subset

    if isinstance(dataset, Subset):
        inner = dataset_samples(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    for ds in (dataset, getattr(dataset, "base", None)):
        samples = getattr(ds, "samples", None)
        if isinstance(samples, list):
            return samples
    return None


def check_dataset_labels(dataset: Dataset | None, num_classes: int, what: str) -> None:
    """:class:`~tubelet.errors.DataError` naming the first sample (its manifest line, class folder or
    synthetic index) whose label is outside ``[0, num_classes)``; ``what`` says where the count comes from."""
    from tubelet.data.datasets.labels import check_labels

    samples = dataset_samples(dataset)
    if samples:
        check_labels(samples, int(num_classes), what)


def check_run_labels(recipe: Recipe, dataset: Dataset | None, train: Dataset | None = None) -> None:
    """For a method that trains on labels (``MethodConfig.TRAINS_ON_LABELS``): every label of ``dataset``
    must be a class of the model's head, checked when the dataset is built, before any step runs (else an
    ``IndexError`` inside the loss, or a silently wrong one-hot, many steps in). A dataset with class
    names must have ``model.num_classes`` of them; ``train``: the training set, whose class names a
    validation set must share (each split's names are sorted on their own without ``data.label_map``,
    so one class more or less would shift every id after it)."""
    if dataset is None or not getattr(recipe.method, "TRAINS_ON_LABELS", False):
        return
    k = recipe.model.num_classes
    split = "training" if train is None else "validation"
    names = _class_names(dataset)
    if names and len(names) != k:
        raise ConfigError(f"model.num_classes={k} but the {split} set has {len(names)} classes")
    theirs = _class_names(train) if train is not None else None
    if names and theirs and names != theirs:
        i = next(i for i, (a, b) in enumerate(zip(names, theirs)) if a != b)
        raise ConfigError(f"the validation set's class {i} is '{names[i]}' but the training set's is '{theirs[i]}': "
                          "set data.label_map so that both splits share one label map")
    check_dataset_labels(dataset, k, f"model.num_classes={k}")


def _class_names(dataset: Dataset | None) -> list[str] | None:
    for ds in (dataset, getattr(dataset, "base", None), getattr(dataset, "dataset", None)):
        names = getattr(ds, "class_names", None)
        if names:
            return list(names)
    return None


def build_rho_dataset(cfg: DataConfig, split: str = "train", seed: int = 0, cache: dict | None = None) -> Dataset:
    """The multi-clip training set for ``cfg`` (``cfg.rho.clips >= 1``)."""
    from tubelet.data.rho import RhoClipDataset

    # ClipDataset draws the rho windows (inside clip_max_span when set) and decodes their union once.
    rho_cfg = dataclasses.replace(cfg, repeated_sampling=max(1, int(cfg.rho.clips)))
    base = build_clip_dataset(rho_cfg, split, seed=seed, cache=cache)
    base.transform = None
    return RhoClipDataset(base, cfg)


def build_collate(cfg: DataConfig, split: str, num_classes: int | None = None, seed: int = 0):
    """The batch collate: drops samples that failed to load (reported under ``"bad_samples"``) and,
    on the train split with ``augment.mixup_alpha`` or ``cutmix_alpha`` > 0, applies Mixup/CutMix
    with label smoothing (soft ``(B, K)`` labels). ``num_classes`` (the model's) defaults to the
    label map's size."""
    from tubelet.data.mixing import ClipCollate, Mixup

    aug = cfg.augment
    mix = None
    # with data.device_transforms, Mixup runs on the device after the clip transforms (DeviceTransforms)
    if split == "train" and (aug.mixup_alpha > 0 or aug.cutmix_alpha > 0) and not cfg.device_transforms:
        k = num_classes
        if k is None and cfg.label_map:
            from tubelet.data.datasets import load_label_map

            k = len(load_label_map(cfg.label_map))
        if k is None:
            raise ConfigError("mixup/cutmix need the number of classes: pass num_classes or set data.label_map")
        mix = Mixup(k, aug.mixup_alpha, aug.cutmix_alpha, aug.label_smoothing)
    return ClipCollate(mix, seed=seed)
