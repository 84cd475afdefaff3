"""The PyAV reader (FFmpeg bundled): the default backend."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tubelet.data.decoding.crop import CropError, CropWriter, ResizedCrop
from tubelet.data.decoding.index import (
    _INDEX_CACHE,
    _INDEX_CACHE_SIZE,
    _INDEX_LOCK,
    _MPEG4_VOP_START,
    _ROTATION_CACHE,
    _Index,
)
from tubelet.data.decoding.reader import Damage, VideoMetadata, VideoReader, _check_file, _rotate
from tubelet.errors import VideoError

# Checks FFmpeg's decoders make only when asked (AVCodecContext.err_detect). ``bitstream`` has the
# MPEG-4 Part 2 decoder check marker bits and DC/level ranges, so some damage it would otherwise
# decode as valid becomes concealed, flagged macroblocks; ``crccheck`` verifies the checksums a
# format carries. Both cost nothing measurable and flag no clean clip (benchmarks/damage.py).
# ``explode`` is not used: it turns concealment into errors, which loses the frames that
# ``data.on_damaged: keep`` trains on, and catches nothing the corrupt-frame flag misses.
ERR_DETECT = "crccheck+bitstream"
# Error messages kept per read for the report (all are counted).
_KEEP_ERRORS = 3


def _ffmpeg_reason(exc: BaseException) -> str:
    msg = str(exc)
    # PyAV errors repeat the path at the end; keep the reason short and path-free.
    if ": '" in msg:
        msg = msg.split(": '")[0]
    return f"{type(exc).__name__}: {msg}"


class _ErrorLog:
    """The error messages FFmpeg logs in this thread for one stream (its decoder's and its demuxer's)
    while entered. PyAV drops FFmpeg's log unless a level is set and merges a line repeated from
    the previous one (which may belong to another file); both are switched while any read holds a
    log and restored when the last one ends. Under a level the user set, what a read captured that
    is not its own is passed on to Python's logging, where PyAV would have sent it."""

    _lock = threading.Lock()
    _holders = 0
    _saved: tuple = (None, True)  # the user's level and repeat-merging, while reads hold a log

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.logs: list = []

    def __enter__(self) -> "_ErrorLog":
        import av.logging as avlog

        with _ErrorLog._lock:
            if _ErrorLog._holders == 0:
                _ErrorLog._saved = (avlog.get_level(), avlog.get_skip_repeated())
                level = _ErrorLog._saved[0]
                if level is None or level < avlog.ERROR:
                    avlog.set_level(avlog.ERROR)
                avlog.set_skip_repeated(False)
            _ErrorLog._holders += 1
        self._capture = avlog.Capture()
        self.logs = self._capture.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        import logging

        import av.logging as avlog

        self._capture.__exit__(*exc)
        with _ErrorLog._lock:
            _ErrorLog._holders -= 1
            user_level, skip = _ErrorLog._saved
            if _ErrorLog._holders == 0:
                avlog.set_skip_repeated(skip)
                if user_level is None or user_level < avlog.ERROR:
                    avlog.set_level(user_level)
        if user_level is not None:
            for level, name, msg in self.logs:
                if level <= user_level and not (level <= avlog.ERROR and name in self.names):
                    logging.getLogger(f"libav.{name or 'generic'}").log(avlog.adapt_level(level), msg.strip())

    def errors(self) -> list[str]:
        """``'message' (context)`` for each error-level line of this stream, in order."""
        import av.logging as avlog

        return [f"'{msg.strip()}' ({name})" for level, name, msg in self.logs if level <= avlog.ERROR and name in self.names]


class _NoLog:
    """The error log of a reader that does not look for damage: nothing is captured."""

    def __enter__(self) -> "_NoLog":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def errors(self) -> list[str]:
        return []


_NO_LOG = _NoLog()


