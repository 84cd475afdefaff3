"""SlowFast networks (Feichtenhofer et al., arXiv 1812.03982, Sec. 3 and Table 1), on the blocks of
``models/resnet3d.py``.

Two ResNet pathways see the same clip: Slow at ``T`` frames, Fast at ``alpha * T`` frames with
``1 / beta_inv`` of Slow's channels. After the stem, res2, res3 and res4 a lateral connection (Sec. 3.4,
"time-strided convolution") maps Fast to Slow: a ``fusion_kernel x 1 x 1`` conv with temporal stride
``alpha`` and ``fusion_channel_ratio * C_fast`` outputs, BN, ReLU, concatenated to Slow's channels. The
head concatenates both pathways' global averages (2048 + 256 for R-50) before the classifier.

Input: the one decoded clip at the Fast rate ``(B, C, alpha*T, H, W)`` (Slow's frames are selected from
it with :func:`tubelet.core.pathways.slow_frame_indices`, the rule of PySlowFast's ``pack_pathway_output``
and PyTorchVideo's ``PackPathway``), or the pair ``[slow, fast]`` as those libraries pass it.

``forward_features`` returns Slow's ``T x H' x W'`` grid of tokens, each Slow's feature concatenated
with Fast's feature averaged over the ``alpha`` Fast frames of that Slow step, so that the mean of the
tokens is exactly the concatenation of the two global averages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tubelet.core.pathways import slow_frame_indices
from tubelet.models.base import BackboneConfig
from tubelet.models.heads import ClassifierHead
from tubelet.models.registry import register_model
from tubelet.models.resnet3d import block_kernels, init_bottleneck_net, make_stage, make_stem

__all__ = ["SlowFastConfig", "SlowFast", "FuseFastToSlow"]


@dataclass(frozen=True)
class SlowFastConfig(BackboneConfig):
    """One SlowFast variant. ``num_frames`` is the decoded (Fast) clip length, ``alpha`` times Slow's."""

    depths: list[int] = field(default_factory=lambda: [3, 4, 6, 3])
    width: int = 64  # Slow stem width
    alpha: int = 4  # frame-rate ratio Fast : Slow
    beta_inv: int = 8  # channel ratio Slow : Fast
    fusion_kernel: int = 7  # temporal kernel of the lateral convs
    fusion_channel_ratio: int = 2
    slow_temporal_kernels: list[int] = field(default_factory=lambda: [1, 1, 3, 3])
    fast_temporal_kernels: list[int] = field(default_factory=lambda: [3, 3, 3, 3])
    slow_stem_temporal_kernel: int = 1
    fast_stem_temporal_kernel: int = 5
    expansion: int = 4
    num_frames: int = 32
    head_dropout: float = 0.5
    head_init_std: float = 0.01
    zero_init_last_bn: bool = True
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1


