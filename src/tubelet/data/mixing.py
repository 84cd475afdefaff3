"""Batch-level Mixup / CutMix with label smoothing, and the clip collate function.

Mixup (arXiv 1710.09412) and CutMix (arXiv 1905.04899) as in timm's ``Mixup`` with
``mode="batch"``: one ``lam ~ Beta(alpha, alpha)`` per batch; each clip is mixed with the batch in
reverse order; CutMix pastes one box at the same place in every frame (a space-time cube) and sets
``lam`` to the kept area. Targets are smoothed one-hot vectors
``y = lam * onehot_s(y) + (1 - lam) * onehot_s(y.flip(0))`` with ``onehot_s = (1 - eps) onehot + eps / K``,
so each row of the ``(B, K)`` soft label sums to 1.

:class:`ClipCollate` drops samples that failed to load (:class:`BadSample`) and reports them in the
batch under ``"bad_samples"``; it never substitutes another clip.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

__all__ = ["Mixup", "one_hot_smooth", "BadSample", "ClipCollate", "mix_batch"]


def one_hot_smooth(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """``(..., )`` int labels -> ``(..., K)`` float targets ``(1 - eps) onehot + eps / K``."""
    off = smoothing / num_classes
    out = torch.full((*labels.shape, num_classes), off, dtype=torch.float32, device=labels.device)
    return out.scatter_(-1, labels.long().unsqueeze(-1), 1.0 - smoothing + off)


class Mixup:
    """Mix a batch ``{"video": (B, ..., C, T, H, W) float, "label": (B, ...) int}`` in place of hard labels.

    With both alphas > 0, CutMix is chosen with probability ``switch_prob`` (timm default 0.5).
    ``prob`` is the chance that a batch is mixed at all; unmixed batches still get smoothed soft labels.
    Leading dims after B (repeated sampling) are mixed with the same partner index.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        label_smoothing: float = 0.1,
        prob: float = 1.0,
        switch_prob: float = 0.5,
    ) -> None:
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = int(num_classes)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.label_smoothing, self.prob, self.switch_prob = float(label_smoothing), float(prob), float(switch_prob)

    @staticmethod
    def _beta(alpha: float, g: torch.Generator) -> float:
        # torch's Beta sampler takes no generator; numpy's, seeded from g, keeps the draw reproducible.
        seed = int(torch.randint(0, 2**63 - 1, (), generator=g))
        return float(np.random.default_rng(seed).beta(alpha, alpha))

    def __call__(
        self, video: torch.Tensor, label: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Returns ``(mixed video, soft labels (B, ..., K), lam)``."""
        lam = 1.0
        use_cutmix = False
        if (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and float(torch.rand((), generator=g)) < self.prob:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cutmix = float(torch.rand((), generator=g)) < self.switch_prob
            else:
                use_cutmix = self.cutmix_alpha > 0
            lam = self._beta(self.cutmix_alpha if use_cutmix else self.mixup_alpha, g)
        y = one_hot_smooth(label, self.num_classes, self.label_smoothing)
        if lam == 1.0:
            return video, y, 1.0
        partner = video.flip(0)
        if use_cutmix:
            h, w = video.shape[-2:]
            cut = math.sqrt(1.0 - lam)
            ch, cw = int(h * cut), int(w * cut)
            cy = int(torch.randint(0, h, (), generator=g))
            cx = int(torch.randint(0, w, (), generator=g))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            video = video.clone()
            video[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # the box may be clipped at the border
        else:
            video = video * lam + partner * (1.0 - lam)
        y = y * lam + y.flip(0) * (1.0 - lam)
        return video, y, lam


@dataclass
class BadSample:
    """Marker a dataset returns for a sample that could not be loaded; the collate drops it."""

    index: int
    path: str
    reason: str


class ClipCollate:
    """Stack samples into a batch, dropping :class:`BadSample` / ``None`` entries.

    The batch gets ``"bad_samples"``: a list of ``(index, path, reason)`` for the dropped ones, so
    the training loop (in the main process, also with worker processes) can count and report them,
    and ``"damaged_samples"`` (the same triples) for samples kept although their decoder concealed
    damage (``data.on_damaged: keep``; a sample's ``"damage"`` entry), when there are any.
    When every sample of a batch failed, the result is ``{"bad_samples": [...]}`` with no video.
    With ``mixup`` set, ``"label"`` becomes the soft ``(B, K)`` target (``(B, r, K)`` with repeated
    sampling); the generator is seeded from ``seed`` and the batch's sample indices, so a batch mixes
    the same way whichever worker builds it.
    """

    def __init__(self, mixup: Mixup | None = None, seed: int = 0) -> None:
        self.mixup = mixup
        self.seed = int(seed)

    def __call__(self, samples: Sequence[Any]) -> dict:
        good, bad, damaged = [], [], []
        for s in samples:
            if s is None:
                bad.append((-1, "", "sample is None"))
            elif isinstance(s, BadSample):
                bad.append((s.index, s.path, s.reason))
            elif "damage" in s:  # a damaged file trained on (data.on_damaged=keep): reported, not collated
                damaged.append((int(s["index"]), *s["damage"]))
                good.append({k: v for k, v in s.items() if k != "damage"})
            else:
                good.append(s)
        if not good:
            return {"bad_samples": bad}
        strings = {k for k, v in good[0].items() if isinstance(v, str)}
        batch = default_collate([{k: v for k, v in s.items() if k not in strings} for s in good])
        for k in strings:
            batch[k] = [s[k] for s in good]
        batch["bad_samples"] = bad
        if damaged:
            batch["damaged_samples"] = damaged
        if self.mixup is not None and "video" in batch:
            mix_batch(self.mixup, batch, self.seed)
        return batch


def mix_batch(mixup: Mixup, batch: dict, seed: int) -> dict:
    """Apply ``mixup`` to ``batch["video"]`` / ``batch["label"]`` in place (adds ``"mix_lambda"``), with a
    generator seeded from ``seed`` and the batch's sample indices: a batch mixes the same way whichever
    process (loader worker or training device) mixes it."""
    idx = batch.get("index")
    key = f"{seed}:" + ",".join(str(int(i)) for i in (idx.tolist() if torch.is_tensor(idx) else []))
    g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1)
    batch["video"], batch["label"], lam = mixup(batch["video"], batch["label"], g)
    batch["mix_lambda"] = lam
    return batch
