"""PySlowFast / MViTv2-release names -> tubelet names (MViTv2, MViTv1-B, and the ResNet family).

tubelet's MViT uses PySlowFast's module names (``patch_embed.proj``, ``blocks.i.attn.{qkv, proj,
pool_q, norm_q, rel_pos_h}``, ``blocks.i.mlp.fc1``, ``blocks.i.proj``, ``norm``), so only the head
(``head.projection``) is renamed; MViTv1-B's separable positions (``pos_embed_spatial``,
``pos_embed_temporal``, ``pos_embed_class``) keep their names too (``convert/mvit_v1.py``). The image
checkpoints of the MViTv2 release (facebookresearch/mvit) use the same names with 2-D convolutions
and load into the ``mvitv2_*_img`` models.

PySlowFast checkpoints are ``{"model_state": ..., "optimizer_state": ..., "cfg": yaml-text, ...}``;
``convert.read_foreign_state_dict`` unwraps them without unpickling code.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from tubelet.models.convert import mvit_v1, resnet_zoo

# What a PySlowFast MViTv2 state dict holds, for the error on a file that has none of it.
EXAMPLE_KEYS = ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "head.projection.weight")

_HEAD = re.compile(r"^head\.projection\.(weight|bias)$")
_RESNET = re.compile(r"^((slow_|fast_)?(stem|stages)|fusions|head\.fc)\.")


def prepare(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """ResNet-family checkpoints (Slow, C2D, I3D, SlowFast) renamed whole (``convert/resnet_zoo.py``):
    whether ``pathway1`` exists decides between the one- and two-pathway layouts. MViT checkpoints with
    separate q/k/v projections (``SEPARATE_QKV``, and the mid-2021 code) get them fused into ``qkv``."""
    if not resnet_zoo.is_pyslowfast_resnet(state):
        notes = [mvit_v1.PYSLOWFAST_V1_EPS_NOTE] if mvit_v1.is_v1(state) else []
        if mvit_v1.has_separate_qkv(state):
            return mvit_v1.fuse_qkv(state), ["separate q/k/v projections fused into qkv", *notes]
        return state, notes
    two = any(".pathway1_" in k for k in state)
    return {resnet_zoo.pyslowfast_rename(k, two) or k: v for k, v in state.items()}, []


def model_overrides(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """MViTv1: the pooling LayerNorms at eps 1e-5 of the code that trained the released checkpoints
    (``convert/mvit_v1.py``)."""
    return {"attn_norm_eps": 1e-5} if mvit_v1.is_v1(state) else {}


def rename(key: str) -> str | None:
    """The tubelet name of a PySlowFast key, or ``None`` when it has no counterpart."""
    if _RESNET.match(key):  # already renamed by prepare
        return key
    if _HEAD.match(key):
        return _HEAD.sub(r"head.\1", key)
    return key if mvit_v1.MVIT_NAMES.match(key) else None


def infer_model(state: dict[str, torch.Tensor]) -> str:
    """Registry name matching a PySlowFast / MViTv2-release state dict (depth, stem width, 2-D or 3-D)."""
    if "stem.0.weight" in state or "slow_stem.0.weight" in state:
        return resnet_zoo.infer_model(state)
    if mvit_v1.is_v1(state):
        return mvit_v1.infer_model(state)
    blocks = [int(k.split(".")[1]) for k in state if re.match(r"^blocks\.\d+\.", k)]
    if not blocks or "patch_embed.proj.weight" not in state:
        raise KeyError("it has no blocks.N.* or patch_embed.proj.weight keys")
    depth = 1 + max(blocks)
    stem = state["patch_embed.proj.weight"]
    width, video = stem.shape[0], stem.ndim == 5
    if video:
        return {(16, 96): "mvitv2_s", (24, 96): "mvitv2_b", (48, 144): "mvitv2_l"}.get((depth, width), "mvitv2_s")
    table = {(10, 96): "mvitv2_t_img", (16, 96): "mvitv2_s_img", (24, 96): "mvitv2_b_img", (48, 144): "mvitv2_l_img"}
    return table.get((depth, width), "mvitv2_s_img")
