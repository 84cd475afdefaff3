"""Multi-view testing: softmax scores averaged over temporal clips x spatial crops per video.

Protocol of the video-transformer papers (e.g. ViViT arXiv:2103.15691 sec. 4.1, MViTv2
arXiv:2112.01526 sec. 5, MAE-ST arXiv:2205.09113 sec. 5): each test video is seen as
``data.test_clips`` temporal clips x ``data.test_crops`` spatial crops; the per-view softmax scores
are averaged and the video is classified by the mean.

Dataset contract for the ``"test"`` split: one sample per VIDEO,
``{"video": float (V, C, T, H, W), "label": int64 scalar, "index": int}`` with
``V = test_clips * test_crops`` views (clip-major: view ``v`` is clip ``v // test_crops``, crop
``v % test_crops``), each view normalised like a training clip. A sample whose ``video`` is a single
clip ``(C, T, H, W)`` counts as one view. The default collate stacks them to ``(B, V, C, T, H, W)``.

Streamed samples (``"streamed": True``, the long-range task of memory models) hold a video's clips in
time order instead of views: :func:`stream_scores` runs them one after another from an empty memory and
scores the last clip, which is where the task asks for the label.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable

import torch

from tubelet.errors import TubeletError


def view_scores(classify: Callable[[torch.Tensor], torch.Tensor], video: torch.Tensor) -> torch.Tensor:
    """``(B, V, C, T, H, W)`` (or one view ``(B, C, T, H, W)``) -> mean softmax scores ``(B, K)``."""
    if video.ndim == 5:
        video = video.unsqueeze(1)
    if video.ndim != 6:
        raise TubeletError(f"test batches must be (B, V, C, T, H, W) views, got shape {tuple(video.shape)}")
    b, v = video.shape[:2]
    logits = classify(video.flatten(0, 1)).float()
    return logits.softmax(dim=-1).view(b, v, -1).mean(dim=1)


def memory_clearer(method: Any) -> Callable[[], None] | None:
    """The ``clear_memory`` of a method's memory backbone (MeMViT), or None for a model without memory."""
    backbone = getattr(method, "backbone", None)
    return backbone.clear_memory if getattr(backbone, "uses_memory", False) else None


def stream_scores(classify: Callable[..., torch.Tensor], video: torch.Tensor,
                  clear_memory: Callable[[], None] | None = None) -> torch.Tensor:
    """``(B, N, C, T, H, W)``: B videos of N clips each, in time order -> softmax scores ``(B, K)`` of each
    video's last clip. The memory is emptied first, then clip ``c`` of every video runs with the video's
    slot as its id (``classify(clips, video_ids)``), so each video attends only to its own earlier clips.
    A model without memory sees the last clip alone: the same scores as a one-view test of that clip."""
    if video.ndim != 6:
        raise TubeletError(f"streamed batches must be (B, N, C, T, H, W) clips in time order, got {tuple(video.shape)}")
    if clear_memory is not None:
        clear_memory()
    ids = torch.arange(video.shape[0], device=video.device)
    for c in range(video.shape[1]):  # time order: each clip's memory is the clips before it
        logits = classify(video[:, c], ids)
    return logits.float().softmax(dim=-1)


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Number of rows whose label is among the top-k scores, for each k (k capped at the class count);
    soft ``(N, K)`` labels count by their argmax."""
    if labels.ndim == 2:
        labels = labels.argmax(dim=1)
    maxk = min(max(ks), scores.shape[1])
    hit = scores.topk(maxk, dim=1).indices == labels.view(-1, 1)
    return [hit[:, : min(k, maxk)].any(dim=1).sum() for k in ks]


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores (k capped at the class count)."""
    (correct,) = topk_correct(scores, labels, (k,))
    return correct.float().item() / max(1, labels.shape[0])


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K, K)`` counts; row = true class, column = predicted class."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def predict_views(classify: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[dict[str, Any]],
                  device: torch.device, autocast_dtype: torch.dtype | None = None,
                  clear_memory: Callable[[], None] | None = None) -> dict[str, Any]:
    """Mean view scores of every video the batches hold: ``scores (N, K)``, ``labels (N,)``, ``indices
    (N,)`` (-1 where a batch has none), ``num_views`` and ``bad`` (the samples the collate left out).
    Each batch's clips are moved to ``device``; with ``autocast_dtype`` the model runs under autocast."""
    scores, labels, indices, bad = [], [], [], []
    num_views = 0
    for batch in batches:
        bad.extend(batch.get("bad_samples", []))
        if "video" not in batch:
            continue
        video = batch["video"].to(device, non_blocking=True)
        streamed = batch.get("streamed") is not None
        num_views = 1 if video.ndim == 5 or streamed else int(video.shape[1])
        ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
               else contextlib.nullcontext())
        with ctx:
            s = stream_scores(classify, video, clear_memory) if streamed else view_scores(classify, video)
        scores.append(s.float().cpu())
        labels.append(batch["label"].long().view(-1))
        index = batch.get("index")
        indices.append(torch.as_tensor(index).view(-1) if index is not None else torch.full_like(labels[-1], -1))
    if not scores:
        return {"scores": None, "labels": None, "indices": None, "num_views": 0, "bad": bad}
    return {"scores": torch.cat(scores), "labels": torch.cat(labels), "indices": torch.cat(indices),
            "num_views": num_views, "bad": bad}
