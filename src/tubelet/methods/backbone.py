"""The one backbone builder every method uses, and its one weight-loading policy.

``build_backbone(recipe.model, num_classes=...)`` creates ``model.name`` with the recipe's frames, size
and drop path (where the variant has those fields; ``model.overrides`` win), and loads
``model.checkpoint`` when set. The policy, the same for every method:

- a method checkpoint (keys under ``backbone.``, ``encoder.`` or ``model.``) is reduced to the
  backbone's tensors;
- the model family's ``checkpoint_filter_fn`` adapts the rest (e.g. MViTv2's relative-position tables
  resampled to another token grid);
- every backbone tensor must be in the file with its shape, except the classifier (``head.``,
  ``fc_norm.``), which keeps its fresh initialisation when missing or of another shape;
- tensors of the file with no place in the backbone (an MAE decoder, a mask token) are ignored;
- tensors the backbone names in ``init_only_keys()`` (what an option adds to the family's other
  checkpoints, e.g. castling attention's value convs in a softmax-trained file) keep their
  initialisation when the file has *none* of them, and are listed as new; a file with only some of them
  is an error like any missing tensor;
- a file that fits no tensor at all is an error, as is any missing tensor: the error names them.

What was loaded is returned as a ``LoadReport`` (kept as ``backbone.load_report``) and logged.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from tubelet.config.schema import ModelConfig
from tubelet.errors import CheckpointError

log = logging.getLogger(__name__)

# Parameters a classifier adds on top of a pre-trained encoder (MAE-style fine-tuning re-creates them).
HEAD_PREFIXES = ("head.", "fc_norm.")
# Prefixes under which a method's weights file stores its backbone.
METHOD_PREFIXES = ("backbone.", "encoder.", "model.")


@dataclass
class LoadReport:
    """What ``load_backbone_weights`` did with a weights file."""

    path: str
    loaded: list[str] = field(default_factory=list)  # backbone tensors taken from the file
    head_reinit: list[str] = field(default_factory=list)  # classifier tensors left at their initialisation
    ignored: list[str] = field(default_factory=list)  # file tensors with no place in the backbone
    new: list[str] = field(default_factory=list)  # backbone tensors the file's model did not have (init_only_keys)
    prefix: str = ""  # the method prefix stripped from the file's keys, if any

    def summary(self) -> str:
        ignored = ""
        if self.ignored:
            ignored = f" ({', '.join(self.ignored[:4])}{', ...' if len(self.ignored) > 4 else ''})"
        under = f" under '{self.prefix}'" if self.prefix else ""
        new = ""
        if self.new:
            new = (f"; {len(self.new)} tensors new in this model, kept at their initialisation "
                   f"({', '.join(self.new[:4])}{', ...' if len(self.new) > 4 else ''})")
        return (f"loaded {len(self.loaded)} tensors{under} from {self.path}; head re-initialised "
                f"({', '.join(self.head_reinit) or 'none'}); ignored {len(self.ignored)} tensors not in the "
                f"backbone{ignored}{new}")


def _is_head(key: str) -> bool:
    return key.startswith(HEAD_PREFIXES)


def load_backbone_weights(backbone: nn.Module, path: str, prefixes: tuple[str, ...] = METHOD_PREFIXES) -> LoadReport:
    """Load ``path`` into ``backbone`` by the policy above; a ``CheckpointError`` names what does not fit.
    ``prefixes``: where a method's file may hold this module (a second tower is ``("text.",)``)."""
    from tubelet.models.weights import filter_checkpoint, read_state_dict

    state = read_state_dict(path)
    own = backbone.state_dict()
    prefix = ""
    if not any(k in own for k in state):
        for p in prefixes:  # a whole method's weights: keep its backbone's tensors
            if any(k.startswith(p) for k in state):
                prefix = p
                break
    ignored = [k for k in state if prefix and not k.startswith(prefix)]
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    state = filter_checkpoint(backbone, state)
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fits:
        raise CheckpointError(
            f"{path}: no tensor fits {type(backbone).__name__} (file keys e.g. {sorted(state)[:4]}, "
            f"model keys e.g. {sorted(own)[:4]}): the file is not a checkpoint of this model"
        )
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and own[k].shape != v.shape and not _is_head(k)]
    init_only = getattr(backbone, "init_only_keys", None)
    optional = set(init_only()) if callable(init_only) else set()
    new = sorted(optional) if optional and not optional & set(state) else []
    missing = [k for k in own if k not in state and not _is_head(k) and k not in new]
    if bad or missing:
        lines = [f"{path}: weights do not fit {type(backbone).__name__}"]
        if bad:
            lines.append("shape mismatches:\n  " + "\n  ".join(bad))
        if missing:
            lines.append(f"missing keys ({len(missing)}):\n  " + "\n  ".join(missing))
        raise CheckpointError("\n".join(lines))
    result = backbone.load_state_dict(fits, strict=False)
    report = LoadReport(
        path=str(path),
        loaded=sorted(fits),
        head_reinit=sorted(k for k in result.missing_keys if k not in new),
        ignored=sorted(ignored + [k for k in state if k not in own]),
        new=new,
        prefix=prefix,
    )
    log.warning("%s", report.summary())
    return report


def build_backbone(model: ModelConfig, num_classes: int | None = None, **defaults: Any) -> nn.Module:
    """``model.name`` with ``num_classes`` (default ``model.num_classes``; 0 = no classifier).

    ``model.num_frames``, ``img_size`` and ``drop_path_rate`` apply where the variant has those fields,
    then ``defaults`` (a method's preferences, e.g. MaskFeat's pre-training geometry), and
    ``model.overrides`` above both. ``model.checkpoint`` is loaded by ``load_backbone_weights``.
    """
    from tubelet.models.registry import create_model, get_model_config

    fields = {f.name for f in dataclasses.fields(get_model_config(model.name))}
    kwargs: dict[str, Any] = {}
    for key, value in (("num_frames", model.num_frames), ("img_size", model.img_size),
                       ("drop_path_rate", model.drop_path_rate), *defaults.items()):
        if key in fields:
            kwargs[key] = value
    kwargs.update(model.overrides)
    kwargs["num_classes"] = model.num_classes if num_classes is None else num_classes
    backbone = create_model(model.name, **kwargs)
    if model.checkpoint:
        backbone.load_report = load_backbone_weights(backbone, model.checkpoint)
    return backbone
