"""Random resized crops taken while decoding: crop, resize and flip each decoded frame with FFmpeg's
scaler before it is ever converted to RGB at full size.

A training clip needs a 224x224 crop of each frame, but the plain path converts the whole frame to
RGB, hands it to torch, resizes the crop and turns the channels-last result into a planar clip:
three passes over pixels that the crop mostly throws away. Here each decoded frame is cropped in
its own planar YUV layout (a copy of the box's rows, chroma at its subsampled offset), resized in
YUV by swscale's bilinear filter (antialiased when it shrinks: the filter widens with the scale
factor), converted to planar RGB at the output size and written straight into the ``(C, T, H, W)``
clip, mirrored when the clip is flipped. The same idea as FFCV's decode-and-crop for JPEGs.

The crop box is the one :class:`~tubelet.data.transforms.RandomResizedCrop` draws, in displayed
pixels; rotated videos are cropped in coded orientation and the small output is rotated. 8-bit
planar and packed RGB frames are cropped and resized as they are; other formats (10-bit, NV12,
gray ...) are converted to RGB at full size first, as the plain path does. The result matches the
tensor path's crop-and-resize up to the resampler: 0-1.8 grey levels on average
(tests/test_decode_crop.py measures it on every real clip).
"""

from __future__ import annotations

import functools
import itertools
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["CropError", "CropWriter", "ResizedCrop", "planar_rgb_ok"]


class CropError(ValueError):
    """A crop that does not fit its frame, or crops that do not fit together."""


@dataclass(frozen=True)
class ResizedCrop:
    """The box ``rows [top, top + height) x cols [left, left + width)`` of a displayed frame, resized
    to ``size = (out_height, out_width)`` and mirrored left-right when ``flip``."""

    top: int
    left: int
    height: int
    width: int
    size: tuple[int, int]
    flip: bool = False

    def check(self, frame_height: int, frame_width: int) -> None:
        if self.height < 1 or self.width < 1 or self.size[0] < 1 or self.size[1] < 1:
            raise CropError(f"empty crop or output size: {self}")
        if self.top < 0 or self.left < 0 or self.top + self.height > frame_height or self.left + self.width > frame_width:
            raise CropError(f"crop {self} does not fit a {frame_height}x{frame_width} frame")


# Formats cropped in place: chroma subsampling as (x, y) shifts. 8-bit planar YUV is resized in YUV
# and converted to RGB at the output size; planar and packed 8-bit RGB are resized as they are.
# Anything else (10-bit, NV12, gray, bgr0 ...) is first converted to rgb24 at full size, exactly as
# the plain RGB path converts it.
_PLANAR_SHIFTS = {
    "yuv420p": (1, 1),
    "yuvj420p": (1, 1),
    "yuv422p": (1, 0),
    "yuvj422p": (1, 0),
    "yuv444p": (0, 0),
    "yuvj444p": (0, 0),
    "gbrp": (0, 0),
    "rgb24": (0, 0),
}


@functools.lru_cache(maxsize=256)
def planar_rgb_ok(fmt: str, width: int) -> bool:
    """Whether swscale converts ``fmt`` to planar RGB (gbrp) correctly at this width, checked once
    per process against its packed RGB (rgb24) conversion on a random frame.

    FFmpeg 8.1's yuv420p/yuv422p -> gbrp converter leaves columns 16k+1 .. 16k+8 of the last block
    unwritten when ``width % 16`` is 2-8 (18-24, 34-40, ... pixels wide; 224 is fine). Where the check
    fails, the slower rgb24 conversion and a strided copy are used instead.
    """
    from av.video.frame import VideoFrame
    from av.video.reformatter import VideoReformatter

    # Two different frames: columns the converter leaves unwritten hold whatever the pooled output buffer
    # held before, which can be a correct conversion of the same content (an earlier check); they cannot
    # be right for both frames.
    for seed in (0, 1):
        frame = VideoFrame(width, 4, fmt)
        rng = np.random.default_rng(seed)
        for p in frame.planes:
            _plane(p)[...] = rng.integers(16, 236, (p.height, p.line_size), dtype=np.uint8)
        packed = VideoReformatter().reformat(frame, format="rgb24", threads=1).to_ndarray()
        planar = VideoReformatter().reformat(frame, format="gbrp", threads=1)
        g, b, r = (_plane(p)[:, :width] for p in planar.planes)
        if np.abs(np.stack([r, g, b], -1).astype(np.int16) - packed).max() > 1:
            return False
    return True


_LOCAL = threading.local()


def _converter():
    """This thread's YUV -> RGB converter at the output size: every clip of a run converts the same
    size, so its swscale context is built once instead of once per clip."""
    conv = getattr(_LOCAL, "converter", None)
    if conv is None:
        from av.video.reformatter import VideoReformatter

        conv = _LOCAL.converter = VideoReformatter()
    return conv


