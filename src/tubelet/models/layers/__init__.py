"""Shared transformer building blocks (timm-style signatures)."""

from tubelet.models.layers.drop_path import DropPath, drop_path
from tubelet.models.layers.mlp import Mlp

__all__ = ["DropPath", "Mlp", "drop_path"]
