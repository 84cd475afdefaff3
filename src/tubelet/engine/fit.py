"""``fit(recipe)``: build the method, data, Lightning Trainer and callbacks from a recipe, and train.

The run folder's layout is described in ``engine/run_dir.py``; the Trainer is assembled in
``engine/trainer.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from torch.utils.data import Dataset

from tubelet.config.loader import dump_recipe
from tubelet.config.schema import Recipe
from tubelet.data.builder import check_run_labels
from tubelet.data.datasets.base import FailureTracker
from tubelet.data.transforms import build_device_transform
from tubelet.core.ckpt_format import find_latest_checkpoint, is_complete, remove_stale_files
from tubelet.core.io import remove_temp_files, save_safetensors
from tubelet.core.runtime import set_threads
from tubelet.engine.datamodule import TubeletDataModule
from tubelet.engine.device import check_trainer_device
from tubelet.engine.module import TubeletModule
from tubelet.engine.resume import Resume, choose_checkpoint, describe_changes, run_record
from tubelet.engine.run_dir import (
    RUN_FOLDERS,
    RunCSVLogger,
    clear_run,
    holds_checkpoints,
    read_csv_log,
    read_metrics,
    scalar_metrics,
    write_labels,
    write_metrics,
)
from tubelet.engine.trainer import build_trainer
from tubelet.errors import CheckpointError, ConfigError, TubeletError
from tubelet.models.weights import describe_model


@dataclass
class FitResult:
    run_dir: Path
    metrics: dict[str, float]
    paths: dict[str, Path] = field(default_factory=dict)
    checkpoints: list[Path] = field(default_factory=list)


def resolve_resume(recipe: Recipe, resume: str | os.PathLike | None) -> Path | None:
    """``None``: fresh start; ``"auto"``: newest complete checkpoint of this run in run_dir/checkpoints (or
    none); a path: that checkpoint, which must be complete and of this run (``engine/resume.py``)."""
    return choose_checkpoint(recipe, resume).path


def check_resume_fits(path: Path, method: nn.Module) -> None:
    """Fail with one line, before Lightning loads anything, when checkpoint ``path`` holds another model
    than ``method``: the model names both sides record, else the first tensor that does not fit."""
    from tubelet.core.ckpt_format import checkpoint_shapes
    from tubelet.models.weights import describe_model, saved_variant

    state, shapes = checkpoint_shapes(path)
    backbone = getattr(method, "backbone", None)
    ours = describe_model(backbone) if isinstance(backbone, nn.Module) else {}
    saved = saved_variant(path, dict(state.get("tubelet_model") or {}))
    own = getattr(backbone, "variant", None)
    theirs = f"model '{saved.name}'" if saved is not None else "another model"
    mine = f"model '{own.name}'" if ours else f"method {type(method).__name__}"
    if saved is not None and own is not None and saved.name != own.name:
        raise CheckpointError(f"{path}: checkpoint of model '{saved.name}' cannot resume a run of model '{own.name}'")
    prefix = "method."
    expected = {prefix + k: tuple(v.shape) for k, v in method.state_dict().items()}
    for key, shape in expected.items():
        if key not in shapes:
            raise CheckpointError(f"{path}: checkpoint of {theirs} cannot resume this run of {mine}: it has no "
                                  f"tensor '{key}'")
        if tuple(shapes[key]) != shape:
            raise CheckpointError(f"{path}: checkpoint of {theirs} cannot resume this run of {mine}: first "
                                  f"mismatched tensor '{key}': checkpoint {tuple(shapes[key])} vs run {shape}")
    extra = sorted(k for k in shapes if k not in expected)
    if extra:
        raise CheckpointError(f"{path}: checkpoint of {theirs} cannot resume this run of {mine}: it has tensors "
                              f"the run does not, e.g. '{extra[0]}'")


def build_datasets(recipe: Recipe, method: nn.Module | None = None) -> dict[str, Dataset | None]:
    """The train split, and the val split when the method can classify (``method`` None: both)."""
    from tubelet.data.builder import build_dataset

    train = build_dataset(recipe.data, "train", seed=recipe.seed)
    classifies = method is None or hasattr(method, "classify")
    val = build_dataset(recipe.data, "val", seed=recipe.seed) if classifies else None
    return {"train": train, "val": val}


def dataset_classes(dataset: Any) -> int | None:
    """The class count a dataset's label map gives (``class_names`` or ``num_classes``), else None."""
    names = getattr(dataset, "class_names", None)
    if names:
        return len(names)
    k = getattr(dataset, "num_classes", None)
    return int(k) if isinstance(k, int) else None


