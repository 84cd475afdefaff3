"""Tracking with a trained UTT run: single-object (``load_tracker(run_dir)``, ``track_video``) and
multi-object (``load_mot_tracker(run_dir)``, ``track_mot``).

The run folder's ``config.yaml`` rebuilds the method and its ``method.safetensors`` loads strictly; the
recipe's ``data.crop_size``, ``data.mean``/``std`` and ``data.sot.search_factor`` set the tracker's crops:
exactly the crops of training (a different factor shows the model its target at a scale it never saw).
MOT letterboxes whole frames to ``data.crop_size``, as its training pairs were.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tubelet.data.datasets.tracking import MOTRows
from tubelet.data.decoding import VideoReader
from tubelet.errors import CheckpointError, ConfigError, DataError

__all__ = ["load_mot_tracker", "load_tracker", "load_utt_run", "track_mot", "track_video"]


def load_utt_run(run_dir: str | Path, device: str = "cpu", overrides: Sequence[str] = ()):
    """``(recipe, method)`` of a ``tubelet fit`` run of the ``utt`` method, weights loaded strictly."""
    from tubelet.config import load_recipe
    from tubelet.engine.evaluate import load_method_weights
    from tubelet.methods import build_method

    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise CheckpointError(f"{run}: not a run folder (no config.yaml)")
    weights = run / "method.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{run}: no method.safetensors (the run has not finished)")
    recipe = load_recipe(run / "config.yaml", list(overrides))
    if recipe.method.name != "utt":
        raise ConfigError(f"{run}: method '{recipe.method.name}' is not a tracker (tubelet track needs method utt)")
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, checkpoint=None))
    method = build_method(recipe)
    load_method_weights(method, weights)
    return recipe, method.eval().to(device)


def load_tracker(run_dir: str | Path, device: str = "cpu", overrides: Sequence[str] = ()):
    """The :class:`~tubelet.methods.utt.SOTTracker` of a ``tubelet fit`` run of the ``utt`` method."""
    from tubelet.methods.utt import SOTTracker

    recipe, method = load_utt_run(run_dir, device, overrides)
    return SOTTracker(method.utt, recipe.data.crop_size, recipe.data.sot.search_factor, recipe.data.mean,
                      recipe.data.std, device)


def load_mot_tracker(run_dir: str | Path | None, association=None, device: str = "cpu",
                     overrides: Sequence[str] = ()):
    """A :class:`~tubelet.methods.utt_mot.MOTTracker`: with ``run_dir``, the run's track transformer moves
    the tracks into each frame; ``None``: the association alone (boxes stay where they were)."""
    from tubelet.methods.utt_mot import MOTTracker, UTTPropagator

    if run_dir is None:
        return MOTTracker(association)
    recipe, method = load_utt_run(run_dir, device, overrides)
    return MOTTracker(association, UTTPropagator(method.utt, recipe.data.crop_size, recipe.data.mean, recipe.data.std,
                                                 device))


def track_mot(tracker, num_frames: int, detections: Callable[[int, np.ndarray | None], tuple],
              reader: VideoReader | None = None, chunk: int = 16,
              progress: Callable[[int, int, float], None] | None = None) -> MOTRows:
    """MOT results of ``tracker`` over ``num_frames`` frames: ``detections(t, frame) -> (boxes (K, 4)
    xyxy, scores (K,))`` per frame (``t`` 0-based; ``frame`` None without a ``reader``, for trackers that
    read no pixels). Rows: frame ``t + 1``, the track's id, ``x,y,w,h``, its detection's score.
    ``progress(done, total, fps)`` after each chunk of frames."""
    from tubelet.methods.utt_mot import xyxy_to_xywh

    if reader is not None and reader.metadata.num_frames < num_frames:
        raise DataError(f"{reader.path}: {reader.metadata.num_frames} frames, fewer than the {num_frames} to track")
    frames_out, ids_out, boxes_out, conf_out = [], [], [], []
    start = time.perf_counter()
    for lo in range(0, num_frames, chunk):
        idx = list(range(lo, min(num_frames, lo + chunk)))
        frames = reader.get_frames(idx) if reader is not None else [None] * len(idx)
        for t, frame in zip(idx, frames):
            boxes, scores = detections(t, frame)
            ids, b, s = tracker.update(frame, boxes, scores)
            frames_out.append(np.full(len(ids), t + 1, np.int64))
            ids_out.append(ids)
            boxes_out.append(xyxy_to_xywh(b))
            conf_out.append(s)
        if progress is not None:
            done = idx[-1] + 1
            progress(done, num_frames, done / max(time.perf_counter() - start, 1e-9))
    n = sum(len(f) for f in frames_out)
    if not n:
        return MOTRows(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0),
                       np.zeros(0, np.int64), np.zeros(0), "tracker")
    return MOTRows(np.concatenate(frames_out), np.concatenate(ids_out).astype(np.int64), np.concatenate(boxes_out),
                   np.concatenate(conf_out), -np.ones(n, np.int64), -np.ones(n), "tracker")


def track_video(tracker, reader: VideoReader, init_box: np.ndarray, chunk: int = 16,
                progress: Callable[[int, int, float], None] | None = None) -> np.ndarray:
    """``x,y,w,h`` per frame ``(N, 4)`` of ``reader``'s video from ``init_box`` on frame 0 (frame 0's row is
    the initial box); frames are decoded ``chunk`` at a time. ``progress(done, total, fps)`` after each."""
    n = reader.metadata.num_frames
    boxes = np.zeros((n, 4))
    boxes[0] = init_box
    start = time.perf_counter()
    for lo in range(0, n, chunk):
        frames = reader.get_frames(list(range(lo, min(n, lo + chunk))))
        for j, frame in enumerate(frames):
            t = lo + j
            if t == 0:
                tracker.init(frame, init_box)
            else:
                boxes[t] = tracker.update(frame)
        if progress is not None:
            done = min(n, lo + chunk)
            progress(done, n, done / max(time.perf_counter() - start, 1e-9))
    return boxes
