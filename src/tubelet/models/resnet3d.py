"""3-D ResNets of the PyTorchVideo model zoo on one set of blocks: Slow-only (the Slow pathway of
SlowFast, Feichtenhofer et al., arXiv 1812.03982, Table 1; the backbone of rho-SSL, arXiv 2104.14558,
Sec. 4), C2D and I3D R-50 (Wang et al., arXiv 1711.07971, Table 1; Carreira & Zisserman, arXiv
1705.07750), R(2+1)D-50 (Tran et al., arXiv 1711.11248, Sec. 3.5) and ir-CSN-101/152 (Tran et al.,
arXiv 1904.02811, Sec. 3.3). They differ only in the stem's temporal kernel and pool, the temporal
kernel of each block's ``conv_a``, the form of ``conv_b`` (``block``: ``"2d"`` 1x3x3, ``"2plus1d"`` 3x1x1
then 1x3x3, ``"channelwise"`` 3x3x3 with one group per channel), the per-stage strides and an optional
temporal max-pool after res2 (C2D, I3D).

Slow R-50 8x8: conv1 1x7x7 (stride 1x2x2) and a 1x3x3 max-pool, then four stages of bottleneck blocks
(3, 4, 6, 3) whose first conv has temporal kernel 1 in res2-res3 and 3 in res4-res5 ("non-degenerate"
temporal convs only late, where the receptive field is large enough). Time is never downsampled, so
an 8-frame clip keeps 8 frames to the end; 224 px becomes 7x7. BatchNorm after every conv; the last BN
of each block starts at zero (residual blocks begin as identities, as SlowFast's ZERO_INIT_FINAL_BN).

Interface as every tubelet backbone (timm style): ``forward_features(x) -> tokens (B, T'*H'*W', 2048)``
in time-slowest order (no CLS), ``forward_head(tokens, pre_logits)`` averages them (global average
pooling), applies dropout and the linear classifier. ``num_layers()``/``get_layer_id`` number the
stem 0 and the residual blocks 1..16.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from tubelet.models.heads import ClassifierHead
from tubelet.models.layers import DropPath
from tubelet.models.base import BackboneConfig
from tubelet.models.registry import register_model

__all__ = ["ResNet3dConfig", "ResNet3d", "Bottleneck3d", "Conv2plus1d", "make_stem", "block_kernels"]

BlockKind = Literal["2d", "2plus1d", "channelwise"]


@dataclass(frozen=True)
class ResNet3dConfig(BackboneConfig):
    """One Slow-only ResNet variant; ``num_frames``/``img_size`` are accepted for the recipe interface
    (the network is fully convolutional and takes any input size)."""

    depths: list[int] = field(default_factory=lambda: [3, 4, 6, 3])
    width: int = 64  # stem width = res2 bottleneck width; stage s is width * 2**s inner, 4x that out
    # temporal kernel of conv_a per stage; a list inside cycles over the stage's blocks (I3D's [3, 1])
    temporal_kernels: list[int | list[int]] = field(default_factory=lambda: [1, 1, 3, 3])
    stem_temporal_kernel: int = 1
    stem_pool: bool = True  # the 1x3x3 max-pool after the stem (R(2+1)D has none)
    block: BlockKind = "2d"  # form of conv_b (see the module docstring)
    conv_b_temporal_kernel: int = 3  # temporal extent of conv_b for "2plus1d" / "channelwise"
    spatial_strides: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    temporal_strides: list[int] = field(default_factory=lambda: [1, 1, 1, 1])  # carried by conv_b
    pool_after_res2: bool = False  # C2D / I3D: temporal max-pool 2x1x1 after res2 (PySlowFast _POOL1)
    expansion: int = 4
    num_frames: int = 8
    head_dropout: float = 0.5
    head_init_std: float = 0.01
    zero_init_last_bn: bool = True
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1


def block_kernels(spec: int | list[int], depth: int) -> list[int]:
    """Per-block temporal kernels of a stage: one int for all blocks, or a list repeated cyclically."""
    pattern = [spec] if isinstance(spec, int) else list(spec)
    return [int(pattern[i % len(pattern)]) for i in range(depth)]


class Conv2plus1d(nn.Module):
    """R(2+1)D's factorised conv_b (arXiv 1711.11248, Sec. 3.5): ``conv_t`` (kt x 1 x 1, temporal
    stride) -> BN -> ReLU -> ``conv_xy`` (1 x 3 x 3, spatial stride). The inner width equals the output
    width, as in PyTorchVideo's zoo model (not the paper's parameter-matched M_i), so that its weights load."""

    def __init__(self, dim: int, kt: int, t_stride: int, stride: int, bn) -> None:
        super().__init__()
        self.conv_t = nn.Conv3d(dim, dim, (kt, 1, 1), stride=(t_stride, 1, 1), padding=(kt // 2, 0, 0), bias=False)
        self.bn_t = bn(dim)
        self.conv_xy = nn.Conv3d(dim, dim, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_xy(torch.relu(self.bn_t(self.conv_t(x))))


class Bottleneck3d(nn.Module):
    """``x + BN(conv_c(ReLU(BN(conv_b(ReLU(BN(conv_a(x))))))))`` with conv_a ``kt x 1 x 1``, conv_b
    (``block``: ``1 x 3 x 3``; ``2plus1d``: :class:`Conv2plus1d`; ``channelwise``: ``3 x 3 x 3`` with
    ``inner`` groups) carrying the stride ``(t_stride, stride, stride)``, and conv_c ``1 x 1 x 1``; a
    strided 1x1x1 projection on the shortcut when the shape changes."""

    def __init__(
        self, dim_in: int, inner: int, dim_out: int, kt: int, stride: int, drop_path: float, cfg: ResNet3dConfig,
        t_stride: int = 1, block: str | None = None,
    ) -> None:
        super().__init__()
        bn = lambda c: nn.BatchNorm3d(c, eps=cfg.bn_eps, momentum=cfg.bn_momentum)  # noqa: E731
        block = block or getattr(cfg, "block", "2d")
        kb = int(getattr(cfg, "conv_b_temporal_kernel", 3))
        self.conv_a = nn.Conv3d(dim_in, inner, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)
        self.bn_a = bn(inner)
        if block == "2d":
            self.conv_b: nn.Module = nn.Conv3d(inner, inner, (1, 3, 3), stride=(t_stride, stride, stride),
                                               padding=(0, 1, 1), bias=False)
        elif block == "2plus1d":
            self.conv_b = Conv2plus1d(inner, kb, t_stride, stride, bn)
        elif block == "channelwise":
            self.conv_b = nn.Conv3d(inner, inner, (kb, 3, 3), stride=(t_stride, stride, stride),
                                    padding=(kb // 2, 1, 1), groups=inner, bias=False)
        else:
            raise ValueError(f"block must be '2d', '2plus1d' or 'channelwise', got '{block}'")
        self.bn_b = bn(inner)
        self.conv_c = nn.Conv3d(inner, dim_out, 1, bias=False)
        self.bn_c = bn(dim_out)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if dim_in != dim_out or stride != 1 or t_stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv3d(dim_in, dim_out, 1, stride=(t_stride, stride, stride), bias=False), bn(dim_out)
            )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn_a(self.conv_a(x)))
        y = self.act(self.bn_b(self.conv_b(y)))
        y = self.bn_c(self.conv_c(y))
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.act(skip + self.drop_path(y))


def init_bottleneck_net(model: nn.Module, zero_init_last_bn: bool) -> None:
    """PySlowFast's init of a network of :class:`Bottleneck3d` blocks: He (fan-out) convs, unit BN, and with
    ``zero_init_last_bn`` the last BN of every block at zero, so that each block starts as an identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_last_bn:
        for m in model.modules():
            if isinstance(m, Bottleneck3d):
                nn.init.zeros_(m.bn_c.weight)


