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

import ctypes
import dataclasses
import math
import os
import re
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from tubelet.data.decoding.crop import ResizedCrop

__all__ = [
    "Compose",
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
    "build_transforms",
    "DeviceTransforms",
    "build_device_transform",
    "retain_freed_memory",
]


def fresh_generator() -> torch.Generator:
    """A generator for a call that passed none: seeded from the global torch RNG, so that successive
    calls draw differently (as torchvision's transforms do) and ``torch.manual_seed`` makes them repeat."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))


def _rand(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * _rand(g)


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]`` (inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


class ClipTransform(ABC):
    """Base: ``__call__(x, g)`` applies to one clip ``(C,T,H,W)`` or each clip of ``(B,C,T,H,W)``."""

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        if g is None:
            g = fresh_generator()
        if x.dim() == 5:
            outs = [self.apply(c, g) for c in x]
            if any(o.shape != outs[0].shape for o in outs):
                raise ValueError(
                    f"{type(self).__name__} gives clips of different sizes in one batch; apply it per clip"
                )
            return torch.stack(outs)
        if x.dim() != 4:
            raise ValueError(f"expected a clip (C,T,H,W) or batch (B,C,T,H,W), got shape {tuple(x.shape)}")
        return self.apply(x, g)

    @abstractmethod
    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Transform one clip ``(C,T,H,W)`` with parameters drawn once from ``g``."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


_MALLOC_TUNED = False


def retain_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Keep freed clip-sized buffers in the process heap (glibc ``mallopt``), once per process.

    A clip at 16x224x224 is a 9.6 MB float tensor, and each transform step allocates one. By default
    glibc serves such blocks with ``mmap`` and returns them on free, so every step pays page faults
    on fresh memory: measured in the 1-thread training pipeline, RandAugment takes about 2x as long
    as with the memory kept. Blocks below ``mmap_threshold`` come from the heap and up to
    ``trim_threshold`` of freed heap is kept for reuse. A no-op off glibc, or when the
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables already set a policy.
    Returns whether the policy is in effect.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    if not sys.platform.startswith("linux") or any(
        k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1 (malloc.h); mallopt returns 1 on success
    _MALLOC_TUNED = mallopt(-3, int(mmap_threshold)) == 1 and mallopt(-1, int(trim_threshold)) == 1
    return _MALLOC_TUNED


class Compose:
    """Apply transforms in order with one shared generator. ``retain_memory=True`` (the pipelines of
    :func:`build_transforms`) calls :func:`retain_freed_memory` on first use in each process, so
    DataLoader workers get it whatever their start method."""

    def __init__(self, transforms: Sequence[Callable], retain_memory: bool = False) -> None:
        self.transforms = list(transforms)
        self.retain_memory = bool(retain_memory)

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        return self.apply_from(0, x, g)

    def apply_from(self, start: int, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        """Apply the transforms from index ``start`` on (after a decode-time crop took the first ones)."""
        if self.retain_memory and not _MALLOC_TUNED:
            retain_freed_memory()
        if g is None:
            g = fresh_generator()
        for t in self.transforms[start:]:
            x = t(x, g)
        return x

    @property
    def decode_crop_steps(self) -> int:
        """How many leading transforms a decoder can apply while decoding: a crop-and-resize with
        ``decode_crop`` (:class:`RandomResizedCrop`, :class:`ScaleJitterCrop`), then optionally a
        :class:`RandomHorizontalFlip`. 0 when the pipeline does not start with one."""
        if not self.transforms or not hasattr(self.transforms[0], "decode_crop"):
            return 0
        return 2 if len(self.transforms) > 1 and isinstance(self.transforms[1], RandomHorizontalFlip) else 1

    def decode_crop(self, height: int, width: int, g: torch.Generator) -> ResizedCrop:
        """Draw the parameters of the first :attr:`decode_crop_steps` transforms for a ``height`` x
        ``width`` clip, from ``g`` in the order their ``apply`` would draw them; then
        ``apply_from(decode_crop_steps, clip, g)`` finishes the clip the decoder cropped."""
        steps = self.decode_crop_steps
        if steps == 0:
            raise ValueError(f"{self!r} does not start with a crop a decoder can take")
        crop = self.transforms[0].decode_crop(height, width, g)
        if steps == 2:
            crop = ResizedCrop(crop.top, crop.left, crop.height, crop.width, crop.size, self.transforms[1].draw(g))
        return crop

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased) resize of the last two dims of ``(C, T, H, W)``; dtype preserved."""
    c, t, h, w = x.shape
    if (h, w) == tuple(size):
        return x
    if x.dtype == torch.uint8:
        # Frames as a (T, C, H, W) channels-last batch hit torch's uint8 antialiased kernel, about
        # 10x faster than float or than a 16-channel planar layout. From a planar clip, stacking the
        # channel planes along a new last dim interleaves them ~2.5x faster than a permuted copy.
        if x.stride(0) == 1:  # channels already innermost (a permuted (T, H, W, C) view)
            frames = x.permute(1, 0, 2, 3).contiguous(memory_format=torch.channels_last)
        else:
            frames = torch.stack(x.unbind(0), dim=-1).permute(0, 3, 1, 2)
        out = F.interpolate(frames, size=size, mode="bilinear", antialias=True, align_corners=False)
        return out.permute(1, 0, 2, 3).contiguous()
    return F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False).to(x.dtype)


