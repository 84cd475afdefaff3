"""Online data order for memory models (MeMViT, arXiv 2201.08383; METHODS.md section 7, "Data order").

A memory model sees a long video one clip per iteration, in time order, and carries memory from one
iteration to the next. Each of the S batch slots (S = processes x per-process batch) is therefore a
*stream*: it walks one video's clips in order, then the next video's. Per epoch the videos are
reshuffled with the epoch's seed, their clips laid end to end, and the sequence cut into S contiguous
runs of ``steps = ceil(total / S)`` clips; batch ``i`` holds position ``s * steps + i`` of every run s
(the release's ``(idx // S) + steps * (idx % S)``).

Every sample carries ``video_id``: the id of the stream segment it belongs to (one per run of one
video in one slot), so that the model masks memory of another video *per sample*; ``new_video`` marks
the first clip of a segment. Positions past the end wrap around to the start of the sequence, so every
slot stays full and the batch size constant (followed: the release wraps its stream indices); a wrapped
run is a segment of its own, so memory never carries across the wrap even when it lands in the same video.

``OnlineClips`` needs a source with ``clips_per_video`` (a sequence of ints) and ``clip(video, clip)``
returning the sample dict of that window; it is map-style over positions, and draws nothing itself: the
order depends only on ``(seed, epoch)``, so resuming at a position reproduces the same streams.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tubelet.errors import ConfigError


class ClipSource(Protocol):
    """Videos cut into clips in time order: ``clip(v, c)`` is clip ``c`` of video ``v`` as a sample dict."""

    clips_per_video: Sequence[int]

    def clip(self, video: int, clip: int) -> dict: ...


def online_layout(clips_per_video: Sequence[int], num_streams: int, seed: int, epoch: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(video, clip, segment)`` per position ``s * steps + i`` and ``steps``, for one epoch.

    ``segment`` numbers the runs of one video inside one stream, so that two positions share it exactly
    when the second continues the first's memory.
    """
    counts = np.asarray(clips_per_video, dtype=np.int64)
    if num_streams < 1:
        raise ConfigError(f"the online order needs at least one stream, got {num_streams}")
    if counts.size == 0 or (counts < 1).any():
        bad = int(np.argmax(counts < 1)) if counts.size else None
        raise ConfigError("the online order needs videos with at least one clip each"
                          + (f"; video {bad} has {int(counts[bad])}" if bad is not None else ": there are no videos"))
    g = torch.Generator().manual_seed(int(seed) + int(epoch))
    perm = torch.randperm(counts.size, generator=g).numpy()
    order_counts = counts[perm]
    total = int(order_counts.sum())
    steps = math.ceil(total / num_streams)
    starts = np.concatenate(([0], np.cumsum(order_counts)[:-1]))
    flat = np.arange(num_streams * steps) % total  # positions past the end wrap to the start
    run = np.searchsorted(starts, flat, side="right") - 1  # which video of the shuffled sequence
    video = perm[run]
    clip = flat - starts[run]
    # a new segment starts at each stream's first position and at each video start (the wrap lands on one)
    pos_in_stream = np.arange(num_streams * steps) % steps
    boundary = (pos_in_stream == 0) | (clip == 0)
    segment = np.cumsum(boundary) - 1
    return video, clip, segment, steps


def online_order(num_streams: int, steps: int, rank: int = 0, per_rank: int | None = None) -> list[int]:
    """Positions in loader order for one process: batch ``i`` is position ``s * steps + i`` of each of this
    rank's streams ``s`` in ``[rank * per_rank, (rank + 1) * per_rank)`` (all streams on one process)."""
    per_rank = num_streams if per_rank is None else per_rank
    slots = np.arange(rank * per_rank, (rank + 1) * per_rank)
    return (slots[None, :] * steps + np.arange(steps)[:, None]).reshape(-1).tolist()


class OnlineClips(Dataset):
    """Map-style over the positions of an epoch's online sequence (``len = num_streams * steps``)."""

    def __init__(self, source: ClipSource, num_streams: int, seed: int = 0) -> None:
        self.source = source
        self.num_streams = int(num_streams)
        self.seed = int(seed)
        self.epoch = -1
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._layout()
        source_epoch = getattr(self.source, "set_epoch", None)
        if source_epoch is not None:  # a source that draws per (seed, epoch, index), e.g. AVA's crop jitter
            source_epoch(self.epoch)

    def set_num_streams(self, num_streams: int) -> None:
        """One stream per batch slot of every process: the loader sets this once it knows the world size."""
        if int(num_streams) != self.num_streams:
            self.num_streams = int(num_streams)
            self._layout()

    def _layout(self) -> None:
        self.video, self.clip, self.segment, self.steps = online_layout(
            self.source.clips_per_video, self.num_streams, self.seed, self.epoch)

    def __len__(self) -> int:
        return self.num_streams * self.steps

    def position(self, index: int) -> tuple[int, int, int]:
        """``(video, clip, segment)`` at a position of the current epoch."""
        return int(self.video[index]), int(self.clip[index]), int(self.segment[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        video, clip, segment = self.position(index)
        sample = dict(self.source.clip(video, clip))
        s, i = divmod(index, self.steps)
        new = i == 0 or self.segment[index - 1] != segment
        # A segment id unique over the epoch (epoch-major), so that no id repeats across an epoch boundary.
        sample.update(video_id=segment + self.epoch * len(self), video_index=video, clip_index=clip,
                      new_video=bool(new), stream=s)
        return sample
