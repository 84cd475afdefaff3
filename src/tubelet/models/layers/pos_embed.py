"""Separable space-time position embeddings (MAE-ST, arXiv 2205.09113, Sec. 3 / A.1).

Token ``(t, s)`` with ``s = h * W' + w`` receives ``pos_t[t] + pos_s[s]``: a spatial table of
``H'W' x D`` and a temporal table of ``T' x D`` instead of one joint ``T'H'W' x D`` table. Learned
tables are interpolated separately (spatial 2-D bicubic, temporal linear) when the token grid
differs from the one they were built for; sin-cos tables are computed exactly for any grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sincos_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Transformer sin-cos code (Vaswani et al., arXiv 1706.03762, Sec. 3.5): ``(L,) -> (L, dim)``.

    The first half of the channels holds sines, the second cosines, as in MAE's
    ``get_1d_sincos_pos_embed_from_grid``.
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2.0)
    omega = 1.0 / temperature**omega
    out = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_2d(h: int, w: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """2-D sin-cos table ``(h*w, dim)``: half the channels encode the row, half the column (MAE)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    # MAE's grid uses (w, h) meshgrid order: the first half of channels follows the column.
    return torch.cat([sincos_1d(cols, dim // 2), sincos_1d(rows, dim // 2)], dim=1)


class SeparablePosEmbed(nn.Module):
    """Adds ``pos_t[t] + pos_s[s]`` to tokens ``(B, N, D)`` laid out on a ``(T', H', W')`` grid.

    ``kind="learned"``: parameters ``spatial (1, H'W', D)`` and ``temporal (1, T', D)``,
    trunc-normal(0.02) initialised. ``kind="sincos"``: fixed 2-D sin-cos in space and 1-D sin-cos in
    time, no parameters.
    """

    def __init__(self, embed_dim: int, grid_size: tuple[int, int, int], kind: str = "learned") -> None:
        super().__init__()
        if kind not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got '{kind}'")
        self.embed_dim = embed_dim
        self.grid_size = tuple(int(g) for g in grid_size)
        self.kind = kind
        t, h, w = self.grid_size
        if kind == "learned":
            self.spatial = nn.Parameter(torch.zeros(1, h * w, embed_dim))
            self.temporal = nn.Parameter(torch.zeros(1, t, embed_dim))
            nn.init.trunc_normal_(self.spatial, std=0.02, a=-0.04, b=0.04)
            nn.init.trunc_normal_(self.temporal, std=0.02, a=-0.04, b=0.04)
        else:
            self.spatial = None
            self.temporal = None
        self._cache: dict[tuple, torch.Tensor] = {}

    def tables(self, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pos_t (T', D), pos_s (H'W', D))`` for ``grid``, interpolated if it differs from build time."""
        t, h, w = grid
        if self.kind == "sincos":
            # computed on the CPU even under a meta/other default device, so the values are real
            cpu = torch.device("cpu")
            pos_s = sincos_2d(h, w, self.embed_dim, cpu)
            pos_t = sincos_1d(torch.arange(t, device=cpu), self.embed_dim)
            return pos_t, pos_s
        t0, h0, w0 = self.grid_size
        pos_s = self.spatial[0]
        pos_t = self.temporal[0]
        if (h, w) != (h0, w0):
            grid_s = pos_s.reshape(1, h0, w0, -1).permute(0, 3, 1, 2)
            grid_s = F.interpolate(grid_s.float(), size=(h, w), mode="bicubic", align_corners=False)
            pos_s = grid_s.to(pos_s.dtype).permute(0, 2, 3, 1).reshape(h * w, -1)
        if t != t0:
            line = pos_t.transpose(0, 1).unsqueeze(0)  # (1, D, T0)
            line = F.interpolate(line.float(), size=t, mode="linear", align_corners=False)
            pos_t = line.to(pos_t.dtype)[0].transpose(0, 1)
        return pos_t, pos_s

    def table(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """Joint ``(1, T'H'W', D)`` table, time slowest; ``[0, t*H'W' + s] = pos_t[t] + pos_s[s]``."""
        if self.kind == "sincos":
            key = tuple(grid)
            cached = self._cache.get(key)
            if cached is None:
                pos_t, pos_s = self.tables(grid)
                cached = (pos_t[:, None, :] + pos_s[None, :, :]).reshape(1, -1, self.embed_dim)
                self._cache[key] = cached
            return cached
        pos_t, pos_s = self.tables(grid)
        return (pos_t[:, None, :] + pos_s[None, :, :]).reshape(1, -1, self.embed_dim)

    def forward(
        self, tokens: torch.Tensor, grid: tuple[int, int, int], keep_idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``tokens + positions``; with ``keep_idx (B, K)`` the tokens are the kept subset ``(B, K, D)``."""
        if keep_idx is None:
            pos = self.table(grid).to(device=tokens.device, dtype=tokens.dtype)
            if tokens.shape[1] != pos.shape[1]:
                raise ValueError(f"{tokens.shape[1]} tokens for a grid {tuple(grid)} of {pos.shape[1]} positions")
            return tokens + pos
        if self.kind == "sincos":  # a cached constant: gather its rows
            pos = self.table(grid).to(device=tokens.device, dtype=tokens.dtype).expand(keep_idx.shape[0], -1, -1)
            return tokens + torch.gather(pos, 1, keep_idx.unsqueeze(-1).expand(-1, -1, self.embed_dim))
        # Learned: index the two small tables instead of the joint one, whose backward would write
        # an (N, D) gradient to keep K rows of it. Same sum, pos_t[t] + pos_s[s].
        pos_t, pos_s = self.tables(grid)
        hw = grid[1] * grid[2]
        pos_t = pos_t.to(device=tokens.device, dtype=tokens.dtype)
        pos_s = pos_s.to(device=tokens.device, dtype=tokens.dtype)
        return tokens + (F.embedding(keep_idx // hw, pos_t) + F.embedding(keep_idx % hw, pos_s))

    def extra_repr(self) -> str:
        return f"kind={self.kind}, grid_size={self.grid_size}, embed_dim={self.embed_dim}"


def resample_separable(
    spatial: torch.Tensor, temporal: torch.Tensor, grid: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Learned separable tables ``spatial (1, h*w, D)`` (a square grid) and ``temporal (1, t, D)``
    resampled to ``grid = (T, H, W)`` with the interpolation :meth:`SeparablePosEmbed.tables` applies to
    other clip sizes (bicubic in space, linear in time; a one-step time table is repeated)."""
    import math

    side = math.isqrt(spatial.shape[1])
    if side * side != spatial.shape[1]:
        raise ValueError(f"a spatial position table of {spatial.shape[1]} rows is not a square grid")
    src = (int(temporal.shape[1]), side, side)
    table = SeparablePosEmbed(spatial.shape[-1], src)
    with torch.no_grad():
        table.spatial.copy_(spatial)
        table.temporal.copy_(temporal)
        pos_t, pos_s = table.tables(tuple(int(g) for g in grid))
    return pos_s.unsqueeze(0).to(spatial.dtype).contiguous(), pos_t.unsqueeze(0).to(temporal.dtype).contiguous()
