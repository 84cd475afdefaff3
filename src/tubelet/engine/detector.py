"""A trained Deformable DETR run as a frame detector: ``load_detector(run_dir or checkpoint)`` and
``detector(frame) -> (boxes, scores)``, what the multi-object tracker calls on every frame; and
``evaluate_detector``, the recall of a run's detections on held-out frames.

The run folder's ``config.yaml`` rebuilds the method and the weights (``method.safetensors``, or a training
checkpoint ``checkpoints/*.ckpt`` of the run) load strictly; its ``data`` section says how a frame becomes the
model's input (resized to ``data.crop_size``, normalised by ``data.mean`` / ``data.std``: the images of
training), and boxes come back in the frame's own pixels. Duplicates are suppressed by class-agnostic greedy
NMS where the run's ``method.nms_iou`` or ``load_detector(..., nms_iou=...)`` sets an IoU (None: DETR's raw
``top_k``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from tubelet.errors import CheckpointError, ConfigError, DataError

__all__ = ["Detector", "detector_from_recipe", "evaluate_detector", "load_detector", "evaluate_detector_checkpoint"]

METHOD = "deformable_detr"


class Detector:
    """``detector(frame uint8 (H, W, 3)) -> (boxes (K, 4) float32 xyxy in frame pixels, scores (K,) float32)``,
    the ``top_k`` best detections (scores descending) that survive NMS at ``nms_iou`` (None: no NMS) and
    score at least ``score_threshold``; with more than one class the labels of the last call are in
    ``last_labels``."""

    def __init__(self, method, size: int, mean: Sequence[float], std: Sequence[float], top_k: int = 100,
                 score_threshold: float = 0.0, device: str | torch.device = "cpu", nms_iou: float | None = None) -> None:
        from tubelet.methods.detr import check_nms_iou

        self.method = method.eval()
        self.size, self.mean, self.std = int(size), tuple(mean), tuple(std)
        self.top_k, self.score_threshold = int(top_k), float(score_threshold)
        self.nms_iou = check_nms_iou(nms_iou, "Detector(nms_iou=...)")
        self.device = torch.device(device)
        self.last_labels = np.zeros(0, np.int64)

    @torch.no_grad()
    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.detect_batch([frame])[0]

    @torch.no_grad()
    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`__call__` of several frames (of any sizes) in one forward pass."""
        from tubelet.data.datasets.frame_boxes import resize_frame

        images = torch.stack([resize_frame(np.asarray(f), self.size, self.mean, self.std) for f in frames])
        boxes, scores, labels, kept = self.method.detect(images.to(self.device), self.top_k, self.nms_iou)
        out = []
        for f, b, s, lab, nms_kept in zip(frames, boxes.cpu(), scores.cpu(), labels.cpu(), kept.cpu()):
            H, W = f.shape[:2]
            keep = nms_kept & (s >= self.score_threshold)
            px = (b[keep] * torch.tensor([W, H, W, H], dtype=b.dtype)).numpy().astype(np.float32)
            out.append((px, s[keep].numpy().astype(np.float32)))
            self.last_labels = lab[keep].numpy()
        return out


