"""Multi-view testing: softmax scores averaged over temporal clips x spatial crops per video.

Protocol of the video-transformer papers (e.g. ViViT arXiv:2103.15691 sec. 4.1, MViTv2
arXiv:2112.01526 sec. 5, MAE-ST arXiv:2205.09113 sec. 5): each test video is seen as
``data.test_clips`` temporal clips x ``data.test_crops`` spatial crops; the per-view softmax scores
are averaged and the video is classified by the mean.

Dataset contract for the ``"test"`` split: one sample per VIDEO,
``{"video": float (V, C, T, H, W), "label": int64 scalar, "index": int}`` with
``V = test_clips * test_crops`` views (clip-major: view ``v`` is clip ``v // test_crops``, crop
``v % test_crops``), each view normalised like a training clip. A sample whose ``video`` is a single
clip ``(C, T, H, W)`` counts as one view. The default collate stacks them to ``(B, V, C, T, H, W)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tubelet.config.schema import Recipe
from tubelet.errors import CheckpointError, ConfigError, TubeletError
from tubelet.report import plot_confusion


def view_scores(classify: Callable[[torch.Tensor], torch.Tensor], video: torch.Tensor) -> torch.Tensor:
    """``(B, V, C, T, H, W)`` (or one view ``(B, C, T, H, W)``) -> mean softmax scores ``(B, K)``."""
    if video.ndim == 5:
        video = video.unsqueeze(1)
    if video.ndim != 6:
        raise TubeletError(f"test batches must be (B, V, C, T, H, W) views, got shape {tuple(video.shape)}")
    b, v = video.shape[:2]
    logits = classify(video.flatten(0, 1)).float()
    return logits.softmax(dim=-1).view(b, v, -1).mean(dim=1)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores (k capped at the class count)."""
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return (top == labels.view(-1, 1)).any(dim=1).float().mean().item()


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K, K)`` counts; row = true class, column = predicted class."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def load_method_weights(method: nn.Module, checkpoint: str | Path) -> str:
    """Load a training checkpoint (``*.ckpt``), ``method.safetensors`` or ``backbone.safetensors`` into
    ``method``; returns which kind was loaded. Never unpickles code."""
    from tubelet.engine.checkpoint import checkpoint_weights
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
    ``predictions`` (per video: index, label, pred, score), ``confusion_png`` (written under
    ``report_dir``, default ``run_dir/report``) and ``bad_samples`` (videos that could not be read
    and were left out: index, path, reason).
    """
    from tubelet.engine.fit import set_threads

    set_threads(recipe)
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
    method.eval()
    from tubelet.engine.datamodule import default_batch_collate

    # The data package's collate drops unreadable videos (reported in batch["bad_samples"]).
    loader = DataLoader(dataset, batch_size=batch_size or recipe.data.batch_size, shuffle=False,
                        num_workers=recipe.data.num_workers, collate_fn=default_batch_collate(recipe.seed))
    bf16 = recipe.trainer.precision.startswith("bf16")
    all_scores, all_labels, all_index = [], [], []
    num_views = 0
    bad: list = []
    for batch in loader:
        bad.extend(batch.get("bad_samples", []))
        if "video" not in batch:
            continue
        video = batch["video"]
        num_views = 1 if video.ndim == 5 else int(video.shape[1])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            scores = view_scores(method.classify, video)
        all_scores.append(scores.float())
        all_labels.append(batch["label"].long().view(-1))
        index = batch.get("index")
        all_index.append(torch.as_tensor(index).view(-1) if index is not None else torch.full_like(all_labels[-1], -1))
    if not all_scores:
        raise TubeletError(f"no test video could be read ({len(bad)} failed)")
    scores = torch.cat(all_scores)
    labels = torch.cat(all_labels)
    indices = torch.cat(all_index)
    num_classes = scores.shape[1]
    preds = scores.argmax(dim=1)
    cm = confusion_matrix(preds, labels, num_classes)
    out_dir = Path(report_dir) if report_dir is not None else Path(recipe.run_dir) / "report"
    png = plot_confusion(cm.numpy(), getattr(dataset, "class_names", None), out_dir / "confusion.png",
                         title=f"{recipe.model.name}: {num_views}-view test, top-1 {topk_accuracy(scores, labels, 1):.3f}")
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
        "confusion_png": str(png),
        "bad_samples": [list(b) for b in bad],
    }
    (out_dir / "test_results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results