class _RGBWriter:
    """Writes decoded frames, converted to RGB at full size, into ``out (n_out, H, W, 3)``."""

    def __init__(self, reader: PyAVReader, n_out: int) -> None:
        self.reader = reader
        self.n_out = int(n_out)
        self.out: np.ndarray | None = None

    def write(self, frame, positions: np.ndarray) -> None:
        rgb = self.reader._to_rgb(frame)
        if self.out is None:
            self.out = np.empty((self.n_out, *rgb.shape), dtype=np.uint8)
        elif rgb.shape != self.out.shape[1:]:
            raise VideoError(
                self.reader.path, f"frame size changes mid-stream ({self.out.shape[1:3]} -> {rgb.shape[:2]})"
            )
        self.out[positions] = rgb

    def result(self) -> np.ndarray:
        return self.out

    def fill_missing(self, targets: list[np.ndarray], done: list[bool]) -> None:
        """The slots of each frame never produced get the nearest decoded frame in presentation order."""
        filled = [i for i, d in enumerate(done) if d]
        for i, d in enumerate(done):
            if not d:
                j = min(filled, key=lambda f: abs(f - i))
                self.out[targets[i]] = self.out[targets[j][0]]


class PyAVReader(VideoReader):
    """:class:`VideoReader` on PyAV.

    Args:
        path: the video file.
        threads: decoder threads. The default, 1, is right for DataLoader workers (one process per
            core); 0 lets FFmpeg choose.
        thread_type: FFmpeg threading, ``"SLICE"``, ``"FRAME"`` or ``"AUTO"``. Frame threading adds
            latency per seek, so slice threading is the default.
        detect_damage: look for damage the decoder conceals in every frame decoded (``damage``
            after each request): FFmpeg's corrupt-frame flag, frames of the index it never produced,
            its error messages for the stream, and the extra checks of :data:`ERR_DETECT`.
            ``False`` leaves FFmpeg's defaults and ``damage`` at ``None`` (for measuring its cost).
    """

    def __init__(
        self, path: str | os.PathLike, threads: int = 1, thread_type: str = "SLICE", detect_damage: bool = True
    ) -> None:
        p = Path(path)
        _check_file(p)
        self.path = str(p)
        self.threads = int(threads)
        self.thread_type = thread_type
        self.detect_damage = bool(detect_damage)
        self.detects_damage = self.detect_damage
        self.damage: Damage | None = None
        self._container = None
        self._stream = None
        self._pid: int | None = None
        self._reformatter = None
        self._rotation: int | None = None
        self._key: tuple = ()
        self._index = self._load_index()
        if len(self._index.pts) == 0:
            raise VideoError(self.path, "video stream has no frames")
        self._meta: VideoMetadata | None = None
        # Frames PyAV's decoder produced for the last request, seeks included: what a clip cost.
        self.frames_decoded = 0

    # -- opening ---------------------------------------------------------------------------------
    def _open(self):
        import av

        try:
            container = av.open(self.path, metadata_errors="ignore")
        except Exception as exc:  # FFmpegError, UnicodeDecodeError, OSError ...
            raise VideoError(self.path, f"cannot open: {_ffmpeg_reason(exc)}") from exc
        if not container.streams.video:
            container.close()
            raise VideoError(self.path, "no video stream (not a video file?)")
        if container.streams.video[0].codec_context is None:  # a stream whose codec FFmpeg cannot name
            container.close()
            raise VideoError(self.path, "video stream has no decoder (unknown or unsupported codec)")
        return container

    def _ensure_open(self):
        """The container of this process; re-opened after a fork (pid check)."""
        pid = os.getpid()
        if self._container is None or self._pid != pid:
            # A container inherited from the parent process is dropped, never used or closed here.
            self._container = self._open()
            self._stream = self._container.streams.video[0]
            cc = self._stream.codec_context
            cc.thread_count = self.threads
            cc.thread_type = self.thread_type
            if self.detect_damage and ERR_DETECT:
                cc.options = {**cc.options, "err_detect": ERR_DETECT}  # read when the decoder opens, at the first packet
            try:
                from av.stream import Discard

                discard_all = Discard.all
            except ImportError:  # PyAV < 14 takes the name
                discard_all = "all"
            for s in self._container.streams:
                if s is not self._stream:
                    s.discard = discard_all  # audio and other streams are skipped
            self._pid = pid
            from av.video.reformatter import VideoReformatter

            self._reformatter = VideoReformatter()
        return self._container, self._stream

    def _load_index(self) -> _Index:
        st = os.stat(self.path)
        key = (self.path, st.st_mtime_ns, st.st_size)
        self._key = key
        self._rotation = _ROTATION_CACHE.get(key)
        with _INDEX_LOCK:
            hit = _INDEX_CACHE.get(key)
            if hit is not None:
                _INDEX_CACHE.move_to_end(key)
                return hit
        index = self._build_index()
        with _INDEX_LOCK:
            _INDEX_CACHE[key] = index
            while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
                _INDEX_CACHE.popitem(last=False)
        return index

    def _build_index(self) -> _Index:
        container = self._open()
        try:
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            tb = stream.time_base
            time_base = Fraction(tb.numerator, tb.denominator) if tb else Fraction(1, 1)
            # One-byte packets are DivX/Xvid placeholders that the MPEG-4 Part 2 decoder skips.
            min_size = 2 if codec == "mpeg4" else 1
            pts, key = [], []
            key_vops: dict[int, int] = {}  # keyframe PTS -> VOPs in its packet (MPEG-4 Part 2)
            packed = False
            try:
                for packet in container.demux(stream):
                    if packet.size < min_size:
                        continue
                    vops = 0  # VOPs in the packet, counted while detecting packing and for keyframes
                    if codec == "mpeg4" and (not packed or packet.is_keyframe):
                        vops = bytes(packet).count(_MPEG4_VOP_START)
                        packed = packed or vops >= 2
                    t = packet.pts if packet.pts is not None else packet.dts
                    if t is None:
                        continue
                    pts.append(t)
                    if packet.is_keyframe:
                        key.append(t)
                        if codec == "mpeg4":
                            key_vops[t] = vops
            except Exception as exc:
                raise VideoError(self.path, f"cannot demux: {_ffmpeg_reason(exc)}") from exc
            pts_arr = np.unique(np.asarray(pts, dtype=np.int64))
            key_arr = np.unique(np.asarray(key, dtype=np.int64))
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if rate:
                fps = Fraction(rate.numerator, rate.denominator)
            elif len(pts_arr) > 1:
                fps = Fraction(len(pts_arr) - 1) / ((int(pts_arr[-1]) - int(pts_arr[0])) * time_base)
            else:
                fps = Fraction(30)
            key_pos = None
            if packed:
                # Frames shown before a keyframe: one per indexed packet before it (each packed pair is
                # followed by its placeholder packet), plus the B-VOPs packed behind its I-VOP.
                vops = np.asarray([key_vops.get(int(k), 1) for k in key_arr], dtype=np.int64)
                key_pos = np.searchsorted(pts_arr, key_arr) + np.maximum(vops - 1, 0)
            cc = stream.codec_context
            return _Index(
                pts_arr, key_arr, time_base, fps, codec, int(cc.width), int(cc.height),
                output_order=packed, key_pos=key_pos,
            )  # fmt: skip
        finally:
            container.close()

    # -- metadata --------------------------------------------------------------------------------
    @property
    def rotation(self) -> int:
        """Clockwise display rotation in degrees, read from the first frame's display matrix."""
        if self._rotation is None:
            container, stream = self._ensure_open()
            rot = 0
            try:
                container.seek(int(self._index.pts[0]), stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    # PyAV reports the display matrix angle counter-clockwise; display needs its negation.
                    rot = int(round(-float(getattr(frame, "rotation", 0) or 0))) % 360
                    break
            except Exception as exc:
                raise VideoError(self.path, f"cannot decode first frame: {_ffmpeg_reason(exc)}") from exc
            self._set_rotation(rot)
        return self._rotation

    def _set_rotation(self, rot: int) -> None:
        if rot % 90:
            rot = 0  # arbitrary angles are not supported; show the coded frame
        self._rotation = rot
        if len(_ROTATION_CACHE) > _INDEX_CACHE_SIZE:
            _ROTATION_CACHE.clear()
        _ROTATION_CACHE[self._key] = rot

    @property
    def metadata(self) -> VideoMetadata:
        if self._meta is None:
            ix = self._index
            rot = self.rotation
            w, h = (ix.coded_height, ix.coded_width) if rot in (90, 270) else (ix.coded_width, ix.coded_height)
            rel_last = (int(ix.pts[-1]) - int(ix.pts[0])) * ix.time_base
            self._meta = VideoMetadata(
                path=self.path,
                num_frames=int(len(ix.pts)),
                fps=ix.fps,
                duration=rel_last + 1 / ix.fps,
                width=w,
                height=h,
                rotation=rot,
                codec=ix.codec,
            )
        return self._meta

    @property
    def num_frames(self) -> int:
        return int(len(self._index.pts))

    @property
    def fps(self) -> Fraction:
        return self._index.fps

    @property
    def duration(self) -> Fraction:
        ix = self._index
        return (int(ix.pts[-1]) - int(ix.pts[0])) * ix.time_base + 1 / ix.fps

    @property
    def timestamps(self) -> list[Fraction]:
        ix = self._index
        p0 = int(ix.pts[0])
        return [(int(p) - p0) * ix.time_base for p in ix.pts]

    def indices_in(self, start: Fraction | float, end: Fraction | float) -> np.ndarray:
        ix = self._index
        rel = ix.pts - ix.pts[0]
        # t_i >= start  <=>  rel_i >= start / tb  <=>  rel_i >= ceil(start / tb)  (rel_i integer);
        # t_i <  end    <=>  rel_i <  ceil(end / tb).
        lo = math.ceil(Fraction(start) / ix.time_base)
        hi = math.ceil(Fraction(end) / ix.time_base)
        a = int(np.searchsorted(rel, lo, side="left"))
        b = int(np.searchsorted(rel, hi, side="left"))
        return np.arange(a, max(a, b), dtype=np.int64)

    # -- decoding --------------------------------------------------------------------------------
    def _to_rgb(self, frame) -> np.ndarray:
        # One reformatter per reader; threads=1 keeps the converter from spawning a pool per call.
        try:
            return self._reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
        except TypeError:  # PyAV without the threads argument
            return self._reformatter.reformat(frame, format="rgb24").to_ndarray()

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= self.num_frames:
            return super().get_frames(idx)  # empty result or IndexError
        unique, inverse = np.unique(idx, return_inverse=True)
        return self._decode_into(unique, inverse.reshape(-1))

    def _decode(self, unique_sorted: np.ndarray) -> np.ndarray:
        return self._decode_into(unique_sorted, np.arange(len(unique_sorted)))

    def _decode_into(self, unique_sorted: np.ndarray, inverse: np.ndarray) -> np.ndarray:
        """Decode the frames ``unique_sorted`` once and write each to every output slot that wants it
        (``out[j] = frame[unique_sorted[inverse[j]]]``): one RGB conversion and one copy per frame."""
        out = self._decode_with(unique_sorted, inverse, lambda: _RGBWriter(self, len(inverse))).result()
        return _rotate(out, self.rotation)

    def get_resized_clips(
        self,
        clips: Sequence[np.ndarray],
        crops: Sequence[ResizedCrop] | Callable[[int, int], Sequence[ResizedCrop]],
    ) -> list[np.ndarray]:
        """Decode the union of ``clips`` (frame indices each) once, cropping and resizing every frame
        while it is decoded (:mod:`tubelet.data.decoding.crop`); one uint8 ``(3, T, h, w)`` per clip.

        ``crops``: one :class:`ResizedCrop` per clip in displayed pixels, or ``f(height, width) ->
        crops`` called with the displayed size once the first frame is decoded.
        """
        idx = [np.asarray(c, dtype=np.int64).reshape(-1) for c in clips]
        if not idx or any(c.size == 0 for c in idx):
            return super().get_resized_clips(clips, crops)  # the error for empty clips
        allidx = np.concatenate(idx)
        if allidx.min() < 0 or allidx.max() >= self.num_frames:
            return super().get_resized_clips(clips, crops)  # IndexError
        unique, inverse = np.unique(allidx, return_inverse=True)
        clip_of = np.repeat(np.arange(len(idx)), [len(c) for c in idx])
        if callable(crops):  # drawn once: a retry from the file start must crop the same boxes
            crops = functools.lru_cache(maxsize=1)(crops)
        return self._decode_with(
            unique, inverse.reshape(-1), lambda: CropWriter(len(allidx), clip_of, crops, lambda: self.rotation)
        ).result()

    def _decode_with(self, unique_sorted: np.ndarray, inverse: np.ndarray, make_writer):
        """Seek and decode the frames ``unique_sorted``, handing each to a fresh writer from
        ``make_writer()`` with the output slots that want it; that writer, filled."""
        ix = self._index
        wanted_pts = ix.pts[unique_sorted]
        first = int(wanted_pts[0])
        # Last keyframe at or before the first wanted frame; the file start when there is none.
        k = int(np.searchsorted(ix.key_pts, first, side="right")) - 1
        seek_pts = int(ix.key_pts[k]) if k >= 0 else int(ix.pts[0])
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(unique_sorted) + 1))
        targets = [order[bounds[i] : bounds[i + 1]] for i in range(len(unique_sorted))]
        out = None
        self.frames_decoded = 0
        self.damage = None
        if ix.output_order:  # packed: the last keyframe shown at or before the first wanted frame
            j = int(np.searchsorted(ix.key_pos, unique_sorted[0], side="right")) - 1
            if j > 0:
                out = self._decode_from(
                    int(ix.key_pts[j]), wanted_pts, targets, make_writer(), start_pos=int(ix.key_pos[j])
                )
        else:
            out = self._decode_from(seek_pts, wanted_pts, targets, make_writer())
        if out is None:  # the first keyframe, or landed after the first wanted frame: decode from the start
            out = self._decode_from(int(ix.pts[0]), wanted_pts, targets, make_writer(), from_start=True)
        return out

    def _decode_from(
        self,
        seek_pts: int,
        wanted_pts: np.ndarray,
        targets: list[np.ndarray],
        writer,
        from_start: bool = False,
        start_pos: int = 0,
    ):
        """Seek to the keyframe at ``seek_pts`` (or the file start) and decode forward until every
        wanted frame is seen, handing each to ``writer`` (``_RGBWriter`` or ``CropWriter``); the
        writer, or ``None`` when the seek cannot give them (then the caller decodes from the start).
        In packed streams the keyframe sits at display position ``start_pos``, and frames are named
        by their place in the decoder's output counted from it."""
        container, stream = self._ensure_open()
        wanted = {int(p): i for i, p in enumerate(wanted_pts)}
        last_wanted = int(wanted_pts[-1])
        done = [False] * len(wanted_pts)
        remaining = len(wanted)
        # Frames that decode past the last wanted PTS before we give up on a missing one; packed
        # B-frames and B-pyramids reorder within a few frames.
        slack = 16
        decoded = 0
        got_any = False
        ix = self._index
        base = 1 if from_start else None  # output count at the frame named start_pos (packed streams)
        detect = self.detect_damage
        flagged: list[int] = []  # PTS (index time) of the frames FFmpeg flagged as concealed
        # Leading pictures of an open GOP are shown before the keyframe sought and predicted from frames
        # before it that a seek never decodes. FFmpeg's H.264 decoder drops them; a decoder that outputs
        # them conceals what it lacks, which is no damage of the file (and never a wanted frame here).
        lead_pts = -(2**62) if from_start else seek_pts
        log = self._error_log() if detect else _NO_LOG
        log.__enter__()  # left in the finally clause below
        try:
            container.seek(0 if from_start else seek_pts, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                decoded += 1
                pts = frame.pts if frame.pts is not None else frame.dts
                if ix.output_order:
                    if base is None:
                        # After a seek, the B-frames packed with the keyframe lack the frames they refer
                        # back to; count from the keyframe itself, and only if it is the one sought.
                        if not frame.key_frame:
                            continue
                        if pts != seek_pts:
                            return None
                        base = decoded
                    pos = start_pos + decoded - base  # the k-th frame out after frame start_pos
                    # a frame beyond the index gets a stamp past its end (the slack check below)
                    pts = int(ix.pts[pos]) if pos < len(ix.pts) else int(ix.pts[-1]) + 1 + pos - len(ix.pts)
                if pts is None:
                    continue
                if detect and frame.is_corrupt and pts >= lead_pts:
                    flagged.append(int(pts))
                if not got_any:
                    got_any = True
                    if self._rotation is None:  # read from the display matrix of the first decoded frame
                        self._set_rotation(int(round(-float(getattr(frame, "rotation", 0) or 0))) % 360)
                    if pts > int(wanted_pts[0]) and not from_start and seek_pts > 0:
                        return None
                slot = wanted.get(int(pts))
                if slot is not None and not done[slot]:
                    writer.write(frame, targets[slot])
                    done[slot] = True
                    remaining -= 1
                    if remaining == 0:
                        break
                elif pts > last_wanted:
                    slack -= 1
                    if slack <= 0:
                        break
        except (VideoError, CropError):
            raise
        except Exception as exc:
            raise VideoError(
                self.path,
                f"corrupt data while decoding (after {decoded} frames from pts {seek_pts}): {_ffmpeg_reason(exc)}",
            ) from exc
        finally:
            log.__exit__(None, None, None)
            self.frames_decoded += decoded
        missing_pts: list[int] = []
        if remaining:
            missing_pts = [int(p) for p, i in wanted.items() if not done[i]]
            if writer.out is None:
                raise VideoError(self.path, f"no frame decoded for pts {missing_pts[:5]} (truncated or corrupt stream)")
            # A frame listed in the index that the decoder never produced: its slots get the nearest
            # decoded neighbour in presentation order, and the read reports it as damage.
            writer.fill_missing(targets, done)
        if detect:
            self.damage = self._damage(flagged, missing_pts, log.errors())
        return writer

    def _error_log(self) -> _ErrorLog:
        """The error log of this stream: its decoder's messages and its demuxer's."""
        return _ErrorLog((self._index.codec, self._container.format.name))

    def _damage(self, flagged_pts: list[int], missing_pts: list[int], errors: list[str]) -> Damage | None:
        """The read's :class:`Damage` from the PTS of its flagged and missing frames (``None``: none)."""
        if not (flagged_pts or missing_pts or errors):
            return None
        ix = self._index

        def frames(pts: list[int]) -> tuple[int, ...]:
            at = np.searchsorted(ix.pts, np.asarray(pts, dtype=np.int64))
            return tuple(int(i) for i in np.unique(np.minimum(at, len(ix.pts) - 1)))

        return Damage(frames(flagged_pts), frames(missing_pts), tuple(errors[:_KEEP_ERRORS]), len(errors))

    def decode_all(self) -> tuple[int, list[Fraction]]:
        """Decode the whole stream once (probing): number of frames decoded and their sorted times.

        Raises :class:`VideoError` on corrupt data, which a range decode would only hit when it
        reaches the bad packets.
        """
        container, stream = self._ensure_open()
        pts = []
        self.damage = None
        detect = self.detect_damage
        flagged: list[tuple[int, int | None]] = []  # (output position, PTS) of the flagged frames
        outputs = 0
        log = self._error_log() if detect else _NO_LOG
        log.__enter__()  # left in the finally clause below
        try:
            container.seek(0, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if detect and frame.is_corrupt:
                    flagged.append((outputs, frame.pts))
                outputs += 1
                if frame.pts is not None:
                    pts.append(int(frame.pts))
        except Exception as exc:
            raise VideoError(
                self.path, f"corrupt data while decoding (after {len(pts)} frames): {_ffmpeg_reason(exc)}"
            ) from exc
        finally:
            log.__exit__(None, None, None)
        if not pts:
            raise VideoError(self.path, "no frame could be decoded")
        ix = self._index
        if detect:
            if ix.output_order:  # frames are named by their place in the decoder's output
                at = np.asarray([i for i, _ in flagged], dtype=np.int64)
                flagged_pts = ix.pts[np.minimum(at, len(ix.pts) - 1)].tolist()
                missing_pts = ix.pts[outputs:].tolist()
            else:
                flagged_pts = [int(p) for _, p in flagged if p is not None]
                missing_pts = ix.pts[~np.isin(ix.pts, np.asarray(pts, dtype=np.int64))].tolist()
            self.damage = self._damage(flagged_pts, missing_pts, log.errors())
        pts.sort()
        tb = ix.time_base
        return len(pts), [(p - pts[0]) * tb for p in pts]

    def close(self) -> None:
        if self._container is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):  # closing a broken container must not mask the real error
                self._container.close()
        self._container = None
        self._stream = None
        self._reformatter = None

    def __getstate__(self) -> dict:
        # Readers may be pickled into worker processes; the container never travels.
        state = self.__dict__.copy()
        state["_container"] = None
        state["_stream"] = None
        state["_reformatter"] = None
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: av may already be gone
            self.close()
