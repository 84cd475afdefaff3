"""torchvision MViT (``torchvision.models.video.mvit``: ``mvit_v2_s``, and ``mvit_v1_b`` onto
``mvitv1_b_16x4``) names -> tubelet names.

torchvision keeps the CLS token as a ``(D,)`` vector in ``pos_encoding.class_token``, wraps the pooling
conv and its norm in ``Pool`` modules, and indexes its MLP, projection and head ``Sequential``s; the
weights themselves are laid out as in tubelet (fused qkv, per-head pooling convs, per-axis tables).
MViTv1's separable positions ``pos_encoding.{spatial_pos, temporal_pos, class_pos}`` are tubelet's
``pos_embed_*`` without their leading unit dimensions (``convert/mvit_v1.py``).
"""

from __future__ import annotations

import re

import torch

from tubelet.models.convert import mvit_v1

# What a torchvision MViTv2 state dict holds, for the error on a file that has none of it.
EXAMPLE_KEYS = ("conv_proj.weight", "blocks.0.attn.qkv.weight", "head.1.weight")

_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^conv_proj\.(weight|bias)$"), r"patch_embed.proj.\1"),
    (re.compile(r"^pos_encoding\.class_token$"), r"cls_token"),
    (re.compile(r"^pos_encoding\.spatial_pos$"), r"pos_embed_spatial"),
    (re.compile(r"^pos_encoding\.temporal_pos$"), r"pos_embed_temporal"),
    (re.compile(r"^pos_encoding\.class_pos$"), r"pos_embed_class"),
    (re.compile(r"^blocks\.(\d+)\.attn\.project\.0\.(weight|bias)$"), r"blocks.\1.attn.proj.\2"),
    (re.compile(r"^blocks\.(\d+)\.attn\.pool_([qkv])\.pool\.weight$"), r"blocks.\1.attn.pool_\2.weight"),
    (re.compile(r"^blocks\.(\d+)\.attn\.pool_([qkv])\.norm_act\.0\.(weight|bias)$"), r"blocks.\1.attn.norm_\2.\3"),
    (re.compile(r"^blocks\.(\d+)\.mlp\.0\.(weight|bias)$"), r"blocks.\1.mlp.fc1.\2"),
    (re.compile(r"^blocks\.(\d+)\.mlp\.3\.(weight|bias)$"), r"blocks.\1.mlp.fc2.\2"),
    (re.compile(r"^blocks\.(\d+)\.project\.(weight|bias)$"), r"blocks.\1.proj.\2"),
    (re.compile(r"^head\.1\.(weight|bias)$"), r"head.\1"),
]
# Names that are already tubelet's (norms, fused qkv, relative tables, final norm).
_SAME = re.compile(
    r"^(blocks\.\d+\.(norm1|norm2)\.(weight|bias)|blocks\.\d+\.attn\.qkv\.(weight|bias)"
    r"|blocks\.\d+\.attn\.rel_pos_[thw]|norm\.(weight|bias))$"
)


def rename(key: str) -> str | None:
    """The tubelet name of a torchvision key, or ``None`` when it has no counterpart."""
    for pattern, repl in _RULES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return key if _SAME.match(key) else None


def adapt(name: str, value: torch.Tensor) -> torch.Tensor:
    """torchvision keeps the class token and position as ``(D,)`` or ``(1, D)`` and the separable tables as
    ``(N, D)``; tubelet's are ``(1, 1, D)`` and ``(1, N, D)``."""
    if name in ("cls_token", "pos_embed_class"):
        return value.reshape(1, 1, -1)
    if name in ("pos_embed_spatial", "pos_embed_temporal") and value.ndim == 2:
        return value.unsqueeze(0)
    return value


def infer_model(state: dict[str, torch.Tensor]) -> str:
    """Registry name matching a torchvision MViT state dict (by depth, stem width and, for v1, frames)."""
    blocks = [int(k.split(".")[1]) for k in state if re.match(r"^blocks\.\d+\.", k)]
    if not blocks or "conv_proj.weight" not in state:
        raise KeyError("it has no blocks.N.* or conv_proj.weight keys")
    depth = 1 + max(blocks)
    width = state["conv_proj.weight"].shape[0]
    if "pos_encoding.temporal_pos" in state:  # MViTv1's absolute positions
        return mvit_v1.registry_name(depth, int(width), int(state["pos_encoding.temporal_pos"].shape[0]))
    return {(16, 96): "mvitv2_s", (24, 96): "mvitv2_b", (48, 144): "mvitv2_l"}.get((depth, width), "mvitv2_s")
