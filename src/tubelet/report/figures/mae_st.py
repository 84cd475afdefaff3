"""MAE-ST reconstructions for run reports (arXiv 2205.09113, Figs. 2-4 show the same three rows).

``save_reconstructions(method, videos, path)`` writes a PNG grid: for each clip, a row of original
frames, a row with the removed patches greyed out, and a row of the reconstruction (predictions
un-normalised with each target patch's own mean and variance, visible patches pasted back, as MAE's
visualisation does). ``ReconstructionCallback`` writes ``run_dir/report/reconstructions.png`` at the
end of an MAE-ST fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tubelet.report.figures.base import ClipFigureCallback
from tubelet.report.plots import _pyplot, save_figure

ROWS = ("original", "masked", "reconstruction")


def _to_images(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(C, T, H, W) normalised -> (T, H, W, 3) float in [0, 1]."""
    m = torch.tensor(mean, dtype=frames.dtype).view(-1, 1, 1, 1)
    s = torch.tensor(std, dtype=frames.dtype).view(-1, 1, 1, 1)
    x = (frames.cpu() * s + m).clamp(0, 1)
    return x.permute(1, 2, 3, 0).numpy()


@torch.no_grad()
def save_reconstructions(
    method: torch.nn.Module,
    videos: torch.Tensor,
    path: str | Path,
    mean: Sequence[float] = (0.45, 0.45, 0.45),
    std: Sequence[float] = (0.225, 0.225, 0.225),
    max_frames: int = 6,
    seed: int = 0,
    title: str = "",
) -> Path:
    """Write the grid for ``videos (B, C, T, H, W)`` (normalised with ``mean``/``std``) to ``path``.

    The masks are drawn from a generator seeded with ``seed``, so reports are reproducible. The method's
    train/eval mode is restored afterwards.
    """
    was_training = method.training
    method.eval()
    try:
        device = next(method.parameters()).device
        videos = videos.to(device=device, dtype=torch.float32)
        mask = method.random_mask(videos, torch.Generator().manual_seed(seed))
        out = method.reconstruct(videos, mask)
    finally:
        method.train(was_training)
    plt = _pyplot()
    B, T = videos.shape[0], out["original"].shape[2]
    cols = min(max_frames, T)
    idx = np.linspace(0, T - 1, cols).round().astype(int)
    fig, axes = plt.subplots(3 * B, cols, figsize=(1.2 * cols, 1.25 * 3 * B), squeeze=False)
    for b in range(B):
        for r, key in enumerate(ROWS):
            images = _to_images(out[key][b], mean, std)
            for c, t in enumerate(idx):
                ax = axes[3 * b + r, c]
                ax.imshow(images[t], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
            axes[3 * b + r, 0].set_ylabel(key, fontsize=7)
    ratio = float(out["mask"].mean())
    fig.suptitle(title or f"MAE-ST reconstructions ({ratio:.0%} of patches removed; frames = first of each cube)",
                 fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


class ReconstructionCallback(ClipFigureCallback):
    """At the end of training, write ``<run_dir>/report/reconstructions.png`` from a few clips.

    ``fit(..., callbacks=[ReconstructionCallback(val_set, mean, std)])``, or
    ``ReconstructionCallback.for_recipe(recipe)``, which builds the recipe's val split (else train)
    only when the trained method has ``reconstruct`` (so it is a no-op for other methods). Only the
    global-zero process writes.
    """

    def on_train_end(self, trainer, pl_module) -> None:
        method = getattr(pl_module, "method", pl_module)
        if not trainer.is_global_zero or not hasattr(method, "reconstruct"):
            return
        clips = self._clips()
        if clips is None:
            return
        self.path = save_reconstructions(
            method, clips, Path(trainer.default_root_dir) / "report" / "reconstructions.png", self.mean, self.std,
        )
