"""Depthwise 3-D convolution that keeps fp32 under CPU autocast.

The pooling of MViTv2's attention (arXiv 2112.01526, Sec. 3.1: a depthwise Conv3d per head) and MeMViT's
memory compressors (arXiv 2201.08383, Sec. 3.2) are depthwise Conv3d layers on the token-major, i.e.
channels-last, layout that ``pool_tokens`` hands them. CPU autocast runs every convolution in bf16, and
oneDNN's bf16 depthwise Conv3d on that layout is 2.6-6.4x slower than fp32 (forward and backward of the
MViTv2-S pooling shapes on a Zen 4, whose bf16 GEMMs are 2x fp32): in an MViTv2-S bf16-mixed training step
these convolutions' backward took 1.57 s against 0.32 s in fp32, more than the bf16 matmuls saved. They are
a small share of the FLOPs, so here they run in fp32 whatever autocast says; on a GPU, without autocast
and in exported graphs the layer is ``nn.Conv3d`` (same parameters, same state-dict keys).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DepthwiseConv3d"]


class DepthwiseConv3d(nn.Conv3d):
    """``nn.Conv3d(channels, channels, kernel_size, groups=channels)``; under CPU autocast the input is
    cast to fp32 and the convolution runs in fp32 (the output is fp32: the LayerNorm after it runs in fp32
    under autocast anyway)."""

    def __init__(self, channels: int, kernel_size, stride=1, padding=0, bias: bool = False) -> None:
        super().__init__(channels, channels, kernel_size, stride=stride, padding=padding, groups=channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)
