"""Images as one-frame clips ``(C, 1, H, W)`` (image pre-training, e.g. FLIP on images).

Every image gives exactly one frame whatever ``data.num_frames`` says; at test time there is one
temporal view (``test_crops`` spatial views).
"""

from __future__ import annotations

import numpy as np

from tubelet.data.datasets.base import ClipDataset, Sample
from tubelet.data.decoding import VideoReader
from tubelet.data.datasets.frames import ImageReader

__all__ = ["ImageDataset"]


class ImageDataset(ClipDataset):
    """:class:`ClipDataset` whose samples are image files, each a one-frame clip."""

    def __init__(self, samples: list[Sample], cfg, split: str, **kwargs) -> None:
        kwargs.setdefault("opener", ImageReader)
        super().__init__(samples, cfg, split, **kwargs)
        self.num_frames = 1
        self.views_t = 1

    def clip_indices(self, reader: VideoReader, sample: Sample, rng: np.random.Generator) -> list[np.ndarray]:
        return [np.zeros(1, dtype=np.int64) for _ in range(self.repeats)]
