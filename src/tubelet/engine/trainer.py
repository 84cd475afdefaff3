"""The Lightning ``Trainer`` a recipe asks for: strategy with the collective timeout, checkpointing on
the step grid through the safe checkpoint plugin, CSV and TensorBoard loggers, progress bar, EMA."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from tubelet.config.identity import run_identity
from tubelet.config.schema import Recipe
from tubelet.engine.callbacks import ClearMemory, DataPosition, IsolateValidationRNG, ema_callback
from tubelet.engine.checkpoint import SafeCheckpointIO
from tubelet.engine.console import ProgressBar, quiet_lightning
from tubelet.engine.device import check_trainer_device
from tubelet.engine.run_dir import RunCSVLogger
from tubelet.errors import ConfigError


def _strategy(recipe: Recipe) -> Any:
    """Lightning strategy with ``trainer.collective_timeout_s``; ``auto`` with several devices or nodes
    becomes DDP so that the timeout applies there too."""
    from tubelet.engine.distributed import strategy_from_recipe

    t = recipe.trainer
    name = t.strategy
    several = t.num_nodes > 1 or (isinstance(t.devices, int) and t.devices > 1)
    if name == "auto" and several:
        name = "ddp"
    if name == "fsdp" and (t.accelerator == "cpu" or (t.accelerator == "auto" and not torch.cuda.is_available())):
        raise ConfigError("trainer.strategy=fsdp needs GPUs (Lightning's FSDP does not run on CPU); "
                          "use trainer.strategy=ddp on CPU")
    return strategy_from_recipe(name, t.collective_timeout_s)


def build_trainer(recipe: Recipe, callbacks: Iterable[Callback] = (), has_val: bool = True) -> pl.Trainer:
    quiet_lightning()
    t = recipe.trainer
    check_trainer_device(t.accelerator, t.precision)  # one line naming the key, not Lightning's traceback
    run_dir = Path(recipe.run_dir)
    if t.checkpoint_every_n_steps <= 0 or t.keep_last_k <= 0:
        raise ConfigError("trainer.checkpoint_every_n_steps and trainer.keep_last_k must be positive")
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step={step:06d}",
        auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every_n_steps,
        save_top_k=-1,  # keep_last_k is SafeCheckpointIO's: it also sees the files of the runs before a resume
        monitor="step",
        mode="max",
        save_last=False,
        enable_version_counter=False,
        # Save at the step itself: otherwise Lightning defers a save that falls on an epoch's last batch
        # until after validation (to monitor fresh validation metrics), which moves it off the step grid.
        save_on_train_epoch_end=True,
    )
    cbs: list[Callback] = [checkpoint, DataPosition(), IsolateValidationRNG(), ClearMemory()]
    if t.enable_progress_bar:
        cbs.append(ProgressBar())
    if recipe.optim.ema_decay is not None:
        cbs.append(ema_callback(recipe.optim.ema_decay))
    cbs.extend(callbacks)
    loggers = [
        RunCSVLogger(run_dir),  # keeps the rows of the runs before a resume (fit calls keep_rows)
        TensorBoardLogger(run_dir, name="logs", version="tensorboard", default_hp_metric=False),
    ]
    val_every: dict[str, Any] = {}
    if has_val and t.val_check_interval is not None:
        val_every = {"val_check_interval": t.val_check_interval, "check_val_every_n_epoch": None}
    return pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=_strategy(recipe),
        precision=t.precision,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        max_epochs=t.max_epochs if t.max_epochs is not None else -1,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=recipe.optim.clip_grad,
        log_every_n_steps=t.log_every_n_steps,
        limit_val_batches=None if has_val else 0,
        num_sanity_val_steps=0,
        deterministic=t.deterministic,
        sync_batchnorm=t.sync_batchnorm,
        use_distributed_sampler=False,  # the ResumableSampler shards per rank itself
        callbacks=cbs,
        logger=loggers,
        plugins=[SafeCheckpointIO(t.keep_last_k, run_identity(recipe))],
        default_root_dir=run_dir,
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=False,
        **val_every,
    )