class FuseFastToSlow(nn.Module):
    """Lateral connection (Sec. 3.4): ``[slow, fast] -> [cat(slow, ReLU(BN(conv(fast)))), fast]``,
    conv ``k x 1 x 1`` with temporal stride ``alpha``: ``(B, c, aT, H, W) -> (B, ratio*c, T, H, W)``."""

    def __init__(self, dim_fast: int, ratio: int, kernel: int, alpha: int, eps: float, momentum: float) -> None:
        super().__init__()
        self.conv = nn.Conv3d(dim_fast, dim_fast * ratio, (kernel, 1, 1), stride=(alpha, 1, 1),
                              padding=(kernel // 2, 0, 0), bias=False)
        self.bn = nn.BatchNorm3d(dim_fast * ratio, eps=eps, momentum=momentum)

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        return torch.cat([slow, torch.relu(self.bn(self.conv(fast)))], dim=1)


class SlowFast(nn.Module):
    """``(B, C, alpha*T, H, W)`` or ``[slow, fast]`` -> logits ``(B, num_classes)``."""

    def __init__(self, cfg: SlowFastConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or SlowFastConfig()
        if len(cfg.depths) != 4 or len(cfg.slow_temporal_kernels) != 4 or len(cfg.fast_temporal_kernels) != 4:
            raise ValueError("depths and the temporal kernels must have one entry per stage (4)")
        if cfg.alpha < 1 or cfg.beta_inv < 1 or cfg.width % cfg.beta_inv:
            raise ValueError(f"alpha and beta_inv must be >= 1 and divide the width {cfg.width}")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_prefix_tokens = 0
        a, b, r = cfg.alpha, cfg.beta_inv, cfg.fusion_channel_ratio
        w = cfg.width
        self.slow_stem = make_stem(cfg.in_chans, w, cfg.slow_stem_temporal_kernel, True, cfg.bn_eps, cfg.bn_momentum)
        self.fast_stem = make_stem(cfg.in_chans, w // b, cfg.fast_stem_temporal_kernel, True, cfg.bn_eps,
                                   cfg.bn_momentum)
        fuse = lambda c: FuseFastToSlow(c // b, r, cfg.fusion_kernel, a, cfg.bn_eps, cfg.bn_momentum)  # noqa: E731
        fusions = [fuse(w)]
        slow_stages, fast_stages = [], []
        dim_in = w  # Slow's width before fusion
        no_drop = [0.0] * max(cfg.depths)
        for s, depth in enumerate(cfg.depths):
            inner, dim_out = w * 2**s, w * 2**s * cfg.expansion
            stride = 1 if s == 0 else 2
            slow_in = dim_in + dim_in * r // b
            slow_stages.append(make_stage(slow_in, inner, dim_out, depth,
                                          block_kernels(cfg.slow_temporal_kernels[s], depth), stride, 1, no_drop,
                                          cfg, "2d"))
            fast_stages.append(make_stage(dim_in // b, inner // b, dim_out // b, depth,
                                          block_kernels(cfg.fast_temporal_kernels[s], depth), stride, 1, no_drop,
                                          cfg, "2d"))
            if s < len(cfg.depths) - 1:
                fusions.append(fuse(dim_out))
            dim_in = dim_out
        self.slow_stages = nn.ModuleList(slow_stages)
        self.fast_stages = nn.ModuleList(fast_stages)
        self.fusions = nn.ModuleList(fusions)  # after the stem, res2, res3, res4
        self.embed_dim = dim_in + dim_in // b  # 2304 for R-50
        self.head = ClassifierHead(self.embed_dim, cfg.num_classes, cfg.head_dropout, cfg.head_init_std)
        self.init_weights()

    def init_weights(self) -> None:
        """He (fan-out) convs, unit BN, zero final BN of each block (as ``ResNet3d``)."""
        init_bottleneck_net(self, self.cfg.zero_init_last_bn)
        self.head.init_weights()

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def num_layers(self) -> int:
        return sum(self.cfg.depths)

    def get_layer_id(self, param_name: str) -> int:
        """0 stems and the first lateral conv, 1.. the residual blocks (both pathways' block b of stage s
        share an id; lateral conv s+1 goes with the last block of stage s), then the head."""
        parts = param_name.split(".")
        if parts[0] in ("slow_stem", "fast_stem") or param_name.startswith("fusions.0."):
            return 0
        if parts[0] in ("slow_stages", "fast_stages"):
            s, b = int(parts[1]), int(parts[2])
            return sum(self.cfg.depths[:s]) + b + 1
        if parts[0] == "fusions":
            return sum(self.cfg.depths[: int(parts[1])])
        return self.num_layers() + 1

    def pathways(self, x: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """``[slow (B, C, T, H, W), fast (B, C, alpha*T, H, W)]`` from the Fast-rate clip or a given pair."""
        if isinstance(x, (list, tuple)):
            if len(x) != 2:
                raise ValueError(f"SlowFast takes [slow, fast], got {len(x)} tensors")
            slow, fast = x
        else:
            if x.dim() != 5:
                raise ValueError(f"expected a batch of clips (B, C, T, H, W), got shape {tuple(x.shape)}")
            fast = x
            slow = fast.index_select(2, slow_frame_indices(fast.shape[2], self.cfg.alpha, device=fast.device))
        if fast.shape[2] != self.cfg.alpha * slow.shape[2]:
            raise ValueError(f"the Fast pathway needs alpha={self.cfg.alpha} times Slow's frames; got "
                             f"{slow.shape[2]} slow and {fast.shape[2]} fast frames")
        return [slow, fast]

    def forward_feature_maps(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """Final maps: Slow ``(B, 2048, T, H/32, W/32)`` and Fast ``(B, 256, alpha*T, H/32, W/32)``."""
        slow, fast = self.pathways(x)
        slow, fast = self.slow_stem(slow), self.fast_stem(fast)
        slow = self.fusions[0](slow, fast)
        for s, (ss, fs) in enumerate(zip(self.slow_stages, self.fast_stages)):
            slow, fast = ss(slow), fs(fast)
            if s + 1 < len(self.fusions):
                slow = self.fusions[s + 1](slow, fast)
        return slow, fast

    def forward_features(self, x) -> torch.Tensor:
        """Tokens ``(B, T*H'*W', 2048 + 256)`` on Slow's grid, time slowest (see the module docstring)."""
        slow, fast = self.forward_feature_maps(x)
        t = slow.shape[2]
        if fast.shape[2] % t == 0:  # alpha Fast steps per Slow step: adaptive pooling's windows, as a mean
            fast = fast.unflatten(2, (t, fast.shape[2] // t)).mean(3)  # (ONNX has no adaptive 3-D pooling)
        else:
            fast = F.adaptive_avg_pool3d(fast, (t, *fast.shape[-2:]))
        return torch.cat([slow, fast], dim=1).flatten(2).transpose(1, 2)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = tokens.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("slowfast_r50_4x16", SlowFastConfig(alpha=8, fusion_kernel=5),
                "SlowFast R-50 4x16: 4 Slow / 32 Fast frames (alpha 8, beta 1/8)")
@register_model("slowfast_r50_8x8", SlowFastConfig(),
                "SlowFast R-50 8x8: 8 Slow / 32 Fast frames (alpha 4, beta 1/8)")
@register_model("slowfast_r101_8x8", SlowFastConfig(depths=[3, 4, 23, 3], fusion_kernel=5),
                "SlowFast R-101 8x8: 8 Slow / 32 Fast frames (alpha 4, beta 1/8)")
def build_slowfast(cfg: SlowFastConfig) -> SlowFast:
    return SlowFast(cfg)
