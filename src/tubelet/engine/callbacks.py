"""Small Lightning callbacks the engine adds to every run."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from tubelet.core.rng import capture_rng_state, restore_rng_state
from tubelet.engine.datamodule import ResumableSampler


class DataPosition(Callback):
    """Keeps the training sampler's position equal to the batches the loop has consumed this epoch.

    Lightning prefetches one batch ahead, so counting what the sampler has yielded would be off by
    one when a checkpoint is saved; the loop's own batch index is the position to resume from.
    """

    @staticmethod
    def _sampler(trainer: pl.Trainer) -> ResumableSampler | None:
        dm = trainer.datamodule
        return getattr(dm, "sampler", None) if dm is not None else None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        sampler = self._sampler(trainer)
        if sampler is not None:
            dm = trainer.datamodule
            sampler.consumed = min(len(sampler), (batch_idx + 1) * dm.batch_size)


class ClearMemory(Callback):
    """Memory models (MeMViT) forget their cache at each training epoch's start and around evaluation, so
    that no memory crosses from one pass over the data into another (METHODS.md section 7)."""

    @staticmethod
    def _clear(pl_module: pl.LightningModule) -> None:
        for m in pl_module.modules():
            if m is not pl_module and callable(getattr(m, "clear_memory", None)):
                m.clear_memory()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clear(pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clear(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clear(pl_module)


class IsolateValidationRNG(Callback):
    """Validation must not change the training run: its RNG draws are undone when it ends, so a run
    with validation after step N continues exactly like one resumed from the checkpoint of step N."""

    def __init__(self) -> None:
        self._saved: dict[str, Any] | None = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._saved = capture_rng_state()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._saved is not None:
            restore_rng_state(self._saved)
            self._saved = None


def ema_callback(decay: float) -> Callback:
    """Exponential moving average of the weights (Lightning's ``EMAWeightAveraging``); its average is
    what validation sees, what the checkpoints' ``state_dict`` holds, and what ``fit`` exports."""
    from lightning.pytorch.callbacks.weight_averaging import EMAWeightAveraging

    if not 0.0 < decay < 1.0:
        from tubelet.errors import ConfigError

        raise ConfigError(f"optim.ema_decay must be in (0, 1), got {decay}")
    return EMAWeightAveraging(decay=decay)
