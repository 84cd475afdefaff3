"""Load YAML recipes into the typed schema, apply dotted overrides, and write the effective config.

Recipes are data: they are parsed with ``yaml.safe_load`` and never evaluated. A recipe may start
from another with ``_base_: NAME`` (a shipped recipe name or a path relative to the file).

Errors name where the bad value was written: ``'data.batch_size' in r.yaml must be ...`` for a file,
``data.batch_size=abc (command line): expected int`` for an override, so that the user edits the right
place (overrides are checked on their own before they are merged over the file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from tubelet.config.registry import MethodConfig, method_config_class, method_names
from tubelet.config.schema import Bound, Recipe
from tubelet.errors import ConfigError

BASE_KEY = "_base_"
OVERRIDE_SOURCE = "command line"


class _BadValue(ConfigError):
    """A value of the wrong type, outside its choices or outside its :class:`Bound`. It keeps the parts
    (key, value, what was expected) so that an override's error can be worded after the override."""

    def __init__(self, dotted: str, source: str, value: Any, expected: str, hint: str = "") -> None:
        self.dotted, self.value, self.expected, self.hint = dotted, value, expected, hint
        super().__init__(f"'{dotted}' in {source} must be {expected}, got {value!r}{hint}")


def list_recipes() -> list[str]:
    """Names of the recipes shipped with tubelet."""
    root = resources.files("tubelet") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A file path if it exists, else a shipped recipe name (with or without ``.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.name[:-5] if path.name.endswith(".yaml") else path.name
    shipped = resources.files("tubelet") / "recipes" / f"{name}.yaml"
    if shipped.is_file():
        return Path(str(shipped))
    close = difflib.get_close_matches(name, list_recipes(), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"recipe '{name_or_path}' is neither a file nor a shipped recipe{hint}")


def read_recipe_tree(name_or_path: str | Path) -> dict[str, Any]:
    """A recipe's keys as written, with its ``_base_`` chain merged (no defaults filled in), after checking
    that it loads: what ``tubelet recipes NAME`` shows."""
    path = resolve_recipe(name_or_path)
    tree = _read_yaml(path)
    from_dict(tree, str(path))
    return tree


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: '{BASE_KEY}' chain loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read recipe: {exc.strerror}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(raw).__name__}")
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    base_path = path.parent / base if (path.parent / base).is_file() else resolve_recipe(base)
    return deep_merge(_read_yaml(base_path, seen + (path,)), raw)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "trainer.max_steps=10"]`` -> nested dict; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        dotted, text = item.split("=", 1)
        keys = dotted.strip().split(".")
        if not all(keys):
            raise ConfigError(f"override '{item}': empty key in '{dotted}'")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML: {exc}") from exc
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{key}'")
        node[keys[-1]] = value
    return tree


