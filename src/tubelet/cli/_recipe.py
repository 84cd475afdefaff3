"""The recipe arguments shared by the commands that run a recipe (``fit``, ``test``)."""

from __future__ import annotations

import argparse

from tubelet.config import Recipe, load_recipe
from tubelet.errors import ConfigError


def add_recipe_arguments(p: argparse.ArgumentParser, example: str = "optim.lr=1e-3") -> None:
    p.add_argument("--config", "-c", default=None,
                   help="recipe file or shipped recipe name (or give it as the first positional argument)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help=f"dotted overrides, e.g. {example}; they may also follow the options")
    p.set_defaults(overrides_anywhere=True)  # cli.main collects overrides that come after an option


def recipe_and_overrides(args: argparse.Namespace) -> tuple[str, list[str]]:
    """``--config R`` or a first positional ``R`` (without '='), then the dotted overrides."""
    items = list(args.overrides)
    if args.config is not None:
        return args.config, items
    if items and "=" not in items[0]:
        return items[0], items[1:]
    raise ConfigError("no recipe given: use --config RECIPE (a file or a shipped recipe name)")


def load_from_args(args: argparse.Namespace) -> Recipe:
    return load_recipe(*recipe_and_overrides(args))
