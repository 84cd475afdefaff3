"""Castling-ViT training (You et al., arXiv 2211.10526, CVPR 2023): supervised classification with
linear-angular attention (``models/layers/angular_attention.py``) beside an auxiliary masked softmax
branch whose weight a schedule drives to zero, after which the branch is removed ("castling"; docs/castling.md).

The release has no schedule (only the fixed 0.02 mask threshold), so it is configurable here
(METHODS.md section 8, UNVERIFIED against the paper's own runs):

- weight ``w(s)`` at optimizer step ``s`` of ``S``: ``branch_weight`` until ``decay_start * S``, then
  linear or cosine to 0 at ``decay_end * S``, and 0 after;
- optional L1 penalty ``l1 * w * mean_layers(mean_rows(sum_j M_ij A_ij))``: the softmax mass the
  mask keeps, pushing attention away from the branch while it still has weight;
- ``train/branch_weight`` (and ``train/castling_l1``, ``train/branch_kept_mass`` while the branch is
  on) are logged every step;
- when training ends the backbone is switched to the inference form (``switch_to_inference``), so the
  run's weights files describe a model without the branch; a schedule that has not reached 0 by then
  keeps the branch and says so.

The weight is applied by a callback before every training batch from the trainer's optimizer step,
so resuming continues the schedule; it is also a buffer of every castling layer, so any weights file
restores it. A softmax-trained tubelet checkpoint given as ``model.checkpoint`` loads into the castling
model with its value convs and branch weights named as new in the load report (``methods/backbone.py``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from tubelet.config.bounds import FRACTION, NONNEGATIVE, PROBABILITY_BELOW_ONE, bounded
from tubelet.config.registry import MethodConfig
from tubelet.config.schema import Recipe
from tubelet.core.batch import Batch
from tubelet.errors import ConfigError
from tubelet.methods.backbone import build_backbone
from tubelet.methods.base import RunContext
from tubelet.methods.registry import register_method
from tubelet.methods.supervised import Supervised
from tubelet.models.layers.angular_attention import branch_kept_mass, castling_layers, set_branch_weight

log = logging.getLogger(__name__)


def branch_weight_at(step: int, total: int, weight: float, start: float, end: float,
                     shape: str = "cosine") -> float:
    """The branch weight at optimizer ``step`` of ``total``: ``weight`` until ``start * total``, then
    ``shape`` ("linear" | "cosine") down to exactly 0 at ``end * total``, and 0 after."""
    s0, s1 = start * total, end * total
    if step <= s0:
        return float(weight) if s1 > s0 or step < s1 else 0.0
    if step >= s1:
        return 0.0
    t = (step - s0) / (s1 - s0)
    return float(weight) * ((1.0 - t) if shape == "linear" else 0.5 * (1.0 + math.cos(math.pi * t)))


class Castling(Supervised):
    """Supervised training of a castling backbone with the branch schedule; ``forward(batch) ->
    {"loss", "acc", "branch_weight"[, "castling_l1", "branch_kept_mass"]}``."""

    def __init__(self, backbone: nn.Module, total_steps: int, branch_weight: float = 1.0, decay_start: float = 0.0,
                 decay_end: float = 0.75, decay_shape: str = "cosine", l1: float = 0.0,
                 switch_at_end: bool = True, label_smoothing: float = 0.0, head_dropout: float = 0.0) -> None:
        super().__init__(backbone, label_smoothing=label_smoothing, head_dropout=head_dropout)
        if not castling_layers(backbone):
            raise ConfigError(f"method castling needs a backbone with attention='castling'; "
                              f"{type(backbone).__name__} has none")
        self.total_steps = max(1, int(total_steps))
        self.schedule = dict(weight=float(branch_weight), start=float(decay_start), end=float(decay_end),
                             shape=decay_shape)
        self.l1 = float(l1)
        self.switch_at_end = bool(switch_at_end)

    @property
    def current_weight(self) -> float:
        """The branch weight the backbone runs with (its layers hold it, and weights files restore it)."""
        return float(castling_layers(self.backbone)[0].current_weight)

    def weight_at(self, step: int) -> float:
        return branch_weight_at(step, self.total_steps, **self.schedule)

    def set_step(self, step: int) -> float:
        """Set the branch weight of optimizer step ``step``; returns it."""
        w = self.weight_at(step)
        if w != self.current_weight:
            set_branch_weight(self.backbone, w)
        return w

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = super().forward(batch)
        out["branch_weight"] = torch.tensor(self.current_weight, device=out["loss"].device)
        kept = branch_kept_mass(self.backbone)
        if kept is not None:
            out["branch_kept_mass"] = kept.detach()
            if self.l1 > 0:
                penalty = self.l1 * self.current_weight * kept
                out["loss"] = out["loss"] + penalty
                out["castling_l1"] = penalty.detach()
        return out

    def finish_training(self, step: int) -> None:
        """At the end of training: the weight of ``step``, then the switch to the inference form."""
        self.set_step(step)
        if not self.switch_at_end:
            return
        if self.current_weight != 0.0:
            log.warning("castling: the branch weight is still %g after %d steps (method.decay_end=%g); the model "
                        "keeps its auxiliary softmax branch", self.current_weight, step, self.schedule["end"])
            return
        self.backbone.switch_to_inference()
        log.warning("castling: branch weight 0 after %d steps; switched the backbone to linear-angular attention "
                    "only (castling_branch=False)", step)

    def callbacks(self) -> list[Any]:
        return [_branch_schedule_callback(self)]


def _branch_schedule_callback(method: Castling) -> Any:
    from lightning.pytorch.callbacks import Callback

    class BranchSchedule(Callback):
        """Applies the branch weight of the trainer's optimizer step before every training batch (so a
        resumed run continues the schedule) and switches the model when the fit ends."""

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            method.set_step(int(trainer.global_step))

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            # not on_train_end: a resumed run with no step left (killed after its last checkpoint, e.g.
            # in the final validation) skips the training loop and that hook, and would save the
            # unswitched model; on_fit_end follows every fit that did not fail
            method.finish_training(int(trainer.global_step))

    return BranchSchedule()


@dataclass
class CastlingConfig(MethodConfig):
    """The ``method`` section of Castling-ViT training. Fractions are of the run's optimizer steps."""

    name: str = "castling"
    head_dropout: float = bounded(0.0, PROBABILITY_BELOW_ONE)
    branch_weight: float = bounded(1.0, NONNEGATIVE)  # weight of the masked softmax branch before the decay (0: no branch at all)
    decay_start: float = bounded(0.0, FRACTION)
    decay_end: float = bounded(0.75, FRACTION)  # the weight is exactly 0 from here on; the rest trains the inference form
    decay_shape: Literal["linear", "cosine"] = "cosine"
    l1: float = bounded(0.0, NONNEGATIVE)  # L1 penalty on the branch's kept softmax mass (times the weight)
    switch_at_end: bool = True  # switch_to_inference when training ends (the weights files lose the branch)
    TRAINS_ON_LABELS = True

    def _cross_rules(self):
        if self.decay_start > self.decay_end:
            yield ("decay_start", self.decay_start,
                   f"at most {{prefix}}decay_end ({self.decay_end}): the decay ends after it starts")


