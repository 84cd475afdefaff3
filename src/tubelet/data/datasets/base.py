"""The clip dataset shared by every source (video files, frame folders, images).

A sample is drawn from ``(seed, epoch, index)`` only (:func:`tubelet.data.sampling.sample_rng`), so
it does not depend on the worker, the process or the order of access; call :meth:`set_epoch` each
epoch. Train split: one random clip per video, or ``r = repeated_sampling`` clips cut from one
decode of their union window, each with its own augmentation. Val/test split: ``V = test_clips x
test_crops`` views stacked as ``(V, C, T, H, W)`` (view ``v = clip * test_crops + crop``) with a
scalar label.

Bad files: a sample that raises :class:`~tubelet.errors.VideoError` becomes a
:class:`~tubelet.data.mixing.BadSample`; :class:`~tubelet.data.mixing.ClipCollate` drops it and
reports it in the batch. Failures are counted per distinct file, not per read: a file that failed
once is not decoded again in this process (later reads return its recorded failure), and the budget
``max_failure_fraction`` is a fraction of the dataset's files. The dataset raises
:class:`~tubelet.errors.DataError` with the list of bad files once they exceed it;
:class:`FailureTracker` does the same in the main process from the batches' ``"bad_samples"``
(and tells the training sampler which files not to hand to any worker again).

Damaged files: a read whose frames the decoder concealed damage in (``reader.damage``, PyAV only;
only the frames decoded for that read are examined) follows ``data.on_damaged``: ``skip`` makes it a
bad file as above, with the reason ``damaged: ...``; ``keep`` trains on it and hands the batch its
``(index, path, reason)`` under ``"damaged_samples"``, which :class:`FailureTracker` reports once
per file; ``fail`` raises a one-line :class:`~tubelet.errors.DataError` naming the file (from a
training loader worker, the sample comes back as a bad sample whose reason starts with
:data:`DAMAGED_FAIL`, and :class:`FailureTracker` raises it in the main process, on every rank).
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from tubelet.data.decoding import VideoReader, open_video, to_cthw
from tubelet.data.mixing import BadSample
from tubelet.data.sampling import (
    clip_duration,
    clip_frame_indices,
    expected_frames,
    multiview_clips,
    random_clip,
    rho_clips,
    sample_rng,
    torch_generator,
)
from tubelet.errors import ConfigError, DataError, VideoError

__all__ = ["Sample", "ClipDataset", "FailureTracker", "failure_report", "DAMAGED_FAIL", "damaged_fail_message"]

# Start of the reason of a damaged training sample under data.on_damaged=fail that a loader worker
# hands back as a bad sample, for the main process to stop on (FailureTracker.check).
DAMAGED_FAIL = "damaged (data.on_damaged=fail)"


def damaged_fail_message(path: str, damage: str) -> str:
    """The one-line error of ``data.on_damaged: fail``."""
    return (f"{path}: damaged: {damage}; data.on_damaged=fail stops at the first damaged file "
            "(data.on_damaged=skip leaves such files out, keep trains on them)")


@dataclass(frozen=True)
class Sample:
    """One row: a file (or frame folder), its label, an optional ``[start, end)`` sub-range in
    seconds, an optional caption, and where it came from (``source`` e.g. ``"train.csv:7"``)."""

    path: str
    label: int
    start: Fraction | None = None
    end: Fraction | None = None
    caption: str | None = None
    source: str = ""


def failure_report(failures: list[tuple[int, str, str]], total: int, limit: float) -> str:
    lines = [f"{len(failures)} of {total} samples failed to load (max_failure_fraction={limit}):"]
    lines += [f"  [{i}] {p}: {r}" for i, p, r in failures[:50]]
    if len(failures) > 50:
        lines.append(f"  ... and {len(failures) - 50} more")
    return "\n".join(lines)


class FailureTracker:
    """Counts the ``"bad_samples"`` of collated batches (main process) against a failure budget."""

    def __init__(self, total: int, max_failure_fraction: float = 0.01) -> None:
        self.total = int(total)
        self.max_failure_fraction = float(max_failure_fraction)
        self.failures: dict[str, tuple[int, str, str]] = {}
        # dataset index -> (path, reason) of every failed file: the training sampler marks these
        # indices so that no worker decodes them again (tubelet.engine.datamodule.ResumableSampler)
        self.by_index: dict[int, tuple[str, str]] = {}
        # damaged files trained on (data.on_damaged=keep), by path: each is reported once
        self.damaged: dict[str, tuple[int, str, str]] = {}

    def observe(self, batch: dict) -> None:
        self.add(batch)
        self.check()

    def add(self, batch: dict) -> list[tuple[int, str, str]]:
        """Record a batch's ``"bad_samples"``; return the records of files not seen before."""
        return self.merge(list(batch.get("bad_samples", [])))

    def merge(self, records: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
        """Add records seen elsewhere (other processes), one per file; return those of new files."""
        new = []
        for i, p, r in records:
            key = p or str(i)
            if key not in self.failures:
                self.failures[key] = (int(i), str(p), str(r))
                self.by_index[int(i)] = (str(p), str(r))
                new.append(self.failures[key])
        return new

    def add_damaged(self, batch: dict) -> list[tuple[int, str, str]]:
        """Record a batch's ``"damaged_samples"`` (kept damaged files); return those of files not seen before."""
        new = []
        for i, p, r in batch.get("damaged_samples", []):
            if p not in self.damaged:
                self.damaged[p] = (int(i), str(p), str(r))
                new.append(self.damaged[p])
        return new

    def check(self) -> None:
        """:class:`DataError` naming a damaged file under ``data.on_damaged=fail``, else listing the
        failures once they exceed the budget."""
        for _, p, r in self.failures.values():
            if r.startswith(DAMAGED_FAIL):
                raise DataError(damaged_fail_message(p, r[len(DAMAGED_FAIL) + 2 :]))
        if len(self.failures) > self.max_failure_fraction * self.total:
            raise DataError(failure_report(list(self.failures.values()), self.total, self.max_failure_fraction))

    def write(self, path: str | os.PathLike) -> None:
        """Write ``bad_files.txt``: one ``path<TAB>reason`` line per failed file."""
        from tubelet.core.io import atomic_write_text

        atomic_write_text(Path(path), "".join(f"{p}\t{r}\n" for _, p, r in self.failures.values()))


class ClipDataset(Dataset):
    """Map-style clip dataset over :class:`Sample` rows.

    Args:
        samples: the rows.
        cfg: a ``DataConfig`` (num_frames, sampling_rate, target_fps, repeated_sampling, test_clips,
            test_crops, decoder, decode_threads, clip_max_span, max_failure_fraction).
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: ``f(clip (C,T,H,W) uint8, torch.Generator) -> tensor`` (the clip is a view of the
            decoded ``(T,H,W,C)`` frames, not contiguous); train gives ``(C,T,S,S)``,
            val/test gives ``(crops, C, T, S, S)``. ``None`` keeps uint8 clips (and one view per clip).
        seed: base seed of the per-sample generators.
        opener: ``path -> VideoReader`` (default: :func:`open_video` with ``cfg.decoder``).
        num_classes: size of the label space (for soft labels); ``None`` when unknown.
        flip_labels: ``flip_labels[label]`` is the label of a horizontally flipped training clip, for
            label spaces that know left from right (the synthetic motions: left <-> right, clockwise
            <-> counter-clockwise); ``None``: a flip keeps the label.
        flip_caption: ``flip_caption(caption)`` is the caption of a horizontally flipped training clip
            (``"moves left"`` becomes ``"moves right"``), so that a caption keeps describing its clip;
            ``None``: a flip keeps the caption.

    With ``cfg.single_frame`` each clip shows one of its frames repeated over time (a random one in
    training, the middle one otherwise): the still-image baseline with the video's input shape.
    A reader with a ``caption`` attribute (a rendered clip) captions samples whose row has none.
    """

    def __init__(
        self,
        samples: list[Sample],
        cfg,
        split: str,
        transform: Callable | None = None,
        seed: int = 0,
        opener: Callable[[str], VideoReader] | None = None,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        flip_labels: list[int] | None = None,
        flip_caption: Callable[[str], str] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.cfg = cfg
        self.split = split
        self.train = split == "train"
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.num_frames = int(cfg.num_frames)
        self.clip_dur = clip_duration(cfg.num_frames, cfg.sampling_rate, cfg.target_fps)
        self.repeats = max(1, int(cfg.repeated_sampling)) if self.train else 1
        self.views_t = 1 if self.train else max(1, int(cfg.test_clips))
        self.max_failure_fraction = float(cfg.max_failure_fraction)
        # crop, resize and flip training clips while decoding (data/decoding/crop.py)
        self.decode_crop = bool(getattr(cfg, "decode_crop", True))
        self.num_classes = num_classes
        self.class_names = class_names
        threads = int(getattr(cfg, "decode_threads", 1))
        self.on_damaged = str(getattr(cfg, "on_damaged", "skip"))
        backend = _damage_backend(str(cfg.decoder), self.on_damaged) if opener is None else str(cfg.decoder)
        # functools.partial, not a lambda: the dataset must pickle for spawn-started workers.
        self.opener = opener or functools.partial(open_video, backend=backend, threads=threads)
        self.failures: dict[str, tuple[int, str, str]] = {}  # by path: one record per bad file
        self.single_frame = bool(getattr(cfg, "single_frame", False))
        self.flip_labels = None if flip_labels is None else torch.as_tensor(flip_labels, dtype=torch.int64)
        self.flip_caption = flip_caption
        flips = self.train and any(getattr(t, "is_flip", False) for t in getattr(transform, "transforms", []))
        mirrors = self.flip_labels is not None or flip_caption is not None
        if mirrors and flips and not (self.decode_crop and self._crop_steps()):
            # only the crop drawn for the decoder says whether a clip was flipped
            raise ConfigError(
                "data.augment.hflip > 0 on a label space that mirrors with the clip needs data.decode_crop: true"
            )

    def _crop_steps(self) -> int:
        """How many leading transforms the decoder takes (0: the whole transform runs on the clip)."""
        return getattr(self.transform, "decode_crop_steps", 0) if self.train and self.decode_crop else 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the random draws of ``epoch`` (clips, crops, flips ...)."""
        self.epoch = int(epoch)

    # -- sampling --------------------------------------------------------------------------------
    def windows(self, duration: Fraction, rng: np.random.Generator) -> list[tuple[Fraction, Fraction]]:
        """Clip windows, relative to the start of the (sub-)range of length ``duration``."""
        if not self.train:
            return multiview_clips(duration, self.clip_dur, self.views_t)
        span = getattr(self.cfg, "clip_max_span", None)
        if self.repeats > 1 and span is not None:
            return rho_clips(
                duration, self.clip_dur, self.repeats, rng, max_span=Fraction(span).limit_denominator(10**6)
            )
        return [random_clip(duration, self.clip_dur, rng) for _ in range(self.repeats)]

    def clip_indices(self, reader: VideoReader, sample: Sample, rng: np.random.Generator) -> list[np.ndarray]:
        """Frame indices of each clip (``num_frames`` each), padded by repeating the last frame."""
        lo = sample.start if sample.start is not None else Fraction(0)
        hi = sample.end if sample.end is not None else reader.duration
        hi = min(hi, reader.duration)
        if hi <= lo:
            raise VideoError(sample.path, f"empty time range [{float(lo):.3f}, {float(hi):.3f}) s")
        out = []
        for s, e in self.windows(hi - lo, rng):
            w = (lo + s, lo + e)
            idx = reader.indices_in(w[0], min(w[1], hi))
            if idx.size == 0:  # window past the last frame: the last frame of the range
                idx = reader.indices_in(lo, hi)[-1:]
                if idx.size == 0:
                    raise VideoError(sample.path, f"no frame in [{float(lo):.3f}, {float(hi):.3f}) s")
            clip = clip_frame_indices(idx, expected_frames(w, reader.fps), self.num_frames)
            if self.single_frame:  # one frame of the clip, repeated
                pick = int(rng.integers(self.num_frames)) if self.train else self.num_frames // 2
                clip = np.full_like(clip, clip[pick])
            out.append(clip)
        return out

    def load_clips(self, sample: Sample, rng: np.random.Generator, planar: bool = True) -> list[torch.Tensor]:
        """Decode once and cut the clips: a list of uint8 ``(C, T, H, W)``.

        ``planar=False`` gives ``(C, T, H, W)`` views of the decoded ``(T, H, W, C)`` frames (channels
        innermost) instead of contiguous copies: the transforms' crop-and-resize reads that layout
        directly, which saves two full-frame transposes per clip (``__getitem__`` with a transform).
        """
        return self._read(sample, rng, planar=planar).clips

    def load_cropped_clips(self, sample: Sample, rng: np.random.Generator) -> tuple[list[torch.Tensor], list]:
        """Decode once, cropping, resizing and flipping each clip's frames while they are decoded
        (the transform's first :attr:`~tubelet.data.transforms.Compose.decode_crop_steps`, drawn from
        each clip's own generator); the uint8 ``(C, T, S, S)`` clips and their generators, which the
        rest of the transform continues from."""
        read = self._read(sample, rng, cropped=True)
        return read.clips, read.generators

    def _read(self, sample: Sample, rng: np.random.Generator, cropped: bool = False, planar: bool = True) -> "_Read":
        reader = self.opener(sample.path)
        try:
            per_clip = self.clip_indices(reader, sample, rng)
            caption = sample.caption if sample.caption is not None else getattr(reader, "caption", None)
            if cropped:
                gens = [torch_generator(rng) for _ in per_clip]
                transform, crops = self.transform, []

                def plan(h: int, w: int) -> list:
                    crops[:] = [transform.decode_crop(h, w, g) for g in gens]
                    return crops

                clips = [torch.from_numpy(c) for c in reader.get_resized_clips(per_clip, plan)]
                return _Read(clips, gens, [c.flip for c in crops], caption, _described(reader))
            frames = reader.get_frames(np.concatenate(per_clip))  # one decode of the union
            damage = _described(reader)
        finally:
            reader.close()
        if planar:
            whole = to_cthw(frames)
        else:
            if frames.ndim != 4:
                raise ValueError(f"expected frames (T, H, W, C), got shape {tuple(frames.shape)}")
            whole = torch.from_numpy(frames).permute(3, 0, 1, 2)
        clips = list(whole.split(self.num_frames, dim=1))
        return _Read(clips, [torch_generator(rng) for _ in clips], None, caption, damage)  # each clip its own draws

    # -- items -----------------------------------------------------------------------------------
    def _fail(self, index: int, sample: Sample, exc: VideoError) -> BadSample:
        self.failures.setdefault(sample.path, (index, sample.path, exc.reason))
        if len(self.failures) > self.max_failure_fraction * len(self):
            raise DataError(
                failure_report(list(self.failures.values()), len(self), self.max_failure_fraction)
            ) from exc
        return BadSample(index, sample.path, exc.reason)

    def known_failure(self, index: int) -> BadSample | None:
        """The recorded failure of sample ``index``'s file, if it failed before in this process."""
        path = self.samples[index].path
        if path not in self.failures:
            return None
        return BadSample(index, path, self.failures[path][2])

    def __getitem__(self, index: int):
        known = self.known_failure(index)
        if known is not None:  # a bad file is decoded once
            return known
        sample = self.samples[index]
        rng = sample_rng(self.seed, self.epoch, index)
        steps = self._crop_steps()
        try:
            read = self._read(sample, rng, cropped=bool(steps), planar=self.transform is None)
        except VideoError as exc:
            return self._fail(index, sample, exc)
        if read.damage is not None and self.on_damaged != "keep":
            return self._damaged(index, sample, read.damage)
        clips, gens = read.clips, read.generators
        if steps:
            views = [self.transform.apply_from(steps, c, g) for c, g in zip(clips, gens)]
        elif self.transform is not None:
            views = [self.transform(c, g) for c, g in zip(clips, gens)]
        else:
            views = clips if self.train else [c.unsqueeze(0) for c in clips]
        label = torch.full((len(clips),), sample.label, dtype=torch.int64)
        if self.flip_labels is not None and read.flips is not None:
            label = torch.where(torch.tensor(read.flips), self.flip_labels[label], label)
        out: dict = {"index": index}
        if self.train:
            out["video"] = torch.stack(views) if self.repeats > 1 else views[0]
            out["label"] = label if self.repeats > 1 else label[0]
        else:
            out["video"] = torch.cat(views, dim=0)  # (test_clips * crops, C, T, H, W), clip-major
            out["label"] = label[0]
        if read.caption is not None:
            captions = [read.caption] * len(clips)
            if self.flip_caption is not None and read.flips is not None:
                captions = [self.flip_caption(c) if f else c for c, f in zip(captions, read.flips)]
            # one caption per sample; with repeated sampling one per clip, as the labels
            out["caption"] = captions if self.train and self.repeats > 1 else captions[0]
        if read.damage is not None:  # data.on_damaged=keep: trained on, reported once (ClipCollate, FailureTracker)
            out["damage"] = (sample.path, f"damaged: {read.damage}")
        return out

    def _damaged(self, index: int, sample: Sample, damage: str) -> BadSample:
        """A damaged read under ``data.on_damaged`` skip (a bad file) or fail (stop)."""
        if self.on_damaged == "fail":
            if torch.utils.data.get_worker_info() is None or not self.train:
                raise DataError(damaged_fail_message(sample.path, damage))
            # in a training loader worker: the main process stops on it, on every rank at once
            return BadSample(index, sample.path, f"{DAMAGED_FAIL}: {damage}")
        return self._fail(index, sample, VideoError(sample.path, f"damaged: {damage}"))


def _described(reader: VideoReader) -> str | None:
    """The one-line description of the damage the reader's last request found, if any."""
    damage = getattr(reader, "damage", None)
    return damage.describe() if damage is not None else None


def _damage_backend(decoder: str, on_damaged: str) -> str:
    """The video backend for ``data.decoder`` under ``data.on_damaged``. torchcodec exposes neither
    FFmpeg's corrupt-frame flag nor its log, so it cannot see damage FFmpeg conceals: ``auto``
    takes PyAV when the policy needs to see it, and ``torchcodec`` is refused for ``skip``/``fail``."""
    if decoder == "pyav":
        return decoder
    if on_damaged == "keep":
        from tubelet.data.decoding import torchcodec_available

        if decoder == "torchcodec" or torchcodec_available():
            warnings.warn(f"data.decoder={decoder} reads with torchcodec, which cannot see damage that FFmpeg "
                          "conceals: damaged files are trained on unreported (data.decoder: pyav reports them)",
                          stacklevel=3)
        return decoder
    if decoder == "auto":
        return "pyav"
    raise ConfigError(
        f"data.on_damaged={on_damaged} needs data.decoder pyav (or auto): torchcodec cannot see damage that "
        "FFmpeg conceals; set data.decoder: pyav, or data.on_damaged: keep to train on torchcodec's frames unchecked"
    )


class _Read(NamedTuple):
    """One sample's decoded clips, a generator per clip, whether the decoder flipped each clip (None:
    the decoder cropped nothing), its caption and the damage the decoder concealed in the read (one
    line; None: none seen)."""

    clips: list[torch.Tensor]
    generators: list[torch.Generator]
    flips: list[bool] | None
    caption: str | None
    damage: str | None = None
