"""PyTorchVideo model-zoo checkpoints (``{"model_state": ...}`` of ``pytorchvideo.models.hub``) ->
tubelet models, for ``tubelet convert --from pytorchvideo``. Two families, told apart by their keys:

- the ResNet family (Slow, C2D, I3D, R(2+1)D, CSN, SlowFast), mapped in ``convert/resnet_zoo.py``:
  PyTorchVideo's numbered ``blocks`` need the whole state dict to place a stage;
- X3D (stem ``blocks.0.conv.conv_t``, head ``blocks.5.pool.pre_conv``), mapped in
  ``convert/pytorchvideo_x3d.py``.

Both are renamed whole in ``prepare``, so ``rename`` only sorts tubelet names from leftovers, which
``convert_state_dict`` then lists as unexpected.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from tubelet.models.convert import pytorchvideo_x3d, resnet_zoo

EXAMPLE_KEYS = resnet_zoo.PTV_EXAMPLE_KEYS + pytorchvideo_x3d.EXAMPLE_KEYS[:1]
_TUBELET = re.compile(r"^((slow_|fast_)?(stem|stages)|fusions|head\.fc|conv5|bn5|lin5)\.")


def is_x3d(state: dict[str, torch.Tensor]) -> bool:
    """PyTorchVideo's X3D: the (2+1)-D stem or the projected-pool head."""
    return any(k.startswith(("blocks.0.conv.conv_t.", "blocks.5.pool.pre_conv.")) for k in state)


def prepare(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
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
    """The efficient X3D form normalises the 24 -> 24 stride-2 shortcut that the zoo's X3D leaves bare."""
    return {"norm_shortcut_always": True} if "stages.0.0.shortcut_bn.weight" in state else {}


def rename(key: str) -> str | None:
    """The tubelet name of a prepared key (already tubelet's), or ``None`` when it has no counterpart."""
    return key if _TUBELET.match(key) else None


def infer_model(state: dict[str, torch.Tensor]) -> str:
    """Registry name from the prepared (tubelet-named) tensors."""
    if "conv5.weight" in state or "lin5.weight" in state:
        blocks = {int(m.group(1)) for k in state if (m := re.match(r"^stages\.2\.(\d+)\.", k))}
        if not blocks:
            raise KeyError("it has no blocks.3.res_blocks.N.* keys")
        # XS, S and M share every weight: x3d_m unless stage 4 has L's 25 blocks (--model for XS/S).
        return "x3d_l" if max(blocks) + 1 == 25 else "x3d_m"
    return resnet_zoo.infer_model(state)
