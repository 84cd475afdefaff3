"""``load_model(RUN_DIR or FILE)``: the trained backbone, rebuilt from what the run folder or weights file
says about it, so that nobody repeats the model's options to load it.

A file is read by its safetensors metadata (``tubelet.models.weights``: the model name and resolved
variant config that ``tubelet fit`` and ``tubelet convert`` write). A run folder is read through its
``backbone.safetensors``; when that file carries no metadata (a run of an older version), the model is
rebuilt from the folder's ``config.yaml`` as ``build_method`` builds it. Either way the weights load
strictly (every tensor, every shape) and nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from tubelet.errors import CheckpointError


def load_model(path: str | Path) -> nn.Module:
    """The model of a run folder (its ``backbone.safetensors``) or of a self-describing weights file
    (``backbone.safetensors``, ``method.safetensors`` or a converted checkpoint), in eval mode."""
    from tubelet.models.weights import file_metadata, load_weights, model_from_file

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run folder or weights file")
    if path.is_file():
        return model_from_file(path).eval()
    weights = path / "backbone.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{path}: not a run folder with trained weights (no backbone.safetensors)")
    if file_metadata(weights).get("tubelet_model"):
        return model_from_file(weights).eval()
    backbone = _backbone_from_recipe(path / "config.yaml", weights)
    load_weights(backbone, weights)
    return backbone.eval()


def _backbone_from_recipe(config: Path, weights: Path) -> nn.Module:
    """The untrained backbone the run's recipe builds (its own ``model.checkpoint`` is not loaded: the
    run's weights replace it)."""
    if not config.is_file():
        raise CheckpointError(f"{weights}: the file does not say which model it holds and {config} is missing")
    from tubelet.config import load_recipe
    from tubelet.methods import build_method

    recipe = load_recipe(config)
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, checkpoint=None))
    backbone = getattr(build_method(recipe), "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise CheckpointError(f"{config}: method '{recipe.method.name}' has no backbone to load {weights} into")
    return backbone
