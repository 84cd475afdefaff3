"""Histograms of oriented gradients as a masked-prediction target (MaskFeat, Wei et al., arXiv 2112.09133).

The target follows PySlowFast's ``HOGLayerC`` exactly (METHODS.md §3.5; the paper's own text gives no
more detail), for an RGB frame ``x (B, C, H, W)`` on the *normalised* scale the encoder sees:

1. reflect-pad by 1 and filter each channel with the Sobel pair (depthwise)
   ``gx = [[1, 0, -1], [2, 0, -2], [1, 0, -1]]``, ``gy = gx^T``;
2. magnitude ``m = sqrt(gx^2 + gy^2)`` and angle ``phi = atan2(gx, gy)`` (this argument order: the
   angle is measured from the y axis, as in the reference);
3. nine **unsigned** bins with hard assignment ``bin = floor(phi / pi * 9) mod 9`` (so phi and
   phi + pi share a bin), each pixel voting its magnitude;
4. sums over ``8 x 8``-pixel cells (no Gaussian window, no block normalisation);
5. per cell and channel the 9-vector is L2-normalised, ``h / max(||h||_2, 1e-12)`` (0 where flat).

A 224^2 frame gives ``(3, 9, 28, 28)``; a 16x16 token owns 2x2 cells, ``3 * 9 * 2 * 2 = 108`` values,
flattened in (channel, bin, cell row, cell column) order as the reference does. For a clip, one frame
per cube is used (frames 0, 2, ..., 14 for 16 frames and a temporal stride of 2).

Efficiency: bins and cells are fused into one index, so steps 3-4 are a single ``scatter_add_`` of the
``H x W`` magnitudes into ``9 * cells`` sums per (frame, channel); there is no ``(B, C, 9, H, W)``
one-hot tensor and no loop over cells, channels or frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HOGLayer", "hog_per_token", "hog_video_targets"]

SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))


class HOGLayer(nn.Module):
    """``(B, C, H, W) -> (B, C, nbins, H // cell, W // cell)`` per-cell, per-channel L2-normalised HOG.

    Rows/columns beyond the last whole cell are ignored (as the reference's ``unfold`` does).
    Runs under ``torch.no_grad`` in float32 whatever the input dtype (a target, never differentiated).
    """

    def __init__(self, nbins: int = 9, cell_size: int = 8, channels: int = 3) -> None:
        super().__init__()
        self.nbins, self.cell_size, self.channels = int(nbins), int(cell_size), int(channels)
        wx = torch.tensor(SOBEL_X).view(1, 1, 3, 3).repeat(channels, 1, 1, 1)  # depthwise (C, 1, 3, 3)
        # Not persistent: fixed filters, no reason to store them in checkpoints.
        self.register_buffer("weight_x", wx, persistent=False)
        self.register_buffer("weight_y", wx.transpose(2, 3).contiguous(), persistent=False)
        self._index_cache: dict[tuple, torch.Tensor] = {}

    def _cell_index(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(h, w) int64: the cell each pixel of the (cropped) frame belongs to, row-major over cells."""
        key = (h, w, str(device))
        if key not in self._index_cache:
            c = self.cell_size
            rows = torch.arange(h, device=device) // c
            cols = torch.arange(w, device=device) // c
            self._index_cache[key] = rows[:, None] * (w // c) + cols[None, :]
        return self._index_cache[key]

    @torch.no_grad()
    def gradients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sobel responses ``(gx, gy)``, each ``(B, C, H, W)`` (steps 1)."""
        x = F.pad(x.float(), (1, 1, 1, 1), mode="reflect")
        gx = F.conv2d(x, self.weight_x.to(x.device), groups=self.channels)
        gy = F.conv2d(x, self.weight_y.to(x.device), groups=self.channels)
        return gx, gy

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"HOG takes (B, {self.channels}, H, W) frames, got {tuple(x.shape)}")
        B, C, H, W = x.shape
        c = self.cell_size
        hc, wc = H // c, W // c
        if hc == 0 or wc == 0:
            raise ValueError(f"a {H}x{W} frame has no whole {c}x{c} cell")
        gx, gy = self.gradients(x)  # padding uses the full frame; cells use the whole-cell part
        gx, gy = gx[..., : hc * c, : wc * c], gy[..., : hc * c, : wc * c]
        mag = torch.sqrt(gx * gx + gy * gy)  # (B, C, h, w)
        phase = torch.atan2(gx, gy)  # [-pi, pi], angle from the y axis (reference order)
        bins = torch.floor(phase * (self.nbins / math.pi)).long().remainder_(self.nbins)  # unsigned, hard
        # One fused index per pixel: bin * cells + cell; one scatter sums every (bin, cell) at once.
        cell = self._cell_index(hc * c, wc * c, x.device)
        index = bins * (hc * wc) + cell  # (B, C, h, w)
        out = torch.zeros(B * C, self.nbins * hc * wc, device=x.device, dtype=mag.dtype)
        out.scatter_add_(1, index.view(B * C, -1), mag.reshape(B * C, -1))
        out = out.view(B, C, self.nbins, hc, wc)
        return F.normalize(out, p=2, dim=2)  # per (channel, cell); eps 1e-12 leaves flat cells at 0

    def extra_repr(self) -> str:
        return f"nbins={self.nbins}, cell_size={self.cell_size}, channels={self.channels}"


def hog_per_token(hog: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Cut a HOG map into tokens: ``(B, C, nbins, Hc, Wc) -> (B, H' * W', C * nbins * kh * kw)``.

    ``grid_hw = (H', W')`` is the token grid; each token owns ``kh x kw = Hc/H' x Wc/W'`` cells. Values
    are ordered (channel, bin, cell row, cell column) within a token, tokens row-major.
    """
    B, C, nb, hc, wc = hog.shape
    th, tw = grid_hw
    if hc % th or wc % tw:
        raise ValueError(f"a {hc}x{wc} cell map does not split into a {th}x{tw} token grid")
    kh, kw = hc // th, wc // tw
    x = hog.view(B, C, nb, th, kh, tw, kw).permute(0, 3, 5, 1, 2, 4, 6)  # (B, H', W', C, nb, kh, kw)
    return x.reshape(B, th * tw, C * nb * kh * kw)


def hog_video_targets(
    layer: HOGLayer, video: torch.Tensor, grid: tuple[int, int, int], frame_stride: int = 2
) -> torch.Tensor:
    """Per-token HOG targets of a clip: ``(B, C, T, H, W) -> (B, T' * H' * W', f * C * nbins * kh * kw)``.

    HOG is taken on frames ``0, s, 2s, ...`` (``s = frame_stride``; the first frame of each 2-frame cube
    for s = 2); each of the ``T'`` token time steps owns ``f = (T / s) / T'`` of them (1 in the paper's
    setting, 16 frames -> 8 HOG frames -> 8 token times), concatenated in time order. Images are
    one-frame clips (T = 1). Token order is time slowest, as everywhere in tubelet.
    """
    if video.ndim == 4:
        video = video.unsqueeze(2)
    B, C, T, H, W = video.shape
    frames = video[:, :, ::frame_stride]  # (B, C, Th, H, W)
    th = frames.shape[2]
    t, gh, gw = grid
    if th % t:
        raise ValueError(f"{th} HOG frames (every {frame_stride} of {T}) do not split over {t} token times")
    f = th // t
    hog = layer(frames.transpose(1, 2).reshape(B * th, C, H, W))  # (B*Th, C, nb, Hc, Wc)
    tokens = hog_per_token(hog, (gh, gw))  # (B*Th, H'W', D)
    D = tokens.shape[-1]
    tokens = tokens.view(B, t, f, gh * gw, D).permute(0, 1, 3, 2, 4)  # (B, T', H'W', f, D)
    return tokens.reshape(B, t * gh * gw, f * D)
