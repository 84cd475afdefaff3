"""Shared transformer building blocks (timm-style signatures)."""

from tubelet.models.layers.attention import Attention
from tubelet.models.layers.drop_path import DropPath, drop_path
from tubelet.models.layers.mlp import Mlp
from tubelet.models.layers.patch_embed import PatchEmbed3d
from tubelet.models.layers.pos_embed import SeparablePosEmbed, sincos_1d, sincos_2d

__all__ = ["Attention", "DropPath", "Mlp", "PatchEmbed3d", "SeparablePosEmbed", "drop_path", "sincos_1d", "sincos_2d"]
