"""Load model weights from safetensors or a tubelet checkpoint, never unpickling code."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tubelet.errors import CheckpointError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from ``.safetensors`` (or a torch file loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise CheckpointError(
            f"{path}: cannot be loaded safely (truncated, corrupt, or contains code objects): {exc}"
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("tubelet"), dict) and "weights_file" in obj["tubelet"]:
        return _training_checkpoint_weights(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a mapping of tensor names to tensors")
    return obj


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> tuple[list[str], list[str]]:
    """Load weights into ``model``; mismatched shapes, missing or unexpected keys are listed in the error."""
    state = read_state_dict(path)
    own = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if mismatched or (strict and (missing or unexpected)):
        lines = [f"{path}: weights do not fit {type(model).__name__}"]
        if mismatched:
            lines.append("shape mismatches:\n  " + "\n  ".join(mismatched))
        if strict and missing:
            lines.append("missing keys:\n  " + "\n  ".join(missing))
        if strict and unexpected:
            lines.append("unexpected keys:\n  " + "\n  ".join(unexpected))
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=False)
    return missing, unexpected


def _training_checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """A training checkpoint of ``tubelet fit`` (``step=N.ckpt``), read by the one training-checkpoint reader
    (``core/ckpt_format.py``): its ``method.<name>`` tensors as ``<name>`` (the method's own keys)."""
    from tubelet.core.ckpt_format import checkpoint_weights

    prefix = "method."
    return {k[len(prefix):]: v for k, v in checkpoint_weights(path).items() if k.startswith(prefix)}


def filter_checkpoint(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adapt ``state`` to ``model`` with its family's ``checkpoint_filter_fn(state, model)`` (timm's idea:
    renaming and resampling that belong to a model family live with it), when the family has one."""
    fn = getattr(type(model), "checkpoint_filter_fn", None)
    return dict(fn(state, model)) if fn is not None else state