def run_context(recipe: Recipe, train: Dataset | None) -> Any:
    """The ``RunContext`` the methods get: computed here, once, from the recipe and the training set."""
    from tubelet.methods.base import RunContext

    size = len(train) if train is not None else None  # type: ignore[arg-type]
    return RunContext.from_recipe(recipe, size, dataset_classes(train) if train is not None else None)


def build_collate(recipe: Recipe) -> Any:
    """The training collate (``tubelet.data.builder.build_collate``) with Mixup's soft labels sized by
    the model's ``num_classes``."""
    from tubelet.data.builder import build_collate as data_collate

    return data_collate(recipe.data, "train", num_classes=recipe.model.num_classes, seed=recipe.seed)


def method_callbacks(recipe: Recipe, method: nn.Module) -> list[Callback]:
    """What the method asks the run for (``method.callbacks()``: its monitors and figures), plus the kNN
    monitor when the recipe's method section asks for one (``method.knn_every_n_steps``)."""
    from tubelet.eval.knn import monitor_from_recipe

    extra = getattr(method, "callbacks", None)
    cbs = list(extra()) if callable(extra) else []
    knn = monitor_from_recipe(recipe)
    if knn is not None:
        cbs.append(knn)
    return cbs


def _is_collective_failure(exc: BaseException) -> bool:
    """A torch.distributed error (peer gone, timeout), as opposed to an error of this process's own work."""
    if isinstance(exc, TubeletError):
        return False
    dist_error = getattr(torch.distributed, "DistError", ())
    if dist_error and isinstance(exc, dist_error):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("gloo", "NCCL", "Connection closed", "Connection reset", "timed out", "Timed out",
                            "ProcessGroup", "Broken pipe"))


def fit(
    recipe: Recipe,
    resume: str | os.PathLike | None = None,
    method: nn.Module | None = None,
    datasets: Mapping[str, Dataset | None] | None = None,
    callbacks: Iterable[Callback] = (),
    overwrite: bool = False,
) -> FitResult:
    """Train ``method`` (default ``build_method(recipe)``) on ``datasets`` (default
    ``build_dataset(recipe.data, "train"/"val")``) as the recipe says; ``resume`` is None, ``"auto"``
    (newest complete checkpoint of this run in ``run_dir/checkpoints``, fresh start when there is none)
    or a path. A fresh start into a ``run_dir`` that holds checkpoints is refused unless ``overwrite``
    removes the earlier run's checkpoints, logs and results first."""
    # Trainer(deterministic=True) switches PyTorch to deterministic algorithms process-wide; put the
    # previous setting back afterwards for whatever the caller runs next.
    deterministic = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    recipe = _resolve_precision(recipe, resume)
    try:
        return _fit(recipe, resume, method, datasets, callbacks, overwrite)
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])


def _resolve_precision(recipe: Recipe, resume: str | os.PathLike | None) -> Recipe:
    """``trainer.precision=auto`` made concrete before anything is built, so that ``config.yaml`` and the
    checkpoints record what ran. A resume keeps the precision its run recorded (this machine might measure
    otherwise); a fresh start measures (``engine/device.py``)."""
    from tubelet.engine.device import with_resolved_precision

    if recipe.trainer.precision != "auto":
        return recipe
    recorded = Path(recipe.run_dir) / "config.yaml"
    if resume is not None and recorded.is_file():
        from tubelet.config.loader import load_recipe

        precision = load_recipe(str(recorded)).trainer.precision
        if precision != "auto":
            rank_zero_info(f"trainer.precision=auto: {precision}, as {recorded} records for this run")
            return dataclasses.replace(recipe, trainer=dataclasses.replace(recipe.trainer, precision=precision))
    return with_resolved_precision(recipe, rank_zero_info)