def _plane(p) -> np.ndarray:
    """A frame plane as a writable ``(height, line_size)`` uint8 view (padding columns included)."""
    return np.frombuffer(p, dtype=np.uint8).reshape(p.height, p.line_size)


def _coded_box(c: ResizedCrop, rotation: int, coded_h: int, coded_w: int) -> tuple[int, int, int, int, int, int]:
    """The crop in coded (unrotated) pixels: ``(top, left, height, width, out_h, out_w)``.

    The display is the coded frame turned clockwise by ``rotation`` (``np.rot90(k=-rotation/90)``):
    at 90 degrees display pixel ``(y, x)`` is coded ``(H - 1 - x, y)``, at 180 ``(H - 1 - y, W - 1 - x)``
    and at 270 ``(x, W - 1 - y)``.
    """
    oh, ow = c.size
    if rotation == 90:
        return coded_h - c.left - c.width, c.top, c.width, c.height, ow, oh
    if rotation == 180:
        return coded_h - c.top - c.height, coded_w - c.left - c.width, c.height, c.width, oh, ow
    if rotation == 270:
        return c.left, coded_w - c.top - c.height, c.width, c.height, ow, oh
    return c.top, c.left, c.height, c.width, oh, ow


class _ClipState:
    """Per clip: its coded box, a reusable cropped frame and its own scaler (swscale contexts are
    cached per source size, and each clip has its own)."""

    def __init__(self, crop: ResizedCrop, box: tuple[int, int, int, int, int, int]) -> None:
        from av.video.reformatter import VideoReformatter

        self.crop = crop
        self.box = box
        self.scaler = VideoReformatter()
        self.fmt: str | None = None
        self.frame = None
        # per plane: (destination view, source rows, source cols)
        self.copies: list[tuple[np.ndarray, slice, slice]] = []

    def cropped(self, fmt: str, shifts: tuple[int, int]):
        """The clip's reusable cropped frame in format ``fmt`` and the plane copies that fill it."""
        if fmt != self.fmt:
            from av.video.frame import VideoFrame

            top, left, h, w, _, _ = self.box
            self.frame = VideoFrame(w, h, fmt)
            self.copies = []
            bpp = 3 if fmt == "rgb24" else 1  # bytes per pixel of each plane
            for i, p in enumerate(self.frame.planes):
                sx, sy = shifts if i > 0 else (0, 0)
                # The luma box is exact; chroma starts at the subsampled offset (a quarter-pixel shift
                # of the chroma for odd offsets, below what the eye or a network sees).
                t0, l0 = top >> sy, left >> sx
                ph, pw = -(-h >> sy), -(-w >> sx) * bpp
                dst = _plane(p)[:ph, :pw]
                self.copies.append((dst, slice(t0, t0 + ph), slice(l0 * bpp, l0 * bpp + pw)))
            self.fmt = fmt
        return self.frame, self.copies


