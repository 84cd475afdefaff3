"""facebookresearch/mae_st ViT checkpoints (``models_vit.VisionTransformer``, MAE-ST, arXiv 2205.09113)
-> tubelet's space-time ViT (``models/vit.py``).

The reference layout differs from tubelet's in four ways, each undone here:

* attention projections ``blocks.i.attn.{q,k,v}`` are three Linears; tubelet fuses them into one
  ``attn.qkv`` (rows q, then k, then v), which computes the same three products;
* positions are ``pos_embed_spatial (1, H'W', D)``, ``pos_embed_temporal (1, T', D)`` and, with a CLS
  token, ``pos_embed_class (1, 1, D)``. The first two are tubelet's separable tables, resampled to the
  target grid with the interpolation the model itself uses for other clip sizes; the class position
  only adds a constant to the CLS token, so it is folded into ``cls_token``;
* the fine-tuned model normalises the *pooled* feature (mean of patch tokens, then ``norm``, then
  ``head``): tubelet's ``fc_norm=True``, so ``norm`` becomes ``fc_norm`` there. A pre-training
  checkpoint (``decoder_*`` keys) normalises the tokens and keeps ``norm``; its decoder and mask
  token are not part of the encoder and are dropped (reported in the notes);
* ``head.{weight,bias}`` is tubelet's ``head.fc``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

from tubelet.models.convert.mvit_v1 import fuse_qkv
from tubelet.models.layers.pos_embed import resample_separable

EXAMPLE_KEYS = ("patch_embed.proj.weight", "blocks.0.attn.q.weight", "pos_embed_spatial")

_SAME = re.compile(
    r"^(patch_embed\.proj\.(weight|bias)|cls_token|(fc_)?norm\.(weight|bias)"
    r"|blocks\.\d+\.(norm1|norm2)\.(weight|bias)|blocks\.\d+\.attn\.(qkv|proj)\.(weight|bias)"
    r"|blocks\.\d+\.mlp\.fc[12]\.(weight|bias))$"
)
_RENAMES = {"pos_embed_spatial": "pos_embed.spatial", "pos_embed_temporal": "pos_embed.temporal",
            "head.weight": "head.fc.weight", "head.bias": "head.fc.bias"}
_DROPPED = re.compile(r"^(decoder_|mask_token$)")


def _fine_tuned(state: dict[str, torch.Tensor]) -> bool:
    return "head.weight" in state


def prepare(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Fuse q/k/v, fold the class position into the CLS token and drop the pre-training decoder."""
    out: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    dropped = [k for k in state if _DROPPED.match(k)]
    for key, value in state.items():
        if key in ("norm.weight", "norm.bias") and _fine_tuned(state):
            out["fc_" + key] = value  # the fine-tuned model normalises the pooled feature
        elif key != "pos_embed_class" and key not in dropped:
            out[key] = value
    out = fuse_qkv(out)
    if "pos_embed_class" in state:
        if "cls_token" not in out:
            raise KeyError("pos_embed_class without cls_token")
        out["cls_token"] = out["cls_token"] + state["pos_embed_class"].reshape(out["cls_token"].shape)
        notes.append("pos_embed_class folded into cls_token (a constant added to the CLS token)")
    if dropped:
        notes.append(f"dropped {len(dropped)} pre-training tensors (decoder, mask token)")
    return out, notes


def rename(key: str) -> str | None:
    """The tubelet name of a (prepared) mae_st key, or ``None`` when it has no counterpart."""
    if key in _RENAMES:
        return _RENAMES[key]
    return key if _SAME.match(key) else None


def infer_model(state: dict[str, torch.Tensor]) -> str:
    """Registry name by width and depth (ViT-B/L/H as in mae_st; tiny and small as tubelet has them)."""
    blocks = [int(k.split(".")[1]) for k in state if re.match(r"^blocks\.\d+\.", k)]
    if not blocks or "patch_embed.proj.weight" not in state:
        raise KeyError("it has no blocks.N.* or patch_embed.proj.weight keys")
    key = (int(state["patch_embed.proj.weight"].shape[0]), 1 + max(blocks))
    table = {(192, 12): "vit_tiny", (384, 12): "vit_small", (768, 12): "vit_base", (1024, 24): "vit_large",
             (1280, 32): "vit_huge"}
    if key not in table:
        raise KeyError(f"no registered ViT has width {key[0]} and depth {key[1]}")
    return table[key]


def model_overrides(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Variant options the checkpoint fixes: tubelet and patch size, CLS token, where the norm acts."""
    w = state["patch_embed.proj.weight"]  # (D, C, pt, ph, pw)
    if w.ndim != 5:
        raise KeyError(f"patch_embed.proj.weight is {tuple(w.shape)}, not a 3-D tubelet projection")
    return {"tubelet_size": int(w.shape[2]), "patch_size": int(w.shape[3]), "in_chans": int(w.shape[1]),
            "class_token": "cls_token" in state, "fc_norm": _fine_tuned(state), "global_pool": "avg"}


def resample(renamed: dict[str, torch.Tensor], target: nn.Module) -> list[str]:
    """Resample the separable position tables to ``target``'s grid, in place; returns notes."""
    spatial, temporal = renamed.get("pos_embed.spatial"), renamed.get("pos_embed.temporal")
    if spatial is None or temporal is None:
        return []
    side = math.isqrt(spatial.shape[1])
    if side * side != spatial.shape[1]:
        raise KeyError(f"pos_embed_spatial has {spatial.shape[1]} rows, not a square grid")
    src_grid = (int(temporal.shape[1]), side, side)
    dst_grid = tuple(int(g) for g in target.pos_embed.grid_size)
    if src_grid == dst_grid:
        return []
    renamed["pos_embed.spatial"], renamed["pos_embed.temporal"] = resample_separable(spatial, temporal, dst_grid)
    return [f"position tables resampled from grid {src_grid} to {dst_grid}"]
