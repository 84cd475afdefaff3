"""RandAugment (arXiv 1909.13719) with timm's conventions, table-driven; one op sequence per clip."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from tubelet.data.transforms.base import ClipTransform, _rand
from tubelet.data.transforms.color import _blend, _gray, _step, _to_u8

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


def _posterize(x: torch.Tensor, lvl: float) -> torch.Tensor:
    bits = 4 - int(lvl * 4)
    mask = (0xFF << (8 - max(bits, 0))) & 0xFF if bits > 0 else 0
    return x.round().clamp_(0, 255).to(torch.uint8).bitwise_and_(mask).float()


def _solarize(x: torch.Tensor, lvl: float) -> torch.Tensor:
    thresh = 256 - int(lvl * 256)
    # where(x >= thresh, 255 - x, x) as a lerp with a 0/1 float weight (exact: lerp returns its ends at
    # weights 0 and 1); torch.where with a bool mask is ~3x slower on CPU.
    return torch.lerp(x, torch.rsub(x, 255.0), _step(x, thresh))


def _solarize_add(x: torch.Tensor, lvl: float) -> torch.Tensor:
    add = int(lvl * 110)
    return torch.lerp(x, torch.add(x, add).clamp_(max=255), _step(x, 128.0).neg_().add_(1.0))  # where(x < 128, ...)


def _enhance(blend: Callable[[torch.Tensor, float], torch.Tensor]) -> Op:
    """An "...Increasing" enhance op: factor ``1 + level * 0.9 * (+-1)``, the sign drawn from ``g``."""
    return lambda x, lvl, g: blend(x, 1.0 + lvl * 0.9 * _sign(g))


# One timm RandAugment op: ``(float clip in [0, 255], level = magnitude / 10, generator) -> clip``. The
# table's order is timm's "increasing" set (``_RAND_INCREASING_TRANSFORMS``), the order ops are drawn by.
Op = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]
RAND_INCREASING_OPS: dict[str, Op] = {
    "AutoContrast": lambda x, lvl, g: _autocontrast(x),
    "Equalize": lambda x, lvl, g: _equalize(x.round().clamp_(0, 255).to(torch.uint8)),
    "Invert": lambda x, lvl, g: 255.0 - x,
    "Rotate": lambda x, lvl, g: _affine(x, _rotate_matrix(lvl * 30.0 * _sign(g), x.shape[-2], x.shape[-1])),
    "PosterizeIncreasing": lambda x, lvl, g: _posterize(x, lvl),
    "SolarizeIncreasing": lambda x, lvl, g: _solarize(x, lvl),
    "SolarizeAdd": lambda x, lvl, g: _solarize_add(x, lvl),
    "ColorIncreasing": _enhance(lambda x, f: _blend(x, _gray(x), f)),
    # PIL's ImageEnhance.Contrast blends with the mean of the grayscale image (per frame here).
    "ContrastIncreasing": _enhance(lambda x, f: _blend(x, _gray(x).mean(dim=(-2, -1), keepdim=True), f)),
    "BrightnessIncreasing": _enhance(lambda x, f: torch.mul(x, f).clamp_(0, 255)),  # blend with black
    "SharpnessIncreasing": _enhance(_sharpness),
    "ShearX": lambda x, lvl, g: _affine(x, [1.0, lvl * 0.3 * _sign(g), 0.0, 0.0, 1.0, 0.0]),
    "ShearY": lambda x, lvl, g: _affine(x, [1.0, 0.0, 0.0, lvl * 0.3 * _sign(g), 1.0, 0.0]),
    "TranslateXRel": lambda x, lvl, g: _affine(x, [1.0, 0.0, lvl * 0.45 * _sign(g) * x.shape[-1], 0.0, 1.0, 0.0]),
    "TranslateYRel": lambda x, lvl, g: _affine(x, [1.0, 0.0, 0.0, 0.0, 1.0, lvl * 0.45 * _sign(g) * x.shape[-2]]),
}
_RAND_INCREASING = list(RAND_INCREASING_OPS)


def _op(name: str, x: torch.Tensor, m: float, g: torch.Generator) -> torch.Tensor:
    """One timm RandAugment op at magnitude ``m`` in [0, 10] on a float clip in [0, 255]."""
    op = RAND_INCREASING_OPS.get(name)
    if op is None:
        raise ValueError(f"unknown RandAugment op '{name}'")
    return op(x, m / _MAX_LEVEL, g)


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
