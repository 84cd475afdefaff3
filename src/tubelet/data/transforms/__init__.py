"""Clip-consistent video transforms on ``(C, T, H, W)`` clips (or batches ``(B, C, T, H, W)``).

Every random transform draws its parameters **once per clip** from an explicit ``torch.Generator``
and applies them to all frames (METHODS.md section 0), with tensor ops over the whole clip, never a
loop over frames. Clips stay ``uint8`` until :class:`Normalize`; the colour and RandAugment ops
compute in float internally and round back to ``uint8``. A batch is processed clip by clip with
parameters drawn in order, so a batched call equals a loop over its clips with the same generator.

Sources: short-side jitter and three-crop testing follow SlowFast/PyTorchVideo (arXiv 2111.09887);
random resized crop follows Inception/torchvision; colour jitter, grayscale and Gaussian blur follow
SimCLR (arXiv 2002.05709, appendix A) as used by rho-SSL (arXiv 2104.14558); RandAugment follows
arXiv 1909.13719 with timm's "rand-m7-n4-mstd0.5-inc1" string and magnitude conventions; cube
random erasing follows arXiv 1708.04896 with one box for all frames (MAE-ST / VideoMAE fine-tuning).
"""

from __future__ import annotations

from tubelet.data.transforms.base import ClipTransform, Compose, fresh_generator, retain_freed_memory
from tubelet.data.transforms.color import _adjust_hue, _to_u8  # noqa: F401 - kernels the tests check
from tubelet.data.transforms.color import ColorJitter, GaussianBlur, RandomGrayscale
from tubelet.data.transforms.erasing import RandomErasing
from tubelet.data.transforms.geometry import (
    CenterCrop,
    Normalize,
    PackPathway,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomShortSideScale,
    ScaleJitterCrop,
    ShortSideScale,
    TemporalSubsample,
    ThreeCrop,
    resize,
)
from tubelet.data.transforms.pipeline import DeviceTransforms, build_device_transform, build_transforms
from tubelet.data.transforms.randaugment import RandAugment, RandAugmentSpec, parse_randaugment
from tubelet.data.transforms.randaugment import _equalize, _sharpness_degenerate  # noqa: F401 - kernels the tests check

__all__ = [
    "ClipTransform",
    "Compose",
    "fresh_generator",
    "resize",
    "RandAugmentSpec",
    "ShortSideScale",
    "RandomShortSideScale",
    "RandomResizedCrop",
    "RandomCrop",
    "ScaleJitterCrop",
    "CenterCrop",
    "ThreeCrop",
    "RandomHorizontalFlip",
    "Normalize",
    "ColorJitter",
    "RandomGrayscale",
    "GaussianBlur",
    "RandAugment",
    "parse_randaugment",
    "RandomErasing",
    "TemporalSubsample",
    "PackPathway",
    "build_transforms",
    "DeviceTransforms",
    "build_device_transform",
    "retain_freed_memory",
]