def _short_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    if h <= w:
        return size, max(1, int(math.floor(w * size / h)))
    return max(1, int(math.floor(h * size / w))), size


class ShortSideScale(ClipTransform):
    """Resize so the shorter side is ``size`` (aspect ratio kept)."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return resize(x, _short_side_size(x.shape[-2], x.shape[-1], self.size))


class RandomShortSideScale(ClipTransform):
    """Short side drawn uniformly in ``[min_size, max_size]`` per clip (scale jitter)."""

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size, self.max_size = int(min_size), int(max_size)

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        size = _randint(g, self.min_size, self.max_size)
        return resize(x, _short_side_size(x.shape[-2], x.shape[-1], size))


class RandomResizedCrop(ClipTransform):
    """Crop an area fraction in ``scale`` with aspect ratio in ``ratio`` (log-uniform), resize to
    ``size``; one box for the whole clip. Falls back to a centre crop after 10 tries (torchvision)."""

    def __init__(
        self, size: int, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3)
    ) -> None:
        self.size = int(size)
        self.scale = tuple(float(s) for s in scale)
        self.ratio = tuple(float(r) for r in ratio)

    def params(self, h: int, w: int, g: torch.Generator) -> tuple[int, int, int, int]:
        area = h * w
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(g, *self.scale)
            ar = math.exp(_uniform(g, *log_r))
            cw = int(round(math.sqrt(target * ar)))
            ch = int(round(math.sqrt(target / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                return _randint(g, 0, h - ch), _randint(g, 0, w - cw), ch, cw
        in_ratio = w / h
        if in_ratio < min(self.ratio):
            cw, ch = w, int(round(w / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            ch, cw = h, int(round(h * max(self.ratio)))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        top, left, ch, cw = self.params(x.shape[-2], x.shape[-1], g)
        return resize(x[..., top : top + ch, left : left + cw], (self.size, self.size))

    def decode_crop(self, h: int, w: int, g: torch.Generator) -> ResizedCrop:
        """The same draw as :meth:`apply`, as a crop for the decoder (:mod:`tubelet.data.decoding.crop`)."""
        top, left, ch, cw = self.params(h, w, g)
        return ResizedCrop(top, left, ch, cw, (self.size, self.size))


class RandomCrop(ClipTransform):
    """A ``size`` x ``size`` crop at a uniform random position (one per clip)."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h < self.size or w < self.size:
            x = resize(x, _short_side_size(h, w, self.size))
            h, w = x.shape[-2:]
        top, left = _randint(g, 0, h - self.size), _randint(g, 0, w - self.size)
        return x[..., top : top + self.size, left : left + self.size]


