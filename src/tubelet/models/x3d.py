"""X3D: Expanding Architectures for Efficient Video Recognition (Feichtenhofer, arXiv 2004.04730).

A 2-D mobile network (channel-wise separable 3x3x3 convs in inverted bottlenecks) expanded along
frames, resolution, width and depth (Sec. 3, Table 1). XS, S and M share one network (width factor
2.0, depth factor 2.2, 3.79M parameters) and differ only in input: XS 4x160 (test 182), S 13x160
(test 182), M 16x224 (test 256); L has depth factor 5.0 (6.15M) at 16x312 (test 356).

Layout (Table 1, ``gamma_b = 2.25`` bottleneck expansion):

- stem: a 1x3x3 conv (stride 1x2x2, no norm) then a depthwise 5x1x1 temporal conv, BN, ReLU: 24 ch;
- four stages of 3/5/11/7 (L: 5/10/25/15) residual blocks with outputs 24/48/96/192 and inner width
  54/108/216/432; block: 1x1x1 conv, BN, ReLU; depthwise 3x3x3 conv (stride 1x2x2 in the first block
  of every stage), BN, squeeze-excitation (every other block, ratio 1/16), Swish; 1x1x1 conv, BN;
  ReLU after the residual sum. Time is never downsampled;
- head (Sec. 3, "conv5" and "fc"): 1x1x1 conv 192 -> 432, BN, ReLU, global average pooling, a
  432 -> 2048 linear (a 1x1x1 conv without bias) and ReLU, dropout 0.5, the classifier.

``efficient_x3d_xs`` and ``efficient_x3d_s`` are the accelerator form of PyTorchVideo's mobile-CPU
model zoo (``EfficientX3d(expansion="XS" | "S")``, one network for two input sizes): the same blocks, but the stride-2 shortcut of the first block,
whose width does not change, is normalised too (the reference X3D leaves that one projection without
BN). ``se_ratio=0`` and ``inner_act="relu"`` give the operator set of mobile runtimes without SE and
Swish.

Interface as every tubelet backbone: ``forward_features(x) -> tokens (B, T'H'W', 432)`` (after conv5,
time slowest, no CLS); ``forward_head(tokens, pre_logits)`` averages them and applies the 2048-wide
projection (``pre_logits`` returns that 2048-d feature), dropout and the classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from tubelet.models.base import BackboneConfig
from tubelet.models.heads import ClassifierHead
from tubelet.models.layers import DropPath
from tubelet.models.registry import register_model

__all__ = ["X3DConfig", "X3D", "X3DBlock", "SqueezeExcite", "round_width"]


def round_width(width: float, multiplier: float, min_width: int = 8, divisor: int = 8) -> int:
    """``width * multiplier`` rounded to a multiple of ``divisor`` (at least ``min_width``), bumped
    by one divisor when rounding lost more than 10%: the channel rule of the X3D release."""
    w = width * multiplier
    out = max(min_width, int(w + divisor / 2) // divisor * divisor)
    if out < 0.9 * w:
        out += divisor
    return int(out)


@dataclass(frozen=True)
class X3DConfig(BackboneConfig):
    """One X3D variant; defaults are X3D-S (13 frames at 160 px for training)."""

    num_frames: int = 13
    img_size: int = 160
    width_factor: float = 2.0  # gamma_w
    depth_factor: float = 2.2  # gamma_d
    bottleneck_factor: float = 2.25  # gamma_b: inner width / output width
    base_depths: list[int] = field(default_factory=lambda: [1, 2, 5, 3])  # X2D, before gamma_d
    stem_base: int = 12  # stem width before gamma_w (24 after)
    stem_temporal_kernel: int = 5
    se_ratio: float = 0.0625  # 0 disables squeeze-excitation
    inner_act: Literal["swish", "relu"] = "swish"
    head_dim: int = 2048
    head_dropout: float = 0.5
    head_init_std: float = 0.01
    norm_shortcut_always: bool = False  # True: BN on every projected shortcut (the efficient form)
    zero_init_last_bn: bool = True
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1

    def depths(self) -> list[int]:
        return [int(math.ceil(self.depth_factor * d)) for d in self.base_depths]

    def widths(self) -> list[int]:
        """Stage output widths: the base widths 12, 24, 48, 96 (each doubled, rounded to 8) times gamma_w."""
        base = [self.stem_base]
        for _ in range(3):
            base.append(round_width(base[-1], 2.0))
        return [round_width(b, self.width_factor) for b in base]


class SqueezeExcite(nn.Module):
    """``x * sigmoid(W2 relu(W1 mean_thw(x)))`` (Hu et al., arXiv 1709.01507), ``(B, C, T, H, W)``."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv3d(channels, reduced, 1)
        self.fc2 = nn.Conv3d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3, 4), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class X3DBlock(nn.Module):
    """Inverted bottleneck: ``relu(skip + BN(conv_c(act(SE(BN(conv_b(relu(BN(conv_a(x))))))))))`` with
    conv_a, conv_c 1x1x1 and conv_b depthwise 3x3x3 carrying the spatial stride."""

    def __init__(
        self, dim_in: int, inner: int, dim_out: int, stride: int, se: bool, drop_path: float, cfg: X3DConfig
    ) -> None:
        super().__init__()
        bn = lambda c: nn.BatchNorm3d(c, eps=cfg.bn_eps, momentum=cfg.bn_momentum)  # noqa: E731
        self.conv_a = nn.Conv3d(dim_in, inner, 1, bias=False)
        self.bn_a = bn(inner)
        self.conv_b = nn.Conv3d(inner, inner, 3, stride=(1, stride, stride), padding=1, groups=inner, bias=False)
        self.bn_b = bn(inner)
        self.se = SqueezeExcite(inner, round_width(inner, cfg.se_ratio)) if se else None
        self.act_b: nn.Module = nn.SiLU() if cfg.inner_act == "swish" else nn.ReLU()
        self.conv_c = nn.Conv3d(inner, dim_out, 1, bias=False)
        self.bn_c = bn(dim_out)
        self.shortcut: nn.Module | None = None
        self.shortcut_bn: nn.Module | None = None
        if dim_in != dim_out or stride != 1:
            self.shortcut = nn.Conv3d(dim_in, dim_out, 1, stride=(1, stride, stride), bias=False)
            if dim_in != dim_out or cfg.norm_shortcut_always:
                self.shortcut_bn = bn(dim_out)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn_a(self.conv_a(x)))
        y = self.bn_b(self.conv_b(y))
        if self.se is not None:
            y = self.se(y)
        y = self.bn_c(self.conv_c(self.act_b(y)))
        skip = x
        if self.shortcut is not None:
            skip = self.shortcut(x)
            if self.shortcut_bn is not None:
                skip = self.shortcut_bn(skip)
        return torch.relu(skip + self.drop_path(y))


