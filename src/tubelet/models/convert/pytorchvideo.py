"""PyTorchVideo model-zoo checkpoints (``{"model_state": ...}`` of ``pytorchvideo.models.hub``) ->
tubelet models, for ``tubelet convert --from pytorchvideo``. Three families, told apart by their keys:

- the ResNet family (Slow, C2D, I3D, R(2+1)D, CSN, SlowFast), mapped in ``convert/resnet_zoo.py``:
  PyTorchVideo's numbered ``blocks`` need the whole state dict to place a stage;
- X3D (stem ``blocks.0.conv.conv_t``, head ``blocks.5.pool.pre_conv``), mapped in
  ``convert/pytorchvideo_x3d.py``, and its mobile-CPU ``EfficientX3d`` (stem
  ``s1.pathway0_stem_conv_xy``) onto ``efficient_x3d_xs``;
- MViTv1-B (``patch_embed.patch_model``, ``cls_positional_encoding``), mapped in ``convert/mvit_v1.py``.

All are renamed whole in ``prepare``, so ``rename`` only sorts tubelet names from leftovers, which
``convert_state_dict`` then lists as unexpected.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from tubelet.models.convert import mvit_v1, pytorchvideo_x3d, resnet_zoo

EXAMPLE_KEYS = resnet_zoo.PTV_EXAMPLE_KEYS + pytorchvideo_x3d.EXAMPLE_KEYS[:1] + mvit_v1.PTV_EXAMPLE_KEYS[:1]
_TUBELET = re.compile(r"^((slow_|fast_)?(stem|stages)|fusions|head\.fc|conv5|bn5|lin5)\.")


def is_x3d(state: dict[str, torch.Tensor]) -> bool:
    """PyTorchVideo's X3D: the (2+1)-D stem or the projected-pool head; EfficientX3d's stem."""
    return any(k.startswith(("blocks.0.conv.conv_t.", "blocks.5.pool.pre_conv.", "s1.pathway0_stem_conv_xy."))
               for k in state)


def prepare(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    if mvit_v1.is_ptv_mvit(state):
        return mvit_v1.ptv_rename_all(state), []
    if "patch_embed.proj.weight" in state:
        # model_overrides would give it PyTorchVideo's pooling-norm eps, which another layout does not have
        raise KeyError("patch_embed.proj.weight is PySlowFast's (and tubelet's) MViT name, PyTorchVideo's is "
                       "patch_embed.patch_model.weight; use --from pyslowfast")
    if is_x3d(state):
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            new = pytorchvideo_x3d.rename(key)
            out[key if new is None else new] = value if new is None else pytorchvideo_x3d.adapt(new, value)
        return out, []
    if resnet_zoo.is_ptv_resnet(state):
        return resnet_zoo.ptv_rename_all(state), []
    return state, []


def model_overrides(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Options the layout fixes: the efficient X3D form normalises the 24 -> 24 stride-2 shortcut that the
    zoo's X3D leaves bare; PyTorchVideo's MViT runs its pooling LayerNorms at eps 1e-5 (its blocks' 1e-6,
    ``convert/mvit_v1.py``)."""
    if "patch_embed.proj.weight" in state:
        return {"attn_norm_eps": 1e-5}
    return {"norm_shortcut_always": True} if "stages.0.0.shortcut_bn.weight" in state else {}


def rename(key: str) -> str | None:
    """The tubelet name of a prepared key (already tubelet's), or ``None`` when it has no counterpart."""
    if _TUBELET.match(key) or mvit_v1.MVIT_NAMES.match(key) or key in ("head.weight", "head.bias"):
        return key
    return None


def infer_model(state: dict[str, torch.Tensor]) -> str:
    """Registry name from the prepared (tubelet-named) tensors."""
    if "patch_embed.proj.weight" in state:
        return mvit_v1.infer_model(state)
    if "conv5.weight" in state or "lin5.weight" in state:
        blocks = {int(m.group(1)) for k in state if (m := re.match(r"^stages\.2\.(\d+)\.", k))}
        if not blocks:
            raise KeyError("it has no blocks.3.res_blocks.N.* keys")
        if max(blocks) + 1 == 25:
            return "x3d_l"  # the efficient form gets norm_shortcut_always from model_overrides
        # XS, S and M share every weight: x3d_m, or the mobile zoo's XS for the efficient form (--model for others).
        return "efficient_x3d_xs" if "stages.0.0.shortcut_bn.weight" in state else "x3d_m"
    return resnet_zoo.infer_model(state)
