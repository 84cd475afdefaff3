"""``evaluate_detection(recipe, checkpoint)``: an action detector on the recipe's test keyframes, scored with
AVA's official frame-mAP (``eval/ava.py``).

Every test keyframe's proposals get the model's sigmoid scores; they are written as an AVA detection CSV
(``report/detections.csv``: ``video, timestamp, x1, y1, x2, y2, action, score`` with boxes normalised to the
frame, one row per box and label-map class) and scored against the ground truth with the excluded timestamps
and the 50-detections-per-frame cap. The same proposals scored with the training set's class frequencies
(every box of every frame gets ``P(action)``) give the class-prior baseline a detector has to beat.

A memory model (MeMViT) is evaluated memory-free (its memory cleared before every batch) unless the recipe
asks for the online order (``data.ava.online``): then each batch slot walks one test video's keyframes in
time order with the memory of the earlier ones, as it was trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tubelet.config.schema import Recipe
from tubelet.core.io import atomic_write_text, writing
from tubelet.core.runtime import set_threads
from tubelet.data.datasets.ava import AVADataset, AVATable, write_ava_csv
from tubelet.engine.device import check_precision, resolve_device, with_resolved_precision
from tubelet.errors import CheckpointError, ConfigError, TubeletError
from tubelet.eval.ava import AVAResult, frame_map

__all__ = ["class_prior_scores", "detection_table", "evaluate_detection"]


def detection_table(dataset: AVADataset, indices: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                    class_ids: list[int]) -> AVATable:
    """Rows ``(video, time, box, action, score)`` for boxes ``(N, 4)`` (normalised) of keyframes ``indices``
    with scores ``(N, K)``, for the action ids ``class_ids`` (class ``a - 1``)."""
    ids = np.asarray(class_ids, dtype=np.int64)
    n, c = len(indices), len(ids)
    video = np.asarray([dataset.keyframes[i].video for i in indices], dtype=object)
    time = np.asarray([dataset.keyframes[i].time for i in indices], dtype=np.float64)
    return AVATable(np.repeat(video, c), np.repeat(time, c), np.repeat(boxes, c, axis=0), np.tile(ids, n),
                    scores[:, ids - 1].reshape(-1).astype(np.float64), np.arange(1, n * c + 1), "detections")


def class_prior_scores(train: AVADataset) -> np.ndarray:
    """``P(action k)`` over the training set's boxes ``(K,)``."""
    labels = np.concatenate([k.labels for k in train.keyframes], 0)
    return labels.mean(0)