def load_recipe(name_or_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load a recipe file (or the defaults when None), apply overrides, validate, return a Recipe."""
    if name_or_path is None:
        raw: dict[str, Any] = {}
        source = "<defaults>"
    else:
        path = resolve_recipe(name_or_path)
        raw = _read_yaml(path)
        source = str(path)
    if overrides:
        # Overrides are built on their own first, so that a misspelt key or a bad value names the
        # override rather than the recipe file it is merged over.
        over = parse_overrides(overrides)
        method_name = _method_name(raw, over)
        named_here = isinstance(over.get("method"), dict) and "name" in over["method"]
        _check_method_name(method_name, OVERRIDE_SOURCE if named_here else source)
        try:
            _build(Recipe, over, OVERRIDE_SOURCE, "", method_name)
        except _BadValue as exc:
            raise ConfigError(_override_message(exc, overrides)) from None
        raw = deep_merge(raw, over)
    return from_dict(raw, source)


def _override_message(exc: _BadValue, overrides: list[str] | tuple[str, ...]) -> str:
    """``data.batch_size=abc (command line): expected int``: the override as typed, then what is wrong;
    a bad item inside the value (``optim.betas[1]``) is named after it."""
    typed = {item.split("=", 1)[0].strip(): item for item in overrides}
    key = exc.dotted
    while key not in typed and any(c in key for c in ".["):
        key = key[: max(key.rfind("."), key.rfind("["))]
    item = typed.get(key, f"{exc.dotted}={exc.value}")
    if key == exc.dotted:  # the override shows the value already
        return f"{item} ({OVERRIDE_SOURCE}): expected {exc.expected}{exc.hint}"
    return f"{item} ({OVERRIDE_SOURCE}): '{exc.dotted}' expected {exc.expected}, got {exc.value!r}{exc.hint}"


def _method_name(raw: dict[str, Any], over: dict[str, Any] | None = None) -> str:
    name = "supervised"
    for tree in (raw, over or {}):
        section = tree.get("method")
        if isinstance(section, dict) and "name" in section:
            name = section["name"]
    return name


def _unknown_key_message(dotted: str, source: str, valid: list[str], prefix: str) -> str:
    key = dotted.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"
    return f"unknown key '{dotted}' in {source}{hint}"


def _dataclass_of(hint: Any, key: str, method_name: str) -> type | None:
    if hint is MethodConfig:
        return method_config_class(method_name)
    if dataclasses.is_dataclass(hint):
        return hint
    return None


def from_dict(raw: dict[str, Any], source: str = "<dict>") -> Recipe:
    """Validate a nested dict against the schema: unknown keys and wrong types are errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping, got {type(raw).__name__}")
    method_name = _method_name(raw)
    _check_method_name(method_name, source)
    return _build(Recipe, raw, source, "", method_name)


def _check_method_name(method_name: Any, source: str) -> None:
    if method_config_class(str(method_name)) is None:
        close = difflib.get_close_matches(str(method_name), method_names(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(method_names())}"
        raise ConfigError(f"unknown method.name '{method_name}' in {source}{hint}")


def _build(cls: type, tree: dict[str, Any], source: str, prefix: str, method_name: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(_unknown_key_message(dotted, source, list(fields), prefix))
        kwargs[key] = _coerce(value, hints[key], dotted, source, method_name)
        bound = fields[key].metadata.get("bound")
        if isinstance(bound, Bound) and isinstance(kwargs[key], (int, float)) and not bound.accepts(kwargs[key]):
            raise _BadValue(dotted, source, value, bound.describe())
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, dotted: str, source: str, method_name: str) -> Any:
    sub = _dataclass_of(hint, dotted, method_name)
    if sub is not None:
        if not isinstance(value, dict):
            raise _BadValue(dotted, source, value, "a mapping")
        return _build(sub, value, source, f"{dotted}.", method_name)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Literal:
        # an enumerated option: a value outside the choices is refused like an unknown key
        if any(value == a and type(value) is type(a) for a in args):
            return value
        choices = [str(a) for a in args]
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise _BadValue(dotted, source, value, f"one of {', '.join(choices)}", hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, dotted, source, method_name)
            except ConfigError as exc:
                errors.append(exc)
        raise _BadValue(dotted, source, value, _type_name(hint))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _BadValue(dotted, source, value, "a list")
        (item,) = args or (Any,)
        return [_coerce(v, item, f"{dotted}[{i}]", source, method_name) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _BadValue(dotted, source, value, "a mapping")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            with contextlib.suppress(ValueError):
                return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    raise _BadValue(dotted, source, value, _type_name(hint))


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def to_dict(recipe: Recipe) -> dict[str, Any]:
    return dataclasses.asdict(recipe)


def dump_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write the effective config (after bases and overrides) as YAML; it loads back to the same Recipe."""
    from tubelet.core.io import atomic_write_text

    return atomic_write_text(Path(path), yaml.safe_dump(to_dict(recipe), sort_keys=False))
