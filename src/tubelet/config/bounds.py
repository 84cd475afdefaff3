"""The range of every number in a recipe, checked wherever a config section is built.

Each numeric field of a section (``config/schema.py``) or of a method's config (``methods/*.py``) is
declared with :func:`bounded`, which records its :class:`Bound` (and, for list fields, how many items
and whether they are a ``[low, high]`` pair). Sections subclass :class:`Checked`, whose
``__post_init__`` runs :func:`check_fields`: a ``Recipe`` or ``MAESTConfig`` built in Python is held to
the same ranges, enumerations and cross-field rules as one loaded from YAML. The loader
(``config/loader.py``) catches :class:`FieldError` and words it after the key as written
(``'data.batch_size' in r.yaml must be at least 1, got 0``); built in Python, the message names the
recipe key of the section (``data.batch_size must be at least 1, got 0``).

NaN and infinity are outside every bound: no recipe number means "infinite", and a NaN learning rate
or ratio would only surface as NaN losses many steps later.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Literal

from tubelet.errors import ConfigError

__all__ = [
    "Bound", "Checked", "FieldError", "bounded", "check_fields", "cross_checks",
    "FRACTION", "MAX_STEPS", "NONNEGATIVE", "POSITIVE", "POSITIVE_REAL", "PROBABILITY_BELOW_ONE", "SEED",
    "UNIT_OPEN", "UNIT_HALF_OPEN", "REAL",
]


@dataclass(frozen=True)
class Bound:
    """The range a number field accepts.

    ``low`` and ``high`` are inclusive unless ``open_low`` / ``open_high``; ``also`` is one value outside the
    range that still has a meaning (``trainer.max_steps=-1``: no step limit), which ``note`` explains.
    ``low=None``: no lower limit (any finite number). Non-finite values are never accepted.
    """

    low: float | None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    also: float | None = None
    note: str = ""

    def accepts(self, value: float) -> bool:
        if self.also is not None and value == self.also:
            return True
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below

    def describe(self, value: Any = None) -> str:
        """What the bound asks for; ``value``, when it is NaN or infinite, adds that it must be finite."""
        if self.low is None:
            text = "finite"
        elif self.high is not None:
            text = f"in {'(' if self.open_low else '['}{_num(self.low)}, {_num(self.high)}{')' if self.open_high else ']'}"
        elif self.open_low:
            text = f"greater than {_num(self.low)}"
        else:
            text = f"at least {_num(self.low)}"
        if self.low is not None and isinstance(value, float) and not math.isfinite(value):
            text = f"a finite number {text}"
        return text + (f" (or {_num(self.also)}: {self.note})" if self.also is not None else "")


def _num(x: float) -> str:
    """``1``, ``0.5``, ``4294967295``: whole bounds in full (``:g`` would print 4.29497e+09)."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


POSITIVE = Bound(1)  # sizes and counts: at least one
NONNEGATIVE = Bound(0)
POSITIVE_REAL = Bound(0, open_low=True)
REAL = Bound(None)  # any finite number
FRACTION = Bound(0, 1)  # fractions and probabilities
PROBABILITY_BELOW_ONE = Bound(0, 1, open_high=True)
UNIT_OPEN = Bound(0, 1, open_low=True, open_high=True)  # a mask ratio: 0 masks nothing, 1 leaves nothing visible
UNIT_HALF_OPEN = Bound(0, 1, open_low=True)  # (0, 1]: a scale or decay factor where 0 is degenerate
MAX_STEPS = Bound(1, also=-1, note="no step limit, trainer.max_epochs ends training")
SEED = Bound(0, 2**32 - 1)  # what NumPy's and Lightning's seeding accept


def bounded(default: Any, bound: Bound, length: int | tuple[int, int] | None = None, ordered: bool = False) -> Any:
    """A dataclass field with ``default`` whose values must lie in ``bound``.

    A list field (a list ``default``) has ``bound`` on every item; ``length`` is its number of items (or
    ``(fewest, most)``); ``ordered``: the items may not decrease (a ``[low, high]`` range).
    """
    meta = {"bound": bound, "length": length, "ordered": ordered}
    if isinstance(default, list):
        items = list(default)
        return field(default_factory=lambda: list(items), metadata=meta)
    return field(default=default, metadata=meta)