def _is_rank_zero() -> bool:
    """Rank 0 before the Trainer exists (Lightning reads RANK, LOCAL_RANK, SLURM_PROCID at import)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def prepare_run_dir(recipe: Recipe, resume: str | os.PathLike | None, overwrite: bool) -> Resume:
    """Choose the checkpoint to resume from, after removing the files killed writes left; a fresh start
    into a folder with checkpoints is refused unless ``overwrite`` (then :func:`_start_run_dir` removes
    them)."""
    run_dir = Path(recipe.run_dir)
    if overwrite and resume is not None:
        raise ConfigError(f"--overwrite starts a new run in {run_dir} and --resume {resume} continues one: pass one of them")
    if _is_rank_zero():  # nothing writes into the folder yet (the other ranks only read it)
        stale = remove_stale_files(run_dir / "checkpoints") + remove_temp_files(run_dir)
        # and in the run's own folders (a kill while the CSV log or the report was replaced leaves its
        # temporary file there), not the whole run folder: a synthetic data root may live in it, being
        # written by another run at this moment
        for folder in RUN_FOLDERS:
            stale += remove_temp_files(run_dir / folder, recursive=True)
        for path in stale:
            rank_zero_info(f"removed {path}: left by a write that was killed")
    existing = holds_checkpoints(run_dir)
    if resume is None and existing and not overwrite:
        raise CheckpointError(
            f"{run_dir / 'checkpoints'} holds the checkpoints of an earlier run (newest {existing[-1].name}): pass "
            f"--resume auto (fit(..., resume='auto')) to continue it, or --overwrite (fit(..., overwrite=True)) to "
            f"remove its checkpoints, logs and results first")
    chosen = choose_checkpoint(recipe, resume)
    for line in chosen.skipped:
        rank_zero_info(line)
    if resume is not None:
        rank_zero_info(f"resuming from {chosen.path}" if chosen.path is not None
                       else f"no complete checkpoint in {run_dir / 'checkpoints'}: starting from step 0")
    if chosen.changed:
        rank_zero_info(describe_changes(chosen.changed))
    if chosen.path is not None and _is_rank_zero():
        # a run killed between a checkpoint's rename and the removal of the oldest left keep_last_k + 1:
        # back to keep_last_k, so that the next save never makes it keep_last_k + 2
        from tubelet.config.identity import run_identity
        from tubelet.engine.checkpoint import SafeCheckpointIO

        keeper = SafeCheckpointIO(recipe.trainer.keep_last_k, run_identity(recipe))
        for path in keeper.prune(run_dir / "checkpoints", start=chosen.path):
            rank_zero_info(f"removed {path}: older than the newest trainer.keep_last_k={recipe.trainer.keep_last_k}")
    return chosen


def _start_run_dir(run_dir: Path, chosen: Resume, overwrite: bool) -> None:
    """Rank 0, once everything is built: ``overwrite`` removes the earlier run; a fresh start removes the
    logs and results of an earlier run (one that wrote no checkpoint, or only damaged ones, which stay),
    so that none sits beside this run's."""
    if overwrite:
        clear_run(run_dir)
    elif chosen.path is None:
        clear_run(run_dir, checkpoints=False)


def _same_run_metrics(recipe: Recipe, step: int) -> dict[str, float]:
    """The ``metrics.json`` of this run's end at ``step``, when the folder's ``config.yaml`` (written at the
    last start, before this one overwrites it) is this run's; else {}."""
    from tubelet.config.identity import recipe_differences
    from tubelet.config.loader import load_recipe, to_dict

    run_dir = Path(recipe.run_dir)
    try:
        before = load_recipe(run_dir / "config.yaml")
    except (TubeletError, OSError):
        return {}
    if recipe_differences(to_dict(before), recipe)[0]:
        return {}
    metrics = read_metrics(run_dir / "metrics.json")
    return metrics if metrics.get("global_step") == float(step) else {}