def make_stem(in_chans: int, width: int, kt: int, pool: bool, bn_eps: float, bn_momentum: float) -> nn.Sequential:
    """conv ``kt x 7 x 7`` (stride 1x2x2) -> BN -> ReLU [-> max-pool 1x3x3, stride 1x2x2]."""
    layers: list[nn.Module] = [
        nn.Conv3d(in_chans, width, (kt, 7, 7), stride=(1, 2, 2), padding=(kt // 2, 3, 3), bias=False),
        nn.BatchNorm3d(width, eps=bn_eps, momentum=bn_momentum),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)))
    return nn.Sequential(*layers)


def make_stage(dim_in: int, inner: int, dim_out: int, depth: int, kts: list[int], stride: int, t_stride: int,
               rates: list[float], cfg, block: str | None = None) -> nn.Sequential:
    """``depth`` bottlenecks; the first carries the stage's strides and the width change."""
    blocks = [
        Bottleneck3d(dim_in if b == 0 else dim_out, inner, dim_out, kts[b], stride if b == 0 else 1, rates[b], cfg,
                     t_stride if b == 0 else 1, block)
        for b in range(depth)
    ]
    return nn.Sequential(*blocks)


class ResNet3d(nn.Module):
    """A 3-D ResNet of the zoo, ``(B, C, T, H, W) -> logits (B, num_classes)``."""

    def __init__(self, cfg: ResNet3dConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ResNet3dConfig()
        if len(cfg.depths) != 4 or len(cfg.temporal_kernels) != 4:
            raise ValueError("depths and temporal_kernels must have one entry per stage (4)")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_prefix_tokens = 0
        n = len(cfg.depths)
        if not (len(cfg.spatial_strides) == len(cfg.temporal_strides) == n):
            raise ValueError("depths, spatial_strides and temporal_strides must have one entry per stage")
        self.stem = make_stem(cfg.in_chans, cfg.width, cfg.stem_temporal_kernel, cfg.stem_pool, cfg.bn_eps,
                              cfg.bn_momentum)
        total = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        dim_in, k = cfg.width, 0
        stages = []
        for s, (depth, tk) in enumerate(zip(cfg.depths, cfg.temporal_kernels)):
            inner = cfg.width * 2**s
            dim_out = inner * cfg.expansion
            stages.append(make_stage(dim_in, inner, dim_out, depth, block_kernels(tk, depth), cfg.spatial_strides[s],
                                     cfg.temporal_strides[s], rates[k : k + depth], cfg))
            dim_in, k = dim_out, k + depth
        self.stages = nn.ModuleList(stages)
        # C2D / I3D halve time after res2 (no parameters; PySlowFast's pathway0_pool)
        self.res2_pool = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1)) if cfg.pool_after_res2 else None
        self.embed_dim = dim_in  # 2048 for R-50
        self.head = ClassifierHead(self.embed_dim, cfg.num_classes, cfg.head_dropout, cfg.head_init_std)
        self.init_weights()

    def init_weights(self) -> None:
        """He (fan-out) init for convs, unit BN, zero final BN of each block (SlowFast's init)."""
        init_bottleneck_net(self, self.cfg.zero_init_last_bn)
        self.head.init_weights()

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def num_layers(self) -> int:
        return sum(self.cfg.depths)

    def get_layer_id(self, param_name: str) -> int:
        """0 stem, 1..16 residual blocks in order, 17 head."""
        if param_name.startswith("stem"):
            return 0
        if param_name.startswith("stages."):
            parts = param_name.split(".")
            s, b = int(parts[1]), int(parts[2])
            return sum(self.cfg.depths[:s]) + b + 1
        return self.num_layers() + 1

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W) -> (B, 2048, T / prod(temporal strides) [/ 2 with pool_after_res2], H/32, W/32)``."""
        if x.dim() != 5:
            raise ValueError(f"expected a batch of clips (B, C, T, H, W), got shape {tuple(x.shape)}")
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == 0 and self.res2_pool is not None:
                x = self.res2_pool(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final feature map as tokens ``(B, T'*H'*W', D)``, time slowest (no CLS)."""
        return self.forward_feature_map(x).flatten(2).transpose(1, 2)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = tokens.mean(dim=1)  # global average pooling over space-time
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("slow_r50", ResNet3dConfig(), "Slow-only 3D ResNet-50, 8x8 clips (SlowFast; rho-SSL backbone)")
@register_model(
    "slow_r18",
    ResNet3dConfig(depths=[2, 2, 2, 2], expansion=1, width=64),
    "Slow-only 3D ResNet with 2 blocks per stage and no expansion (small, for quick runs)",
)
@register_model(
    "c2d_r50",
    ResNet3dConfig(temporal_kernels=[1, 1, 1, 1], pool_after_res2=True),
    "C2D R-50 8x8: 2-D ResNet-50 per frame, temporal max-pool after res2 (PyTorchVideo zoo)",
)
@register_model(
    "i3d_r50",
    ResNet3dConfig(stem_temporal_kernel=5, temporal_kernels=[3, [3, 1], [3, 1], [1, 3]], pool_after_res2=True),
    "I3D R-50 8x8: 5x7x7 stem, inflated 3x1x1 conv_a in alternate blocks (PyTorchVideo zoo)",
)
@register_model(
    "r2plus1d_r50",
    ResNet3dConfig(num_frames=16, temporal_kernels=[1, 1, 1, 1], stem_pool=False, block="2plus1d",
                   spatial_strides=[2, 2, 2, 2], temporal_strides=[1, 1, 2, 2]),
    "R(2+1)D-50 16x4: factorised (2+1)D conv_b in every block (PyTorchVideo zoo)",
)
@register_model(
    "csn_r101",
    ResNet3dConfig(num_frames=32, depths=[3, 4, 23, 3], stem_temporal_kernel=3, temporal_kernels=[1, 1, 1, 1],
                   block="channelwise", temporal_strides=[1, 2, 2, 2], head_dropout=0.0),
    "ir-CSN-101 32x2: channel-separated 3x3x3 conv_b (PyTorchVideo zoo)",
)
@register_model(
    "csn_r152",
    ResNet3dConfig(num_frames=32, depths=[3, 8, 36, 3], stem_temporal_kernel=3, temporal_kernels=[1, 1, 1, 1],
                   block="channelwise", temporal_strides=[1, 2, 2, 2], head_dropout=0.0),
    "ir-CSN-152 32x2: channel-separated 3x3x3 conv_b (arXiv 1904.02811)",
)
def build_resnet3d(cfg: ResNet3dConfig) -> ResNet3d:
    return ResNet3d(cfg)
