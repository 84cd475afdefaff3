"""The method seam: what a training objective is to the engine, and what it gets from the run.

A method is a plain ``nn.Module`` (it knows nothing of Lightning, devices or processes):

- ``forward(batch) -> dict`` with a scalar ``loss`` and anything else worth logging;
- optionally ``classify(video (B, C, T, H, W)) -> logits (B, K)``: validation and testing use it;
- optionally ``callbacks() -> list``: Lightning callbacks for its figures and monitors, which the engine
  adds to the run, so that no engine or CLI module names a method.

What it needs from the run comes in a ``RunContext`` computed once by the engine, never by reading
other recipe sections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from tubelet.config.schema import Recipe
from tubelet.core.batch import Batch


@runtime_checkable
class Method(Protocol):
    def forward(self, batch: Batch) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class RunContext:
    """What a method may know about the run it trains in.

    ``steps_per_epoch`` and ``num_classes`` are None when no training set was built (a method built
    for testing or from the Python API without data).
    """

    total_steps: int  # optimizer steps of the whole run (the length of any schedule)
    steps_per_epoch: int | None = None  # optimizer steps per pass over the training set
    world_size: int = 1  # processes that train together
    num_classes: int | None = None  # classes of the training set's label map

    @classmethod
    def from_recipe(cls, recipe: Recipe, train_size: int | None = None,
                    num_classes: int | None = None) -> "RunContext":
        """The context of a run of ``recipe`` over a training set of ``train_size`` samples."""
        t = recipe.trainer
        devices = t.devices if isinstance(t.devices, int) else 1
        world = max(1, devices) * max(1, t.num_nodes)
        spe = None
        if train_size is not None:
            # the sampler gives each process ceil(N / world) samples; the loader drops an incomplete
            # last batch (unless a process has less than one batch)
            per_rank = -(-int(train_size) // world)
            batches = max(1, per_rank // recipe.data.batch_size)
            spe = max(1, batches // max(1, t.accumulate_grad_batches))
        if t.max_steps is not None and t.max_steps > 0:
            total = int(t.max_steps)
        else:
            total = int((t.max_epochs or 1) * (spe or 1))
        return cls(total_steps=total, steps_per_epoch=spe, world_size=world, num_classes=num_classes)
