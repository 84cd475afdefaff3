"""MaskFeat HOG figures for run reports (arXiv 2112.09133; the target is drawn as in Dalal-Triggs figures).

``save_hog_figure(method, videos, path)`` writes a PNG: for each clip and a few HOG frames (the first
frame of each cube), a row with the input frame (masked units dimmed), a row with the HOG target of the
whole frame and a row with the HOG *predicted* at the masked cells. A cell's 9-bin histogram (mean over
the colour channels) is drawn as 9 line glyphs through its centre, one per bin, along the edge direction
of the bin's centre angle (perpendicular to the gradient), of length proportional to the bin's value.
``HOGReportCallback`` writes ``run_dir/report/hog.png`` at the end of a MaskFeat fit with the HOG target.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tubelet.report.figures.base import ClipFigureCallback
from tubelet.report.plots import _pyplot, save_figure


def hog_glyphs(hist: np.ndarray, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """Line segments for a ``(bins, Hc, Wc)`` histogram map: ``(Hc*Wc*bins, 2, 2)`` (x, y) end points in
    pixel coordinates (y down) and their values.

    Bin k holds angles ``phi = atan2(gx, gy)`` in ``[k pi / bins, (k + 1) pi / bins)`` (mod pi); the gradient
    points along ``(sin phi, cos phi)`` in (x, y) image coordinates, so the edge runs along
    ``(cos phi, -sin phi)``.
    """
    nb, hc, wc = hist.shape
    phi = (np.arange(nb) + 0.5) * math.pi / nb
    d = np.stack([np.cos(phi), -np.sin(phi)], axis=-1)  # (nb, 2) edge directions
    cy, cx = np.meshgrid((np.arange(hc) + 0.5) * cell, (np.arange(wc) + 0.5) * cell, indexing="ij")
    centre = np.stack([cx, cy], axis=-1)[:, :, None, :]  # (Hc, Wc, 1, 2)
    values = np.clip(hist.transpose(1, 2, 0), 0.0, None)  # (Hc, Wc, nb)
    half = (0.45 * cell * values)[..., None] * d  # (Hc, Wc, nb, 2)
    segs = np.stack([centre - half, centre + half], axis=-2)  # (Hc, Wc, nb, 2, 2)
    return segs.reshape(-1, 2, 2), values.reshape(-1)


def _draw_hog(ax, hist: np.ndarray, cell: int, shape: tuple[int, int], keep: np.ndarray | None = None) -> None:
    from matplotlib.collections import LineCollection

    if keep is not None:  # only the cells to show (e.g. masked cells for predictions)
        hist = hist * keep[None]
    segs, values = hog_glyphs(hist, cell)
    nz = values > 1e-3
    ax.set_facecolor("black")
    if nz.any():
        ax.add_collection(LineCollection(segs[nz], colors="white", linewidths=0.6,
                                         alpha=np.clip(values[nz], 0.15, 1.0)))
    ax.set_xlim(0, shape[1])
    ax.set_ylim(shape[0], 0)
    ax.set_aspect("equal")


@torch.no_grad()
def save_hog_figure(
    method: torch.nn.Module,
    videos: torch.Tensor,
    path: str | Path,
    mean: Sequence[float] = (0.45, 0.45, 0.45),
    std: Sequence[float] = (0.225, 0.225, 0.225),
    max_frames: int = 4,
    seed: int = 0,
) -> Path:
    """Write the HOG figure for ``videos (B, C, T, H, W)`` (normalised) to ``path``.

    Masks come from a generator seeded with ``seed`` (reproducible reports); the method's train/eval mode
    is restored afterwards.
    """
    was_training = method.training
    method.eval()
    try:
        device = next(method.parameters()).device
        videos = videos.to(device=device, dtype=torch.float32)
        out = method.hog_maps(videos, generator=torch.Generator().manual_seed(seed))
    finally:
        method.train(was_training)
    target = out["target"].mean(dim=2).cpu().numpy()  # (B, Th, nb, Hc, Wc), channels averaged
    pred = out["pred"].mean(dim=2).cpu().numpy()
    mask = out["mask"].cpu().numpy()  # (B, Th, Hc, Wc)
    m = torch.tensor(mean).view(-1, 1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1, 1)
    frames = [(f.cpu() * s + m).clamp(0, 1).permute(1, 2, 3, 0).numpy() for f in out["frames"]]  # (Th, H, W, C)
    cell = int(method.cfg.hog_cell)
    B, Th = target.shape[:2]
    H, W = frames[0].shape[1:3]
    cols = min(max_frames, Th)
    idx = np.linspace(0, Th - 1, cols).round().astype(int)
    plt = _pyplot()
    fig, axes = plt.subplots(3 * B, cols, figsize=(1.6 * cols, 1.6 * 3 * B), squeeze=False)
    for b in range(B):
        for c, t in enumerate(idx):
            keep = mask[b, t]
            dim = np.kron(keep, np.ones((cell, cell)))[:H, :W]
            dim = np.pad(dim, ((0, H - dim.shape[0]), (0, W - dim.shape[1])))
            img = frames[b][t] * (1 - 0.7 * dim[..., None])
            axes[3 * b, c].imshow(img.squeeze(), interpolation="nearest", cmap="gray")
            _draw_hog(axes[3 * b + 1, c], target[b, t], cell, (H, W))
            _draw_hog(axes[3 * b + 2, c], pred[b, t], cell, (H, W), keep=keep.astype(np.float32))
            for r in range(3):
                axes[3 * b + r, c].set_xticks([])
                axes[3 * b + r, c].set_yticks([])
            axes[3 * b, c].set_title(f"frame {t * method.cfg.target_frame_stride}", fontsize=7)
        for r, name in enumerate(("input (masked dimmed)", "HOG target", "HOG predicted (masked)")):
            axes[3 * b + r, 0].set_ylabel(name, fontsize=6)
    fig.suptitle(f"MaskFeat HOG: {float(mask.mean()):.0%} of cells masked; 9 unsigned bins per {cell}x{cell} cell",
                 fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


class HOGReportCallback(ClipFigureCallback):
    """At the end of training, write ``<run_dir>/report/hog.png`` from a few clips of the val split (else
    train). A no-op unless the trained method has ``hog_maps`` and predicts HOG. Only global zero writes.

    ``fit(..., callbacks=[HOGReportCallback.for_recipe(recipe)])``.
    """

    def on_train_end(self, trainer, pl_module) -> None:
        method = getattr(pl_module, "method", pl_module)
        cfg = getattr(method, "cfg", None)
        if not trainer.is_global_zero or not hasattr(method, "hog_maps") or getattr(cfg, "target", None) != "hog":
            return
        clips = self._clips()
        if clips is None:
            return
        self.path = save_hog_figure(method, clips, Path(trainer.default_root_dir) / "report" / "hog.png",
                                    self.mean, self.std)