class CropWriter:
    """Writes decoded frames, cropped and resized, into planar clips.

    Args:
        n_out: output slots (the frames of all clips, concatenated).
        clip_of: ``(n_out,)`` the clip each slot belongs to.
        crops: one :class:`ResizedCrop` per clip, or ``f(display_height, display_width) -> crops``,
            called at the first frame (when the display size is known); all outputs share one size.
        rotation: ``f() -> degrees`` clockwise display rotation, asked at the first frame.

    ``out`` is ``(3, n_out, out_h, out_w)`` uint8 once a frame was written, else ``None``;
    :meth:`result` cuts it into the clips, flipped ones mirrored.
    """

    def __init__(
        self,
        n_out: int,
        clip_of: np.ndarray,
        crops: Sequence[ResizedCrop] | Callable[[int, int], Sequence[ResizedCrop]],
        rotation: Callable[[], int],
    ) -> None:
        from av.video.reformatter import VideoReformatter

        self.n_out = int(n_out)
        self.clip_of = np.asarray(clip_of, dtype=np.int64)
        self._crops = crops
        self._rotation = rotation
        self._states: list[_ClipState] | None = None
        self._rot = 0
        self._coded: tuple[int, int] = (0, 0)
        self._to_rgb = _converter()  # planar YUV -> planar RGB at the output size
        self._full_rgb = VideoReformatter()  # other formats -> packed RGB at full size
        self.out: np.ndarray | None = None
        self._written = np.zeros(self.n_out, dtype=bool)

    def _setup(self, frame) -> None:
        self._rot = int(self._rotation())
        ch, cw = frame.height, frame.width
        dh, dw = (cw, ch) if self._rot in (90, 270) else (ch, cw)
        crops = self._crops(dh, dw) if callable(self._crops) else self._crops
        crops = list(crops)
        n_clips = int(self.clip_of.max()) + 1 if self.clip_of.size else 0
        if len(crops) != n_clips:
            raise CropError(f"{len(crops)} crops for {n_clips} clips")
        if len({c.size for c in crops}) > 1:
            raise CropError(f"all clips of one decode must share an output size, got {sorted({c.size for c in crops})}")
        for c in crops:
            c.check(dh, dw)
        self._states = [_ClipState(c, _coded_box(c, self._rot, ch, cw)) for c in crops]
        self._coded = (ch, cw)
        oh, ow = crops[0].size
        self.out = np.empty((3, self.n_out, oh, ow), dtype=np.uint8)

    def _resample(self, frame, st: _ClipState) -> list[np.ndarray]:
        """The clip's crop of ``frame`` as R, G, B planes ``(out_h, out_w)`` in display orientation."""
        fmt = frame.format.name
        shifts = _PLANAR_SHIFTS.get(fmt)
        if shifts is None:
            frame = self._full_rgb.reformat(frame, format="rgb24", threads=1)
            fmt, shifts = "rgb24", (0, 0)
        cropped, copies = st.cropped(fmt, shifts)
        for p, (dst, rows, cols) in zip(frame.planes, copies):
            dst[...] = _plane(p)[rows, cols]
        # Resize in the source's own format (cheap 8-bit planar scaling), then convert the small frame.
        oh, ow = st.box[4:]
        scaled = st.scaler.reformat(cropped, width=ow, height=oh, interpolation="BILINEAR", threads=1)
        rgb_fmt = fmt if fmt in ("gbrp", "rgb24") else "gbrp" if planar_rgb_ok(fmt, ow) else "rgb24"
        if rgb_fmt != fmt:
            scaled = self._to_rgb.reformat(
                scaled, format=rgb_fmt, src_colorspace=frame.colorspace or None,
                src_color_range=frame.color_range or None, threads=1,
            )  # fmt: skip
        if rgb_fmt == "rgb24":
            packed = _plane(scaled.planes[0])[:, : 3 * ow].reshape(oh, ow, 3)
            planes = [packed[:, :, 0], packed[:, :, 1], packed[:, :, 2]]
        else:
            g, b, r = [_plane(p)[:oh, :ow] for p in scaled.planes]  # gbrp's plane order
            planes = [r, g, b]
        if self._rot:
            planes = [np.rot90(p, k=-(self._rot // 90)) for p in planes]
        return planes  # mirrored later, per clip: a reversed-stride numpy copy per plane is 4x slower

    def write(self, frame, positions: np.ndarray) -> None:
        """Write ``frame`` to the output slots ``positions`` (each in its own clip's crop)."""
        if self._states is None:
            self._setup(frame)
        elif (frame.height, frame.width) != self._coded:
            # a plain ValueError: the reader reports it as a bad file, like the RGB path does
            raise ValueError(f"frame size changes mid-stream ({self._coded} -> {(frame.height, frame.width)})")
        out = self.out
        if len(positions) == 1:  # the common case: one clip wants this frame once
            pos = int(positions[0])
            r, g, b = self._resample(frame, self._states[int(self.clip_of[pos])])
            out[0, pos], out[1, pos], out[2, pos] = r, g, b
            self._written[pos] = True
            return
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        clips = self.clip_of[positions]
        for j in np.unique(clips):  # the clips wanting this frame: a few, not a loop over pixels
            planes = self._resample(frame, self._states[int(j)])
            for pos in positions[clips == j]:
                for c in range(3):
                    out[c, pos] = planes[c]
        self._written[positions] = True

    def result(self) -> list[np.ndarray]:
        """One ``(3, T, out_h, out_w)`` uint8 array per clip (a view of ``out``), flipped clips
        mirrored left-right by torch's flip kernel into a new array."""
        import torch

        bounds = np.flatnonzero(np.diff(self.clip_of, prepend=-1, append=-1))  # a clip's slots are consecutive
        clips = []
        for j, (a, b) in enumerate(itertools.pairwise(bounds)):
            clip = self.out[:, a:b]
            if self._states[j].crop.flip:
                clip = torch.from_numpy(clip).flip(-1).numpy()
            clips.append(clip)
        return clips

    def fill_missing(self, targets: list[np.ndarray] | None = None, done: list[bool] | None = None) -> None:
        """Give each slot the decoder never produced a frame for the nearest written slot of its own
        clip (the same crop), or of any clip when its clip has none. (``targets`` and ``done``, which
        the RGB writer needs, are not: this writer tracks the slots it wrote.)"""
        written = np.flatnonzero(self._written)
        for pos in np.flatnonzero(~self._written):
            same = written[self.clip_of[written] == self.clip_of[pos]]
            pool = same if same.size else written
            self.out[:, pos] = self.out[:, pool[np.argmin(np.abs(pool - pos))]]
        self._written[:] = True
