"""PyTorchVideo model-zoo checkpoints (``{"model_state": ...}`` of ``pytorchvideo.models.hub``) ->
tubelet models. The ResNet family's names are mapped in ``convert/resnet_zoo.py``; PyTorchVideo's
numbered ``blocks`` need the whole state dict to place a stage, so the mapping runs in ``prepare``."""

from __future__ import annotations

import re

import torch

from tubelet.models.convert import resnet_zoo

EXAMPLE_KEYS = resnet_zoo.PTV_EXAMPLE_KEYS
_TUBELET = re.compile(r"^((slow_|fast_)?(stem|stages)|fusions|head\.fc)\.")


def prepare(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    if resnet_zoo.is_ptv_resnet(state):
        return resnet_zoo.ptv_rename_all(state), []
    return state, []


def rename(key: str) -> str | None:
    """The tubelet name of a prepared key (already tubelet's), or ``None`` when it has no counterpart."""
    return key if _TUBELET.match(key) else None


def infer_model(state: dict[str, torch.Tensor]) -> str:
    return resnet_zoo.infer_model(state)
