"""The transform protocol (one draw per clip from an explicit generator), Compose, and the allocator
policy of the pipelines."""

from __future__ import annotations

import ctypes
import os
import sys
from abc import ABC, abstractmethod
from typing import Callable, Sequence

import torch

from tubelet.data.decoding.crop import ResizedCrop


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
        return 2 if len(self.transforms) > 1 and getattr(self.transforms[1], "is_flip", False) else 1

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
