"""The torchcodec reader: PyAV's frame table and timing, torchcodec's batched decoding."""

from __future__ import annotations

import os

import numpy as np

from tubelet.data.decoding.pyav import PyAVReader
from tubelet.data.decoding.reader import VideoReader, _rotate
from tubelet.errors import VideoError


def torchcodec_available() -> bool:
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception:  # ImportError, or OSError when FFmpeg's shared libraries are missing
        return False
    return True


_TC_APPLIES_ROTATION: dict[tuple, bool] = {}


class TorchCodecReader(PyAVReader):
    """:class:`VideoReader` whose pixels come from torchcodec's ``VideoDecoder``.

    The frame table, timing, rotation and error semantics are those of :class:`PyAVReader` (the same
    packet-PTS index), so frame ``i`` is the same frame with either backend; torchcodec decodes the
    wanted frames in one batched call (``get_frames_played_at`` at each frame's own PTS). Whether
    this torchcodec build applies the display rotation itself is checked once per file against
    PyAV's first frame. It needs FFmpeg's shared libraries on the system.

    torchcodec (0.13) exposes neither FFmpeg's corrupt-frame flag nor its decoder options or log, so
    the frames it decodes are not examined for concealed damage (``detects_damage`` is false and
    ``damage`` stays ``None``); it raises only where FFmpeg itself fails. Packed-B-frame AVIs, which
    PyAV decodes here, and :meth:`decode_all` (PyAV's full decode, what ``tubelet probe`` runs) are.
    """

    detects_damage = False

    def __init__(self, path: str | os.PathLike, threads: int = 1) -> None:
        super().__init__(path, threads=threads)
        self.detects_damage = False
        self._decoder = None
        self._tc_pid: int | None = None
        self._ensure_decoder()  # a file torchcodec cannot open fails here, as with PyAV

    def _ensure_decoder(self):
        pid = os.getpid()
        if self._decoder is None or self._tc_pid != pid:
            from torchcodec.decoders import VideoDecoder

            try:
                self._decoder = VideoDecoder(
                    self.path, seek_mode="exact", num_ffmpeg_threads=self.threads, dimension_order="NHWC"
                )
            except Exception as exc:
                raise VideoError(self.path, f"cannot open with torchcodec: {type(exc).__name__}: {exc}") from exc
            self._tc_pid = pid
        return self._decoder

    def _play(self, pts: np.ndarray) -> np.ndarray:
        """Frames displayed at the given PTS, ``(N, H, W, 3)`` uint8 as torchcodec returns them."""
        tb = self._index.time_base
        # Each frame's own start time, nudged inside its display interval against float rounding.
        secs = [float(int(p) * tb) + 1e-6 for p in pts]
        try:
            batch = self._ensure_decoder().get_frames_played_at(seconds=secs)
        except Exception as exc:
            raise VideoError(self.path, f"corrupt data while decoding: {type(exc).__name__}: {exc}") from exc
        data = batch.data
        return data.numpy() if hasattr(data, "numpy") else np.asarray(data)

    def _applies_rotation(self) -> bool:
        rot = self.rotation
        if rot == 0:
            return True
        hit = _TC_APPLIES_ROTATION.get(self._key)
        if hit is None:
            tc0 = self._play(self._index.pts[:1])[0]
            av0 = PyAVReader._decode_into(self, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))[0]
            hit = tc0.shape == av0.shape and (rot != 180 or np.array_equal(tc0, av0))
            _TC_APPLIES_ROTATION[self._key] = hit
        return hit

    def _decode_into(self, unique_sorted: np.ndarray, inverse: np.ndarray) -> np.ndarray:
        if self._index.output_order:
            # Packed B-frames: torchcodec times these frames by its own best-effort timestamps,
            # which name different frames than the index does, and it cannot decode the last
            # one; PyAV decodes them by output order.
            return PyAVReader._decode_into(self, unique_sorted, inverse)
        frames = self._play(self._index.pts[unique_sorted])
        if not self._applies_rotation():
            frames = _rotate(frames, self.rotation)
        self.damage = None  # not examined (the rotation check may have decoded frame 0 with PyAV)
        return frames[inverse]

    def get_resized_clips(self, clips, crops) -> list[np.ndarray]:
        # torchcodec decodes the frames; the crop runs on them (VideoReader's path), not PyAV's.
        return VideoReader.get_resized_clips(self, clips, crops)

    def close(self) -> None:
        super().close()
        self._decoder = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_decoder"] = None
        state["_tc_pid"] = None
        return state
