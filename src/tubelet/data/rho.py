"""rho clips per video for self-supervised pre-training (rho-SSL, arXiv 2104.14558, Sec. 3), with the
per-branch views of the asymmetric Siamese designs (arXiv 2204.00613, Sec. 4).

From each video, ``rho`` clip windows are drawn with independent uniform starts
(:func:`tubelet.data.sampling.rho_clips`); with ``data.clip_max_span`` all of them lie inside one
window of that many seconds. ``rho = 1`` is the paper's "spatial-only" setting: two views of the *same*
clip that differ only by augmentation. Every view gets its own augmentation draw.

Sample (``V = max(rho, 2)`` views)::

    video   (V, C, T, S, S)       source views: the ``data.augment`` pipeline (strong for AsymAug)
    label   (V,)                  the video's label (monitoring only)
    index   int
    target  (V, C, T, S, S)       AsymAug: the same windows through ``data.rho.target_augment``
    small   (V, n, C, T, s, s)    MultiCrop: ``n`` small source crops of each window
    mix     (V, C, T, S, S)       ScaleMix: a second source draw of each window (mixed in the method)

Source: any clip dataset (:class:`RhoClipDataset` reuses :class:`~tubelet.data.datasets.ClipDataset`'s
decoding and rho windows and applies the per-branch pipelines here); on the synthetic set, give it
``synthetic.frames`` longer than one clip so that windows differ in time.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch.utils.data import Dataset

from tubelet.config.schema import DataConfig
from tubelet.data.sampling import sample_rng, torch_generator
from tubelet.data.transforms import build_transforms
from tubelet.errors import ConfigError

__all__ = ["RhoViews", "RhoClipDataset", "num_views"]


class RhoViews:
    """The per-branch pipelines: ``__call__(clips: list of uint8 (C,T,H,W), g) -> dict`` of the views.

    ``source``: ``data.augment``; ``target``: ``data.rho.target_augment`` (AsymAug) or None; ``small``:
    random-resized crops of ``rho.small_size`` at ``rho.small_scale`` (MultiCrop) or None; ``mix``: one
    more source draw per clip (ScaleMix).
    """

    def __init__(self, cfg: DataConfig) -> None:
        r = cfg.rho
        self.source = build_transforms(cfg, "train")
        self.target = None
        if r.target_augment is not None:
            self.target = build_transforms(dataclasses.replace(cfg, augment=r.target_augment), "train")
        self.small = None
        self.num_small = int(r.small_crops)
        if self.num_small > 0:
            aug = dataclasses.replace(cfg.augment, random_resized_crop=True, rrc_scale=list(r.small_scale))
            self.small = build_transforms(dataclasses.replace(cfg, crop_size=r.small_size, augment=aug), "train")
        self.mix = bool(r.mix_views)

    def __call__(self, clips: list[torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
        out = {"video": torch.stack([self.source(c, g) for c in clips])}
        if self.target is not None:
            out["target"] = torch.stack([self.target(c, g) for c in clips])
        if self.small is not None:
            out["small"] = torch.stack([torch.stack([self.small(c, g) for _ in range(self.num_small)]) for c in clips])
        if self.mix:
            out["mix"] = torch.stack([self.source(c, g) for c in clips])
        return out


def num_views(rho: int) -> int:
    """Views per video: rho, but two views of one clip when rho = 1."""
    if rho < 1:
        raise ConfigError(f"data.rho.clips must be >= 1 for multi-clip views, got {rho}")
    return max(rho, 2)


class RhoClipDataset(Dataset):
    """rho clips per video of a real-media clip dataset: ``base`` must be a ClipDataset with
    ``transform=None`` and ``repeated_sampling = rho`` (it decodes the union of the windows once)."""

    def __init__(self, base, cfg: DataConfig, transform: Callable | None = None) -> None:
        self.base = base
        self.cfg = cfg
        self.rho = int(cfg.rho.clips)
        self.views = num_views(self.rho)
        self.pipelines = transform or RhoViews(cfg)

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getitem__(self, index: int):
        from tubelet.errors import VideoError

        known = self.base.known_failure(index)
        if known is not None:  # a bad file is decoded once
            return known
        sample = self.base.samples[index]
        rng = sample_rng(self.base.seed, self.base.epoch, index)
        try:
            clips = self.base.load_clips(sample, rng)
        except VideoError as exc:
            return self.base._fail(index, sample, exc)
        if self.rho == 1:
            clips = clips * 2
        out = self.pipelines(clips, torch_generator(rng))
        out["label"] = torch.full((self.views,), sample.label, dtype=torch.int64)
        out["index"] = index
        return out
