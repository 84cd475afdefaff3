"""2-D ResNet-18/50 image backbones (He et al., arXiv 1512.03385) in torchvision's module layout.

The parameter and buffer names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1`` ...,
``downsample.0``, ``fc``), which timm's ResNets share, so an ImageNet state dict from either loads with
:func:`load_imagenet_state_dict`. Trackers use the stride-16 map of ``layer3`` (UTT's SOT feature), so
``forward_features(x, out_stride)`` stops where it is asked and ``layer4``/``fc`` may be left unused;
``forward_pyramid(x, (8, 16, 32))`` gives several strides of one pass (Deformable DETR's input).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tubelet.errors import CheckpointError
from tubelet.models.registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet2d", "ResNet2dConfig", "load_imagenet_state_dict"]


@dataclass(frozen=True)
class ResNet2dConfig:
    block: str = "basic"  # "basic" (ResNet-18/34) or "bottleneck" (ResNet-50/101)
    depths: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    num_classes: int = 1000  # 0: no classifier (a feature extractor, as trackers use it)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # the stride sits on the 3x3 conv (torchvision's "ResNet v1.5")
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + idt)


class ResNet2d(nn.Module):
    """``forward(x (B, 3, H, W)) -> logits``; ``forward_features(x, out_stride)`` the map at stride 4, 8,
    16 or 32 (``layer1`` ... ``layer4``); ``channels(out_stride)`` its width."""

    def __init__(self, cfg: ResNet2dConfig) -> None:
        super().__init__()
        if cfg.block not in ("basic", "bottleneck"):
            raise ValueError(f"ResNet block '{cfg.block}' is not one of basic, bottleneck")
        block = BasicBlock if cfg.block == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, self._widths = 64, []
        for i, (depth, width) in enumerate(zip(cfg.depths, (64, 128, 256, 512))):
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self._widths.append(cin)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # the last BN of each residual branch starts at zero: every block begins as the identity
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight)

    def channels(self, out_stride: int = 16) -> int:
        return self._widths[self._stage(out_stride) - 1]

    @staticmethod
    def _stage(out_stride: int) -> int:
        stages = {4: 1, 8: 2, 16: 3, 32: 4}
        if out_stride not in stages:
            raise ValueError(f"out_stride {out_stride} is not one of 4, 8, 16, 32")
        return stages[out_stride]

    def forward_features(self, x: torch.Tensor, out_stride: int = 32) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self._stage(out_stride) + 1):
            x = getattr(self, f"layer{i}")(x)
        return x

    def forward_pyramid(self, x: torch.Tensor, out_strides: tuple[int, ...] = (8, 16, 32)) -> list[torch.Tensor]:
        """The maps at each of ``out_strides`` (ascending) from one pass: a detector's multi-scale input."""
        stages = [self._stage(s) for s in out_strides]
        if stages != sorted(set(stages)):
            raise ValueError(f"out_strides {tuple(out_strides)} must be distinct and ascending")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = []
        for i in range(1, stages[-1] + 1):
            x = getattr(self, f"layer{i}")(x)
            if i in stages:
                maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(self.forward_features(x, 32)).flatten(1))


def load_imagenet_state_dict(model: ResNet2d, state: dict[str, torch.Tensor], source: str = "state dict",
                             head: bool = True) -> None:
    """Load a torchvision or timm ResNet state dict (the same names); ``head=False`` leaves ``fc`` as it is.
    Missing or unexpected names, or a shape that does not fit, are one :class:`CheckpointError` naming them."""
    own = model.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not head:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own = {k: v for k, v in own.items() if not k.startswith("fc.")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source}: not a ResNet of this depth: missing {missing[:4]}"
                              f"{' ...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                              f"{' ...' if len(unexpected) > 4 else ''}")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        raise CheckpointError(f"{source}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, the model wants "
                              f"{tuple(own[bad[0]].shape)}")
    model.load_state_dict(state, strict=head)


@register_model("resnet18_image", ResNet2dConfig("basic", [2, 2, 2, 2]), "2-D ResNet-18, torchvision layout")
@register_model("resnet50_image", ResNet2dConfig("bottleneck", [3, 4, 6, 3]), "2-D ResNet-50, torchvision layout")
def build_resnet2d(cfg: ResNet2dConfig) -> ResNet2d:
    return ResNet2d(cfg)
