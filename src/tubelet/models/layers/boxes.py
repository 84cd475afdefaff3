"""Box operations for trackers and detectors, in torch ops only: batched, differentiable, no loop over boxes.

Boxes are ``(..., 4)`` tensors, ``xyxy`` (corners, ``x2 = x1 + w``: continuous coordinates, no +1) unless
a function says otherwise. :func:`roi_align` follows torchvision's ``roi_align`` exactly (its bilinear
sampling, border rule and ``aligned`` half-pixel shift) without depending on torchvision.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["box_area", "box_convert", "box_iou", "decode_deltas", "encode_deltas", "generalized_box_iou", "nms",
           "roi_align", "soft_argmax_2d"]

BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
# torchvision's clamp on decoded log-sizes: exp(4.135) = 62.5, a box at most 62.5 times its reference
DELTA_CLAMP = math.log(1000.0 / 16)


def box_convert(boxes: torch.Tensor, src: BoxFormat, dst: BoxFormat) -> torch.Tensor:
    """Between ``xyxy``, ``xywh`` (corner and size) and ``cxcywh`` (centre and size)."""
    for fmt in (src, dst):
        if fmt not in ("xyxy", "xywh", "cxcywh"):
            raise ValueError(f"box format '{fmt}' is not one of xyxy, xywh, cxcywh")
    a, b, c, d = boxes.unbind(-1)
    if src == "xywh":
        a, b, c, d = a, b, a + c, b + d
    elif src == "cxcywh":
        a, b, c, d = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    if dst == "xywh":
        return torch.stack([a, b, c - a, d - b], -1)
    if dst == "cxcywh":
        return torch.stack([(a + c) / 2, (b + d) / 2, c - a, d - b], -1)
    return torch.stack([a, b, c, d], -1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _pair(a: torch.Tensor, b: torch.Tensor, aligned: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if aligned:
        if a.shape != b.shape:
            raise ValueError(f"aligned boxes need equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
        return a, b
    return a[..., :, None, :], b[..., None, :, :]


def box_iou(a: torch.Tensor, b: torch.Tensor, aligned: bool = False, eps: float = 1e-7) -> torch.Tensor:
    """IoU of ``xyxy`` boxes: pairwise ``(..., N, M)``, or row by row with ``aligned`` (equal shapes)."""
    a, b = _pair(a, b, aligned)
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (box_area(a) + box_area(b) - inter).clamp(min=eps)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-agnostic greedy non-maximum suppression, batched: ``keep`` ``(..., N)`` bool of ``xyxy`` boxes
    ``(..., N, 4)`` with ``scores`` ``(..., N)``.

    The classical sequential rule: visit the boxes by score, highest first (equal scores in index order),
    and keep a box unless its IoU with a box kept before it exceeds ``iou_threshold``. With ``S`` the
    strictly upper-triangular matrix ``S[i, j] = [IoU(b_i, b_j) > t]`` of the boxes in that order, the greedy
    result is the unique ``k`` with ``k_j = not OR_{i<j} (k_i and S[i, j])`` (unique: ``k_0`` is fixed, and
    each ``k_j`` follows from ``k_0 .. k_{j-1}``). It is found by iterating ``k <- not (S^T k)`` from all
    True: after ``m`` steps every box whose longest chain of suppressors is at most ``m`` is final, so
    the iteration stops (``k`` unchanged, hence that unique fixed point) after at most the longest chain
    plus one steps, each a batched boolean matrix product instead of a loop over the boxes.
    """
    if boxes.shape[-1] != 4 or boxes.shape[:-1] != scores.shape:
        raise ValueError(f"nms: boxes (..., N, 4) and scores (..., N), got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    n = scores.shape[-1]
    if n == 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranked = boxes.gather(-2, order[..., None].expand(*order.shape, 4))
    upper = torch.ones(n, n, dtype=torch.bool, device=boxes.device).triu(1)
    suppress = (box_iou(ranked, ranked) > iou_threshold) & upper  # (..., i, j): i, ranked above j, would drop j
    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    for _ in range(n):  # rounds, not boxes: stops after the longest suppression chain (usually 2 or 3 rounds)
        new = ~(keep[..., :, None] & suppress).any(-2)
        if torch.equal(new, keep):
            break
        keep = new
    return torch.zeros_like(keep).scatter(-1, order, keep)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor, aligned: bool = False, eps: float = 1e-7) -> torch.Tensor:
    """GIoU (Rezatofighi et al. 2019): IoU minus the share of the smallest enclosing box that the union
    leaves empty; in [-1, 1], and informative (non-zero gradient) for disjoint boxes."""
    a, b = _pair(a, b, aligned)
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a) + box_area(b) - inter
    enclose = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    return inter / union.clamp(min=eps) - (enclose - union) / enclose.clamp(min=eps)


