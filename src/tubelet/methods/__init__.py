"""Training objectives, one file per paper. A method is a plain ``nn.Module`` whose
``forward(batch)`` returns a dict with ``loss`` (and anything else worth logging).

Methods that can classify a clip also define ``classify(video) -> logits``; evaluation uses it.
"""

from __future__ import annotations

import importlib

from torch import nn

from tubelet.config.schema import Recipe
from tubelet.errors import ConfigError

# method name (recipe ``method.name``) -> "module:builder"; each builder takes the whole Recipe.
METHODS = {
    "supervised": "tubelet.methods.supervised:build",
    "mae_st": "tubelet.methods.mae_st:build",
    "linear_probe": "tubelet.methods.linear_probe:build",
    "maskfeat": "tubelet.methods.maskfeat:build",
    "contrastive": "tubelet.methods.contrastive:build",
}


def build_method(recipe: Recipe) -> nn.Module:
    name = recipe.method.name
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; known: {', '.join(sorted(METHODS))}")
    module_name, func = METHODS[name].split(":")
    return getattr(importlib.import_module(module_name), func)(recipe)
