"""Single-object tracking with a trained UTT run: ``load_tracker(run_dir)`` and ``track_video``.

The run folder's ``config.yaml`` rebuilds the method and its ``method.safetensors`` loads strictly; the
recipe's ``data.crop_size``, ``data.mean``/``std`` and ``data.sot.search_factor`` set the tracker's crops:
exactly the crops of training (a different factor shows the model its target at a scale it never saw).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tubelet.data.decoding import VideoReader
from tubelet.errors import CheckpointError, ConfigError

__all__ = ["load_tracker", "track_video"]


def load_tracker(run_dir: str | Path, device: str = "cpu", overrides: Sequence[str] = ()):
    """The :class:`~tubelet.methods.utt.SOTTracker` of a ``tubelet fit`` run of the ``utt`` method."""
    from tubelet.config import load_recipe
    from tubelet.engine.evaluate import load_method_weights
    from tubelet.methods import build_method
    from tubelet.methods.utt import SOTTracker

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
    method.eval().to(device)
    return SOTTracker(method.utt, recipe.data.crop_size, recipe.data.sot.search_factor, recipe.data.mean,
                      recipe.data.std, device)


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