def _run(method: nn.Module, dataset: AVADataset, batch_size: int, num_workers: int, device: torch.device,
         memory: bool, online: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores of every test keyframe's boxes. ``online`` (a memory model with ``data.ava.online``): the
    keyframes come as the training order serves them, each batch slot walking one video in time order with
    the memory of its earlier keyframes; the order wraps around to keep every slot full, so a keyframe served
    twice keeps its first (unwrapped) scores."""
    from tubelet.data.datasets.ava import AVAKeyframeStreams
    from tubelet.data.online import OnlineClips, online_order
    from tubelet.engine.datamodule import default_batch_collate

    streamed = memory and online
    if streamed:
        streams = OnlineClips(AVAKeyframeStreams(dataset), num_streams=batch_size, seed=0)
        loader = DataLoader(streams, batch_size=batch_size, sampler=online_order(batch_size, streams.steps),
                            num_workers=num_workers, collate_fn=default_batch_collate(0))
    else:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=default_batch_collate(0))
    idx, boxes, scores = [], [], []
    if memory:
        method.detector.clear_memory()
    try:
        for batch in loader:
            if "video" not in batch:
                continue
            if memory and not streamed:
                method.detector.clear_memory()
            ids = batch["video_id"].to(device) if streamed else None
            mask = batch["box_mask"].bool()
            s = method.detect(batch["video"].to(device), batch["boxes"].to(device), mask.to(device), ids).cpu()
            b, m = torch.nonzero(mask, as_tuple=True)
            idx.append(batch["index"][b].numpy())
            boxes.append(batch["norm_boxes"][b, m].double().numpy())
            scores.append(s[b, m].numpy())
    finally:
        if memory:
            method.detector.clear_memory()
    if not idx:
        raise TubeletError("no test keyframe could be read")
    idx_a, boxes_a, scores_a = np.concatenate(idx), np.concatenate(boxes), np.concatenate(scores)
    if streamed:  # keep each keyframe's first pass (a wrapped repeat would list its boxes twice)
        # a keyframe's boxes are one contiguous run of rows; keep the runs that are their keyframe's first
        run = np.cumsum(np.r_[True, idx_a[1:] != idx_a[:-1]]) - 1
        first_run = np.zeros(idx_a.max() + 1, np.int64)
        keys, at = np.unique(idx_a, return_index=True)
        first_run[keys] = run[at]
        keep = run == first_run[idx_a]
        # back to keyframe order (boxes in their order inside a keyframe), the memory-free pass's row order:
        # the evaluator breaks ties by row order, and the class-prior baseline is all ties
        order = np.flatnonzero(keep)[np.argsort(idx_a[keep], kind="stable")]
        idx_a, boxes_a, scores_a = idx_a[order], boxes_a[order], scores_a[order]
    return idx_a, boxes_a, scores_a


@torch.inference_mode()
def evaluate_detection(recipe: Recipe, checkpoint: str | Path | None, method: nn.Module | None = None,
                       dataset: Dataset | None = None, report_dir: str | Path | None = None,
                       prior_baseline: bool = True) -> dict[str, Any]:
    """Frame-mAP of a detection method on ``build_dataset(recipe.data, "test")`` (or ``dataset``). Returns
    ``frame_map`` (per-class AP, mAP), ``prior_frame_map`` (the class-prior baseline on the same proposals),
    ``num_keyframes``, ``num_boxes``, ``detections_csv`` and ``report_dir`` (``test_results.json`` there)."""
    from tubelet.data.builder import build_dataset
    from tubelet.engine.evaluate import load_method_weights

    recipe = with_resolved_precision(recipe)  # trainer.precision=auto: what fit would pick here
    set_threads(recipe.trainer.num_threads, recipe.data.num_workers)
    device = resolve_device(recipe.trainer.accelerator)
    check_precision(recipe.trainer.precision, device.type)
    if checkpoint is not None and not Path(checkpoint).exists():
        raise CheckpointError(f"{checkpoint}: checkpoint not found")
    if method is None:
        from tubelet.methods import build_method

        method = build_method(recipe)
    if not hasattr(method, "detect"):
        raise ConfigError(f"method '{recipe.method.name}' has no detect(); AVA evaluation needs a detection method")
    loaded = load_method_weights(method, checkpoint) if checkpoint is not None else "none"
    ds = dataset if dataset is not None else build_dataset(recipe.data, "test", seed=recipe.seed)
    if not isinstance(ds, AVADataset) or ds.groundtruth is None:
        raise ConfigError("detection testing needs an AVA dataset with ground truth (data.kind: ava)")
    if ds.num_classes != method.num_classes:
        raise ConfigError(f"model.num_classes={method.num_classes} but the test set's label map has "
                          f"{ds.num_classes} action ids")
    method.eval().to(device)
    memory = bool(getattr(method.detector, "uses_memory", False))
    idx, boxes, scores = _run(method, ds, recipe.data.batch_size, recipe.data.num_workers, device, memory,
                              online=recipe.data.ava.online)
    ids = sorted(ds.label_map)
    det = detection_table(ds, idx, boxes, scores, ids)
    out_dir = Path(report_dir) if report_dir is not None else Path(recipe.run_dir) / "report"
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_ava_csv(out_dir / "detections.csv", det, "detections")
    ignore = recipe.data.ava.ignore_unlisted
    res = frame_map(ds.groundtruth, det, ds.label_map, ds.excluded, ignore_unlisted=ignore)
    results: dict[str, Any] = {
        "frame_map": res.to_dict(), "mAP": res.mAP, "weights": loaded,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "num_keyframes": int(len(np.unique(idx))), "num_boxes": int(len(idx)), "detections_csv": str(csv_path),
        "report_dir": str(out_dir),
    }
    if prior_baseline:
        train = build_dataset(recipe.data, "train", seed=recipe.seed)
        prior = np.broadcast_to(class_prior_scores(train), scores.shape)
        pres: AVAResult = frame_map(ds.groundtruth, detection_table(ds, idx, boxes, np.ascontiguousarray(prior), ids),
                                    ds.label_map, ds.excluded, ignore_unlisted=ignore)
        results["prior_frame_map"] = pres.to_dict()
        results["prior_mAP"] = pres.mAP
    atomic_write_text(out_dir / "test_results.json", json.dumps(results, indent=1) + "\n")
    results["result"] = res
    return results
