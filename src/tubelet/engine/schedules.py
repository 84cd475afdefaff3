"""Per-step learning-rate schedules: linear warmup then half-cycle cosine (or constant).

The schedule of MAE / MAE-ST (He et al., arXiv:2111.06377 and Feichtenhofer et al., arXiv:2205.09113,
appendix "Implementation details"): the LR rises linearly from ``warmup_lr`` to the peak over
``warmup_steps`` optimizer steps, then follows a half cosine from the peak down to ``min_lr`` at
``max_steps``. It is applied per optimizer step (not per epoch) through ``LambdaLR``, whose factor
multiplies each parameter group's own peak LR, so layer-wise LR decay scales survive the schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tubelet.errors import ConfigError

SCHEDULES = ("cosine", "constant")


def lr_at(
    step: int,
    *,
    peak: float,
    max_steps: int,
    warmup_steps: int = 0,
    warmup_lr: float = 0.0,
    min_lr: float = 0.0,
    schedule: str = "cosine",
) -> float:
    """The learning rate after ``step`` optimizer steps (0-based: ``step=0`` is the first update).

    warmup (``step < warmup_steps``): ``warmup_lr + (peak - warmup_lr) * step / warmup_steps``;
    cosine: ``min_lr + (peak - min_lr) * (1 + cos(pi * p)) / 2`` with
    ``p = (step - warmup_steps) / (max_steps - warmup_steps)`` clipped to [0, 1];
    constant: ``peak`` after warmup.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule '{schedule}' is unknown; use one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return warmup_lr + (peak - warmup_lr) * step / warmup_steps
    if schedule == "constant":
        return peak
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class WarmupCosine:
    """``LambdaLR`` factor: ``lr_at(step) / peak``. A plain object of numbers, so ``LambdaLR.state_dict()``
    stores it as a dict of floats (loadable with ``torch.load(weights_only=True)``)."""

    peak: float
    max_steps: int
    warmup_steps: int = 0
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        if self.peak <= 0:
            raise ConfigError(f"peak learning rate must be positive, got {self.peak}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule '{self.schedule}' is unknown; use one of {', '.join(SCHEDULES)}")

    def __call__(self, step: int) -> float:
        lr = lr_at(
            step,
            peak=self.peak,
            max_steps=self.max_steps,
            warmup_steps=self.warmup_steps,
            warmup_lr=self.warmup_lr,
            min_lr=self.min_lr,
            schedule=self.schedule,
        )
        return lr / self.peak
