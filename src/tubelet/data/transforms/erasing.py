"""Cube random erasing (arXiv 1708.04896), one box for all frames."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from tubelet.data.transforms.base import ClipTransform, _rand, _randint, _uniform


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