class _BudgetInMainProcess:
    """While training, the failure budget is the main process's (``FailureTracker``, which writes
    ``bad_files.txt`` before it stops the run): a dataset that kept its own budget would stop the run
    from inside a loader worker, with files the list never got."""

    def __init__(self, dataset: Any) -> None:
        self.targets = [d for d in {id(d): d for d in (dataset, getattr(dataset, "base", None))}.values()
                        if isinstance(getattr(d, "max_failure_fraction", None), float) and hasattr(d, "failures")]
        self.saved: list[float] = []

    def __enter__(self) -> None:
        self.saved = [d.max_failure_fraction for d in self.targets]
        for d in self.targets:
            d.max_failure_fraction = math.inf

    def __exit__(self, *exc: Any) -> None:
        for d, v in zip(self.targets, self.saved):
            d.max_failure_fraction = v


def _fit(
    recipe: Recipe,
    resume: str | os.PathLike | None,
    method: nn.Module | None,
    datasets: Mapping[str, Dataset | None] | None,
    callbacks: Iterable[Callback],
    overwrite: bool = False,
) -> FitResult:
    check_trainer_device(recipe.trainer.accelerator, recipe.trainer.precision)  # before building anything
    run_dir = Path(recipe.run_dir)
    chosen = prepare_run_dir(recipe, resume, overwrite)
    ckpt_path = chosen.path
    earlier_metrics = _same_run_metrics(recipe, chosen.step) if ckpt_path is not None and _is_rank_zero() else {}
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    set_threads(recipe.trainer.num_threads, recipe.data.num_workers)
    built = datasets is None
    if datasets is None:
        from tubelet.data.builder import build_dataset

        datasets = {"train": build_dataset(recipe.data, "train", seed=recipe.seed)}
    if "train" not in datasets or datasets["train"] is None:
        raise ConfigError("fit needs a 'train' dataset")
    check_run_labels(recipe, datasets["train"])  # a label outside the head: one line now, not an IndexError later
    if method is None:
        from tubelet.methods import build_method

        method = build_method(recipe, run_context(recipe, datasets["train"]))
    if built and hasattr(method, "classify"):  # the val split only for a method that can be validated
        from tubelet.data.builder import build_dataset

        datasets = {**datasets, "val": build_dataset(recipe.data, "val", seed=recipe.seed)}
    val = datasets.get("val")
    check_run_labels(recipe, val, datasets["train"])
    if val is not None and len(val) == 0:  # type: ignore[arg-type]
        val = None
    tracker = FailureTracker(len(datasets["train"]), recipe.data.max_failure_fraction)  # type: ignore[arg-type]
    dm = TubeletDataModule(
        datasets["train"], val,
        batch_size=recipe.data.batch_size,
        num_workers=recipe.data.num_workers,
        seed=recipe.seed,
        collate=build_collate(recipe),  # mixup/cutmix follow the recipe whoever built the datasets
        device_transform=build_device_transform(recipe.data, recipe.seed, recipe.model.num_classes),
        known_bad=tracker.by_index,  # a file that failed is not handed to a worker again
        memory=bool(getattr(getattr(method, "backbone", None), "uses_memory", False)),
    )
    module = TubeletModule(
        method, recipe.optim,
        failure_tracker=tracker,
        batch_size=recipe.data.batch_size,
        nonfinite=recipe.trainer.nonfinite,
        max_skipped_steps=recipe.trainer.max_skipped_steps,
        checkpoint_dir=run_dir / "checkpoints",
        bad_files_path=run_dir / "bad_files.txt",
        run_record=run_record(recipe),
    )
    if ckpt_path is not None:
        check_resume_fits(ckpt_path, method)
    callbacks = [*callbacks, *method_callbacks(recipe, method)]
    trainer = build_trainer(recipe, callbacks, has_val=val is not None and hasattr(method, "classify"))
    csv_log = run_dir / "logs" / "csv" / "metrics.csv"
    old_rows: list[dict[str, str]] = []
    class_names = list(getattr(datasets["train"], "class_names", None) or [])
    if trainer.is_global_zero:
        _start_run_dir(run_dir, chosen, overwrite)
        dump_recipe(recipe, run_dir / "config.yaml")  # the config that runs: after the checks
        if class_names:  # what `tubelet predict --run` names its classes by
            write_labels(run_dir / "labels.txt", class_names)
        else:  # a folder reused by a run without class names must not keep the previous run's
            (run_dir / "labels.txt").unlink(missing_ok=True)
        if ckpt_path is not None:
            old_rows = read_csv_log(csv_log, chosen.step)
        for logger in trainer.loggers:  # the CSV log keeps these rows in front of the new ones
            if isinstance(logger, RunCSVLogger):
                logger.keep_rows(old_rows)
    if trainer.world_size > 1:
        from tubelet.engine.distributed import report_dead_peers

        checkpoints = run_dir / "checkpoints"
        report_dead_peers(
            lambda pid, code: (
                f"rank 0: another process died (pid {pid}, exit code {code}); ending the run. Last good "
                f"checkpoint: {find_latest_checkpoint(checkpoints) or 'none saved yet'} (restart with --resume auto)"
            )
        )
    try:
        with _BudgetInMainProcess(datasets["train"]):
            trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path is not None else None)
    except Exception as exc:
        if trainer.world_size > 1 and _is_collective_failure(exc):
            last = find_latest_checkpoint(run_dir / "checkpoints")
            raise TubeletError(
                f"rank {trainer.global_rank}: a collective operation failed: another process died or did not answer "
                f"within trainer.collective_timeout_s={recipe.trainer.collective_timeout_s:g} s; last good checkpoint: "
                f"{last if last is not None else 'none saved yet'} (restart with --resume auto). "
                f"Cause: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from exc
        raise
    finally:
        if trainer.is_global_zero and tracker.failures:  # however the run stopped, the files it could not read are listed
            tracker.write(run_dir / "bad_files.txt")

    paths = {"config": run_dir / "config.yaml", "logs": run_dir / "logs",
             **({"labels": run_dir / "labels.txt"} if class_names else {}),
             "method": run_dir / "method.safetensors", "metrics": run_dir / "metrics.json"}
    if trainer.global_step == chosen.step and earlier_metrics:
        # a resume with nothing left to train: the run's own final metrics (its last checkpoint was
        # written before the last validation, and the loop did not close the epoch again)
        metrics = dict(earlier_metrics)
    else:
        # after a resume the Trainer only knows what it logged since; the rest comes from the checkpoint
        metrics = {**chosen.metrics, **scalar_metrics(trainer.callback_metrics)}
        metrics["global_step"] = float(trainer.global_step)
        metrics["epoch"] = float(trainer.current_epoch)
        metrics["skipped_steps"] = float(module.skipped_steps)
        if module.peak_lr is not None:
            metrics["peak_lr"] = module.peak_lr
    if trainer.is_global_zero:
        # both files say which model they hold (``tubelet.models.weights``): load_model needs nothing else
        backbone = getattr(method, "backbone", None)
        described = describe_model(backbone, "backbone.") if isinstance(backbone, nn.Module) else {}
        save_safetensors(method.state_dict(), paths["method"],
                         metadata={"format": "tubelet-method", "tubelet_method": recipe.method.name, **described})
        if isinstance(backbone, nn.Module):
            paths["backbone"] = run_dir / "backbone.safetensors"
            save_safetensors(backbone.state_dict(), paths["backbone"],
                             metadata={"format": "tubelet-backbone", **describe_model(backbone)})
        if tracker.failures:
            paths["bad_files"] = run_dir / "bad_files.txt"
        write_metrics(paths["metrics"], metrics)
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    return FitResult(run_dir=run_dir, metrics=metrics, paths=paths, checkpoints=[p for p in ckpts if is_complete(p)])