class ScaleJitterCrop(ClipTransform):
    """Short-side scale jitter to ``[min_size, max_size]`` then a random ``size`` crop, fused: the crop
    box is mapped back to the source frame and only it is resized (SlowFast training crop), which
    avoids resizing whole frames that are mostly thrown away."""

    def __init__(self, min_size: int, max_size: int, size: int) -> None:
        self.min_size, self.max_size, self.size = int(min_size), int(max_size), int(size)

    def box(self, h: int, w: int, g: torch.Generator) -> tuple[int, int, int, int]:
        """The crop in source pixels, ``(y0, x0, y1, x1)``."""
        short = _randint(g, self.min_size, self.max_size)
        sh, sw = _short_side_size(h, w, short)
        if sh < self.size or sw < self.size:
            sh, sw = _short_side_size(h, w, self.size)
        top, left = _randint(g, 0, sh - self.size), _randint(g, 0, sw - self.size)
        y0, x0 = int(round(top * h / sh)), int(round(left * w / sw))
        y1 = max(y0 + 1, min(h, int(round((top + self.size) * h / sh))))
        x1 = max(x0 + 1, min(w, int(round((left + self.size) * w / sw))))
        return y0, x0, y1, x1

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        y0, x0, y1, x1 = self.box(x.shape[-2], x.shape[-1], g)
        return resize(x[..., y0:y1, x0:x1], (self.size, self.size))

    def decode_crop(self, h: int, w: int, g: torch.Generator) -> ResizedCrop:
        """The same draw as :meth:`apply`, as a crop for the decoder (:mod:`tubelet.data.decoding.crop`)."""
        y0, x0, y1, x1 = self.box(h, w, g)
        return ResizedCrop(y0, x0, y1 - y0, x1 - x0, (self.size, self.size))


