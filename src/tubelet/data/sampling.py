"""Clip samplers and frame-index selection.

Samplers are small, stateless functions. Random ones take a ``numpy.random.Generator`` that callers
derive from ``(seed, epoch, index)`` with :func:`sample_rng`, so a sample is the same whatever the
worker, order or process that draws it. Clip windows are half-open ``[start, end)`` in exact
rational seconds (:class:`fractions.Fraction`), following PyTorchVideo (arXiv 2111.09887).

Frame selection: "T x tau" means T frames, one every tau frames at a 30 fps reference
(:func:`clip_duration`); the frames inside a window are reduced to T with uniform temporal
subsampling, ``trunc(linspace(0, n - 1, T))`` (:func:`uniform_subsample_indices`).

Padding policy for videos shorter than a clip: the window keeps its length, the missing tail is
filled by **repeating the last frame** (:func:`clip_frame_indices`), so the frame spacing of the
real frames never changes.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Iterator

import numpy as np
import torch

__all__ = [
    "Window",
    "sample_rng",
    "torch_generator",
    "clip_duration",
    "source_frames_per_clip",
    "uniform_subsample_indices",
    "clip_frame_indices",
    "random_clip",
    "multiview_clips",
    "multiview_clip_starts",
    "expected_frames",
    "uniform_clips",
    "constant_clips",
    "rho_clips",
    "repeated_clips",
    "union_window",
    "sequential_clips",
    "stream_index",
]

Window = tuple[Fraction, Fraction]
_GRID = 1 << 20  # random starts lie on a grid of max_start / 2**20: exact rationals, no float drift


def sample_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """Independent generator for one sample, from ``(seed, epoch, index, stream)`` only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index), int(stream)]))


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A seeded ``torch.Generator`` drawn from ``rng`` (for the transforms)."""
    g = torch.Generator()
    g.manual_seed(int(rng.integers(0, 2**63 - 1)))
    return g


def clip_duration(num_frames: int, sampling_rate: int, ref_fps: float = 30.0) -> Fraction:
    """Seconds spanned by a "T x tau" clip: ``T * tau / ref_fps``."""
    return Fraction(int(num_frames) * int(sampling_rate)) / Fraction(ref_fps).limit_denominator(1001000)


def source_frames_per_clip(
    num_frames: int, sampling_rate: int, fps: Fraction | float, ref_fps: float = 30.0
) -> Fraction:
    """Source frames covered by a "T x tau" clip on a video at ``fps``: ``T * tau * fps / 30``."""
    return clip_duration(num_frames, sampling_rate, ref_fps) * Fraction(fps)


def uniform_subsample_indices(num_available: int, num_samples: int) -> np.ndarray:
    """``trunc(linspace(0, num_available - 1, num_samples))`` (PyTorchVideo ``uniform_temporal_subsample``).

    For 20 frames and 10 samples: 0, 2, 4, 6, 8, 10, 12, 14, 16, 19.
    """
    if num_available <= 0:
        raise ValueError("cannot subsample from zero frames")
    return np.linspace(0, num_available - 1, num_samples).astype(np.int64)


def clip_frame_indices(window_indices: np.ndarray, expected: int, num_samples: int) -> np.ndarray:
    """Pick ``num_samples`` frame indices from the frames in a window.

    ``window_indices`` are the frames inside ``[start, end)``; ``expected`` is how many the window
    would hold on a long enough video (``ceil((end - start) * fps)``). Short windows are padded by
    repeating the last frame up to ``expected`` before uniform subsampling.
    """
    idx = np.asarray(window_indices, dtype=np.int64)
    if idx.size == 0:
        raise ValueError("no frame inside the clip window")
    if idx.size < expected:
        idx = np.concatenate([idx, np.full(expected - idx.size, idx[-1], dtype=np.int64)])
    return idx[uniform_subsample_indices(idx.size, num_samples)]


def _frac(x: Fraction | float | int) -> Fraction:
    return x if isinstance(x, Fraction) else Fraction(x).limit_denominator(10**9)


def _random_start(max_start: Fraction, rng: np.random.Generator) -> Fraction:
    if max_start <= 0:
        return Fraction(0)
    return max_start * Fraction(int(rng.integers(0, _GRID + 1)), _GRID)


def random_clip(duration: Fraction | float, clip_dur: Fraction | float, rng: np.random.Generator) -> Window:
    """One window with a uniform random start in ``[0, max(duration - clip_dur, 0)]``."""
    d, c = _frac(duration), _frac(clip_dur)
    s = _random_start(max(d - c, Fraction(0)), rng)
    return s, s + c


def multiview_clips(duration: Fraction | float, clip_dur: Fraction | float, num_clips: int) -> list[Window]:
    """Multi-view test windows: clip i starts at ``i * (L - l) / (V - 1)``; ``V = 1`` gives the centre.

    The first clip starts at 0 and the last ends at the end (METHODS.md section 0). When the video
    is shorter than a clip, every window starts at 0 (and is padded, see module docstring).
    """
    d, c = _frac(duration), _frac(clip_dur)
    room = max(d - c, Fraction(0))
    if num_clips < 1:
        raise ValueError("num_clips must be >= 1")
    if num_clips == 1:
        s = room / 2
        return [(s, s + c)]
    return [(i * room / (num_clips - 1), i * room / (num_clips - 1) + c) for i in range(num_clips)]


def multiview_clip_starts(num_frames: int, clip_frames: int, num_clips: int) -> list[int]:
    """The frame form of :func:`multiview_clips` (SlowFast/METHODS.md section 0): clip i starts at
    frame ``i * floor((L - l) / (V - 1))``; ``V = 1`` starts at ``floor((L - l) / 2)``; never below 0."""
    room = max(int(num_frames) - int(clip_frames), 0)
    if num_clips < 1:
        raise ValueError("num_clips must be >= 1")
    if num_clips == 1:
        return [room // 2]
    step = room // (num_clips - 1)
    return [i * step for i in range(num_clips)]


def uniform_clips(
    duration: Fraction | float,
    clip_dur: Fraction | float,
    stride: Fraction | float | None = None,
    backpad_last: bool = False,
) -> list[Window]:
    """Sliding windows ``[k*stride, k*stride + l)`` that fit in the video (PyTorchVideo UniformClipSampler).

    With ``backpad_last`` a final window ending exactly at the end is added when the stride leaves
    a tail: 2 s clips over 9 s give 4 windows, or 5 (the last is ``[7, 9)``) with back-padding.
    """
    d, c = _frac(duration), _frac(clip_dur)
    st = c if stride is None else _frac(stride)
    if st <= 0:
        raise ValueError("stride must be positive")
    out: list[Window] = []
    s = Fraction(0)
    while s + c <= d:
        out.append((s, s + c))
        s += st
    if backpad_last and (not out or out[-1][1] < d) and d >= c:
        out.append((d - c, d))
    if not out:  # shorter than one clip: one padded window
        out.append((Fraction(0), c))
    return out


def constant_clips(duration: Fraction | float, clip_dur: Fraction | float, clips_per_video: int) -> list[Window]:
    """``clips_per_video`` evenly spaced windows: start_i = i * max(L - l, 0) / clips_per_video
    (PyTorchVideo ConstantClipsPerVideoSampler)."""
    d, c = _frac(duration), _frac(clip_dur)
    step = max(d - c, Fraction(0)) / clips_per_video
    return [(i * step, i * step + c) for i in range(clips_per_video)]


def rho_clips(
    duration: Fraction | float,
    clip_dur: Fraction | float,
    rho: int,
    rng: np.random.Generator,
    max_span: Fraction | float | None = None,
) -> list[Window]:
    """ρ windows with independent uniform starts (rho-SSL, arXiv 2104.14558 section 3).

    Without ``max_span`` the starts cover the whole video ("global" sampling; clips may overlap).
    With ``max_span`` seconds, a span window is drawn first and every clip lies inside it, so
    ``max(end) - min(start) <= max(max_span, clip_dur)``.
    """
    d, c = _frac(duration), _frac(clip_dur)
    lo, hi = Fraction(0), d
    if max_span is not None:
        span = max(min(_frac(max_span), d), c)
        lo = _random_start(max(d - span, Fraction(0)), rng)
        hi = lo + span
    room = max(hi - lo - c, Fraction(0))
    out = []
    for _ in range(rho):
        s = lo + _random_start(room, rng)
        out.append((s, s + c))
    return out


def repeated_clips(
    duration: Fraction | float, clip_dur: Fraction | float, k: int, rng: np.random.Generator
) -> list[Window]:
    """``k`` independent random windows of one video, decoded together (MAE-ST repeated sampling,
    arXiv 2205.09113 section 4); see :func:`union_window`."""
    return [random_clip(duration, clip_dur, rng) for _ in range(k)]


def union_window(windows: list[Window]) -> Window:
    """The smallest window covering all ``windows``: what one decode must cover."""
    return min(w[0] for w in windows), max(w[1] for w in windows)


def sequential_clips(
    duration: Fraction | float, clip_dur: Fraction | float, stride: Fraction | float | None = None
) -> Iterator[Window]:
    """Consecutive windows through a long video for streaming models (MeMViT, arXiv 2201.08383):
    ``[k*stride, k*stride + l)`` while the start is inside the video; the last one may run past the
    end (padded)."""
    d, c = _frac(duration), _frac(clip_dur)
    st = c if stride is None else _frac(stride)
    s = Fraction(0)
    while s < d:
        yield s, s + c
        s += st


def stream_index(idx: int, num_streams: int, iters_per_epoch: int) -> int:
    """MeMViT streaming order: loader position ``idx`` reads item ``idx // S + iters * (idx % S)``, so
    each of the S batch slots walks a contiguous, time-ordered run (METHODS.md section 7)."""
    return idx // num_streams + iters_per_epoch * (idx % num_streams)


def expected_frames(window: Window, fps: Fraction) -> int:
    """Frames a window holds on an unbounded video at ``fps``: ``ceil((end - start) * fps)``."""
    return max(1, math.ceil((window[1] - window[0]) * Fraction(fps)))
