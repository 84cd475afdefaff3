"""Load model weights from safetensors or a tubelet checkpoint, never unpickling code; the metadata that
makes a weights file self-describing.

A weights file written by ``tubelet fit`` carries in its safetensors metadata (string -> string):

* ``tubelet_model``: the registered model name;
* ``tubelet_config``: the resolved variant config (every dataclass field) as JSON;
* ``tubelet_num_classes``: the classifier's size;
* ``tubelet_prefix``: where the model's tensors sit in the file (``""``; ``"backbone."`` in a
  method's file).

``tubelet convert`` writes ``tubelet_model`` and ``tubelet_overrides`` (the options that differ from
the registered variant), which describe the model as well.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from tubelet.errors import CheckpointError, TubeletError

if TYPE_CHECKING:
    from tubelet.models.registry import ModelVariant


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from ``.safetensors`` (or a torch file loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    from tubelet.core.ckpt_format import safe_torch_load, torch_file_kind

    if path.suffix == ".safetensors" or torch_file_kind(path) == "safetensors":  # the content decides, not the name
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    obj = safe_torch_load(path)  # never unpickles code; says what a file that is not loadable is
    if isinstance(obj, dict) and isinstance(obj.get("tubelet"), dict) and "weights_file" in obj["tubelet"]:
        return _training_checkpoint_weights(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a mapping of tensor names to tensors")
    return obj


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> tuple[list[str], list[str]]:
    """Load weights into ``model``; mismatched shapes, missing or unexpected keys are listed in the error."""
    return _load_state(model, read_state_dict(path), path, strict)


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path,
                strict: bool = True) -> tuple[list[str], list[str]]:
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


META_MODEL = "tubelet_model"
META_CONFIG = "tubelet_config"
META_OVERRIDES = "tubelet_overrides"
META_NUM_CLASSES = "tubelet_num_classes"
META_PREFIX = "tubelet_prefix"


def describe_model(model: nn.Module, prefix: str = "") -> dict[str, str]:
    """The metadata that lets a weights file of ``model`` rebuild it (empty for a model that
    ``create_model`` did not build: there is no registered name to record). ``prefix``: where the
    model's tensors sit in the file."""
    from tubelet.models.registry import ModelVariant

    variant = getattr(model, "variant", None)
    if not isinstance(variant, ModelVariant):
        return {}
    return {META_MODEL: variant.name,
            META_CONFIG: json.dumps(dataclasses.asdict(variant.config), sort_keys=True),
            META_NUM_CLASSES: str(int(getattr(variant.config, "num_classes", 0))),
            META_PREFIX: prefix}


def file_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of ``path`` (empty for another kind of file)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    from safetensors import SafetensorError

    from tubelet.core.io import read_safetensors_metadata

    try:
        return read_safetensors_metadata(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from exc


def saved_variant(path: str | Path, meta: dict[str, str] | None = None) -> "ModelVariant | None":
    """The model a weights file says it was saved from, or None when its metadata does not say."""
    from tubelet.models.registry import get_model_config, variant_from_fields

    meta = file_metadata(path) if meta is None else meta
    name = meta.get(META_MODEL)
    if not name:
        return None
    try:
        if META_CONFIG in meta:
            return variant_from_fields(name, json.loads(meta[META_CONFIG]), str(path))
        overrides = json.loads(meta.get(META_OVERRIDES) or "{}")
        return variant_from_fields(name, dataclasses.asdict(get_model_config(name, **overrides)), str(path))
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: the model config in its metadata is not valid JSON of model '{name}': {exc}") from exc
    except TubeletError as exc:
        raise CheckpointError(f"{path}: the metadata names a model that cannot be built: {exc}") from exc


# Config fields that hold no tensors yet change what the weights compute: a file saved with one value and
# loaded into a model with another would load without a missing key and give other logits. (Training-only
# fields such as drop_path_rate may differ: fine-tuning changes them.)
WEIGHT_BOUND_FIELDS = ("norm_eps", "attn_norm_eps")


def load_described_weights(model: nn.Module, path: str | Path) -> None:
    """Load ``path`` into ``model`` strictly, checking first that the file was saved from this model
    (when its metadata says): another model name, or options under which the tensors do not fit, is a
    one-line error naming the model the file was saved from. Files without metadata load as
    ``load_weights`` does."""
    from tubelet.models.registry import ModelVariant

    meta = file_metadata(path)
    saved = saved_variant(path, meta)
    own = getattr(model, "variant", None)
    if saved is None or not isinstance(own, ModelVariant):
        load_weights(model, path)
        return
    if saved.name != own.name:
        raise CheckpointError(
            f"{path}: saved from model '{saved.name}', not '{own.name}'; build it with "
            f"create_model('{saved.name}', checkpoint=...) or tubelet.load_model('{path}')"
        )
    numeric = [f for f in WEIGHT_BOUND_FIELDS if hasattr(own.config, f) and hasattr(saved.config, f)
               and getattr(own.config, f) != getattr(saved.config, f)]
    if numeric:
        sets = ", ".join(f"{f}={getattr(saved.config, f)!r}" for f in numeric)
        raise CheckpointError(
            f"{path}: saved with {sets}, this model has "
            + ", ".join(f"{f}={getattr(own.config, f)!r}" for f in numeric)
            + f": the weights were trained (or imported) for the saved setting; build it with tubelet.load_model('{path}') "
            f"or create_model('{own.name}', {sets}, checkpoint=...)"
        )
    state = _model_tensors(read_state_dict(path), meta.get(META_PREFIX, ""))
    try:
        _load_state(model, state, path)
    except CheckpointError as exc:
        fields = [f.name for f in dataclasses.fields(own.config)
                  if getattr(own.config, f.name) != getattr(saved.config, f.name)]
        first = str(exc).splitlines()[-1].strip()
        raise CheckpointError(
            f"{path}: saved from {saved.describe(fields)}, this model is {own.describe(fields)}; the weights do not "
            f"fit (e.g. {first}); build it with tubelet.load_model('{path}')"
        ) from exc


def model_from_file(path: str | Path) -> nn.Module:
    """The model a self-describing weights file was saved from, built from its metadata with the file's
    weights loaded strictly."""
    from tubelet.models.registry import create_model

    path = Path(path)
    saved = saved_variant(path)
    if saved is None:
        raise CheckpointError(
            f"{path}: the file does not say which model it holds (no '{META_MODEL}' in its safetensors metadata); "
            "build the model with create_model(name, checkpoint=...)"
        )
    model = create_model(saved.name, **dataclasses.asdict(saved.config))
    load_described_weights(model, path)
    return model


def _model_tensors(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} if prefix else state