class X3D(nn.Module):
    """X3D, ``(B, 3, T, H, W) -> logits (B, num_classes)``; any T and H, W divisible by 32 or not."""

    def __init__(self, cfg: X3DConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or X3DConfig()
        if len(cfg.base_depths) != 4:
            raise ValueError(f"base_depths must have one entry per stage (4), got {cfg.base_depths}")
        if cfg.inner_act not in ("swish", "relu"):
            raise ValueError(f"inner_act must be 'swish' or 'relu', got '{cfg.inner_act}'")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_prefix_tokens = 0
        widths, depths = cfg.widths(), cfg.depths()
        stem_dim = round_width(cfg.stem_base, cfg.width_factor)
        kt = cfg.stem_temporal_kernel
        self.stem = nn.Sequential(
            nn.Conv3d(cfg.in_chans, stem_dim, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
            nn.Conv3d(stem_dim, stem_dim, (kt, 1, 1), padding=(kt // 2, 0, 0), groups=stem_dim, bias=False),
            nn.BatchNorm3d(stem_dim, eps=cfg.bn_eps, momentum=cfg.bn_momentum),
            nn.ReLU(inplace=True),
        )
        total = sum(depths)
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        dim_in, k = stem_dim, 0
        stages = []
        for depth, dim_out in zip(depths, widths):
            inner = int(cfg.bottleneck_factor * dim_out)
            blocks = []
            for b in range(depth):
                # SE on every other block, starting with the first (Sec. 3 of the paper, after [MobileNetV3]).
                se = cfg.se_ratio > 0 and b % 2 == 0
                blocks.append(X3DBlock(dim_in, inner, dim_out, 2 if b == 0 else 1, se, rates[k], cfg))
                dim_in, k = dim_out, k + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        inner = int(cfg.bottleneck_factor * dim_in)
        self.conv5 = nn.Conv3d(dim_in, inner, 1, bias=False)
        self.bn5 = nn.BatchNorm3d(inner, eps=cfg.bn_eps, momentum=cfg.bn_momentum)
        self.embed_dim = inner  # token width (432)
        self.lin5 = nn.Linear(inner, cfg.head_dim, bias=False)
        self.head = ClassifierHead(cfg.head_dim, cfg.num_classes, cfg.head_dropout, cfg.head_init_std)
        self.init_weights()

    def init_weights(self) -> None:
        """He (fan-out) convs, unit BN, zero final BN of each block (the release's initialisation)."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.kaiming_normal_(self.lin5.weight, mode="fan_out", nonlinearity="relu")
        if self.cfg.zero_init_last_bn:
            for m in self.modules():
                if isinstance(m, X3DBlock):
                    nn.init.zeros_(m.bn_c.weight)
        self.head.init_weights()

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def num_layers(self) -> int:
        return sum(len(s) for s in self.stages)

    def get_layer_id(self, param_name: str) -> int:
        """0 stem, 1..N residual blocks in order, N+1 conv5 and the head."""
        if param_name.startswith("stem"):
            return 0
        if param_name.startswith("stages."):
            parts = param_name.split(".")
            s, b = int(parts[1]), int(parts[2])
            return sum(len(st) for st in self.stages[:s]) + b + 1
        return self.num_layers() + 1

    def no_weight_decay(self) -> set[str]:
        return set()

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W) -> (B, 432, T, ceil(H/32), ceil(W/32))`` after conv5, BN and ReLU."""
        if x.dim() != 5:
            raise ValueError(f"expected a batch of clips (B, C, T, H, W), got shape {tuple(x.shape)}")
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return torch.relu(self.bn5(self.conv5(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """conv5 feature map as tokens ``(B, T'H'W', 432)``, time slowest."""
        return self.forward_feature_map(x).flatten(2).transpose(1, 2)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.relu(self.lin5(tokens.mean(dim=1)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


X3D_XS = X3DConfig(num_frames=4, img_size=160)
X3D_S = X3DConfig(num_frames=13, img_size=160)
X3D_M = X3DConfig(num_frames=16, img_size=224)
X3D_L = X3DConfig(num_frames=16, img_size=312, depth_factor=5.0)
EFFICIENT_X3D_XS = X3DConfig(num_frames=4, img_size=160, norm_shortcut_always=True)
EFFICIENT_X3D_S = X3DConfig(num_frames=13, img_size=160, norm_shortcut_always=True)


def build_x3d(cfg: X3DConfig) -> X3D:
    return X3D(cfg)


register_model("x3d_xs", X3D_XS, "X3D-XS 4x12, 160 px (arXiv 2004.04730)")(build_x3d)
register_model("x3d_s", X3D_S, "X3D-S 13x6, 160 px (arXiv 2004.04730)")(build_x3d)
register_model("x3d_m", X3D_M, "X3D-M 16x5, 224 px (arXiv 2004.04730)")(build_x3d)
register_model("x3d_l", X3D_L, "X3D-L 16x5, 312 px, depth factor 5 (arXiv 2004.04730)")(build_x3d)
register_model(
    "efficient_x3d_xs", EFFICIENT_X3D_XS, "X3D-XS in PyTorchVideo's mobile-CPU efficient-block form"
)(build_x3d)
register_model(
    "efficient_x3d_s", EFFICIENT_X3D_S, "X3D-S in PyTorchVideo's mobile-CPU efficient-block form"
)(build_x3d)
