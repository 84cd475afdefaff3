"""Training objectives, one file per paper. A method is a plain ``nn.Module`` whose ``forward(batch)``
returns a dict with ``loss`` (``methods/base.py``); it declares its config beside itself and registers
with ``@register_method(name, Config)`` (``methods/registry.py``). Importing this package registers the
methods shipped with tubelet; a method of your own registers when its module is imported.
"""

from __future__ import annotations

# Each import registers its method (and its config section with the recipe loader).
from tubelet.methods import castling, contrastive, detection, detr, flip, linear_probe, mae_st, maskfeat, supervised, utt  # noqa: F401
from tubelet.methods.base import Method, RunContext
from tubelet.methods.registry import build_method, list_methods, register_method

__all__ = ["Method", "RunContext", "build_method", "list_methods", "register_method"]