def _center(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h < size or w < size:
        x = resize(x, _short_side_size(h, w, size))
        h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


class CenterCrop(ClipTransform):
    """The central ``size`` x ``size`` crop (a short side below ``size`` is scaled up first)."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return _center(x, self.size)


class ThreeCrop(ClipTransform):
    """Three ``size`` x ``size`` crops along the long side: left/centre/right (or top/centre/bottom).

    Returns ``(3, C, T, size, size)`` for one clip. Resize the short side to ``size`` first for the
    SlowFast 3-crop test protocol (METHODS.md section 0).
    """

    def __init__(self, size: int) -> None:
        self.size = int(size)

    @staticmethod
    def offsets(h: int, w: int, size: int) -> list[tuple[int, int]]:
        if w >= h:
            top = (h - size) // 2
            return [(top, 0), (top, (w - size) // 2), (top, w - size)]
        left = (w - size) // 2
        return [(0, left), ((h - size) // 2, left), (h - size, left)]

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h < self.size or w < self.size:
            x = resize(x, _short_side_size(h, w, self.size))
            h, w = x.shape[-2:]
        return torch.stack([x[..., y : y + self.size, x0 : x0 + self.size] for y, x0 in self.offsets(h, w, self.size)])


class RandomHorizontalFlip(ClipTransform):
    """Flip the whole clip left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def draw(self, g: torch.Generator) -> bool:
        """Whether this clip is flipped (the one draw :meth:`apply` makes)."""
        return _rand(g) < self.p

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return x.flip(-1) if self.draw(g) else x


class TemporalSubsample(ClipTransform):
    """Keep ``num_samples`` frames at ``trunc(linspace(0, T-1, n))``."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = int(num_samples)

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        t = x.shape[1]
        idx = torch.linspace(0, t - 1, self.num_samples, device=x.device).long()
        return x.index_select(1, idx)


class Normalize(ClipTransform):
    """``uint8`` -> float32: ``(x / 255 - mean) / std`` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        shape = (-1, 1, 1, 1)  # broadcast over C of (..., C, T, H, W)
        mean = torch.tensor(self.mean, device=x.device).view(shape) * 255.0
        inv = 1.0 / (torch.tensor(self.std, device=x.device).view(shape) * 255.0)
        # One float buffer, updated in place: fresh allocations dominate on large clips.
        y = x.to(torch.float32, copy=True)
        return y.sub_(mean).mul_(inv)

    apply = None  # type: ignore[assignment]


# ----------------------------------------------------------------------------------------------
# Colour (SimCLR-style, frame-consistent)
# ----------------------------------------------------------------------------------------------

_LUMA = (0.299, 0.587, 0.114)


def _to_u8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _gray(xf: torch.Tensor) -> torch.Tensor:
    """Luma of a float clip ``(3, T, H, W)`` -> ``(1, T, H, W)``."""
    return torch.mul(xf[0:1], _LUMA[0]).add_(xf[1:2], alpha=_LUMA[1]).add_(xf[2:3], alpha=_LUMA[2])


def _blend(a: torch.Tensor, b: torch.Tensor, factor: float) -> torch.Tensor:
    # One output buffer updated in place: each fresh clip-sized float tensor costs page faults.
    return torch.mul(a, factor).add_(b, alpha=1.0 - factor).clamp_(0, 255)


def _step(x: torch.Tensor, t: float) -> torch.Tensor:
    """Float mask ``x >= t`` (1.0 / 0.0) without a bool tensor: ``clamp(sign(x - t) + 1, max=1)``."""
    return torch.sub(x, t).sign_().add_(1.0).clamp_(max=1.0)


def _adjust_hue(xf: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate hue by ``shift`` (fraction of a turn) on a float clip ``(3, ...)`` in [0, 255].

    HSV round trip in closed form: with ``v = max``, ``d = max - min`` and hue ``h`` in [0, 6), each
    output channel ``n`` (5 for R, 3 for G, 1 for B) is ``v - d * clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n + h) mod 6`` (saturation and value are unchanged, so ``v * s = d``).
    """
    r, g, b = xf[0], xf[1], xf[2]
    # Element-wise max/min: a reduction over the outer channel dim is ~10x slower on CPU.
    maxc = torch.maximum(torch.maximum(r, g), b)
    delta = maxc - torch.minimum(torch.minimum(r, g), b)
    is_r, is_g = r == maxc, g == maxc
    # hue numerator for the channel that holds the max (R first, then G, as colorsys): (g - b) + 0,
    # (b - r) + 2 or (r - g) + 4, in sixths of a turn
    num = torch.where(is_r, g - b, torch.where(is_g, b - r, r - g))
    offset = torch.where(is_r, 0.0, torch.where(is_g, 2.0, 4.0))
    h = num.div_(delta.clamp_min(1e-6)).add_(offset).add_(shift * 6.0).remainder_(6.0)
    out = torch.empty_like(xf)
    for c, n in enumerate((5.0, 3.0, 1.0)):  # three channels, not a loop over frames or pixels
        k = (h + n).remainder_(6.0)
        w = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
        torch.sub(maxc, delta * w, out=out[c])
    return out


class ColorJitter(ClipTransform):
    """Brightness, contrast, saturation and hue in random order (torchvision semantics), applied
    with probability ``p``; factors drawn once per clip. Contrast blends with each frame's mean luma."""

    def __init__(
        self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.1, p: float = 0.8
    ) -> None:
        self.brightness, self.contrast, self.saturation, self.hue, self.p = brightness, contrast, saturation, hue, p

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if _rand(g) >= self.p:
            return x
        order = torch.randperm(4, generator=g).tolist()
        fb = _uniform(g, max(0.0, 1 - self.brightness), 1 + self.brightness)
        fc = _uniform(g, max(0.0, 1 - self.contrast), 1 + self.contrast)
        fs = _uniform(g, max(0.0, 1 - self.saturation), 1 + self.saturation)
        fh = _uniform(g, -self.hue, self.hue)
        xf = x.float()
        for op in order:
            if op == 0 and self.brightness > 0:
                xf = (xf * fb).clamp_(0, 255)
            elif op == 1 and self.contrast > 0:
                mean = _gray(xf).mean(dim=(-2, -1), keepdim=True)
                xf = _blend(xf, mean, fc)
            elif op == 2 and self.saturation > 0:
                xf = _blend(xf, _gray(xf), fs)
            elif op == 3 and self.hue > 0:
                xf = _adjust_hue(xf, fh)
        return _to_u8(xf) if x.dtype == torch.uint8 else xf


class RandomGrayscale(ClipTransform):
    """Replace the clip by its luma (3 channels) with probability ``p``."""

    def __init__(self, p: float = 0.2) -> None:
        self.p = float(p)

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if _rand(g) >= self.p:
            return x
        out = _gray(x.float()).expand(3, -1, -1, -1)
        return _to_u8(out.clone()) if x.dtype == torch.uint8 else out.clone()


class GaussianBlur(ClipTransform):
    """Separable Gaussian blur with sigma in ``sigma`` (per clip), probability ``p``; kernel about
    10% of the short side (SimCLR appendix A)."""

    def __init__(self, p: float = 0.5, sigma: Sequence[float] = (0.1, 2.0), kernel_frac: float = 0.1) -> None:
        self.p, self.sigma, self.kernel_frac = float(p), tuple(sigma), float(kernel_frac)

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if _rand(g) >= self.p:
            return x
        sigma = _uniform(g, *self.sigma)
        c, t, h, w = x.shape
        k = max(3, int(self.kernel_frac * min(h, w)) | 1)
        r = k // 2
        ax = torch.arange(-r, r + 1, dtype=torch.float32, device=x.device)
        ker = torch.exp(-(ax**2) / (2 * sigma**2))
        ker = ker / ker.sum()
        n = c * t
        # All frames and channels as one channels-last depthwise convolution: ~30x faster on CPU
        # than a planar single-channel conv2d.
        xf = x.float().reshape(1, n, h, w).contiguous(memory_format=torch.channels_last)
        kw = ker.view(1, 1, 1, k).expand(n, 1, 1, k).contiguous()
        kh = ker.view(1, 1, k, 1).expand(n, 1, k, 1).contiguous()
        xf = F.conv2d(F.pad(xf, (r, r, 0, 0), mode="reflect" if w > r else "replicate"), kw, groups=n)
        xf = F.conv2d(F.pad(xf, (0, 0, r, r), mode="reflect" if h > r else "replicate"), kh, groups=n)
        xf = xf.reshape(c, t, h, w)
        return _to_u8(xf) if x.dtype == torch.uint8 else xf


# ----------------------------------------------------------------------------------------------
# RandAugment (timm conventions, one op sequence per clip)
# ----------------------------------------------------------------------------------------------

_MAX_LEVEL = 10.0
_FILL = 128.0


def _affine(x: torch.Tensor, matrix: Sequence[float]) -> torch.Tensor:
    """Inverse-map affine warp of a clip with a 2x3 pixel matrix (PIL ``Image.transform`` semantics):
    output pixel (x, y) samples input at ``(a x + b y + c, d x + e y + f)``. Fill 128."""
    c, t, h, w = x.shape
    a, b, cc, d, e, f = matrix
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=x.device),
                            torch.arange(w, dtype=torch.float32, device=x.device), indexing="ij")
    # Pixel centres: PIL maps output centre (x+0.5) through the matrix.
    sx = a * (xs + 0.5) + b * (ys + 0.5) + cc
    sy = d * (xs + 0.5) + e * (ys + 0.5) + f
    grid = torch.stack([sx / w * 2 - 1, sy / h * 2 - 1], dim=-1).unsqueeze(0).expand(c, h, w, 2)
    xf = torch.sub(x, _FILL) if x.is_floating_point() else x.float().sub_(_FILL)
    return F.grid_sample(xf, grid, mode="bilinear", padding_mode="zeros", align_corners=False).add_(_FILL)


