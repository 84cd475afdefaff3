"""Video decoding behind one small interface.

``open_video(path, backend=...)`` returns a :class:`VideoReader` with exact, rational timing and
frame-accurate access by index or by time window. PyAV (which bundles FFmpeg) is the default;
torchcodec is used for ``backend="torchcodec"``, or for ``"auto"`` when it is importable.

Conventions (PyTorchVideo-compatible, see docs/data.md):

* Frames are returned as ``uint8`` numpy arrays of shape ``(T, H, W, C)`` in RGB, with the display
  rotation of the container already applied. Datasets convert to ``(C, T, H, W)`` once
  (:func:`to_cthw`).
* Frame ``i`` is the ``i``-th frame in *presentation* order. Its time ``t_i`` is
  ``(pts_i - pts_0) * time_base`` as a :class:`fractions.Fraction`, so the first frame is at 0.
* A window ``[start, end)`` in seconds is half-open and holds the frames with ``start <= t_i < end``.

The frame index table is built once per file from packet timestamps, by demuxing without decoding
(cached per process), and sorted by PTS, which fixes B-frame reordering (``unordered.mov``). In
packed-B-frame AVIs (DivX/Xvid: two frames in one packet) the decoder still outputs frames in display
order, but the PTS it stamps on them are swapped in pairs; sorting by them would scramble the clip,
so in those streams (found while indexing: a packet holding two VOP start codes) a decoded frame is
named by its place in the decoder's output, counted from the keyframe the reader seeks to, whose
display position the index computes from its packet (its stamp's rank, plus the B-VOPs packed behind
it, which are shown before it and cannot be decoded after a seek). FFmpeg's MPEG-4 Part 2
decoder drops one-byte DivX/Xvid placeholder packets ("frame skip" in ``mpeg4videodec.c``); those
packets are left out of the table, which is why ``hmdb51_...cartwheel...avi`` has 84 packets but 83
frames.

Only the needed range is decoded: the reader seeks to the last keyframe at or before the first
wanted frame and decodes forward until every wanted frame has been seen. One
:class:`~av.video.reformatter.VideoReformatter` is reused per reader (``frame.to_ndarray`` rebuilds
the colour converter for every frame). The container is opened lazily and re-opened after a fork,
so no decoder object is ever shared between DataLoader worker processes.
"""

from __future__ import annotations

import os

from tubelet.errors import VideoError
from tubelet.data.decoding.crop import ResizedCrop
from tubelet.data.decoding.pyav import PyAVReader
from tubelet.data.decoding.reader import ConstantRateReader, VideoMetadata, VideoReader, to_cthw
from tubelet.data.decoding.torchcodec import TorchCodecReader, torchcodec_available

__all__ = [
    "VideoMetadata",
    "VideoReader",
    "ConstantRateReader",
    "ResizedCrop",
    "PyAVReader",
    "TorchCodecReader",
    "open_video",
    "torchcodec_available",
    "to_cthw",
    "BACKENDS",
]

BACKENDS = ("pyav", "torchcodec", "auto")


def open_video(path: str | os.PathLike, backend: str = "pyav", threads: int = 1) -> VideoReader:
    """Open ``path`` for frame-accurate reading.

    ``backend``: ``"pyav"`` (default), ``"torchcodec"`` (error when not importable) or ``"auto"``
    (torchcodec when importable, else PyAV). Raises :class:`VideoError` naming the file and the
    reason when it is missing, empty, not a video, truncated or unreadable.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got '{backend}'")
    if backend == "torchcodec" or (backend == "auto" and torchcodec_available()):
        if backend == "torchcodec" and not torchcodec_available():
            raise VideoError(
                path, "backend 'torchcodec' requested but torchcodec (or FFmpeg's libraries) is not importable"
            )
        return TorchCodecReader(path, threads=threads)
    return PyAVReader(path, threads=threads)
