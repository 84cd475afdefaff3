"""Deformable DETR on held-out synthetic frames: recall, precision and AP at IoU 0.5, against the same model
untrained (its reference points and prior sizes alone) and a fixed grid of boxes (the chance floor).

    python benchmarks/detect_synthetic.py RUN_DIR [--split val] [--score 0.3] [--nms-iou 0.5]

RUN_DIR is a ``tubelet fit -c deformable_detr_synthetic`` (or ``deformable_detr_synthetic_mot``) run. The trained
detector is scored without NMS and, where the run's ``method.nms_iou`` or ``--nms-iou`` sets one, with it.
Prints a table (results in docs/tracking.md).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from tubelet.config import load_recipe
from tubelet.data.builder import build_dataset
from tubelet.engine.detector import Detector, evaluate_detector, load_detector
from tubelet.eval.detection import detection_metrics
from tubelet.methods import build_method


def grid_boxes(size: int, top_k: int) -> np.ndarray:
    """``top_k`` boxes tiling the frame on a square grid: what a detector that looked at nothing could place."""
    n = int(np.ceil(np.sqrt(top_k)))
    step = size / n
    xs = np.arange(n) * step
    x1, y1 = np.meshgrid(xs, xs)
    b = np.stack([x1.ravel(), y1.ravel(), x1.ravel() + step, y1.ravel() + step], 1)[:top_k]
    return b.astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--split", default="val")
    ap.add_argument("--score", type=float, default=0.3, help="score threshold of recall and precision")
    ap.add_argument("--nms-iou", type=float, default=None, help="NMS IoU of the second row (default: the run's)")
    args = ap.parse_args()
    recipe = load_recipe(Path(args.run_dir) / "config.yaml")
    data = build_dataset(recipe.data, args.split, seed=recipe.seed)
    rows = [("trained, no NMS", evaluate_detector(load_detector(args.run_dir, nms_iou=None), data, 0.5, args.score))]
    nms_iou = recipe.method.nms_iou if args.nms_iou is None else args.nms_iou
    if nms_iou is not None:
        rows.append((f"trained, NMS at IoU {nms_iou:g}",
                     evaluate_detector(load_detector(args.run_dir, nms_iou=nms_iou), data, 0.5, args.score)))
    torch.manual_seed(recipe.seed)
    fresh = build_method(dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, checkpoint=None)))
    untrained = Detector(fresh, recipe.data.crop_size, recipe.data.mean, recipe.data.std, recipe.method.top_k)
    rows.append(("untrained (same init rule)", evaluate_detector(untrained, data, 0.5, args.score)))
    size = recipe.data.synthetic.size
    grid = grid_boxes(size, recipe.method.top_k)
    scores = np.linspace(1.0, 0.5, len(grid)).astype(np.float32)
    gts = [data.raw(i)[1] for i in range(len(data))]
    rows.append((f"{len(grid)}-box grid", detection_metrics([(grid, scores)] * len(data), gts, 0.5, args.score)))
    n = rows[0][1]
    print(f"{args.split}: {int(n['num_frames'])} frames, {int(n['num_gt'])} boxes; IoU 0.5; score >= {args.score}")
    print(f"| detector | recall | precision | recall (all top-{recipe.method.top_k}) | AP50 |")
    print("|---|---|---|---|---|")
    for name, m in rows:
        print(f"| {name} | {100 * m['recall']:.1f} | {100 * m['precision']:.1f} | {100 * m['recall_all']:.1f} | "
              f"{100 * m['ap']:.1f} |")


if __name__ == "__main__":
    main()
