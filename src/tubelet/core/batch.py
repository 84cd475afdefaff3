"""The batch every layer passes on: what the collate builds, the device transforms change, and methods
read. Clips are ``uint8`` before normalisation and float after."""

from __future__ import annotations

from typing import Any, TypedDict

import torch


class Batch(TypedDict, total=False):
    """One collated batch. Only ``video`` and (for labelled data) ``label`` are always there; a batch
    whose every sample failed to load holds ``bad_samples`` alone."""

    video: torch.Tensor  # (B, C, T, H, W); (B, r, ...) repeated sampling; (B, V, ...) views or rho clips
    label: torch.Tensor  # (B,) int64, (B, r) per clip, or (B, K) soft targets after Mixup/CutMix
    index: torch.Tensor  # (B,) dataset indices
    bad_samples: list[tuple[int, str, str]]  # (index, path, reason) of the samples left out
    damaged_samples: list[tuple[int, str, str]]  # (index, path, damage) of damaged samples kept (data.on_damaged)
    mix_lambda: float  # Mixup/CutMix's lambda for this batch
    target: torch.Tensor  # AsymAug: the target views, shaped as ``video``
    small: torch.Tensor  # MultiCrop: (B, V, n, C, T, s, s) small source crops
    mix: torch.Tensor  # ScaleMix: a second source view per clip, shaped as ``video``
    caption: list[str]
    video_id: torch.Tensor  # (B,) int64: the stream segment of each clip in the online order (memory models)
    sample_seed: torch.Tensor  # (B,) int64: each sample's seed of (seed, epoch, position), for per-sample draws
    extra: dict[str, Any]
    # single frames with boxes (data.kind frame_boxes: detectors)
    image: torch.Tensor  # (B, 3, H, W) float, normalised
    boxes: torch.Tensor  # (B, M, 4) padded boxes (frame_boxes: cxcywh normalised; AVA: xyxy pixels)
    labels: torch.Tensor  # frame_boxes: (B, M) int64 class of each box; AVA: (B, M, K) multi-hot actions
    box_mask: torch.Tensor  # (B, M) bool, False for padding
