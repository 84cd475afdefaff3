"""``TubeletModule``: the LightningModule that wraps any method.

A method is a plain ``nn.Module`` with ``forward(batch) -> {"loss": scalar, ...}``; everything else
(devices, precision, accumulation, distributed, checkpoints) is Lightning's. The module adds the
optimizer/schedule (``engine.optim``, ``engine.schedules``), logging of every scalar the method
returns plus ``lr`` and ``clips_per_s``, top-1/top-5 validation for methods with ``classify``, the
non-finite loss and gradient policy, the failure budget of unreadable
samples over all processes, and the RNG states in checkpoints.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning.pytorch.utilities import rank_zero_info

from tubelet.config.schema import OptimConfig
from tubelet.core.ckpt_format import checkpoint_step, find_latest_checkpoint, is_complete
from tubelet.core.dist import all_gather_objects, all_reduce_sum
from tubelet.core.rng import capture_rng_state, restore_rng_state
from tubelet.engine.optim import build_optimizer, fused_allowed, resolve_lr
from tubelet.engine.schedules import WarmupCosine
from tubelet.errors import ConfigError, TubeletError
from tubelet.eval.multiview import memory_clearer, stream_scores, topk_correct, view_scores

NONFINITE = ("stop", "skip")


class LossTrend:
    """A running record of the training loss that says, when a run ends in a non-finite loss or gradient,
    whether and when the loss began to diverge: the first step of the last unbroken stretch of steps whose
    loss was above ``factor`` times the median of the ``window`` steps before that stretch (losses inside
    a stretch do not enter the window, so a slow blow-up is measured against the losses before it). A
    median of zero or below (losses that are negative by design) judges nothing.

    Device tensors only, updated without any host synchronisation: one ring-buffer write, one median of
    ``window`` values and a few ``where`` per step. ``onset()`` reads them, once, when the run stops."""

    def __init__(self, window: int = 64, factor: float = 10.0) -> None:
        self.window, self.factor = window, factor
        self._pos = 0
        self._recent: torch.Tensor | None = None  # (window,) the losses of recent normal steps, NaN = empty
        self._onset: torch.Tensor | None = None  # step where the current stretch began, -1 = none
        self._onset_loss: torch.Tensor | None = None
        self._onset_ref: torch.Tensor | None = None

    def update(self, loss: torch.Tensor, step: int) -> None:
        x = loss.detach().float().mean()
        if self._recent is None or self._onset is None or self._onset_loss is None or self._onset_ref is None:
            self._recent = torch.full((self.window,), float("nan"), device=x.device)
            self._onset = torch.full((), -1, dtype=torch.long, device=x.device)
            self._onset_loss = torch.zeros((), device=x.device)
            self._onset_ref = torch.zeros((), device=x.device)
        ref = torch.nanmedian(self._recent)  # NaN while the window is empty: nothing is above it
        above = (ref > 0) & (x > self.factor * ref)
        first = above & (self._onset < 0)
        self._onset = torch.where(above, torch.where(first, step, self._onset), -1)
        self._onset_loss = torch.where(first, x, self._onset_loss)
        self._onset_ref = torch.where(first, ref, self._onset_ref)
        self._recent[self._pos] = torch.where(above, self._recent[self._pos], x)
        self._pos = (self._pos + 1) % self.window

    def onset(self) -> tuple[int, float, float] | None:
        """``(step, loss there, median before)`` of the stretch the loss is in now, or None."""
        if self._onset is None or self._onset_loss is None or self._onset_ref is None or int(self._onset) < 0:
            return None
        return int(self._onset), float(self._onset_loss), float(self._onset_ref)


def count_clips(video: torch.Tensor) -> int:
    """Clips in a batch: ``B`` for ``(B,C,T,H,W)``, ``B*r`` for repeated sampling ``(B,r,C,T,H,W)``."""
    return int(video.shape[0] * video.shape[1]) if video.ndim == 6 else int(video.shape[0])


class TubeletModule(pl.LightningModule):
    """Holds ``method`` (as ``self.method``, so checkpoint keys are ``method.<name>``); training_step is
    ``method(batch)``; ``optim`` and ``batch_size`` (videos per step per process) set the optimizer."""

    def __init__(
        self,
        method: nn.Module,
        optim: OptimConfig | None = None,
        batch_size: int = 8,
        nonfinite: str = "stop",
        max_skipped_steps: int = 10,
        checkpoint_dir: str | Path | None = None,
        failure_tracker: Any | None = None,
        bad_files_path: str | Path | None = None,
        run_record: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if nonfinite not in NONFINITE:
            raise ConfigError(f"trainer.nonfinite must be one of {', '.join(NONFINITE)}, got '{nonfinite}'")
        self.method = method
        self.optim_cfg = optim or OptimConfig()
        self.batch_size = batch_size
        self.nonfinite = nonfinite
        self.max_skipped_steps = max_skipped_steps
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.skipped_steps = 0
        # Counts the samples the data collate dropped as unreadable (``batch["bad_samples"]``) against
        # data.max_failure_fraction (``tubelet.data.datasets.FailureTracker``).
        self.failure_tracker = failure_tracker
        self.bad_files_path = Path(bad_files_path) if bad_files_path is not None else None
        # the recipe and identity of the run, stored in every checkpoint (tubelet.engine.resume)
        self.run_record = run_record
        self.peak_lr: float | None = None
        self._pending_rng: dict[str, Any] | None = None
        self._last_batch_time: float | None = None
        self._drop_update = False
        self.loss_trend = LossTrend()

    # ------------------------------------------------------------------------------------------ train
    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.method(batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        is_dict = isinstance(batch, dict)
        # every sample failed to load: the collate's batch is then only its report (methods whose samples
        # hold no "video", as tracking pairs, still train)
        empty = is_dict and "bad_samples" in batch and not set(batch) - {"bad_samples", "sample_seed"}
        new_bad = []
        if self.failure_tracker is not None and is_dict and batch.get("bad_samples"):
            new_bad = self.failure_tracker.add(batch)
        new_damaged = []  # damaged files trained on (data.on_damaged=keep), first seen here
        if self.failure_tracker is not None and is_dict and batch.get("damaged_samples"):
            new_damaged = self.failure_tracker.add_damaged(batch)
        out = None
        if not empty:
            out = self.method(batch)
            if not isinstance(out, dict) or "loss" not in out:
                raise TubeletError(f"{type(self.method).__name__}.forward(batch) must return a dict with 'loss'")
        loss = out["loss"] if out is not None else None
        nonfinite = loss is not None and not bool(torch.isfinite(loss.detach()).all())
        # One small all-reduce per step makes these decisions identical on every process: a rank that
        # stopped or skipped alone would leave the others waiting in the gradient all-reduce.
        n_bad, n_empty, n_nonfinite, n_damaged = all_reduce_sum(
            [len(new_bad), float(empty), float(nonfinite), len(new_damaged)])
        if n_damaged and self.failure_tracker is not None:
            for _, path, reason in new_damaged + self.failure_tracker.add_damaged(
                    {"damaged_samples": all_gather_objects(new_damaged)}):  # fmt: skip
                rank_zero_info(f"training on damaged file {path} (data.on_damaged=keep, reported once): {reason}")
        if n_bad and self.failure_tracker is not None:
            found = new_bad + self.failure_tracker.merge(all_gather_objects(new_bad))
            self._report_bad_files(found)
            self._write_bad_files()
            self.failure_tracker.check()  # DataError on every rank at once, listing every rank's files
        if n_empty:
            return self._skip_batch()  # nothing to learn from on some rank: every rank skips this batch
        if n_nonfinite:
            return self._nonfinite(loss, batch_idx)
        self.loss_trend.update(loss, self.global_step)
        bs = int(batch["video"].shape[0]) if "video" in batch else self.batch_size
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        for key, value in out.items():
            if key == "loss":
                continue
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                self.log(f"train/{key}", value.detach().float(), batch_size=bs)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                self.log(f"train/{key}", float(value), batch_size=bs)
        opt = self.optimizers(use_pl_optimizer=False)
        self.log("lr", max(g["lr"] for g in opt.param_groups), prog_bar=True, batch_size=bs)
        now = time.perf_counter()
        if self._last_batch_time is not None and "video" in batch:
            clips = count_clips(batch["video"]) * self.trainer.world_size
            self.log("clips_per_s", clips / max(now - self._last_batch_time, 1e-9), prog_bar=True, batch_size=bs)
        self._last_batch_time = now
        return loss

    def _nonfinite(self, loss: torch.Tensor | None, batch_idx: int) -> None:
        if self._may_skip():
            return self._skip_batch()
        value = loss.detach().float().item() if loss is not None else float("nan")
        where = f" on rank {self.global_rank}" if self._world() > 1 else ""
        raise TubeletError(
            f"non-finite loss ({value}{', another rank' if math.isfinite(value) else ''}) at step {self.global_step} "
            f"(epoch {self.current_epoch}, batch {batch_idx}){where}{self._skip_note()}; {self._last_good()}"
        )

    def _skip_batch(self) -> torch.Tensor | None:
        """No backward and no update for this batch. One process: ``None`` (Lightning skips the step).
        Several: Lightning refuses ``None``, and DDP needs every rank in the gradient all-reduce, so a
        zero loss over every parameter runs backward (all gradients 0) and the update is dropped in
        ``on_before_optimizer_step``."""
        if self._world() <= 1:
            return None
        self._drop_update = True
        zero = torch.zeros((), device=self.device)
        return sum((p.sum() * 0.0 for p in self.parameters() if p.requires_grad), zero)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop (or skip, by ``trainer.nonfinite``) on a non-finite gradient, before clipping and the
        update. Gradients are already averaged over processes by DDP; the flag is all-reduced anyway
        so that sharded gradients (FSDP) decide the same on every rank."""
        if self._drop_update:  # a batch skipped on every rank (see _skip_batch)
            self._drop_update = False
            optimizer.zero_grad(set_to_none=True)
            return
        if self._trainer is not None and "16-mixed" in str(self.trainer.precision) and "bf16" not in str(
                self.trainer.precision):
            return  # fp16 loss scaling handles inf/NaN gradients itself (it skips the step)
        grads = [p.grad.detach() for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        (bad,) = all_reduce_sum([float(not bool(torch.isfinite(norm)))])
        if not bad:
            return
        if self._may_skip():
            optimizer.zero_grad(set_to_none=True)  # no update; the optimizer state is untouched
            return
        raise TubeletError(
            f"non-finite gradient (norm {norm.item()}) at step {self.global_step} (epoch {self.current_epoch})"
            f"{self._skip_note()}; {self._last_good()}"
        )

    def _world(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def _may_skip(self) -> bool:
        if self.nonfinite == "skip" and self.skipped_steps < self.max_skipped_steps:
            self.skipped_steps += 1
            self.log("skipped_steps", float(self.skipped_steps), batch_size=self.batch_size)
            return True
        return False

    def _skip_note(self) -> str:
        if self.nonfinite != "skip":
            return ""
        return f" after skipping {self.skipped_steps} steps (trainer.max_skipped_steps={self.max_skipped_steps})"

    def _last_good(self) -> str:
        """The checkpoint to go back to after a non-finite value at this step. The checkpoint of step s
        holds the weights that step s computed its loss and gradient with, so the one of this step is not
        named as good; nor, when the loss had been diverging, the ones from the divergence on."""
        step = self.global_step
        last = find_latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir is not None else None
        trend = self.loss_trend.onset()
        began = ""
        bound = step
        if trend is not None:
            bound, value, ref = trend
            began = (f"the loss began to diverge at step {bound} ({value:.4g}, over {self.loss_trend.factor:g}x "
                     f"the median {ref:.4g} of the steps before, and above that at every step since); ")
        good = self._newest_checkpoint_before(bound)
        if good is not None:
            said = f"last good checkpoint: {good}"
        elif last is not None:
            said = f"last good checkpoint: none on disk from before step {bound}"
        else:
            said = "last good checkpoint: none saved yet"
        if last is not None and last != good:
            last_step = checkpoint_step(last)
            holds = "the weights that gave this value" if last_step == step else "weights from after the divergence began"
            said += f" ({last.name} holds {holds})"
        return began + said

    def _newest_checkpoint_before(self, step: int) -> Path | None:
        if self.checkpoint_dir is None or not self.checkpoint_dir.is_dir():
            return None
        found = [p for p in self.checkpoint_dir.glob("*.ckpt")
                 if not p.name.startswith(".") and 0 <= checkpoint_step(p) < step]
        for p in sorted(found, key=checkpoint_step, reverse=True):
            if is_complete(p):
                return p
        return None

    def _report_bad_files(self, records: list) -> None:
        """One console line per newly found bad file, on rank 0."""
        tracker = self.failure_tracker
        for _, path, reason in records:
            rank_zero_info(f"skipping unreadable file {path}: {reason} ({len(tracker.failures)} of "
                           f"{tracker.total} files bad so far, budget {tracker.max_failure_fraction:g})")

    def _write_bad_files(self) -> None:
        if self.bad_files_path is not None and self.failure_tracker is not None and (
                self._trainer is None or self.trainer.is_global_zero):
            self.failure_tracker.write(self.bad_files_path)

    # ------------------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not hasattr(self.method, "classify") or "video" not in batch:
            return
        video, labels = batch["video"], batch["label"]
        if batch.get("streamed") is not None:  # (B, N, C, T, H, W): each video's clips in time order
            scores = stream_scores(self.method.classify, video, memory_clearer(self.method))
        elif video.ndim == 6:  # (B, V, C, T, H, W) views: average the softmax scores per video
            scores = view_scores(self.method.classify, video)
        else:
            scores = self.method.classify(video).float()
        top1, top5 = topk_correct(scores, labels)
        n = int(labels.shape[0])
        self.log("val/top1", top1.float() / n, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val/top5", top5.float() / n, on_epoch=True, batch_size=n, sync_dist=True)

    # ------------------------------------------------------------------------------------ optimizers
    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        trainer = self.trainer
        videos_per_step = self.batch_size * trainer.accumulate_grad_batches * trainer.world_size
        lr = resolve_lr(cfg, videos_per_step)
        self.peak_lr = lr
        opt = build_optimizer(self.method, cfg, lr, fused=fused_allowed(cfg, str(trainer.precision)))
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total) or total <= 0:
            raise ConfigError("set trainer.max_steps (or max_epochs) so that the LR schedule has an end")
        max_steps = int(total)
        factor = WarmupCosine(peak=lr, max_steps=max_steps, warmup_steps=cfg.warmup_steps,
                              warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, schedule=cfg.schedule)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # ----------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning builds the checkpoint dict on every rank (rank 0 writes it): gather every rank's RNG
        # states, so that dropout and drop path continue on each rank as without the interruption.
        states = all_gather_objects([capture_rng_state()])
        checkpoint["rng"] = states[0]
        if len(states) > 1:
            checkpoint["rng_per_rank"] = states
        tracker = self.failure_tracker
        checkpoint["tubelet_module"] = {
            "skipped_steps": self.skipped_steps,
            # the failure budget counts the run's bad files, not only those found since the last resume
            "bad_files": [list(r) for r in tracker.failures.values()] if tracker is not None else [],
        }
        if self.run_record is not None:
            from tubelet.engine.resume import METRICS_KEY, RUN_KEY
            from tubelet.engine.run_dir import scalar_metrics

            checkpoint[RUN_KEY] = self.run_record
            # what metrics.json would say now, for a resume that has nothing left to train
            checkpoint[METRICS_KEY] = scalar_metrics(self.trainer.callback_metrics) if self._trainer is not None else {}
        # which model the weights are of, so that resuming another model's checkpoint names both models
        backbone = getattr(self.method, "backbone", None)
        if isinstance(backbone, nn.Module):
            from tubelet.models.weights import describe_model

            checkpoint["tubelet_model"] = describe_model(backbone)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Applied when training starts, after everything that setup may draw from the RNG. A checkpoint
        # of another world size gives every rank rank 0's states.
        per_rank = checkpoint.get("rng_per_rank")
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self._trainer is not None else (1, 0)
        if per_rank is not None and len(per_rank) == world:
            self._pending_rng = per_rank[rank]
        else:
            self._pending_rng = checkpoint.get("rng")
        saved = checkpoint.get("tubelet_module", {})
        self.skipped_steps = int(saved.get("skipped_steps", 0))
        if self.failure_tracker is not None and saved.get("bad_files"):
            self.failure_tracker.merge([(int(i), str(p), str(r)) for i, p, r in saved["bad_files"]])

    def on_train_start(self) -> None:
        if self._pending_rng is not None:
            restore_rng_state(self._pending_rng)
            self._pending_rng = None