def encode_deltas(boxes: torch.Tensor, refs: torch.Tensor,
                  weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """R-CNN box deltas of ``xyxy`` ``boxes`` against reference boxes ``refs``: the centre offset in units of
    the reference size and the log size ratio, ``(wx dx, wy dy, ww dw, wh dh)``."""
    b, r = box_convert(boxes, "xyxy", "cxcywh"), box_convert(refs, "xyxy", "cxcywh")
    wx, wy, ww, wh = weights
    return torch.stack([wx * (b[..., 0] - r[..., 0]) / r[..., 2], wy * (b[..., 1] - r[..., 1]) / r[..., 3],
                        ww * torch.log(b[..., 2] / r[..., 2]), wh * torch.log(b[..., 3] / r[..., 3])], -1)


def decode_deltas(deltas: torch.Tensor, refs: torch.Tensor,
                  weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                  clamp: float = DELTA_CLAMP) -> torch.Tensor:
    """The inverse of :func:`encode_deltas`; log sizes are clamped at ``clamp`` so that an untrained head
    cannot produce an overflowing box."""
    r = box_convert(refs, "xyxy", "cxcywh")
    wx, wy, ww, wh = weights
    cx = deltas[..., 0] / wx * r[..., 2] + r[..., 0]
    cy = deltas[..., 1] / wy * r[..., 3] + r[..., 1]
    w = torch.exp((deltas[..., 2] / ww).clamp(max=clamp)) * r[..., 2]
    h = torch.exp((deltas[..., 3] / wh).clamp(max=clamp)) * r[..., 3]
    return box_convert(torch.stack([cx, cy, w, h], -1), "cxcywh", "xyxy")


def _bilinear_weights(coords: torch.Tensor, size: int) -> torch.Tensor:
    """Row weights ``(..., size)`` of torchvision's bilinear sampling at ``coords`` along one axis: zero
    outside ``[-1, size]``, clamped to the first / last pixel within a pixel of the border."""
    inside = (coords >= -1.0) & (coords <= size)
    c = coords.clamp(min=0)
    low = c.floor().long()
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    high = torch.where(at_end, low, low + 1)
    c = torch.where(at_end, low.to(c.dtype), c)
    frac = c - low.to(c.dtype)
    w = F.one_hot(low, size).to(c.dtype) * (1 - frac)[..., None] + F.one_hot(high, size).to(c.dtype) * frac[..., None]
    return w * inside[..., None].to(c.dtype)


def _axis_matrix(start: torch.Tensor, length: torch.Tensor, bins: int, size: int, sampling_ratio: int) -> torch.Tensor:
    """``(K, bins, size)``: row ``p`` averages the bilinear weights of bin ``p``'s sample points."""
    binsz = length / bins
    if sampling_ratio > 0:
        grid = torch.full_like(length, float(sampling_ratio))
    else:  # torchvision's adaptive rule: ceil(bin size) samples per bin, at least 1
        grid = torch.ceil(binsz).clamp(min=1).detach()
    # a fixed ratio needs no data-dependent size (so the op traces under torch.export)
    g_max = sampling_ratio if sampling_ratio > 0 else (int(grid.max().item()) if grid.numel() else 1)
    i = torch.arange(g_max, device=length.device, dtype=length.dtype)
    p = torch.arange(bins, device=length.device, dtype=length.dtype)
    pts = (start[:, None, None] + p[None, :, None] * binsz[:, None, None]
           + (i[None, None, :] + 0.5) * (binsz / grid)[:, None, None])  # (K, bins, G)
    used = (i[None, :] < grid[:, None]).to(length.dtype) / grid[:, None]  # (K, G): 1/g for the first g samples
    return (_bilinear_weights(pts, size) * used[:, None, :, None]).sum(2)


def roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: int | tuple[int, int],
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = True) -> torch.Tensor:
    """RoIAlign as torchvision computes it: ``features`` ``(B, C, H, W)``, ``rois`` ``(K, 5)`` rows of
    ``(batch index, x1, y1, x2, y2)`` in input coordinates (scaled by ``spatial_scale``), output
    ``(K, C, ph, pw)``, each bin the mean of ``sampling_ratio``^2 bilinear samples (``<= 0``: ``ceil(bin
    size)`` per axis). ``aligned=True`` shifts the box by -0.5 so that a pixel's centre is at its index.

    Bilinear sampling is separable and so is the sample grid, so each box is two small weight matrices
    (rows, columns) applied with one einsum per image: differentiable in the features and in the box
    coordinates. Its cost is O(K C H W ph) (dense weights), not torchvision's O(K C ph pw) samples.
    """
    if features.dim() != 4 or rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"roi_align wants features (B, C, H, W) and rois (K, 5), got {tuple(features.shape)} and "
                         f"{tuple(rois.shape)}")
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    _, _, H, W = features.shape
    rois = rois.to(features.dtype)
    off = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, 1:] * spatial_scale).unbind(1)
    x1, y1, x2, y2 = x1 - off, y1 - off, x2 - off, y2 - off
    w, h = x2 - x1, y2 - y1
    if not aligned:  # the legacy rule: boxes at least one pixel
        w, h = w.clamp(min=1.0), h.clamp(min=1.0)
    wy = _axis_matrix(y1, h, ph, H, sampling_ratio)  # (K, ph, H)
    wx = _axis_matrix(x1, w, pw, W, sampling_ratio)  # (K, pw, W)
    # per image of the batch, never a (K, C, H, W) copy of the map per box: with many boxes on a large map
    # (MOT: 200 targets) that copy alone would be gigabytes
    index = rois[:, 0].long()
    if features.shape[0] == 1:
        return torch.einsum("kph,chw,kqw->kcpq", wy, features[0], wx)
    if torch.compiler.is_exporting():
        # an exported graph cannot branch on which images have boxes: gather each box's map (the copy the
        # loop below avoids costs memory, not correctness)
        return torch.einsum("kph,kchw,kqw->kcpq", wy, features[index], wx)
    out = features.new_zeros(rois.shape[0], features.shape[1], ph, pw)
    for b in range(features.shape[0]):  # a loop over images, not boxes
        sel = index == b
        if bool(sel.any()):
            out = out.index_put((sel,), torch.einsum("kph,chw,kqw->kcpq", wy[sel], features[b], wx[sel]))
    return out


def soft_argmax_2d(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected ``(x, y)`` in ``[0, 1]^2`` of a softmax over heatmaps ``(..., H, W)``, pixel centres at
    ``(j + 0.5) / W`` and ``(i + 0.5) / H``, and the probabilities."""
    H, W = logits.shape[-2:]
    prob = logits.flatten(-2).softmax(-1).view(logits.shape)
    xs = (torch.arange(W, device=logits.device, dtype=prob.dtype) + 0.5) / W
    ys = (torch.arange(H, device=logits.device, dtype=prob.dtype) + 0.5) / H
    return torch.stack([(prob.sum(-2) * xs).sum(-1), (prob.sum(-1) * ys).sum(-1)], -1), prob
