"""Slow-only 3-D ResNet (the Slow pathway of SlowFast, Feichtenhofer et al., arXiv 1812.03982, Table 1),
the backbone of rho-SSL (arXiv 2104.14558, Sec. 4 "Implementation details").

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

import torch
from torch import nn

from tubelet.models.heads import ClassifierHead
from tubelet.models.layers import DropPath
from tubelet.models.base import BackboneConfig
from tubelet.models.registry import register_model

__all__ = ["ResNet3dConfig", "ResNet3d", "Bottleneck3d"]


@dataclass(frozen=True)
class ResNet3dConfig(BackboneConfig):
    """One Slow-only ResNet variant; ``num_frames``/``img_size`` are accepted for the recipe interface
    (the network is fully convolutional and takes any input size)."""

    depths: list[int] = field(default_factory=lambda: [3, 4, 6, 3])
    width: int = 64  # stem width = res2 bottleneck width; stage s is width * 2**s inner, 4x that out
    temporal_kernels: list[int] = field(default_factory=lambda: [1, 1, 3, 3])  # first conv of each block
    stem_temporal_kernel: int = 1
    expansion: int = 4
    num_frames: int = 8
    head_dropout: float = 0.5
    head_init_std: float = 0.01
    zero_init_last_bn: bool = True
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1


class Bottleneck3d(nn.Module):
    """``x + BN(conv_c(ReLU(BN(conv_b(ReLU(BN(conv_a(x))))))))`` with conv_a ``kt x 1 x 1``, conv_b
    ``1 x 3 x 3`` (carrying the spatial stride) and conv_c ``1 x 1 x 1``; a strided 1x1x1 projection on
    the shortcut when the shape changes."""

    def __init__(
        self, dim_in: int, inner: int, dim_out: int, kt: int, stride: int, drop_path: float, cfg: ResNet3dConfig
    ) -> None:
        super().__init__()
        bn = lambda c: nn.BatchNorm3d(c, eps=cfg.bn_eps, momentum=cfg.bn_momentum)  # noqa: E731
        self.conv_a = nn.Conv3d(dim_in, inner, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)
        self.bn_a = bn(inner)
        self.conv_b = nn.Conv3d(inner, inner, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False)
        self.bn_b = bn(inner)
        self.conv_c = nn.Conv3d(inner, dim_out, 1, bias=False)
        self.bn_c = bn(dim_out)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if dim_in != dim_out or stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv3d(dim_in, dim_out, 1, stride=(1, stride, stride), bias=False), bn(dim_out)
            )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn_a(self.conv_a(x)))
        y = self.act(self.bn_b(self.conv_b(y)))
        y = self.bn_c(self.conv_c(y))
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.act(skip + self.drop_path(y))


class ResNet3d(nn.Module):
    """Slow-only 3-D ResNet, ``(B, C, T, H, W) -> logits (B, num_classes)``."""

    def __init__(self, cfg: ResNet3dConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ResNet3dConfig()
        if len(cfg.depths) != 4 or len(cfg.temporal_kernels) != 4:
            raise ValueError("depths and temporal_kernels must have one entry per stage (4)")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_prefix_tokens = 0
        kt = cfg.stem_temporal_kernel
        self.stem = nn.Sequential(
            nn.Conv3d(cfg.in_chans, cfg.width, (kt, 7, 7), stride=(1, 2, 2), padding=(kt // 2, 3, 3), bias=False),
            nn.BatchNorm3d(cfg.width, eps=cfg.bn_eps, momentum=cfg.bn_momentum),
            nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        total = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        dim_in, k = cfg.width, 0
        stages = []
        for s, (depth, tk) in enumerate(zip(cfg.depths, cfg.temporal_kernels)):
            inner = cfg.width * 2**s
            dim_out = inner * cfg.expansion
            blocks = []
            for b in range(depth):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(Bottleneck3d(dim_in, inner, dim_out, tk, stride, rates[k], cfg))
                dim_in, k = dim_out, k + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.embed_dim = dim_in  # 2048 for R-50
        self.head = ClassifierHead(self.embed_dim, cfg.num_classes, cfg.head_dropout, cfg.head_init_std)
        self.init_weights()

    def init_weights(self) -> None:
        """He (fan-out) init for convs, unit BN, zero final BN of each block (SlowFast's init)."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.cfg.zero_init_last_bn:
            for m in self.modules():
                if isinstance(m, Bottleneck3d):
                    nn.init.zeros_(m.bn_c.weight)
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
        """``(B, C, T, H, W) -> (B, 2048, T, H/32, W/32)``."""
        if x.dim() != 5:
            raise ValueError(f"expected a batch of clips (B, C, T, H, W), got shape {tuple(x.shape)}")
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
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
def build_resnet3d(cfg: ResNet3dConfig) -> ResNet3d:
    return ResNet3d(cfg)
