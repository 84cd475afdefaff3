"""Crops, scales, flips and temporal subsampling, drawn once per clip; Normalize."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from tubelet.data.decoding.crop import ResizedCrop
from tubelet.data.transforms.base import ClipTransform, _rand, _randint, _uniform

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

    is_flip = True  # a decoder may take this flip with the crop before it (Compose.decode_crop_steps)

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


class PackPathway:
    """SlowFast's two inputs from one decoded clip (arXiv 1812.03982, Sec. 3): ``(C, aT, H, W) ->
    [slow (C, T, H, W), fast (C, aT, H, W)]`` (or batches ``(B, C, aT, H, W)``), Slow's frames chosen by
    :func:`tubelet.core.pathways.slow_frame_indices`, the frames the ``slowfast_*`` models select
    themselves from a Fast-rate clip. Place it last, after the crops, so that both pathways share them."""

    def __init__(self, alpha: int) -> None:
        self.alpha = int(alpha)

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> list[torch.Tensor]:
        from tubelet.core.pathways import slow_frame_indices

        if x.dim() not in (4, 5):
            raise ValueError(f"expected a clip (C,T,H,W) or batch (B,C,T,H,W), got shape {tuple(x.shape)}")
        t_dim = x.dim() - 3
        idx = slow_frame_indices(x.shape[t_dim], self.alpha, device=x.device)
        return [x.index_select(t_dim, idx), x]

    def __repr__(self) -> str:
        return f"PackPathway(alpha={self.alpha})"


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
