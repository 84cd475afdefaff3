"""The contract every backbone keeps, so that methods use it instead of a backbone's internals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

Grid = tuple[int, int, int]


@dataclass(frozen=True)
class BackboneConfig:
    """The fields every variant config shares: input, classifier and regularisation. A family's config
    subclasses it and may redeclare a field to change its default."""

    in_chans: int = 3
    num_classes: int = 400  # 0: no classifier (the pooled feature is the output)
    num_frames: int = 16  # build-time input length (sizes position tables)
    img_size: int = 224
    drop_path_rate: float = 0.0  # stochastic depth of the last block
    head_dropout: float = 0.0  # dropout before the classifier


@runtime_checkable
class Backbone(Protocol):
    """What methods may rely on (timm's ``forward_features`` / ``forward_head`` split, plus the token
    geometry that masked modelling needs).

    ``in_chans``: input channels. ``stem_dim``: width of the tokens the stem emits (where a mask token
    replaces them). ``patch_size``: the stem's (t, h, w) stride in input pixels and frames.
    ``token_grids(T, H, W)``: the (stem, output) token grids of an input size; equal for a plain ViT.
    """

    embed_dim: int
    num_prefix_tokens: int
    num_classes: int

    @property
    def in_chans(self) -> int: ...

    @property
    def stem_dim(self) -> int: ...

    @property
    def patch_size(self) -> Grid: ...

    def token_grids(self, num_frames: int, height: int, width: int) -> tuple[Grid, Grid]: ...

    def forward_features(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...