def _rotate_matrix(angle: float, h: int, w: int) -> list[float]:
    # PIL rotate(angle) turns counter-clockwise about the centre; inverse map for transform().
    a = math.radians(angle)
    cx, cy = w / 2, h / 2
    cos, sin = math.cos(a), math.sin(a)
    m = [cos, sin, 0.0, -sin, cos, 0.0]
    m[2] = cx - m[0] * cx - m[1] * cy
    m[5] = cy - m[3] * cx - m[4] * cy
    return m


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.equalize`` per channel and frame, vectorised over all of them."""
    c, t, h, w = x.shape
    rows = c * t
    u8 = x.reshape(rows, h * w)
    # A uint8 bincount per (channel, frame) plane: no clip-sized int64 buffer for the histograms
    # (48 small calls; 5x faster than one bincount over int64 (row, value) pairs).
    hist = torch.stack([torch.bincount(r, minlength=256) for r in u8])
    last_idx = 255 - (hist.flip(1) > 0).to(torch.int64).argmax(1)  # last non-zero bin
    last = hist.gather(1, last_idx.unsqueeze(1)).squeeze(1)
    step = (h * w - last) // 255
    cum = torch.cumsum(hist, 1) - hist  # counts strictly below each bin
    lut = ((cum + (step // 2).unsqueeze(1)) // step.clamp_min(1).unsqueeze(1)).clamp_(0, 255)
    lut = torch.where((step > 0).unsqueeze(1), lut, torch.arange(256, device=x.device).expand(rows, 256))
    # int32 (row, value) indices into the stacked LUTs: index_select takes int32, 3x faster than
    # take with a clip-sized int64 index
    flat = u8.to(torch.int32).add_((torch.arange(rows, dtype=torch.int32, device=x.device) * 256).unsqueeze(1))
    return torch.index_select(lut.view(-1).float(), 0, flat.view(-1)).view(c, t, h, w)


def _autocontrast(xf: torch.Tensor) -> torch.Tensor:
    lo = xf.amin(dim=(-2, -1), keepdim=True)
    hi = xf.amax(dim=(-2, -1), keepdim=True)
    scale = torch.where(hi > lo, 255.0 / (hi - lo).clamp_min(1e-6), torch.ones_like(hi))
    off = torch.where(hi > lo, lo, torch.zeros_like(lo))
    return torch.sub(xf, off).mul_(scale).clamp_(0, 255)


def _sharpness_degenerate(xf: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter [[1,1,1],[1,5,1],[1,1,1]] / 13 inside, border pixels unchanged."""
    c, t, h, w = xf.shape
    out = xf.clone()
    if h > 2 and w > 2:
        # 3x3 box sum + 4 x centre = the SMOOTH kernel, as shifted adds (faster than conv2d/avg_pool2d).
        rows = torch.add(xf[..., :-2, :], xf[..., 1:-1, :]).add_(xf[..., 2:, :])
        box = torch.add(rows[..., :-2], rows[..., 1:-1]).add_(rows[..., 2:])
        out[..., 1:-1, 1:-1] = box.add_(xf[..., 1:-1, 1:-1], alpha=4.0).div_(13.0).round_()
    return out


