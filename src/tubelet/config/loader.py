"""Load YAML recipes into the typed schema, apply dotted overrides, and write the effective config.

Recipes are data: they are parsed with ``yaml.safe_load``'s constructors and never evaluated; a key
written twice in one mapping is an error naming both lines (YAML would keep the second silently). A
recipe may start from another with ``_base_: NAME``: a file in the recipe's own folder (or below it) or
a shipped recipe name; a base that leads out of the folder is refused.

Errors name where the bad value was written: ``'data.batch_size' in r.yaml must be ...`` for a file,
``data.batch_size=abc (command line): expected int`` for an override, so that the user edits the right
place (overrides are checked on their own before they are merged over the file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from tubelet.config.bounds import FieldError, cross_checks
from tubelet.config.registry import MethodConfig, method_config_class, method_names
from tubelet.config.schema import Recipe
from tubelet.errors import ConfigError

BASE_KEY = "_base_"
OVERRIDE_SOURCE = "command line"


class _BadValue(ConfigError):
    """A value of the wrong type, outside its choices or outside its :class:`Bound`. It keeps the parts
    (key, value, what was expected) so that an override's error can be worded after the override."""

    def __init__(self, dotted: str, source: str, value: Any, expected: str, hint: str = "", cross: bool = False) -> None:
        self.dotted, self.value, self.expected, self.hint, self.cross = dotted, value, expected, hint, cross
        super().__init__(f"'{dotted}' in {source} must be {expected}, got {value!r}{hint}")


