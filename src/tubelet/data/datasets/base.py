"""The clip dataset shared by every source (video files, frame folders, images).

A sample is drawn from ``(seed, epoch, index)`` only (:func:`tubelet.data.sampling.sample_rng`), so
it does not depend on the worker, the process or the order of access; call :meth:`set_epoch` each
epoch. Train split: one random clip per video, or ``r = repeated_sampling`` clips cut from one
decode of their union window, each with its own augmentation. Val/test split: ``V = test_clips x
test_crops`` views stacked as ``(V, C, T, H, W)`` (view ``v = clip * test_crops + crop``) with a
scalar label.

Bad files: a sample that raises :class:`~tubelet.errors.VideoError` becomes a
:class:`~tubelet.data.mixing.BadSample`; :class:`~tubelet.data.mixing.ClipCollate` drops it and
reports it in the batch. The dataset counts failures in its process and raises
:class:`~tubelet.errors.DataError` with the list of bad files once they exceed
``max_failure_fraction`` of the dataset; :class:`FailureTracker` does the same in the main process
from the batches' ``"bad_samples"``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

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
from tubelet.errors import DataError, VideoError

__all__ = ["Sample", "ClipDataset", "FailureTracker", "failure_report"]


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

    def observe(self, batch: dict) -> None:
        self.add(batch)
        self.check()

    def add(self, batch: dict) -> list[tuple[int, str, str]]:
        """Record a batch's ``"bad_samples"``; return the records of files not seen before."""
        new = [(i, p, r) for i, p, r in batch.get("bad_samples", []) if (p or str(i)) not in self.failures]
        self.merge(new)
        return new

    def merge(self, records: list[tuple[int, str, str]]) -> None:
        """Add records seen elsewhere (other processes), one per file."""
        for i, p, r in records:
            self.failures.setdefault(p or str(i), (int(i), str(p), str(r)))

    def check(self) -> None:
        """:class:`DataError` listing the failures once they exceed the budget."""
        if len(self.failures) > self.max_failure_fraction * self.total:
            raise DataError(failure_report(list(self.failures.values()), self.total, self.max_failure_fraction))

    def write(self, path: str | os.PathLike) -> None:
        """Write ``bad_files.txt``: one ``path<TAB>reason`` line per failed file."""
        Path(path).write_text("".join(f"{p}\t{r}\n" for _, p, r in self.failures.values()))


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
        backend = str(cfg.decoder)
        # functools.partial, not a lambda: the dataset must pickle for spawn-started workers.
        self.opener = opener or functools.partial(open_video, backend=backend, threads=threads)
        self.failures: list[tuple[int, str, str]] = []

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
            out.append(clip_frame_indices(idx, expected_frames(w, reader.fps), self.num_frames))
        return out

    def load_clips(self, sample: Sample, rng: np.random.Generator, planar: bool = True) -> list[torch.Tensor]:
        """Decode once and cut the clips: a list of uint8 ``(C, T, H, W)``.

        ``planar=False`` gives ``(C, T, H, W)`` views of the decoded ``(T, H, W, C)`` frames (channels
        innermost) instead of contiguous copies: the transforms' crop-and-resize reads that layout
        directly, which saves two full-frame transposes per clip (``__getitem__`` with a transform).
        """
        reader = self.opener(sample.path)
        try:
            per_clip = self.clip_indices(reader, sample, rng)
            frames = reader.get_frames(np.concatenate(per_clip))  # one decode of the union
        finally:
            reader.close()
        if planar:
            clips = to_cthw(frames)
        else:
            if frames.ndim != 4:
                raise ValueError(f"expected frames (T, H, W, C), got shape {tuple(frames.shape)}")
            clips = torch.from_numpy(frames).permute(3, 0, 1, 2)
        return list(clips.split(self.num_frames, dim=1))

    # -- items -----------------------------------------------------------------------------------
    def _fail(self, index: int, sample: Sample, exc: VideoError) -> BadSample:
        self.failures.append((index, sample.path, exc.reason))
        if len(self.failures) > self.max_failure_fraction * len(self):
            raise DataError(failure_report(self.failures, len(self), self.max_failure_fraction)) from exc
        return BadSample(index, sample.path, exc.reason)

    def load_cropped_clips(self, sample: Sample, rng: np.random.Generator) -> tuple[list[torch.Tensor], list]:
        """Decode once, cropping, resizing and flipping each clip's frames while they are decoded
        (the transform's first :attr:`~tubelet.data.transforms.Compose.decode_crop_steps`, drawn from
        each clip's own generator); the uint8 ``(C, T, S, S)`` clips and their generators, which the
        rest of the transform continues from."""
        reader = self.opener(sample.path)
        try:
            per_clip = self.clip_indices(reader, sample, rng)
            gens = [torch_generator(rng) for _ in per_clip]
            transform = self.transform
            clips = reader.get_resized_clips(per_clip, lambda h, w: [transform.decode_crop(h, w, g) for g in gens])
        finally:
            reader.close()
        return [torch.from_numpy(c) for c in clips], gens

    def __getitem__(self, index: int):
        sample = self.samples[index]
        rng = sample_rng(self.seed, self.epoch, index)
        steps = getattr(self.transform, "decode_crop_steps", 0) if self.train and self.decode_crop else 0
        try:
            if steps:
                clips, gens = self.load_cropped_clips(sample, rng)
            else:
                clips = self.load_clips(sample, rng, planar=self.transform is None)
                gens = [torch_generator(rng) for _ in clips]  # each clip its own draws
        except VideoError as exc:
            return self._fail(index, sample, exc)
        if steps:
            views = [self.transform.apply_from(steps, c, g) for c, g in zip(clips, gens)]
        elif self.transform is not None:
            views = [self.transform(c, g) for c, g in zip(clips, gens)]
        else:
            views = clips if self.train else [c.unsqueeze(0) for c in clips]
        out: dict = {"index": index}
        if self.train:
            if self.repeats > 1:
                out["video"] = torch.stack(views)
                out["label"] = torch.full((self.repeats,), sample.label, dtype=torch.int64)
            else:
                out["video"] = views[0]
                out["label"] = torch.tensor(sample.label, dtype=torch.int64)
        else:
            out["video"] = torch.cat(views, dim=0)  # (test_clips * crops, C, T, H, W), clip-major
            out["label"] = torch.tensor(sample.label, dtype=torch.int64)
        if sample.caption is not None:
            out["caption"] = sample.caption
        return out