def _sharpness(xf: torch.Tensor, factor: float) -> torch.Tensor:
    """``_blend(xf, _sharpness_degenerate(xf), factor)`` without the degenerate clip's copy: the
    smoothed interior is added into ``xf * factor`` directly and the border blends with itself."""
    c, t, h, w = xf.shape
    out = torch.mul(xf, factor)
    alpha = 1.0 - factor
    if h > 2 and w > 2:
        rows = torch.add(xf[..., :-2, :], xf[..., 1:-1, :]).add_(xf[..., 2:, :])
        box = torch.add(rows[..., :-2], rows[..., 1:-1]).add_(rows[..., 2:])
        box.add_(xf[..., 1:-1, 1:-1], alpha=4.0).div_(13.0).round_()
        out[..., 1:-1, 1:-1].add_(box, alpha=alpha)
        for sl in ((..., 0, slice(None)), (..., -1, slice(None)), (..., slice(1, -1), 0), (..., slice(1, -1), -1)):
            out[sl].add_(xf[sl], alpha=alpha)  # the four border strips
    else:
        out.add_(xf, alpha=alpha)
    return out.clamp_(0, 255)


def _sign(g: torch.Generator) -> float:
    return -1.0 if _rand(g) < 0.5 else 1.0


def _op(name: str, x: torch.Tensor, m: float, g: torch.Generator) -> torch.Tensor:
    """One timm RandAugment op at magnitude ``m`` in [0, 10] on a float clip in [0, 255]."""
    c, t, h, w = x.shape
    lvl = m / _MAX_LEVEL
    if name == "AutoContrast":
        return _autocontrast(x)
    if name == "Equalize":
        return _equalize(x.round().clamp_(0, 255).to(torch.uint8))
    if name == "Invert":
        return 255.0 - x
    if name == "Rotate":
        return _affine(x, _rotate_matrix(lvl * 30.0 * _sign(g), h, w))
    if name == "ShearX":
        return _affine(x, [1.0, lvl * 0.3 * _sign(g), 0.0, 0.0, 1.0, 0.0])
    if name == "ShearY":
        return _affine(x, [1.0, 0.0, 0.0, lvl * 0.3 * _sign(g), 1.0, 0.0])
    if name == "TranslateXRel":
        return _affine(x, [1.0, 0.0, lvl * 0.45 * _sign(g) * w, 0.0, 1.0, 0.0])
    if name == "TranslateYRel":
        return _affine(x, [1.0, 0.0, 0.0, 0.0, 1.0, lvl * 0.45 * _sign(g) * h])
    if name == "PosterizeIncreasing":
        bits = 4 - int(lvl * 4)
        mask = (0xFF << (8 - max(bits, 0))) & 0xFF if bits > 0 else 0
        return x.round().clamp_(0, 255).to(torch.uint8).bitwise_and_(mask).float()
    if name == "SolarizeIncreasing":
        thresh = 256 - int(lvl * 256)
        # where(x >= thresh, 255 - x, x) as a lerp with a 0/1 float weight (exact: lerp returns its
        # ends at weights 0 and 1); torch.where with a bool mask is ~3x slower on CPU.
        return torch.lerp(x, torch.rsub(x, 255.0), _step(x, thresh))
    if name == "SolarizeAdd":
        add = int(lvl * 110)
        return torch.lerp(x, torch.add(x, add).clamp_(max=255), _step(x, 128.0).neg_().add_(1.0))  # where(x < 128, ...)
    factor = 1.0 + lvl * 0.9 * _sign(g)  # the "...Increasing" enhance ops
    if name == "ColorIncreasing":
        return _blend(x, _gray(x), factor)
    if name == "ContrastIncreasing":
        # PIL's ImageEnhance.Contrast blends with the mean of the grayscale image (per frame here).
        return _blend(x, _gray(x).mean(dim=(-2, -1), keepdim=True), factor)
    if name == "BrightnessIncreasing":
        return torch.mul(x, factor).clamp_(0, 255)  # blend with black
    if name == "SharpnessIncreasing":
        return _sharpness(x, factor)
    raise ValueError(f"unknown RandAugment op '{name}'")


