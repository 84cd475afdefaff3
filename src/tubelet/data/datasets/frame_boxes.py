"""Single frames with their object boxes: a detector's training and evaluation images (``data.kind: frame_boxes``).

Every frame of every sequence (one in ``data.frame_boxes.frame_stride``) is a sample. The synthetic set's
sequences are its clips of the split, each object present in a frame one box of class 0 ("object": the
synthetic set has one class of things to detect, as UTT's detector has pedestrians). A MOT Challenge
sequence folder (or a folder of them) gives its frames and its ground-truth targets under the benchmark's
rules (``mot_training_boxes``), pedestrians as class 0.

Samples: ``image`` ``(3, S, S)`` float, the frame resized to ``data.crop_size`` (bilinear, antialiased: the
resize :func:`resize_frame` that inference applies too) and normalised by ``data.mean`` / ``data.std``;
``boxes`` ``(max_boxes, 4)`` ``cxcywh`` normalised to the frame, zero-padded; ``labels`` ``(max_boxes,)``
int64; ``box_mask`` ``(max_boxes,)`` bool (False for padding); ``index``. On the train split a horizontal
flip (probability ``data.augment.hflip``) mirrors frame and boxes, drawn from a generator seeded by
``(seed, epoch, index)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tubelet.errors import DataError

__all__ = ["FrameBoxDataset", "FrameBoxSequence", "MOTFrames", "SyntheticFrames", "mot_frame_sequences",
           "resize_frame"]


def resize_frame(frame: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A uint8 frame ``(H, W, 3)`` as a normalised ``(3, size, size)`` float tensor (bilinear, antialiased).
    The aspect ratio is not kept: boxes normalised to the frame stay valid, in training and at inference."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise DataError(f"a frame must be uint8 (H, W, 3), got {frame.dtype} {tuple(frame.shape)}")
    img = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float().div_(255.0)
    if img.shape[-2:] != (size, size):
        img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (img[0] - m) / s


class FrameBoxSequence(Protocol):
    """A sequence of ``num_frames`` frames: ``frame(t)`` uint8 ``(H, W, 3)`` and ``boxes(t)``, ``xyxy`` pixels
    ``(n, 4)`` with their class ids ``(n,)``. Subclasses load lazily (a synthetic clip renders on first use)."""

    name: str
    num_frames: int

    def frame(self, t: int) -> np.ndarray: ...

    def boxes(self, t: int) -> tuple[np.ndarray, np.ndarray]: ...


class SyntheticFrames(FrameBoxSequence):
    """Clip ``index`` of a :class:`~tubelet.data.synthetic.SyntheticSource`; every present object is a box of
    class 0."""

    def __init__(self, source, index: int) -> None:
        from tubelet.data.synthetic import clip_path

        self.source, self.index = source, int(index)
        self.name, self.num_frames = clip_path(index), int(source.cfg.frames)

    def frame(self, t: int) -> np.ndarray:
        return self.source.clip(self.index).frames[t]

    def boxes(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        clip = self.source.clip(self.index)
        present = clip.ids[t] >= 0
        return clip.boxes[t][present].astype(np.float64), np.zeros(int(present.sum()), np.int64)


class MOTFrames(FrameBoxSequence):
    """A MOT Challenge sequence folder (``seqinfo.ini``, ``gt/gt.txt``, frames in ``img1/``): its frames and the
    targets of its ground truth under ``benchmark``'s rules (``mot_training_boxes``: flagged pedestrians of
    at least ``min_visibility``), all of class 0. The frames are opened on first use."""

    def __init__(self, folder: str | os.PathLike, benchmark: str = "MOT17", min_visibility: float = 0.0) -> None:
        from tubelet.data.datasets.tracking import load_mot_sequence, mot_training_boxes

        seq = load_mot_sequence(folder)
        if seq.gt is None:
            raise DataError(f"{folder}: no gt/gt.txt: a detector trains on a sequence's ground truth")
        if seq.frames is None:
            raise DataError(f"{folder}: no frame folder {seq.info.get('imdir', 'img1')}/ beside seqinfo.ini")
        targets, _ = mot_training_boxes(seq.gt, benchmark, min_visibility)  # type: ignore[arg-type]
        self.name, self.num_frames = str(folder), seq.num_frames
        self.folder, self.fps = seq.frames, float(seq.info.get("framerate", 30.0))
        xywh = targets.boxes
        self._xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        self._frame = targets.frame - 1  # MOT frames count from 1
        self._reader = None

    def frame(self, t: int) -> np.ndarray:
        if self._reader is None:
            from tubelet.data.datasets.frames import FrameFolderReader

            self._reader = FrameFolderReader(self.folder, self.fps)
            if self._reader.metadata.num_frames < self.num_frames:
                raise DataError(f"{self.folder}: {self._reader.metadata.num_frames} frames but seqLength is "
                                f"{self.num_frames}")
        return self._reader.get_frames([t])[0]

    def boxes(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self._frame == t
        return self._xyxy[rows], np.zeros(int(rows.sum()), np.int64)


def mot_frame_sequences(source: str | os.PathLike, benchmark: str = "MOT17",
                        min_visibility: float = 0.0) -> list[MOTFrames]:
    """A MOT Challenge sequence folder (one with ``seqinfo.ini``) or a folder of them (e.g. ``MOT17/train``)."""
    d = Path(source)
    if (d / "seqinfo.ini").is_file():
        return [MOTFrames(d, benchmark, min_visibility)]
    if not d.is_dir():
        raise DataError(f"frame_boxes source '{source}' is neither 'synthetic' nor a folder")
    seqs = [MOTFrames(q, benchmark, min_visibility) for q in sorted(d.iterdir()) if (q / "seqinfo.ini").is_file()]
    if not seqs:
        raise DataError(f"{d}: no MOT sequence folder (one with a seqinfo.ini) in it")
    return seqs


class FrameBoxDataset(Dataset):
    def __init__(self, sequences: Sequence[FrameBoxSequence], size: int, mean: Sequence[float], std: Sequence[float],
                 max_boxes: int = 20, frame_stride: int = 1, min_size: float = 2.0, hflip: float = 0.0,
                 seed: int = 0, num_classes: int = 1, class_names: Sequence[str] = ("object",)) -> None:
        if not sequences:
            raise DataError("frame_boxes: no sequences to take frames from")
        self.sequences = list(sequences)
        pairs = [(k, t) for k, s in enumerate(self.sequences) for t in range(0, s.num_frames, int(frame_stride))]
        self._seq = np.array([k for k, _ in pairs], np.int64)
        self._frame = np.array([t for _, t in pairs], np.int64)
        self.size, self.mean, self.std = int(size), tuple(mean), tuple(std)
        self.max_boxes, self.min_size, self.hflip = int(max_boxes), float(min_size), float(hflip)
        self.seed, self.epoch = int(seed), 0
        self.num_classes, self.class_names = int(num_classes), list(class_names)

    def __len__(self) -> int:
        return len(self._seq)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def where(self, i: int) -> str:
        """``name:frame`` of sample ``i`` (what an error or a report names)."""
        return f"{self.sequences[int(self._seq[i])].name}:{int(self._frame[i])}"

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample ``i`` before any transform: the uint8 frame, its boxes ``xyxy`` in frame pixels (those of at
        least ``min_size``) and their labels."""
        seq, t = self.sequences[int(self._seq[i])], int(self._frame[i])
        xyxy, labels = seq.boxes(t)
        keep = ((xyxy[:, 2] - xyxy[:, 0]) >= self.min_size) & ((xyxy[:, 3] - xyxy[:, 1]) >= self.min_size)
        return seq.frame(t), xyxy[keep], labels[keep]

    def __getitem__(self, i: int) -> dict:
        frame, xyxy, labels = self.raw(i)
        H, W = frame.shape[:2]
        if len(xyxy) > self.max_boxes:
            raise DataError(f"{self.where(i)}: {len(xyxy)} boxes, more than data.frame_boxes.max_boxes={self.max_boxes}")
        if len(labels) and int(labels.max()) >= self.num_classes:
            raise DataError(f"{self.where(i)}: class {int(labels.max())} is not one of the {self.num_classes} classes")
        norm = xyxy / np.array([W, H, W, H], np.float64)
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        if self.hflip > 0 and rng.random() < self.hflip:
            frame = frame[:, ::-1]
            norm = np.stack([1 - norm[:, 2], norm[:, 1], 1 - norm[:, 0], norm[:, 3]], 1)
        n, M = len(norm), self.max_boxes
        cxcywh = np.stack([(norm[:, 0] + norm[:, 2]) / 2, (norm[:, 1] + norm[:, 3]) / 2,
                           norm[:, 2] - norm[:, 0], norm[:, 3] - norm[:, 1]], 1) if n else np.zeros((0, 4))
        boxes = np.zeros((M, 4), np.float32)
        boxes[:n] = cxcywh
        lab = np.zeros(M, np.int64)
        lab[:n] = labels
        mask = np.zeros(M, bool)
        mask[:n] = True
        return {"image": resize_frame(np.ascontiguousarray(frame), self.size, self.mean, self.std),
                "boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(lab), "box_mask": torch.from_numpy(mask),
                "index": int(i)}
