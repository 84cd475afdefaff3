"""The method-config registry.

Each method declares its config dataclass beside itself (``methods/<name>.py``), subclassing
``MethodConfig``, and registers it with ``tubelet.methods.register_method``, which calls
``register_method_config`` here. The recipe loader finds the ``method`` section's dataclass through this
table, so this package holds only the shared sections and no list of methods.
"""

from __future__ import annotations

from dataclasses import dataclass, is_dataclass
from typing import ClassVar

from tubelet.config.bounds import Checked

_METHOD_CONFIGS: dict[str, type["MethodConfig"]] = {}


@dataclass
class MethodConfig(Checked):
    """Base of every method section; ``name`` selects the registered subclass. Numeric fields are declared
    with ``tubelet.config.bounds.bounded`` so that their range is checked when the section is built."""

    SECTION = "method"
    # Whether the method's loss reads the clips' class labels: then every label of the training and
    # validation data must lie in [0, model.num_classes), which the engine checks before the first step.
    TRAINS_ON_LABELS: ClassVar[bool] = False

    name: str = "supervised"


def register_method_config(name: str, cls: type[MethodConfig]) -> type[MethodConfig]:
    """Register ``cls`` as the ``method`` section of recipes whose ``method.name`` is ``name``."""
    if not (isinstance(cls, type) and is_dataclass(cls) and issubclass(cls, MethodConfig)):
        raise TypeError(f"method '{name}': its config must be a dataclass subclassing MethodConfig, got {cls!r}")
    if cls().name != name:
        raise TypeError(f"method '{name}': {cls.__name__}.name defaults to '{cls().name}', not '{name}'")
    known = _METHOD_CONFIGS.get(name)
    if known is not None and known is not cls:
        raise ValueError(f"method '{name}' is registered twice ({known.__name__} and {cls.__name__})")
    _METHOD_CONFIGS[name] = cls
    return cls


def method_config_class(name: str) -> type[MethodConfig] | None:
    """The registered config class of method ``name``, or None."""
    return _METHOD_CONFIGS.get(name)


def method_names() -> list[str]:
    return sorted(_METHOD_CONFIGS)


def default_method_config() -> MethodConfig:
    """The ``method`` section of a recipe that names none: supervised training."""
    cls = _METHOD_CONFIGS.get("supervised")
    if cls is None:
        raise RuntimeError("no 'supervised' method registered (import tubelet.methods first)")
    return cls()
