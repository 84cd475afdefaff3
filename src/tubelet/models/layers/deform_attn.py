"""Multi-scale deformable attention (Zhu et al., Deformable DETR, arXiv 2010.04159, Sec. 4.1, eq. 2-3), in
torch ops only (``F.grid_sample``), so it runs wherever PyTorch does and needs no compiled kernel.

For query ``q`` with feature ``z_q`` and normalised reference point ``p_q`` in ``[0, 1]^2`` (eq. 3)::

    MSDeformAttn(z_q, p_q, {x^l}) = sum_m W_m [ sum_l sum_k A_mlqk * W'_m x^l(phi_l(p_q) + Delta p_mlqk) ]

with ``M`` heads, ``L`` levels, ``K`` points per head and level. ``Delta p`` (sampling offsets) and ``A``
(attention weights, a softmax over the ``L K`` points of a head) are linear projections of ``z_q``;
``W'_m`` is the value projection (one ``Linear`` over all heads), ``W_m`` the output projection. Offsets
are in pixels of each level, so they are divided by the level's ``(W_l, H_l)`` before they are added to the
normalised reference point. Sampling is bilinear with zeros outside the map, ``align_corners=False``: a
location ``u`` in ``[0, 1]`` is pixel coordinate ``u W_l - 0.5``, pixel ``j``'s centre at ``(j + 0.5) / W_l``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSDeformAttn", "ms_deform_attn"]


def ms_deform_attn(value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    """The sampling and weighted sum of eq. 3 for projected values.

    ``value`` ``(B, S, M, D)``: the values of every level flattened row-major and concatenated
    (``S = sum_l H_l W_l``), ``M`` heads of ``D`` channels; ``shapes`` the ``L`` levels' ``(H_l, W_l)``;
    ``locations`` ``(B, Q, M, L, K, 2)`` normalised ``(x, y)`` in ``[0, 1]``; ``weights`` ``(B, Q, M, L, K)``.
    Returns ``(B, Q, M * D)``. The loop is over levels (4), each one ``grid_sample`` of every head and query.
    """
    B, S, M, D = value.shape
    _, Q, _, L, K, _ = locations.shape
    if sum(h * w for h, w in shapes) != S:
        raise ValueError(f"value has {S} positions but the level shapes {shapes} hold {sum(h * w for h, w in shapes)}")
    grids = 2 * locations - 1  # grid_sample's [-1, 1]
    sampled = []
    for lvl, v in enumerate(value.split([h * w for h, w in shapes], dim=1)):
        h, w = shapes[lvl]
        v = v.permute(0, 2, 3, 1).reshape(B * M, D, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(B * M, Q, K, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))  # (BM, D, Q, K)
    stacked = torch.stack(sampled, dim=-2)  # (B*M, D, Q, L, K)
    a = weights.transpose(1, 2).reshape(B * M, 1, Q, L, K)
    out = (stacked * a).sum((-1, -2))  # (B*M, D, Q)
    return out.view(B, M * D, Q).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """``forward(query (B, Q, C), reference (B, Q, L, 2) or (B, Q, 2), value (B, S, C), shapes,
    padding_mask (B, S) bool or None) -> (B, Q, C)``; ``reference`` normalised ``(x, y)``, one point per
    level (a ``(B, Q, 2)`` reference is the same point on every level). ``padding_mask`` True marks
    positions whose value is zeroed (padding of a batch of unequal images)."""

    def __init__(self, dim: int = 256, levels: int = 4, heads: int = 8, points: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"deformable attention: dim {dim} is not divisible by heads {heads}")
        self.dim, self.levels, self.heads, self.points = dim, levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the paper's start: offsets from the bias alone, head m looking along direction 2 pi m / M at
        # distances 1..K pixels, and uniform attention over the points
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.heads, dtype=torch.float32) * (2 * math.pi / self.heads)
        dirs = torch.stack([theta.cos(), theta.sin()], -1)
        dirs = dirs / dirs.abs().max(-1, keepdim=True).values  # onto the square's edge: (1, 0), (1, 1), ...
        bias = dirs[:, None, None, :].repeat(1, self.levels, self.points, 1)
        bias = bias * torch.arange(1, self.points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, value: torch.Tensor,
                shapes: list[tuple[int, int]], padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, Q, _ = query.shape
        M, L, K = self.heads, self.levels, self.points
        if len(shapes) != L:
            raise ValueError(f"deformable attention built for {L} levels got {len(shapes)}")
        v = self.value_proj(value)
        if padding_mask is not None:
            v = v.masked_fill(padding_mask[..., None], 0.0)
        v = v.view(B, v.shape[1], M, self.dim // M)
        offsets = self.sampling_offsets(query).view(B, Q, M, L, K, 2)
        weights = self.attention_weights(query).view(B, Q, M, L * K).softmax(-1).view(B, Q, M, L, K)
        if reference.dim() == 3:
            reference = reference[:, :, None, :].expand(B, Q, L, 2)
        # pixels of level l -> the normalised coordinates of that level: divide by (W_l, H_l)
        norm = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
        locations = reference[:, :, None, :, None, :] + offsets / norm[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn(v, shapes, locations, weights))