def _run_files(path: Path) -> tuple[Path, Path]:
    """``(config.yaml, weights)`` of a run folder or of a weights file inside one (``method.safetensors``
    beside ``config.yaml``, or ``checkpoints/*.ckpt`` one folder down)."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such run folder or checkpoint")
    if path.is_dir():
        weights = path / "method.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"{path}: no method.safetensors (not a finished run of method {METHOD})")
        return path / "config.yaml", weights
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml", path
    raise CheckpointError(f"{path}: no config.yaml beside it or one folder up: the run folder says how frames "
                          "are resized and normalised, so a detector loads from its run")


def load_detector(run_dir_or_checkpoint: str | Path, device: str = "cpu", top_k: int | None = None,
                  score_threshold: float = 0.0, nms_iou: float | None | Literal["run"] = "run") -> Detector:
    """The :class:`Detector` of a ``tubelet fit`` run of method ``deformable_detr`` (its folder, its
    ``method.safetensors`` or a training checkpoint of it). A run or file of another method is a
    ``CheckpointError`` naming the file; ``top_k`` defaults to the run's ``method.top_k``, ``nms_iou`` to the
    run's ``method.nms_iou`` (a number in [0, 1]: NMS at that IoU; None: no NMS; else a ``ConfigError``)."""
    from tubelet.config import load_recipe
    from tubelet.models.weights import file_metadata

    config, weights = _run_files(Path(run_dir_or_checkpoint))
    saved = file_metadata(weights).get("tubelet_method")
    if saved is not None and saved != METHOD:
        raise CheckpointError(f"{weights}: a checkpoint of method '{saved}', not a detector (method {METHOD})")
    recipe = load_recipe(config)
    if recipe.method.name != METHOD:
        raise CheckpointError(f"{weights}: its run {config} trained method '{recipe.method.name}', not a detector "
                              f"(method {METHOD})")
    return detector_from_recipe(recipe, weights, device, top_k, score_threshold, nms_iou)


def detector_from_recipe(recipe, weights: str | Path, device: str = "cpu", top_k: int | None = None,
                         score_threshold: float = 0.0, nms_iou: float | None | Literal["run"] = "run") -> Detector:
    """The :class:`Detector` that ``recipe`` (method ``deformable_detr``) builds, with ``weights`` loaded
    strictly (``method.safetensors``, ``backbone.safetensors`` or a training checkpoint); ``nms_iou="run"``
    takes the recipe's ``method.nms_iou``."""
    from tubelet.engine.evaluate import load_method_weights
    from tubelet.methods import build_method

    if recipe.method.name != METHOD:
        raise ConfigError(f"method '{recipe.method.name}' is not a detector (method {METHOD})")
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, checkpoint=None))
    method = build_method(recipe)
    load_method_weights(method, weights)
    method.to(device)
    d = recipe.data
    return Detector(method, d.crop_size, d.mean, d.std, recipe.method.top_k if top_k is None else top_k,
                    score_threshold, device, recipe.method.nms_iou if nms_iou == "run" else nms_iou)


def evaluate_detector_checkpoint(recipe, checkpoint: str | Path, split: str = "test", iou: float = 0.5,
                  score_threshold: float = 0.3) -> dict[str, float]:
    """``tubelet test`` of a detector: :func:`evaluate_detector` on ``split`` of the recipe's ``frame_boxes``
    data, on ``trainer.accelerator``'s device."""
    from tubelet.data.builder import build_dataset
    from tubelet.engine.device import resolve_device

    if not Path(checkpoint).exists():
        raise CheckpointError(f"{checkpoint}: checkpoint not found")
    det = detector_from_recipe(recipe, checkpoint, str(resolve_device(recipe.trainer.accelerator)))
    return evaluate_detector(det, build_dataset(recipe.data, split, seed=recipe.seed), iou, score_threshold)


def evaluate_detector(detector: Detector, dataset, iou: float = 0.5, score_threshold: float = 0.3,
                      batch_size: int = 16) -> dict[str, float]:
    """Detections on every frame of a ``frame_boxes`` dataset against its boxes (``eval/detection.py``):
    ``recall`` and ``precision`` at ``iou`` of the detections scoring at least ``score_threshold``
    (VOC's matching), ``recall_all`` (every one of the ``top_k``) and ``ap``."""
    from tubelet.eval.detection import detection_metrics

    if len(dataset) == 0:
        raise DataError("evaluate_detector: the dataset has no frames")
    preds, gts = [], []
    for lo in range(0, len(dataset), batch_size):
        samples = [dataset.raw(i) for i in range(lo, min(len(dataset), lo + batch_size))]
        preds += detector.detect_batch([frame for frame, _, _ in samples])
        gts += [boxes for _, boxes, _ in samples]
    return detection_metrics(preds, gts, iou, score_threshold)
