"""The reader interface every source of frames keeps: exact rational timing, access by index or by time
window, and crops taken while decoding."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tubelet.data.decoding.crop import CropWriter, ResizedCrop
from tubelet.errors import VideoError


@dataclass(frozen=True)
class VideoMetadata:
    """What a reader knows about a video stream.

    ``width``/``height`` are the *displayed* size, after rotation. ``rotation`` is the clockwise
    rotation in degrees (0, 90, 180 or 270) applied to the coded frames for display.
    ``duration`` is the end of the last frame: ``t_last + 1 / fps``.
    """

    path: str
    num_frames: int
    fps: Fraction
    duration: Fraction
    width: int
    height: int
    rotation: int
    codec: str


@dataclass(frozen=True)
class Damage:
    """Damage in the frames of one read that the decoder concealed instead of raising an error.

    FFmpeg's decoders hide most damage: a macroblock that fails to parse is filled in from its
    neighbours or the previous frame, and the frame comes out looking whole. What they do say:

    ``flagged``: display indices of decoded frames carrying FFmpeg's corrupt-frame flag
    (``AV_FRAME_FLAG_CORRUPT``, set when error concealment ran on the frame);
    ``missing``: frames of the index table the decoder never produced (a frame too damaged to
    output, or lost packets; the reader fills their slots from the nearest decoded frame);
    ``errors``: the first of the error messages the decoder or demuxer logged for the stream, and
    ``n_errors`` how many there were.

    Frames predicted from a damaged frame inherit its damage until the next keyframe without being
    flagged themselves, so the flagged frames are where damage starts, not all it touches.
    """

    flagged: tuple[int, ...] = ()
    missing: tuple[int, ...] = ()
    errors: tuple[str, ...] = ()
    n_errors: int = 0

    @property
    def frames(self) -> tuple[int, ...]:
        """The frames named as damaged (flagged or missing), sorted."""
        return tuple(sorted(set(self.flagged) | set(self.missing)))

    @property
    def signals(self) -> tuple[str, ...]:
        """Which signals fired: ``corrupt-frame flag``, ``missing frames``, ``error log``."""
        fired = [("corrupt-frame flag", self.flagged), ("missing frames", self.missing),
                 ("error log", self.n_errors)]  # fmt: skip
        return tuple(name for name, hit in fired if hit)

    def describe(self) -> str:
        """One line: which frames and which signal, e.g. ``frames 118, 119 concealed (corrupt-frame
        flag); errors logged: 'error while decoding MB 0 10, bytestream -5' (h264) and 3 more``."""
        parts = []
        if self.flagged:
            parts.append(f"{_count(self.flagged)} concealed (corrupt-frame flag)")
        if self.missing:
            parts.append(f"{_count(self.missing)} never produced by the decoder (missing frames)")
        if self.n_errors:
            more = f" and {self.n_errors - len(self.errors)} more" if self.n_errors > len(self.errors) else ""
            parts.append(f"errors logged: {'; '.join(self.errors)}{more}")
        return "; ".join(parts)


def _count(frames: tuple[int, ...], show: int = 8) -> str:
    """``frame 7`` / ``frames 7, 8, 9`` / ``12 frames (7, 8, ... 31)``: short enough for one line."""
    if len(frames) == 1:
        return f"frame {frames[0]}"
    if len(frames) <= show:
        return "frames " + ", ".join(map(str, frames))
    head = ", ".join(map(str, frames[: show - 1]))
    return f"{len(frames)} frames ({head}, ... {frames[-1]})"


def to_cthw(frames: np.ndarray):
    """``(T, H, W, C)`` uint8 numpy frames -> ``(C, T, H, W)`` uint8 torch tensor (contiguous)."""
    import torch

    if frames.ndim != 4:
        raise ValueError(f"expected frames (T, H, W, C), got shape {tuple(frames.shape)}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).contiguous()


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoError(path, "file not found")
    if path.is_dir():
        raise VideoError(path, "is a directory, not a video file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise VideoError(path, f"cannot stat file: {exc}") from exc
    if size == 0:
        raise VideoError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise VideoError(path, "file is not readable (permission denied)")


def _rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate ``(T, H, W, C)`` frames clockwise by ``rotation`` degrees (multiple of 90)."""
    if rotation == 0:
        return frames
    # np.rot90 turns counter-clockwise for positive k; axes (1, 2) are (H, W).
    return np.ascontiguousarray(np.rot90(frames, k=-(rotation // 90), axes=(1, 2)))


class VideoReader(ABC):
    """Frame-accurate access to one video stream (a file, a frame folder or an image).

    Subclasses provide the metadata, the sorted frame timestamps, the window lookup and
    ``_decode(indices)``; frame selection, validation and de-duplication live here once.
    """

    path: str
    # Whether this reader sees damage its decoder conceals (``damage``); readers that cannot leave it
    # ``None`` and say so here, so that a policy on damage is not applied on nothing.
    detects_damage: bool = False
    # The damage in the frames decoded by the last request (``None``: none seen, or not detectable).
    damage: Damage | None = None

    @property
    @abstractmethod
    def metadata(self) -> VideoMetadata: ...

    @property
    def num_frames(self) -> int:
        return self.metadata.num_frames

    @property
    def fps(self) -> Fraction:
        return self.metadata.fps

    @property
    def duration(self) -> Fraction:
        return self.metadata.duration

    @property
    @abstractmethod
    def timestamps(self) -> list[Fraction]:
        """Presentation time of every frame in seconds, sorted, first frame at 0."""

    @abstractmethod
    def indices_in(self, start: Fraction | float, end: Fraction | float) -> np.ndarray:
        """Indices of the frames with ``start <= t_i < end`` (int64, ascending)."""

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 ``(len(indices), H, W, 3)``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = self.num_frames
        if idx.size == 0:
            m = self.metadata
            return np.zeros((0, m.height, m.width, 3), dtype=np.uint8)
        if idx.min() < 0 or idx.max() >= n:
            raise IndexError(f"{self.path}: frame indices must be in [0, {n}), got {idx.min()}..{idx.max()}")
        unique, inverse = np.unique(idx, return_inverse=True)
        decoded = self._decode(unique)
        return decoded[inverse]

    def get_resized_clips(
        self,
        clips: Sequence[np.ndarray],
        crops: Sequence[ResizedCrop] | Callable[[int, int], Sequence[ResizedCrop]],
    ) -> list[np.ndarray]:
        """Clips of frame indices, each cropped, resized and flipped as its :class:`ResizedCrop` says:
        one uint8 ``(3, T, h, w)`` per clip. ``crops`` may be ``f(height, width) -> crops`` of the
        displayed size. Here: :meth:`get_frames`, then FFmpeg's scaler on the RGB frames; the PyAV
        reader crops while decoding instead."""
        from av.video.frame import VideoFrame

        idx = [np.asarray(c, dtype=np.int64).reshape(-1) for c in clips]
        if not idx or any(c.size == 0 for c in idx):
            raise ValueError(f"{self.path}: every clip needs at least one frame index")
        allidx = np.concatenate(idx)
        frames = self.get_frames(allidx)  # (N, H, W, 3), displayed orientation
        if callable(crops):
            crops = crops(frames.shape[1], frames.shape[2])
        crops = list(crops)
        if len(crops) == len(idx) and all(c.size == (c.height, c.width) for c in crops):
            # nothing to resize: the scaler would copy the box (bit-exact), so slice it instead
            out, pos = [], 0
            for c, n in zip(crops, (len(i) for i in idx)):
                c.check(frames.shape[1], frames.shape[2])
                box = frames[pos : pos + n, c.top : c.top + c.height, c.left : c.left + c.width]
                out.append(np.ascontiguousarray((box[:, :, ::-1] if c.flip else box).transpose(3, 0, 1, 2)))
                pos += n
            return out
        clip_of = np.repeat(np.arange(len(idx)), [len(c) for c in idx])
        writer = CropWriter(len(allidx), clip_of, crops, lambda: 0)
        for pos in range(len(allidx)):  # one scaler call per frame
            writer.write(VideoFrame.from_ndarray(np.ascontiguousarray(frames[pos]), format="rgb24"), [pos])
        return writer.result()

    def get_clip(self, start: Fraction | float, end: Fraction | float) -> tuple[np.ndarray, np.ndarray]:
        """Frames in the half-open window ``[start, end)`` seconds and their indices."""
        idx = self.indices_in(start, end)
        return self.get_frames(idx), idx

    @abstractmethod
    def _decode(self, unique_sorted: np.ndarray) -> np.ndarray:
        """uint8 ``(len(unique_sorted), H, W, 3)`` for sorted, unique, in-range indices."""

    def close(self) -> None:  # noqa: B027 - readers without resources have nothing to release
        return None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ConstantRateReader(VideoReader):
    """A stream of ``count`` frames at a constant ``fps`` whose frame ``i`` shows at ``i / fps``
    (frame folders, rendered clips): the timing and window lookup, exact in :class:`Fraction`."""

    def __init__(self, path: str, count: int, fps: Fraction, width: int, height: int, codec: str) -> None:
        self.path = str(path)
        self._count = int(count)
        self._fps = Fraction(fps)
        self._meta = VideoMetadata(self.path, self._count, self._fps, Fraction(self._count) / self._fps,
                                   int(width), int(height), 0, codec)

    @property
    def metadata(self) -> VideoMetadata:
        return self._meta

    @property
    def timestamps(self) -> list[Fraction]:
        return [Fraction(i) / self._fps for i in range(self._count)]

    def indices_in(self, start: Fraction | float, end: Fraction | float) -> np.ndarray:
        import math

        lo = max(0, math.ceil(Fraction(start) * self._fps))
        hi = min(self._count, math.ceil(Fraction(end) * self._fps))
        return np.arange(lo, max(lo, hi), dtype=np.int64)