_RAND_INCREASING = [
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
    "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
]  # fmt: skip


@dataclass(frozen=True)
class RandAugmentSpec:
    magnitude: float = 9.0
    num_ops: int = 2
    magnitude_std: float = 0.0
    increasing: bool = True
    prob: float = 0.5


def parse_randaugment(spec: str) -> RandAugmentSpec:
    """Parse a timm config string such as ``"rand-m7-n4-mstd0.5-inc1"``.

    ``m``: magnitude (0-10), ``n``: ops per clip, ``mstd``: std of a Gaussian magnitude noise drawn
    per op, ``inc``: 1 for the "increasing" op set (only that set is implemented), ``p``: op probability.
    """
    parts = spec.split("-")
    if not parts or parts[0] != "rand":
        raise ValueError(f"RandAugment spec must start with 'rand', got '{spec}'")
    kw: dict = {}
    for part in parts[1:]:
        mm = re.match(r"^(mstd|inc|m|n|p)([\d.]+)$", part)
        if mm is None:
            raise ValueError(f"RandAugment spec '{spec}': cannot parse '{part}'")
        key, val = mm.groups()
        if key == "m":
            kw["magnitude"] = float(val)
        elif key == "n":
            kw["num_ops"] = int(val)
        elif key == "mstd":
            kw["magnitude_std"] = float(val)
        elif key == "p":
            kw["prob"] = float(val)
        elif key == "inc":
            kw["increasing"] = bool(int(val))
    if not kw.get("increasing", True):
        raise ValueError(f"RandAugment spec '{spec}': only the increasing op set (inc1) is implemented")
    return RandAugmentSpec(**kw)


