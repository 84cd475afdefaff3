"""The pipelines a recipe asks for (per split) and the part that runs batched on the training device."""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from tubelet.data.transforms.base import ClipTransform, Compose
from tubelet.data.transforms.color import ColorJitter, GaussianBlur, RandomGrayscale
from tubelet.data.transforms.erasing import RandomErasing
from tubelet.data.transforms.geometry import (
    CenterCrop,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ScaleJitterCrop,
    ShortSideScale,
    ThreeCrop,
)
from tubelet.data.transforms.randaugment import RandAugment

# ----------------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------------


class DeviceTransforms:
    """The training pipeline after the crop and flip, run on the batch on the training device
    (``data.device_transforms``): per clip the rest of :func:`build_transforms`' train pipeline
    (colour ops, RandAugment, :class:`Normalize`, :class:`RandomErasing`), then Mixup/CutMix on the
    batch, in the order the loader applies them.

    The loader then hands over the uint8 crops: a quarter of the bytes to copy to the device, and
    the passes over float pixels leave the loading processes (as timm's prefetcher does for
    normalising and erasing, and DALI for whole pipelines). Clip ``k`` of sample ``index`` in epoch
    ``epoch`` draws from ``sample_rng(seed, epoch, index, stream=1 + k)``, and Mixup from the seed and
    the batch's indices as the collate does, so nothing depends on how samples were batched and a
    resumed run draws the same.

    ``batch["video"]``: ``(B, C, T, H, W)`` or ``(B, r, C, T, H, W)`` uint8; ``batch["index"]``: ``(B,)``.
    """

    def __init__(self, transform: Compose, mixup=None, seed: int = 0) -> None:
        self.transform = transform
        self.mixup = mixup
        self.seed = int(seed)

    def __call__(self, batch: dict, epoch: int = 0) -> dict:
        from tubelet.data.mixing import mix_batch
        from tubelet.data.sampling import sample_rng, torch_generator

        video, index = batch["video"], batch.get("index")
        if index is None:
            raise ValueError("transforms on the device need the batch's sample indices (batch['index'])")
        idx = [int(i) for i in (index.tolist() if torch.is_tensor(index) else index)]
        clips = video.reshape(-1, *video.shape[-4:])  # (B * r, C, T, H, W)
        per = clips.shape[0] // len(idx)
        out = []
        for n in range(clips.shape[0]):  # per clip, as in the loader: B * r clips, not a loop over pixels
            g = torch_generator(sample_rng(self.seed, epoch, idx[n // per], stream=1 + n % per))
            out.append(self.transform(clips[n], g))
        batch["video"] = torch.stack(out).view(*video.shape[:-4], *out[0].shape)
        if self.mixup is not None:
            mix_batch(self.mixup, batch, self.seed)
        return batch

    def __repr__(self) -> str:
        return f"DeviceTransforms({self.transform!r}, mixup={self.mixup!r})"


def build_device_transform(data_cfg, seed: int = 0, num_classes: int | None = None) -> DeviceTransforms | None:
    """The batch transform of ``data.device_transforms`` (None when the loader runs the whole pipeline).
    ``num_classes`` sizes Mixup's soft labels when the recipe mixes."""
    if not getattr(data_cfg, "device_transforms", False):
        return None
    full = build_transforms(dataclasses.replace(data_cfg, device_transforms=False), "train")
    rest = Compose(full.transforms[full.decode_crop_steps or 1 :], retain_memory=False)
    mixup = None
    aug = data_cfg.augment
    if aug.mixup_alpha > 0 or aug.cutmix_alpha > 0:
        from tubelet.data.mixing import Mixup

        if num_classes is None:
            raise ValueError("data.device_transforms with mixup/cutmix needs the number of classes")
        mixup = Mixup(num_classes, aug.mixup_alpha, aug.cutmix_alpha, aug.label_smoothing)
    return DeviceTransforms(rest, mixup, seed)


def build_transforms(data_cfg, split: str) -> Compose:
    """The clip pipeline of a split, from ``DataConfig`` (``tubelet.config.schema``).

    train: random resized crop (or short-side jitter + random crop, fused) -> flip -> [colour jitter,
    grayscale, blur] -> [RandAugment] -> normalise -> [cube erasing]. Output ``(C, T, S, S)`` float;
    with ``data.device_transforms`` it stops after the crop and flip with uint8 clips, and
    :func:`build_device_transform` does the rest on the batch.

    val/test: with ``test_crops == 3`` short side to ``crop_size`` then three crops, else short side
    to ``test_short_side`` then the centre crop. Output ``(crops, C, T, S, S)`` float.
    """
    aug = data_cfg.augment
    size = int(data_cfg.crop_size)
    norm = Normalize(data_cfg.mean, data_cfg.std)
    if split == "train":
        ts: list[Callable] = []
        lo, hi = (list(aug.short_side) + list(aug.short_side))[:2]
        if aug.random_resized_crop:
            # RRC draws area and aspect relative to the frame, so a short-side jitter before it changes
            # only the resampling, not the crop: RRC runs on the decoded frame (MViTv2 / MAE-ST practice).
            ts.append(RandomResizedCrop(size, aug.rrc_scale, aug.rrc_ratio))
        else:
            ts.append(ScaleJitterCrop(int(lo), int(hi), size))
        if aug.hflip > 0:
            ts.append(RandomHorizontalFlip(aug.hflip))
        if aug.color_jitter > 0:
            s = float(aug.color_jitter)
            ts.append(ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=0.8))
        if aug.grayscale > 0:
            ts.append(RandomGrayscale(aug.grayscale))
        if aug.blur > 0:
            ts.append(GaussianBlur(aug.blur))
        if getattr(data_cfg, "device_transforms", False):  # uint8 crops out; DeviceTransforms does the rest
            return Compose(ts[: 2 if aug.hflip > 0 else 1], retain_memory=True)
        if aug.randaugment:
            ts.append(RandAugment(aug.randaugment))
        ts.append(norm)
        if aug.random_erasing > 0:
            ts.append(RandomErasing(aug.random_erasing, inplace=True))
        return Compose(ts, retain_memory=True)
    if int(data_cfg.test_crops) == 3:
        return Compose([ShortSideScale(size), ThreeCrop(size), norm], retain_memory=True)
    if int(data_cfg.test_crops) != 1:
        raise ValueError(f"data.test_crops must be 1 or 3, got {data_cfg.test_crops}")
    return Compose([ShortSideScale(int(data_cfg.test_short_side)), CenterCrop(size), _AddViewDim(), norm],
                   retain_memory=True)


class _AddViewDim(ClipTransform):
    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return x.unsqueeze(0)
