"""What a run prints: a progress bar without Lightning's logger version, and none of Lightning's
tips, hardware banners or warnings about what tubelet does on purpose."""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar

# Lightning's rank-zero messages that say nothing about this run: advertising, and the accelerator
# banner (the run folder's config.yaml records the accelerator).
_QUIET_MESSAGES = re.compile(
    r"^(💡 Tip|GPU available|TPU available|HPU available|IPU available|LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES)"
)

# Warnings about what tubelet does deliberately: a resumed run reuses its own folders; a frozen backbone
# stays in eval mode (linear probing); the skip policy returns None from training_step; short epochs
# log less often than log_every_n_steps; and a deprecation inside Lightning itself.
_QUIET_WARNINGS = (
    r".*Checkpoint directory .* exists and is not empty",
    r".*Experiment logs directory .* exists and is not empty",
    r".*module\(s\) in eval mode at the start of training",
    r".*`training_step` returned `None`",
    r".*The number of training batches .* is smaller than the logging interval",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    r".*does not have many workers which may be a bottleneck",
)


class _DropQuietMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _QUIET_MESSAGES.match(str(record.getMessage()))


_FILTER = _DropQuietMessages()


def quiet_lightning() -> None:
    """Silence the messages above (idempotent; the rest of Lightning's output is kept)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar without ``v_num``: the logger's version is a folder name ("tensorboard"),
    which the bar cuts to its last four characters ("oard")."""

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