class _DuplicateKey(ConfigError):
    """A key written twice in one YAML mapping; the caller adds the file's name."""

    def __init__(self, dotted: str, first: int, second: int) -> None:
        self.dotted, self.first, self.second = dotted, first, second
        super().__init__(f"key '{dotted}' is written twice, at lines {first} and {second}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, except that a key given twice in one mapping is an error (plain YAML
    keeps the last one, so a second ``trainer:`` section would silently replace the first)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_unique_keys(node, "", set(), self.construct_object)
        return super().construct_document(node)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_unique_keys(node: yaml.Node, prefix: str, seen: set[int], construct: Any) -> None:
    """Walk the composed document (before construction, so that lines are known): every mapping's own
    keys must be distinct as the constructed dict would see them (``yes`` and ``true`` are one key).
    Keys merged in with ``<<`` may be overridden by the mapping's own, as YAML intends, so they are not
    compared."""
    if id(node) in seen:  # an alias: its node was walked where the anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, f"{prefix}[{i}]", seen, construct)
    elif isinstance(node, yaml.MappingNode):
        lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            dotted = f"{prefix}.{shown}" if prefix else str(shown)
            if isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                key = construct(key_node)
                with contextlib.suppress(TypeError):  # an unhashable key fails in construction, as in safe_load
                    if key in lines:
                        raise _DuplicateKey(dotted, lines[key], line)
                    lines[key] = line
            _check_unique_keys(value_node, dotted, seen, construct)


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` that refuses duplicate keys (:class:`_DuplicateKey`)."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


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


def _read_yaml(path: Path, seen: tuple[Path, ...] = (), root: Path | None = None) -> dict[str, Any]:
    """A recipe file's tree with its ``_base_`` chain merged under it. ``root``: the folder every base of
    the chain must stay in, the first recipe's own (a shipped recipe's chain stays among the shipped)."""
    path = path.resolve()
    root = root if root is not None else path.parent
    if path in seen:
        raise ConfigError(f"{path}: '{BASE_KEY}' chain loops back to itself")
    try:
        raw = _load_yaml(path.read_text(encoding="utf-8"))
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: key '{exc.dotted}' is written twice, at lines {exc.first} and {exc.second}; "
                          "YAML would keep only the second: keep one") from None
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
    base_path, base_root = _resolve_base(path, base, root)
    return deep_merge(_read_yaml(base_path, seen + (path,), base_root), raw)


def _resolve_base(path: Path, base: Any, folder: Path) -> tuple[Path, Path]:
    """The file ``_base_: base`` of recipe ``path`` (already resolved) names, relative to ``path``, and the
    folder its own bases must stay in: a file in ``folder`` (the first recipe's) or below it, symlinks
    followed (they too must stay inside), else a shipped recipe name. A base anywhere else is refused: a
    recipe handed over from elsewhere must not read files outside its folder."""
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a shipped recipe name or a file name, got {base!r}")
    written = path.parent / os.path.expanduser(base)
    real = written.resolve()
    if real != folder and folder not in real.parents:
        lexical = Path(os.path.normpath(written))
        if lexical == folder or folder in lexical.parents:  # the path stays inside; a symlink on it leads out
            why = f"is a symlink to {real}, outside the recipe's folder {folder}"
        else:
            why = f"leads outside the recipe's folder {folder}"
        raise ConfigError(f"{path}: '{BASE_KEY}: {base}' {why}; a base must be a file in that folder (or below it) "
                          "or a shipped recipe name")
    if real.is_file():
        return real, folder
    name = base[: -len(".yaml")] if base.endswith(".yaml") else base
    if Path(base).name == base and name in list_recipes():
        shipped = resolve_recipe(name).resolve()
        return shipped, shipped.parent
    close = difflib.get_close_matches(name, list_recipes(), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"{path}: '{BASE_KEY}: {base}' is neither a file in {path.parent} nor a shipped recipe{hint}")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "trainer.max_steps=10"]`` -> nested dict; values parsed as YAML scalars.

    Overrides apply in command-line order, each over the ones before it, so a key given twice takes the
    last value (``optim.lr=1 optim.lr=2``: 2), as argparse does with a repeated option: appending an
    override to a command changes that one value. A mapping value merges key by key
    (``optim.lr=1 optim={momentum: 0.8}`` keeps the LR).
    """
    tree: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        dotted, text = item.split("=", 1)
        keys = [k.strip() for k in dotted.strip().split(".")]
        if not all(keys):
            raise ConfigError(f"override '{item}': empty key in '{dotted}'")
        try:
            value = _load_yaml(text) if text.strip() else None
        except _DuplicateKey as exc:
            raise ConfigError(f"override '{item}': key '{exc.dotted}' is written twice in the value") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML: {exc}") from exc
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{key}'")
        last = keys[-1]
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            value = deep_merge(node[last], value)
        node[last] = value
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
            with cross_checks(False):  # a rule between an override and the file is judged on the merged recipe
                _build(Recipe, over, OVERRIDE_SOURCE, "", method_name)
        except _BadValue as exc:
            raise ConfigError(_override_message(exc, overrides)) from None
        raw = deep_merge(raw, over)
    try:
        return from_dict(raw, source)
    except _BadValue as exc:
        if not (overrides and exc.cross):
            raise
        # both sides of the rule may come from either place
        raise _BadValue(exc.dotted, f"{source} with the command-line overrides", exc.value, exc.expected) from None


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
    try:
        return cls(**kwargs)  # the section checks its bounds and rules (config/bounds.py)
    except FieldError as exc:
        raise _BadValue(f"{prefix}{exc.name}", source, _as_written(tree, exc), exc.expected_with(prefix),
                        cross=exc.cross) from None


def _as_written(tree: dict[str, Any], exc: FieldError) -> Any:
    """The value of the field ``exc`` names as the recipe wrote it (``0`` rather than the ``0.0`` it became),
    or the checked value when the recipe did not write it (a default in a cross-field rule)."""
    match = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", exc.name)
    if match is None or match.group(1) not in tree:
        return exc.value
    value = tree[match.group(1)]
    if match.group(2) is not None:
        i = int(match.group(2))
        return value[i] if isinstance(value, (list, tuple)) and i < len(value) else exc.value
    return value


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
