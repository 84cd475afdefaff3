"""The model registry: ``create_model(name, **overrides)`` and ``list_models()``, in the style of timm.

Each entry pairs a builder with a typed variant config (a dataclass). Overrides are checked against
the dataclass's fields, so a misspelt keyword is an error that names the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from tubelet.errors import ConfigError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[[Any], nn.Module]  # takes the variant config instance
    config: Any  # default variant config (a dataclass instance)
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, config: Any, description: str = "") -> Callable:
    """Decorator: ``@register_model("vit_base", ViTConfig(...))`` above a ``builder(cfg) -> nn.Module``."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"model '{name}': variant config must be a dataclass instance")

    def wrap(builder: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, config, description)
        return builder

    return wrap


def _ensure_loaded() -> None:
    # Model modules register themselves on import; import them lazily so that
    # ``tubelet.models.registry`` stays importable from anywhere.
    import tubelet.models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob pattern, sorted."""
    _ensure_loaded()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_model_config(name: str, **overrides: Any) -> Any:
    """The variant config for ``name`` with overrides applied and checked."""
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown model '{name}'{hint} (see tubelet.list_models())")
    base = _REGISTRY[name].config
    valid = {f.name for f in dataclasses.fields(base)}
    for key in overrides:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid: {', '.join(sorted(valid))}"
            raise ConfigError(f"model '{name}' has no option '{key}'{hint}")
    return dataclasses.replace(base, **overrides)


def create_model(name: str, checkpoint: str | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model; ``checkpoint`` loads weights (safetensors or a tubelet checkpoint)."""
    cfg = get_model_config(name, **overrides)
    model = _REGISTRY[name].builder(cfg)
    if checkpoint is not None:
        from tubelet.models.weights import load_weights

        load_weights(model, checkpoint)
    return model
