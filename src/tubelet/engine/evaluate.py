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
from tubelet.engine.device import autocast_dtype, check_precision, resolve_device, with_resolved_precision
from tubelet.errors import CheckpointError, ConfigError, TubeletError
from tubelet.eval.multiview import confusion_matrix, memory_clearer, predict_views, topk_accuracy


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
    return predict_views(method.classify, loader, device, autocast_dtype(recipe.trainer.precision),
                         clear_memory=memory_clearer(method))


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
    recipe = with_resolved_precision(recipe)  # trainer.precision=auto: what fit would pick here
    set_threads(recipe.trainer.num_threads, recipe.data.num_workers)
    device = resolve_device(recipe.trainer.accelerator)
    check_precision(recipe.trainer.precision, device.type)
    if checkpoint is not None and not Path(checkpoint).exists():  # fail before building anything
        raise CheckpointError(f"{checkpoint}: checkpoint not found")
    if method is None:
        from tubelet.methods import build_method

        method = build_method(recipe)
    video_text = is_video_text(method)
    if not hasattr(method, "classify") and not video_text:
        raise ConfigError(f"method '{recipe.method.name}' has no classify(); multi-view testing needs one")
    loaded = load_method_weights(method, checkpoint) if checkpoint is not None else "none"
    if dataset is None:
        from tubelet.data.builder import build_dataset

        dataset = build_dataset(recipe.data, "test")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise TubeletError("the test dataset is empty")
    from tubelet.data.builder import check_dataset_labels

    method.eval().to(device)
    scorer = method
    if video_text:  # classes from class-name prompts (zero-shot), then retrieval and a linear probe below
        from tubelet.eval.zero_shot import ZeroShotClassifier

        names = list(getattr(dataset, "class_names", None) or [])
        scorer = ZeroShotClassifier(method, names)
        k, what = len(names), f"the test set's {len(names)} class names"
    else:
        k = int(getattr(method, "num_classes", recipe.model.num_classes))
        what = f"model.num_classes={k}"
    # a label past the classifier would fall outside the confusion matrix: named now, with its row
    check_dataset_labels(dataset, k, what)
    out = dataset_view_scores(recipe, scorer, dataset, device, batch_size)
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
    if video_text:
        results["title"] = f"{recipe.model.name}: zero-shot {num_views}-view test, top-1 {results['top1']:.3f}"
        results.update(video_text_results(recipe, method, dataset, device, batch_size))
    atomic_write_text(out_dir / "test_results.json", json.dumps(results, indent=1) + "\n")
    return results


def is_video_text(method: nn.Module) -> bool:
    """A language-vision method (FLIP): no classifier of its own, but a video and a text embedding."""
    return not hasattr(method, "classify") and hasattr(method, "encode_video") and hasattr(method, "encode_text")


def video_text_results(recipe: Recipe, method: nn.Module, dataset: Dataset, device: torch.device,
                       batch_size: int | None = None) -> dict[str, Any]:
    """Retrieval recall@1/5/10 both ways between the test clips and their captions (a clip's views
    averaged in the joint space), and the top-1 of a linear probe of the vision tower fitted on the
    training videos' features (``method.probe_steps``; 0 leaves it out)."""
    import torch.nn.functional as F

    from tubelet.data.builder import build_eval_views
    from tubelet.engine.datamodule import default_batch_collate
    from tubelet.errors import DataError
    from tubelet.eval.knn import extract_features
    from tubelet.eval.linear_probe import linear_probe_accuracy
    from tubelet.eval.retrieval import retrieval_recall

    bs = batch_size or recipe.data.batch_size
    loader = DataLoader(dataset, batch_size=bs, shuffle=False, num_workers=recipe.data.num_workers,
                        collate_fn=default_batch_collate(recipe.seed))
    videos, texts = [], []
    for batch in loader:
        if "video" not in batch:
            continue
        if "caption" not in batch:
            raise DataError("retrieval needs a caption per test clip: the test manifest has no 'caption' column")
        video = batch["video"].to(device)
        b, v = video.shape[0], (video.shape[1] if video.ndim == 6 else 1)
        emb = method.encode_video(video.flatten(0, 1) if video.ndim == 6 else video).float().view(b, v, -1)
        videos.append(F.normalize(emb.mean(dim=1), dim=-1).cpu())
        texts.append(method.encode_text(batch["caption"]).float().cpu())
    out: dict[str, Any] = {"retrieval": retrieval_recall(torch.cat(videos) @ torch.cat(texts).t())}
    steps = int(getattr(recipe.method, "probe_steps", 0))
    num_classes = len(getattr(dataset, "class_names", None) or [])
    if steps > 0 and num_classes > 1:
        backbone = method.backbone
        train = build_eval_views(recipe.data, "train", seed=recipe.seed)
        tr, tr_y = extract_features(backbone, train, bs, device)
        te, te_y = extract_features(backbone, dataset, bs, device)
        with torch.inference_mode(False):  # the probe trains: tensors made under inference mode are copied out
            out["linear_probe_top1"] = linear_probe_accuracy(
                tr.clone(), tr_y.clone(), te.clone(), te_y.clone(), num_classes, steps,
                float(getattr(recipe.method, "probe_lr", 0.1)), float(getattr(recipe.method, "probe_weight_decay", 0.0)),
                seed=recipe.seed)
        out["linear_probe_train_videos"] = int(tr.shape[0])
    return out
