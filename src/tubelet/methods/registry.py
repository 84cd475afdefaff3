"""The method registry: ``@register_method(name, Config)`` above a builder ``(recipe, context) -> nn.Module``.

Registering a method also registers its config dataclass with the recipe loader, so a new method is
one file (its config, its module, its builder) and nothing else.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from torch import nn

from tubelet.config.registry import MethodConfig, register_method_config
from tubelet.config.schema import Recipe
from tubelet.errors import ConfigError
from tubelet.methods.base import RunContext

Builder = Callable[[Recipe, RunContext], nn.Module]


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config: type[MethodConfig]
    build: Builder


_METHODS: dict[str, MethodEntry] = {}


def register_method(name: str, config: type[MethodConfig]) -> Callable[[Builder], Builder]:
    """Decorator: ``@register_method("mae_st", MAESTConfig)`` above ``build(recipe, context) -> nn.Module``."""

    def wrap(build: Builder) -> Builder:
        known = _METHODS.get(name)
        if known is not None and known.build is not build:
            raise ValueError(f"method '{name}' is registered twice")
        register_method_config(name, config)
        _METHODS[name] = MethodEntry(name, config, build)
        return build

    return wrap


def list_methods() -> list[str]:
    return sorted(_METHODS)


def build_method(recipe: Recipe, context: RunContext | None = None) -> nn.Module:
    """The method ``recipe.method.name`` built from the recipe; ``context`` defaults to what the recipe
    alone tells (``RunContext.from_recipe``: no training-set size, no label map)."""
    name = recipe.method.name
    entry = _METHODS.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(_METHODS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown method '{name}'{hint}; known: {', '.join(list_methods())}")
    if not isinstance(recipe.method, entry.config):
        raise ConfigError(f"method '{name}' needs a {entry.config.__name__} section, got {type(recipe.method).__name__}")
    return entry.build(recipe, context if context is not None else RunContext.from_recipe(recipe))
