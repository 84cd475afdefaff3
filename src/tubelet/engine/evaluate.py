"""``evaluate(recipe, checkpoint)``: multi-view testing of a classifying method on the recipe's test split,
on the device the recipe's trainer section names (``eval/multiview.py`` holds the protocol)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tubelet.config.schema import Recipe
from tubelet.core.io import atomic_write_text, writing
from tubelet.core.runtime import set_threads
from tubelet.engine.device import autocast_dtype, check_precision, resolve_device
from tubelet.errors import CheckpointError, ConfigError, TubeletError
from tubelet.eval.multiview import confusion_matrix, predict_views, topk_accuracy


def load_method_weights(method: nn.Module, checkpoint: str | Path) -> str:
    """Load a training checkpoint (``*.ckpt``), ``method.safetensors`` or ``backbone.safetensors`` into
    ``method``; returns which kind was loaded. Never unpickles code."""
    from tubelet.core.ckpt_format import checkpoint_weights
    from tubelet.models.weights import read_state_dict

    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        state = read_state_dict(path)
    else:
        state = {k[len("method."):]: v for k, v in checkpoint_weights(path).items() if k.startswith("method.")}
    own = method.state_dict()
    backbone = getattr(method, "backbone", None)
    if set(state) == set(own):
        target, kind = method, "method"
    elif isinstance(backbone, nn.Module) and set(state) == set(backbone.state_dict()):
        target, kind = backbone, "backbone"
    else:
        missing = sorted(set(own) - set(state))[:5]
        unexpected = sorted(set(state) - set(own))[:5]
        raise CheckpointError(
            f"{path}: weights fit neither {type(method).__name__} nor its backbone "
            f"(missing e.g. {missing}, unexpected e.g. {unexpected})"
        )
    ref = target.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(ref[k].shape)}" for k, v in state.items() if ref[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{path}: shape mismatches:\n  " + "\n  ".join(bad))
    target.load_state_dict(state)
    return kind


def dataset_view_scores(recipe: Recipe, method: nn.Module, dataset: Dataset, device: torch.device,
                        batch_size: int | None = None) -> dict[str, Any]:
    """``predict_views`` of ``method.classify`` over every video of ``dataset`` (its samples hold the
    test views), batched and on ``device`` as the recipe says: what ``evaluate`` and ``predict`` score with."""
    from tubelet.engine.datamodule import default_batch_collate

    # The data package's collate drops unreadable videos (reported in batch["bad_samples"]).
    loader = DataLoader(dataset, batch_size=batch_size or recipe.data.batch_size, shuffle=False,
                        num_workers=recipe.data.num_workers, collate_fn=default_batch_collate(recipe.seed),
                        pin_memory=device.type == "cuda")
    return predict_views(method.classify, loader, device, autocast_dtype(recipe.trainer.precision))


@torch.inference_mode()
def evaluate(
    recipe: Recipe,
    checkpoint: str | Path | None,
    method: nn.Module | None = None,
    dataset: Dataset | None = None,
    batch_size: int | None = None,
    report_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Multi-view test of a classifying method.

    ``checkpoint``: a training checkpoint, ``method.safetensors`` or ``backbone.safetensors`` (None:
    use ``method`` as it is). ``dataset`` defaults to ``build_dataset(recipe.data, "test")``.
    Returns ``top1``, ``top5``, ``num_videos``, ``num_views``, ``confusion`` (K x K list, rows = true),
    ``predictions`` (per video: index, label, pred, score), ``class_names``, ``title``, ``report_dir``
    (default ``run_dir/report``, where ``test_results.json`` is written; ``tubelet.report.save_test_figures``
    draws the confusion matrix there) and ``bad_samples`` (videos that could not be read and were left
    out: index, path, reason). The method and the clips run on ``trainer.accelerator``'s device.
    """
    set_threads(recipe.trainer.num_threads, recipe.data.num_workers)
    device = resolve_device(recipe.trainer.accelerator)
    check_precision(recipe.trainer.precision, device.type)
    if checkpoint is not None and not Path(checkpoint).exists():  # fail before building anything
        raise CheckpointError(f"{checkpoint}: checkpoint not found")
    if method is None:
        from tubelet.methods import build_method

        method = build_method(recipe)
    if not hasattr(method, "classify"):
        raise ConfigError(f"method '{recipe.method.name}' has no classify(); multi-view testing needs one")
    loaded = load_method_weights(method, checkpoint) if checkpoint is not None else "none"
    if dataset is None:
        from tubelet.data.builder import build_dataset

        dataset = build_dataset(recipe.data, "test")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise TubeletError("the test dataset is empty")
    method.eval().to(device)
    out = dataset_view_scores(recipe, method, dataset, device, batch_size)
    bad = out["bad"]
    if out["scores"] is None:
        raise TubeletError(f"no test video could be read ({len(bad)} failed)")
    scores, labels, indices, num_views = out["scores"], out["labels"], out["indices"], out["num_views"]
    num_classes = scores.shape[1]
    preds = scores.argmax(dim=1)
    cm = confusion_matrix(preds, labels, num_classes)
    out_dir = Path(report_dir) if report_dir is not None else Path(recipe.run_dir) / "report"
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "top1": topk_accuracy(scores, labels, 1),
        "top5": topk_accuracy(scores, labels, 5),
        "num_videos": int(labels.numel()),
        "num_views": num_views,
        "num_classes": num_classes,
        "weights": loaded,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "confusion": cm.tolist(),
        "predictions": [
            {"index": int(i), "label": int(y), "pred": int(p), "score": float(s)}
            for i, y, p, s in zip(indices, labels, preds, scores.max(dim=1).values)
        ],
        "class_names": list(getattr(dataset, "class_names", None) or []),
        "report_dir": str(out_dir),
        "title": f"{recipe.model.name}: {num_views}-view test, top-1 {topk_accuracy(scores, labels, 1):.3f}",
        "bad_samples": [list(b) for b in bad],
    }
    atomic_write_text(out_dir / "test_results.json", json.dumps(results, indent=1) + "\n")
    return results