@register_method("castling", CastlingConfig)
def build(recipe: Recipe, context: RunContext) -> Castling:
    cfg = recipe.method
    if recipe.optim.ema_decay is not None:
        # the average would blend the branch-weight buffers too: the saved model would keep a small,
        # non-zero branch weight long after the schedule reached 0, and could not be switched
        raise ConfigError(f"optim.ema_decay={recipe.optim.ema_decay} cannot be combined with method castling "
                          "(the weight average would keep the branch weight above 0); remove optim.ema_decay")
    if context.num_classes is not None and recipe.model.num_classes != context.num_classes:
        raise ConfigError(
            f"model.num_classes={recipe.model.num_classes} but the training set has {context.num_classes} classes"
        )
    attention = recipe.model.overrides.get("attention", "castling")
    if attention != "castling":
        raise ConfigError(f"method castling trains castling attention; model.overrides.attention='{attention}' "
                          "(remove it, or set it to castling)")
    backbone = build_backbone(recipe.model, attention="castling")
    layers = castling_layers(backbone)
    if cfg.branch_weight > 0 and layers and not layers[0].branch:
        raise ConfigError(f"method.branch_weight={cfg.branch_weight} but the model has no branch "
                          "(model.overrides.castling_branch=false); set method.branch_weight: 0")
    method = Castling(backbone, context.total_steps, cfg.branch_weight, cfg.decay_start, cfg.decay_end,
                      cfg.decay_shape, cfg.l1, cfg.switch_at_end, recipe.data.augment.label_smoothing,
                      cfg.head_dropout)
    method.set_step(0)  # the schedule's first weight, also over a loaded checkpoint's (fine-tuning restarts it)
    return method
