"""A clip's audio track, on the frames' timeline: decoded with PyAV, mixed to mono, resampled.

Time is the video reader's (``data/decoding/__init__.py``): ``t = 0`` is the first *video* frame, so
the window ``[start, end)`` of a clip's frames selects the audio heard with them. The window holds
``round((end - start) * sample_rate)`` samples; audio missing at either end (a track that starts late
or ends early) is zeros. A file without an audio stream is a ``VideoError`` unless
``missing="zeros"`` is passed, which returns silence of the window's length.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Literal

import numpy as np

from tubelet.data.decoding.reader import _check_file
from tubelet.errors import VideoError

__all__ = ["read_audio"]


def _frac(tb) -> Fraction:
    return Fraction(tb.numerator, tb.denominator) if tb else Fraction(1, 1)


def read_audio(
    path: str | os.PathLike,
    start: Fraction | float,
    end: Fraction | float,
    sample_rate: int = 16000,
    missing: Literal["error", "zeros"] = "error",
) -> np.ndarray:
    """Mono float32 samples ``(round((end - start) * sample_rate),)`` of ``[start, end)`` seconds.

    The first audio stream is decoded from the keyframe at or before ``start`` to past ``end`` and
    resampled by FFmpeg's resampler (``av.AudioResampler``) to ``sample_rate``, channels averaged.
    """
    import av
    from pathlib import Path

    if missing not in ("error", "zeros"):
        raise ValueError(f"missing must be 'error' or 'zeros', got '{missing}'")
    p = Path(path)
    _check_file(p)
    start, end = Fraction(start), Fraction(end)
    if end <= start:
        raise ValueError(f"{p}: audio window [{start}, {end}) is empty")
    n = round((end - start) * sample_rate)
    try:
        container = av.open(str(p), metadata_errors="ignore")
    except Exception as exc:  # FFmpegError, OSError ...
        raise VideoError(p, f"cannot open: {type(exc).__name__}: {exc}") from exc
    try:
        if not container.streams.audio:
            if missing == "zeros":
                return np.zeros(n, dtype=np.float32)
            raise VideoError(p, "no audio stream (pass missing='zeros' to use silence)")
        stream = container.streams.audio[0]
        # The frames' timeline starts at the first video frame; without video, at the audio's start.
        origin = Fraction(0)
        if container.streams.video and container.streams.video[0].start_time is not None:
            v = container.streams.video[0]
            origin = v.start_time * _frac(v.time_base)
        elif stream.start_time is not None:
            origin = stream.start_time * _frac(stream.time_base)
        a_start, a_end = origin + start, origin + end
        tb = _frac(stream.time_base)
        container.seek(max(int(a_start / tb), 0), stream=stream, backward=True, any_frame=False)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        first: Fraction | None = None
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = frame.pts * tb
            if first is None:
                first = t
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
            if t >= a_end:
                break
        for out in resampler.resample(None):  # flush the resampler's delay line
            chunks.append(out.to_ndarray().reshape(-1))
    finally:
        container.close()
    out = np.zeros(n, dtype=np.float32)
    if first is None or not chunks:
        return out
    wave = np.concatenate(chunks).astype(np.float32)
    offset = round((a_start - first) * sample_rate)  # sample of the window's start in ``wave``
    lo, hi = max(offset, 0), min(offset + n, len(wave))
    if hi > lo:
        out[lo - offset : hi - offset] = wave[lo:hi]
    return out
