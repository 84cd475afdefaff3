"""Import foreign checkpoints as tubelet safetensors: MViTv2 (torchvision, PySlowFast) and the MAE-ST
space-time ViT (facebookresearch/mae_st, ``--from mae_st``).

    result = convert_checkpoint("mvit_v2_s.pth", "mvitv2_s.safetensors", source="torchvision")
    model = tubelet.create_model(result.model, checkpoint="mvitv2_s.safetensors", **result.overrides)

The source is read without unpickling code (safetensors, or ``torch.load(weights_only=True)``); the
renamed tensors are checked against the target model built on the meta device, and any missing,
unexpected or mis-shaped entry is an error that lists them all. Relative-position tables whose length
differs from the target's (PySlowFast floors odd grid sizes, e.g. MViTv2-L at 312) are linearly
resampled, the same operation the model applies at run time, and reported in ``notes``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tubelet.errors import CheckpointError
from tubelet.models.convert import mae_st, pyslowfast, pytorchvideo, torchvision
from tubelet.models.layers.rel_pos import interpolate_rel_pos

SOURCES = {"torchvision": torchvision, "pyslowfast": pyslowfast, "mae_st": mae_st, "pytorchvideo": pytorchvideo}
# Containers that training frameworks wrap a model's state dict in (PySlowFast: "model_state").
_WRAPPERS = ("model_state", "state_dict", "model", "module")

__all__ = ["SOURCES", "ConversionResult", "convert_checkpoint", "convert_state_dict", "read_foreign_state_dict"]


@dataclass
class ConversionResult:
    state: dict[str, torch.Tensor]
    model: str  # registry name
    overrides: dict[str, Any] = field(default_factory=dict)  # pass to create_model with the checkpoint
    notes: list[str] = field(default_factory=list)


def read_foreign_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: safetensors, or a torch file loaded with ``weights_only=True``.

    Unwraps ``{"model_state": ...}`` (PySlowFast), ``{"state_dict": ...}`` and ``{"model": ...}`` and
    strips a DistributedDataParallel ``module.`` prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    from tubelet.core.ckpt_format import safe_torch_load, torch_file_kind

    if path.suffix == ".safetensors" or torch_file_kind(path) == "safetensors":  # the content decides, not the name
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from exc
    else:
        obj = safe_torch_load(path, expected="a checkpoint of tensors")  # never unpickles code
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: expected a mapping of tensor names to tensors")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {', '.join(map(str, bad[:10]))}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _rename(state: dict[str, torch.Tensor], mod: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Tensors under their tubelet names (``mod.rename``, then ``mod.adapt`` where a source has one)
    and the source keys that have no tubelet counterpart."""
    adapt = getattr(mod, "adapt", lambda name, value: value)
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        new = mod.rename(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = adapt(new, value)
    return out, unknown


def convert_state_dict(
    state: dict[str, torch.Tensor],
    source: str,
    model: str | None = None,
    overrides: dict[str, Any] | None = None,
    interpolate_rel_pos_tables: bool = True,
    origin: str = "checkpoint",
) -> ConversionResult:
    """Rename ``state`` from ``source`` naming and check it against ``create_model(model, **overrides)``.

    ``model`` defaults to the registered variant that matches the checkpoint's depth and width;
    ``num_classes`` defaults to the checkpoint's head size. ``origin`` names the state's file in errors.
    """
    from tubelet.models.registry import create_model

    if source not in SOURCES:
        raise CheckpointError(f"unknown checkpoint source '{source}'; known: {', '.join(SOURCES)}")
    mod = SOURCES[source]
    notes: list[str] = []
    auto_overrides: dict[str, Any] = {}
    try:
        if hasattr(mod, "prepare"):  # layouts that differ beyond names (mae_st's q/k/v)
            state, notes = mod.prepare(state)
        if hasattr(mod, "model_overrides"):
            auto_overrides = mod.model_overrides(state)
    except KeyError as exc:
        raise CheckpointError(f"{origin}: not a {source} checkpoint: {exc.args[0] if exc.args else exc}") from exc
    renamed, unknown = _rename(state, mod)
    if not renamed:
        # nothing is a known key: the wrong --from, or not a model checkpoint at all
        found = ", ".join(list(state)[:3]) + (", ..." if len(state) > 3 else "")
        raise CheckpointError(
            f"{origin}: no {source} model key among its {len(state)} tensors (found {found}); expected keys "
            f"such as {', '.join(mod.EXAMPLE_KEYS)} (is --from right?)"
        )
    try:
        name = model or mod.infer_model(state)
    except (KeyError, ValueError) as exc:
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise CheckpointError(
            f"{origin}: cannot tell which model this {source} checkpoint is ({reason}); pass the model name"
        ) from exc
    overrides = {**auto_overrides, **(overrides or {})}
    head = next((renamed[k] for k in ("head.weight", "head.fc.weight") if k in renamed), None)
    if "num_classes" not in overrides and head is not None:
        overrides["num_classes"] = int(head.shape[0])
    elif "num_classes" not in overrides and source == "mae_st":
        overrides["num_classes"] = 0  # a pre-training encoder: no classifier
    with torch.device("meta"):
        target = create_model(name, **overrides)
    own = {k: v.shape for k, v in target.state_dict().items()}
    if hasattr(mod, "resample"):  # position tables for the target's grid
        notes += mod.resample(renamed, target)
    if interpolate_rel_pos_tables:
        for key, value in list(renamed.items()):
            if ".rel_pos_" in key and key in own and value.ndim == 2 and own[key][1] == value.shape[1]:
                if own[key][0] != value.shape[0]:
                    renamed[key] = interpolate_rel_pos(value.float(), own[key][0]).to(value.dtype)
                    notes.append(f"{key}: resampled {value.shape[0]} -> {own[key][0]} rows")

    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k])}"
        for k, v in renamed.items()
        if k in own and v.shape != own[k]
    ]
    missing = [k for k in own if k not in renamed]
    unexpected = [f"{k} (no {name} counterpart)" for k in unknown] + [
        f"{k} (renamed from {source}; not in {name})" for k in renamed if k not in own
    ]
    if mismatched or missing or unexpected:
        lines = [f"{source} checkpoint does not fit {name}({', '.join(f'{k}={v}' for k, v in overrides.items())})"]
        if mismatched:
            lines.append("shape mismatches:\n  " + "\n  ".join(mismatched))
        if missing:
            lines.append("missing keys:\n  " + "\n  ".join(missing))
        if unexpected:
            lines.append("unexpected keys:\n  " + "\n  ".join(unexpected))
        raise CheckpointError("\n".join(lines))
    ordered = {k: renamed[k].contiguous() for k in own}
    return ConversionResult(ordered, name, overrides, notes)


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    source: str,
    model: str | None = None,
    overrides: dict[str, Any] | None = None,
    interpolate_rel_pos_tables: bool = True,
) -> ConversionResult:
    """Read ``src``, convert it (see :func:`convert_state_dict`) and write ``dst`` as safetensors.

    The model name and overrides are stored in the file's metadata (``tubelet_model``,
    ``tubelet_overrides``) so the file says what to build.
    """
    from tubelet.core.io import save_safetensors

    result = convert_state_dict(read_foreign_state_dict(src), source, model, overrides, interpolate_rel_pos_tables,
                                origin=str(src))
    dst = Path(dst)
    meta = {
        "format": "pt",
        "tubelet_model": result.model,
        "tubelet_overrides": json.dumps(result.overrides),
        "converted_from": source,
    }
    save_safetensors(result.state, dst, metadata=meta)  # atomic; a refused write names dst
    return result
