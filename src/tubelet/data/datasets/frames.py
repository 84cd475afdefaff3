"""Frame folders (SSv2-style): one folder of JPEG/PNG frames per video, read as a video.

Frame ``i`` is the ``i``-th image in name order (``00001.jpg``, ``00002.jpg`` ... or any sortable
names; numbers are compared numerically when every name has one). Frames are at ``fps``
(``data.frames_fps``), so the same clip samplers apply. Only the frames a clip needs are read.
"""

from __future__ import annotations

import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

from tubelet.data.decoding import ConstantRateReader, VideoMetadata, VideoReader
from tubelet.data.datasets.folders import IMAGE_EXTENSIONS
from tubelet.data.datasets.paths import outside_root
from tubelet.errors import VideoError

__all__ = ["FrameFolderReader", "ImageReader", "read_image", "list_frames"]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 RGB ``(H, W, 3)``; :class:`VideoError` naming the file when unreadable."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise VideoError(p, "file not found")
    if p.stat().st_size == 0:
        raise VideoError(p, "empty file (0 bytes)")
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise VideoError(p, f"cannot read image: {type(exc).__name__}: {exc}") from exc


def _sort_key(p: Path):
    nums = re.findall(r"\d+", p.stem)
    return (int(nums[-1]) if nums else -1, p.name)


def list_frames(folder: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Path]:
    """The frame images of ``folder`` in frame order; with ``root`` (``data.root``), a frame that
    lies outside it (through a symlink, :func:`~tubelet.data.datasets.paths.outside_root`) makes the
    folder unreadable."""
    d = Path(folder)
    if not d.is_dir():
        raise VideoError(d, "frame folder not found" if not d.exists() else "not a folder of frames")
    files = [f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")]
    if not files:
        raise VideoError(d, "frame folder has no images")
    if root is not None:
        real_root = Path(root).resolve()
        for f in files:
            reason = outside_root(f, root, real_root=real_root)
            if reason is not None:
                raise VideoError(d, reason)
    return sorted(files, key=_sort_key)


class FrameFolderReader(ConstantRateReader):
    """:class:`VideoReader` over a folder of frames at a fixed ``fps``."""

    def __init__(self, folder: str | os.PathLike, fps: float | Fraction = 30, root: str | os.PathLike | None = None) -> None:
        self.files = list_frames(folder, root)
        first = read_image(self.files[0])
        self._first = first
        super().__init__(str(folder), len(self.files), Fraction(fps).limit_denominator(1001000), first.shape[1],
                         first.shape[0], "image-sequence")

    def _decode(self, unique_sorted: np.ndarray) -> np.ndarray:
        frames = [self._first if i == 0 else read_image(self.files[int(i)]) for i in unique_sorted]
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise VideoError(self.path, f"frames have different sizes: {sorted(shapes)[:3]}")
        return np.stack(frames)


class ImageReader(VideoReader):
    """One image as a one-frame video (``fps`` 1, duration 1 s)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._img = read_image(path)
        h, w = self._img.shape[:2]
        self._meta = VideoMetadata(self.path, 1, Fraction(1), Fraction(1), w, h, 0, "image")

    @property
    def metadata(self) -> VideoMetadata:
        return self._meta

    @property
    def timestamps(self) -> list[Fraction]:
        return [Fraction(0)]

    def indices_in(self, start, end) -> np.ndarray:
        return np.zeros(1, dtype=np.int64) if Fraction(start) < 1 and Fraction(end) > 0 else np.zeros(0, dtype=np.int64)

    def _decode(self, unique_sorted: Sequence[int]) -> np.ndarray:
        return self._img[None]
