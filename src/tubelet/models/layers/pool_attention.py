"""Pooling attention of MViTv2 (Li et al., arXiv 2112.01526, Sec. 3.1-3.2, Fig. 2).

``Attn(X) = Softmax(Q K^T / sqrt(d) + E_rel) V + Q`` with ``Q = P_Q(X W_Q)``, ``K = P_K(X W_K)``,
``V = P_V(X W_V)``: P_* is a depthwise convolution over the token grid run per head (weights shared by
all heads) followed by LayerNorm(head_dim); E_rel is the decomposed relative-position term
(``layers/rel_pos.py``, Eq. 3) computed from the unscaled query; "+ Q" is residual pooling (Eq. 4).
A CLS token (when present, index 0) skips the convolutions and gets no relative term nor residual.

Attention runs in ``F.scaled_dot_product_attention``. Two exact formulations of the relative term:

- ``"mask"``: the term is broadcast once into a dense ``(B, heads, Nq, Nk)`` float bias passed as
  ``attn_mask``. Fastest without autograd; but a bias that requires grad makes torch's CPU kernels fall
  back to the unfused math path (measured 1.5-1.7x slower per attention with backward).
- ``"concat"``: ``[Q, sqrt(d) rel_t, sqrt(d) rel_h, sqrt(d) rel_w] . [K, onehot_t, onehot_h, onehot_w]``,
  scaled by ``1/sqrt(d)`` reproduces the same logits as one dot product (V is zero-padded to the same
  width), so the fused kernel runs in training too. It adds ``Tk + Hk + Wk`` (about 20-40) columns
  to head_dim 96 in the two matmuls.
- ``"auto"`` (default) uses ``"concat"`` on CPU, where it was measured faster with and without
  autograd (the dense bias costs a full-size write and read per block), and ``"mask"`` on other
  devices, including the meta device on which FLOPs are counted (so counts keep the paper's
  multiply-adds); ``"math"`` is the explicit reference (softmax of a materialised logit matrix).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tubelet.models.layers.depthwise import DepthwiseConv3d
from tubelet.models.layers.rel_pos import (
    decomposed_rel_pos,
    rel_pos_bias,
    rel_pos_onehot,
    rel_pos_table_size,
)

Grid = tuple[int, int, int]
ATTN_IMPLS = ("auto", "mask", "concat", "math")


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling along one axis (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def pool_grid(grid: Grid, kernel: Grid, stride: Grid) -> Grid:
    """Token grid after a pooling conv with padding ``kernel // 2``."""
    return tuple(conv_out_size(g, k, s, k // 2) for g, k, s in zip(grid, kernel, stride))  # type: ignore[return-value]


def pool_tokens(
    x: torch.Tensor, pool: nn.Module | None, grid: Grid, num_prefix: int, spatial_only: bool
) -> tuple[torch.Tensor, Grid]:
    """Apply a spatial(-temporal) ``pool`` to the patch tokens of ``x``; prefix (CLS) tokens pass through.

    ``x`` is ``(B, N, C)`` or per head ``(B, heads, N, C)``; tokens are time-slowest over ``grid``.
    ``spatial_only`` pools with a 2-D module (image models, ``T == 1``).
    """
    if pool is None:
        return x, grid
    squeeze = x.ndim == 3
    if squeeze:
        x = x.unsqueeze(1)
    prefix, x = x[:, :, :num_prefix], x[:, :, num_prefix:]
    B, n, L, C = x.shape
    T, H, W = grid
    # Token-major memory is exactly channels-last for the pooling op: CPU depthwise Conv3d and MaxPool3d
    # are tens of times faster on a dense channels-last input than on channels-first (or strided) ones,
    # and their channels-last output reads back as tokens without a copy.
    x = x.reshape(B * n, T, H, W, C).contiguous().permute(0, 4, 1, 2, 3)
    if spatial_only:
        x = pool(x.squeeze(2)).unsqueeze(2)
    else:
        x = pool(x)
    new_grid: Grid = (x.shape[2], x.shape[3], x.shape[4])
    x = x.permute(0, 2, 3, 4, 1).reshape(B, n, -1, C)
    if num_prefix:
        x = torch.cat((prefix, x), dim=2)
    if squeeze:
        x = x.squeeze(1)
    return x, new_grid


class PoolingAttention(nn.Module):
    """Multi-head pooling attention, ``(B, N, dim) -> (B, Nq, dim_out)`` with the pooled query grid.

    Args:
        dim: input width. dim_out: attention width (``dim_mul_in_att`` puts the doubling here).
        num_heads: heads; ``head_dim = dim_out // num_heads``.
        input_grid: ``(T, H, W)`` token grid at build time; sizes the relative-position tables.
        kernel: pooling kernel ``(kt, kh, kw)``; q_stride, kv_stride: pooling strides.
        rel_pos_spatial, rel_pos_temporal: decomposed relative positions along (h, w) and t; independent
            of each other (the temporal one needs a 3-D grid: it is off for ``spatial_only``).
        residual_pooling: add the pooled query to the attention output (patch tokens only).
        num_prefix: leading tokens (CLS) that are not pooled.
        spatial_only: 2-D pooling convs (image models; the grid has ``T == 1``).
        attn_impl: ``"auto" | "mask" | "concat" | "math"`` (see the module docstring).
        q_pool_unstrided: pool Q also in blocks without a query stride (v2); False: only strided (MViTv1).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        input_grid: Grid,
        kernel: Grid = (3, 3, 3),
        q_stride: Grid = (1, 1, 1),
        kv_stride: Grid = (1, 1, 1),
        qkv_bias: bool = True,
        rel_pos_spatial: bool = True,
        rel_pos_temporal: bool = True,
        residual_pooling: bool = True,
        num_prefix: int = 1,
        spatial_only: bool = False,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        proj_drop: float = 0.0,
        attn_impl: str = "auto",
        q_pool_unstrided: bool = True,
    ) -> None:
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"dim_out {dim_out} is not divisible by num_heads {num_heads}")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got '{attn_impl}'")
        self.num_heads = num_heads
        self.dim_out = dim_out
        self.head_dim = dim_out // num_heads
        self.scale = self.head_dim**-0.5
        self.num_prefix = num_prefix
        self.spatial_only = spatial_only
        self.residual_pooling = residual_pooling
        self.attn_impl = attn_impl
        self.kernel = tuple(kernel)
        self.q_stride = tuple(q_stride)
        self.kv_stride = tuple(kv_stride)

        self.qkv = nn.Linear(dim, 3 * dim_out, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

        # Per-head depthwise pooling: the conv sees head_dim channels, so one set of weights serves every
        # head. A (1,1,1) kernel with stride 1 would be the identity and is skipped, as in the reference.
        def make_pool(stride: Grid) -> tuple[nn.Module | None, nn.Module | None]:
            if math.prod(self.kernel) == 1 and math.prod(stride) == 1:
                return None, None
            hd = self.head_dim
            if spatial_only:
                conv: nn.Module = nn.Conv2d(
                    hd, hd, self.kernel[1:], stride=stride[1:], padding=[k // 2 for k in self.kernel[1:]], groups=hd,
                    bias=False,
                )
            else:
                pad = [k // 2 for k in self.kernel]
                conv = DepthwiseConv3d(hd, self.kernel, stride=stride, padding=pad)
            return conv, norm_layer(hd)

        # MViTv1 pools (and normalises) the query only where it has a stride; v2 in every block.
        if q_pool_unstrided or math.prod(self.q_stride) > 1:
            self.pool_q, self.norm_q = make_pool(self.q_stride)
        else:
            self.pool_q, self.norm_q = None, None
        self.pool_k, self.norm_k = make_pool(self.kv_stride)
        self.pool_v, self.norm_v = make_pool(self.kv_stride)

        q_grid = pool_grid(input_grid, self.kernel, self.q_stride) if self.pool_q is not None else input_grid
        k_grid = pool_grid(input_grid, self.kernel, self.kv_stride) if self.pool_k is not None else input_grid
        self.rel_pos_spatial = rel_pos_spatial
        self.rel_pos_temporal = rel_pos_temporal and not spatial_only
        if rel_pos_spatial:
            self.rel_pos_h = nn.Parameter(torch.zeros(rel_pos_table_size(q_grid[1], k_grid[1]), self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(rel_pos_table_size(q_grid[2], k_grid[2]), self.head_dim))
            nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
            nn.init.trunc_normal_(self.rel_pos_w, std=0.02)
        if self.rel_pos_temporal:
            self.rel_pos_t = nn.Parameter(torch.zeros(rel_pos_table_size(q_grid[0], k_grid[0]), self.head_dim))
            nn.init.trunc_normal_(self.rel_pos_t, std=0.02)

    def _pool(
        self, x: torch.Tensor, pool: nn.Module | None, norm: nn.Module | None, grid: Grid
    ) -> tuple[torch.Tensor, Grid]:
        if pool is None:
            return x, grid
        x, grid = pool_tokens(x, pool, grid, self.num_prefix, self.spatial_only)
        return norm(x), grid  # the reference normalises CLS too

    def _resolve_impl(self, q: torch.Tensor) -> str:
        if self.attn_impl != "auto":
            return self.attn_impl
        # On CPU "concat" was measured faster in training and inference (the dense bias costs a
        # full-size write and read per block). Elsewhere (and on the meta device, where FLOPs are
        # counted) the bias form keeps the paper's multiply-add count.
        return "concat" if q.device.type == "cpu" else "mask"

    def forward(self, x: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, Grid]:
        """``x``: ``(B, N, dim)`` with N = prefix + T*H*W over ``grid``. Returns ``(B, Nq, dim_out)``, q grid."""
        B, N, _ = x.shape
        n, d, p = self.num_heads, self.head_dim, self.num_prefix
        q, k, v = self.qkv(x).reshape(B, N, 3, n, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B, n, N, d) each
        q, q_grid = self._pool(q, self.pool_q, self.norm_q, grid)
        k, k_grid = self._pool(k, self.pool_k, self.norm_k, grid)
        v, _ = self._pool(v, self.pool_v, self.norm_v, grid)
        Nk = k.shape[2]

        if not (self.rel_pos_spatial or self.rel_pos_temporal):
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            rel_t, rel_h, rel_w = decomposed_rel_pos(
                q[:, :, p:],
                q_grid,
                k_grid,
                self.rel_pos_t if self.rel_pos_temporal else None,
                self.rel_pos_h if self.rel_pos_spatial else None,
                self.rel_pos_w if self.rel_pos_spatial else None,
            )
            impl = self._resolve_impl(q)
            if impl == "concat":
                rel = torch.cat([r for r in (rel_t, rel_h, rel_w) if r is not None], dim=-1)  # (B, n, Nq-p, e)
                e = rel.shape[-1]
                # SDPA scales the whole dot product, so the (small) relative columns are pre-divided
                # instead of scaling the (large) query. CLS rows get no term.
                q_aug = torch.cat((q, F.pad(rel / self.scale, (0, 0, p, 0))), dim=-1)
                code = rel_pos_onehot(k_grid, rel_t is not None, q.device, q.dtype, spatial=rel_h is not None)
                code = F.pad(code, (0, 0, p, 0))  # CLS key: no code
                k_aug = torch.cat((k, code.expand(B, n, Nk, e)), dim=-1)
                out = F.scaled_dot_product_attention(q_aug, k_aug, F.pad(v, (0, e)), scale=self.scale)[..., :d]
            else:
                bias = rel_pos_bias(rel_t, rel_h, rel_w, k_grid, p)
                if impl == "mask":
                    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
                else:  # "math": the explicit formulation, for reference and tests
                    attn = (q * self.scale) @ k.transpose(-2, -1) + bias
                    out = attn.softmax(dim=-1) @ v

        return self._output(out, q), q_grid

    def _output(self, out: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Residual pooling (``+ Q`` on the patch tokens), heads merged, output projection:
        ``(B, heads, Nq, d) -> (B, Nq, dim_out)``."""
        B, _, Nq, _ = out.shape
        p = self.num_prefix
        if self.residual_pooling:
            if p:
                # Residual pooling skips CLS (the reference adds Q to patch tokens only).
                keep = (torch.arange(Nq, device=q.device) >= p).to(q.dtype)[:, None]
                out = torch.addcmul(out, q, keep)
            else:
                out = out + q
        out = out.transpose(1, 2).reshape(B, Nq, self.dim_out)
        return self.proj_drop(self.proj(out))


@contextlib.contextmanager
def paper_formulation(model: nn.Module) -> Iterator[None]:
    """Within the block, every :class:`PoolingAttention` of ``model`` runs the ``"mask"`` formulation: the
    paper's multiply-adds (Q K^T and A V at head_dim, the relative term as per-axis products). The
    ``"concat"`` form (the CPU default) computes the same logits but through ``Tk + Hk + Wk`` extra
    columns, which a FLOP count would report as cost the model does not have (68.5 instead of 64.2
    GMACs for MViTv2-S at 16x224^2). The previous settings are restored on exit."""
    saved = [(m, m.attn_impl) for m in model.modules() if isinstance(m, PoolingAttention)]
    try:
        for m, _ in saved:
            m.attn_impl = "mask"
        yield
    finally:
        for m, impl in saved:
            m.attn_impl = impl
