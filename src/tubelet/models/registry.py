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
    """Build a registered model; ``checkpoint`` loads weights (safetensors or a tubelet checkpoint).

    The model keeps its name and resolved variant config as ``model.variant`` (a ``ModelVariant``), so
    that the weights files it is saved to can say what to build (``tubelet.models.weights``). A
    checkpoint whose metadata names another model, or whose tensors do not fit because it was saved
    with other options, is a one-line ``CheckpointError`` naming the model the file was saved from.
    """
    cfg = get_model_config(name, **overrides)
    model = _REGISTRY[name].builder(cfg)
    model.variant = ModelVariant(name, cfg)
    if checkpoint is not None:
        from tubelet.models.weights import load_described_weights

        load_described_weights(model, checkpoint)
    return model


@dataclass(frozen=True)
class ModelVariant:
    """What ``create_model`` built: the registered name and the variant config with every override applied."""

    name: str
    config: Any

    def describe(self, fields: list[str] | None = None) -> str:
        """``name(field=value, ...)`` over ``fields`` (default: the fields that differ from the registered variant)."""
        base = _REGISTRY[self.name].config if self.name in _REGISTRY else None
        if fields is None:
            fields = [f.name for f in dataclasses.fields(self.config)
                      if base is None or getattr(base, f.name) != getattr(self.config, f.name)]
        return f"{self.name}({', '.join(f'{k}={getattr(self.config, k)!r}' for k in fields)})"


def variant_from_fields(name: str, values: dict[str, Any], source: str) -> ModelVariant:
    """The variant of ``name`` with saved field ``values`` (JSON: lists where the config holds tuples).
    ``source`` (a file) is named in the error when a value names an option the model does not have."""
    cfg = get_model_config(name)
    valid = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"{source}: saved config of model '{name}' has options it does not have: {unknown}")
    fixed = {k: tuple(v) if isinstance(valid[k], tuple) and isinstance(v, list) else v for k, v in values.items()}
    return ModelVariant(name, dataclasses.replace(cfg, **fixed))