class FieldError(ConfigError):
    """A field outside its bound, its choices or a cross-field rule. ``name`` is the field (``betas[1]`` for
    an item of a list), ``expected`` may hold ``{prefix}`` where another field of the section is named,
    so that the loader can prefix the recipe's dotted path; ``cross``: a rule between fields."""

    def __init__(self, owner: str, name: str, value: Any, expected: str, cross: bool = False) -> None:
        self.name, self.value, self.expected, self.cross = name, value, expected, cross
        prefix = f"{owner}." if owner else ""
        super().__init__(f"{prefix}{name} must be {expected.format(prefix=prefix)}, got {value!r}")

    def expected_with(self, prefix: str) -> str:
        return self.expected.format(prefix=prefix)


_CROSS_CHECKS: contextvars.ContextVar[bool] = contextvars.ContextVar("tubelet_cross_checks", default=True)


@contextlib.contextmanager
def cross_checks(enabled: bool) -> Iterator[None]:
    """Turn the cross-field rules off while a partial tree is built (the command-line overrides on their
    own, before they are merged over the recipe file: a rule between an override and a file value can
    only be judged on the merged recipe)."""
    token = _CROSS_CHECKS.set(enabled)
    try:
        yield
    finally:
        _CROSS_CHECKS.reset(token)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _number_problem(value: Any, bound: Bound, integer: bool) -> str | None:
    kind = "an int" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        return f"{kind} {bound.describe()}"
    if not bound.accepts(value):
        return bound.describe(value)
    return None


def _integer(hint: Any) -> bool:
    """Whether a (possibly Optional or list) hint holds ints and no floats."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list:
        return _integer(args[0]) if args else False
    if args:
        return int in args and float not in args
    return hint is int


def check_fields(obj: Any) -> None:
    """:class:`FieldError` for the first field of dataclass ``obj`` outside its bound or its ``Literal``
    choices, then for the first broken cross-field rule (``obj._cross_rules()``)."""
    cls = type(obj)
    owner = getattr(cls, "SECTION", cls.__name__)
    hints = _hints(cls)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        hint = hints.get(f.name)
        if typing.get_origin(hint) is Literal:
            choices = typing.get_args(hint)
            if not any(value == a and type(value) is type(a) for a in choices):
                raise FieldError(owner, f.name, value, f"one of {', '.join(str(a) for a in choices)}")
        bound = f.metadata.get("bound")
        if bound is None or value is None or (isinstance(value, str) and str in typing.get_args(hint)):
            continue
        integer = _integer(hint)
        if isinstance(value, (list, tuple)):
            _check_list(owner, f, list(value), bound, integer)
            continue
        problem = _number_problem(value, bound, integer)
        if problem is not None:
            raise FieldError(owner, f.name, value, problem)
    if _CROSS_CHECKS.get():
        for name, value, expected in getattr(obj, "_cross_rules", lambda: ())():
            raise FieldError(owner, name, value, expected, cross=True)


def _check_list(owner: str, f: dataclasses.Field, value: list, bound: Bound, integer: bool) -> None:
    length = f.metadata.get("length")
    if length is not None:
        lo, hi = (length, length) if isinstance(length, int) else length
        if not lo <= len(value) <= hi:
            count = str(lo) if lo == hi else f"{lo} or {hi}" if hi == lo + 1 else f"{lo} to {hi}"
            raise FieldError(owner, f.name, value, f"a list of {count} {'ints' if integer else 'numbers'}")
    for i, item in enumerate(value):
        problem = _number_problem(item, bound, integer)
        if problem is not None:
            raise FieldError(owner, f"{f.name}[{i}]", item, problem)
    if f.metadata.get("ordered") and any(b < a for a, b in zip(value, value[1:])):
        raise FieldError(owner, f.name, value, "a [low, high] range with low <= high")


class Checked:
    """Base of every config section: building one (from YAML, from Python, through ``dataclasses.replace``)
    checks its fields. ``SECTION`` is where the section sits in a recipe (``data.augment``), which names
    its fields in errors. A section may define ``_cross_rules()`` yielding ``(field, value, expected)`` for
    each rule between its fields that the values break."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fields(self)