class RandAugment(ClipTransform):
    """RandAugment (arXiv 1909.13719) with timm semantics: ``n`` ops drawn with replacement from the
    increasing set, each applied with probability 0.5 at magnitude ``gauss(m, mstd)`` clipped to [0, 10].
    The same op sequence and magnitudes are used for every frame of a clip."""

    def __init__(self, spec: str | RandAugmentSpec = "rand-m7-n4-mstd0.5-inc1") -> None:
        self.spec = parse_randaugment(spec) if isinstance(spec, str) else spec
        self.ops = list(_RAND_INCREASING)

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s = self.spec
        choice = torch.randint(0, len(self.ops), (s.num_ops,), generator=g).tolist()
        xf = x.float()
        for i in choice:
            if _rand(g) >= s.prob:
                continue
            m = s.magnitude
            if s.magnitude_std > 0:
                m = m + s.magnitude_std * float(torch.randn((), generator=g))
            m = min(max(m, 0.0), _MAX_LEVEL)
            xf = _op(self.ops[i], xf, m, g)
        return _to_u8(xf) if x.dtype == torch.uint8 else xf


class RandomErasing(ClipTransform):
    """Cube random erasing (arXiv 1708.04896, timm "pixel" mode): with probability ``p`` one box of
    area fraction in ``scale`` and aspect in ``ratio`` is filled with N(0, 1) noise in every frame.
    Use after :class:`Normalize`. ``inplace=True`` writes the box into a float input instead of a
    copy (the training pipeline, where the input is Normalize's fresh output)."""

    def __init__(
        self,
        p: float = 0.25,
        scale: Sequence[float] = (0.02, 1 / 3),
        ratio: Sequence[float] = (0.3, 1 / 0.3),
        inplace: bool = False,
    ) -> None:
        self.p, self.scale, self.ratio = float(p), tuple(scale), tuple(ratio)
        self.inplace = bool(inplace)

    def apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if _rand(g) >= self.p:
            return x
        c, t, h, w = x.shape
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = h * w * _uniform(g, *self.scale)
            ar = math.exp(_uniform(g, *log_r))
            eh, ew = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
            if 0 < eh < h and 0 < ew < w:
                top, left = _randint(g, 0, h - eh), _randint(g, 0, w - ew)
                if x.is_floating_point():
                    out = x if self.inplace else x.clone()
                else:
                    out = x.float()
                noise = torch.randn((c, t, eh, ew), generator=g, dtype=out.dtype)
                out[..., top : top + eh, left : left + ew] = noise
                return out
        return x


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
