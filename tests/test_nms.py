"""Class-agnostic greedy NMS (``tubelet.models.layers.boxes.nms``) against the classical sequential loop written
here, on hand cases and many seeded random ones (ties in score, identical boxes, long suppression chains),
and as the detector's post-processing option (``method.nms_iou``, ``load_detector(..., nms_iou=...)``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tubelet.errors import ConfigError
from tubelet.methods.detr import check_nms_iou, postprocess
from tubelet.models.layers.boxes import nms


def greedy_nms(boxes: list[list[float]], scores: list[float], threshold: float) -> list[bool]:
    """The textbook loop: by score, highest first (ties: lower index first); keep a box unless a kept one
    overlaps it by more than ``threshold``."""
    def iou(a, b):
        w = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
        h = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
        inter = w * h
        area = lambda c: max(c[2] - c[0], 0.0) * max(c[3] - c[1], 0.0)  # noqa: E731
        return inter / max(area(a) + area(b) - inter, 1e-7)

    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[k]) <= threshold for k in kept):
            kept.append(i)
    return [i in kept for i in range(len(scores))]


def test_hand_cases():
    # A overlaps B by 7/13, B overlaps C by 7/13, A and C by 4/16: B goes, so C stays (a one-shot
    # "suppressed by any higher box" rule would drop C too)
    chain = torch.tensor([[0.0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]])
    assert nms(chain, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [True, False, True]
    # the order is by score, not by index
    assert nms(chain, torch.tensor([0.7, 0.9, 0.8]), 0.5).tolist() == [False, True, False]
    # identical boxes with equal scores: the first index survives
    same = torch.tensor([[1.0, 1, 5, 5]] * 3)
    assert nms(same, torch.tensor([0.5, 0.5, 0.5]), 0.5).tolist() == [True, False, False]
    # IoU exactly at the threshold is kept (suppression needs more): 2 / 4 = 0.5
    half = torch.tensor([[0.0, 0, 3, 1], [1, 0, 4, 1]])
    assert nms(half, torch.tensor([0.9, 0.8]), 0.5).tolist() == [True, True]
    assert nms(half, torch.tensor([0.9, 0.8]), 0.49).tolist() == [True, False]
    # threshold 1 suppresses nothing, 0 every box that touches a kept one
    assert nms(chain, torch.tensor([0.9, 0.8, 0.7]), 1.0).tolist() == [True, True, True]
    assert nms(chain, torch.tensor([0.9, 0.8, 0.7]), 0.0).tolist() == [True, False, False]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="boxes"):
        nms(chain, torch.zeros(2), 0.5)


def _random_case(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` boxes on an integer grid around a few centres (overlaps and chains) with coarse scores (ties),
    some of them exact copies of another."""
    centres = rng.integers(0, 30, (max(1, n // 4), 2))
    c = centres[rng.integers(0, len(centres), n)] + rng.integers(-4, 5, (n, 2))
    wh = rng.integers(1, 12, (n, 2))
    boxes = np.concatenate([c, c + wh], 1).astype(np.float64)
    copies = rng.random(n) < 0.15
    if n > 1:
        boxes[copies] = boxes[rng.integers(0, n, int(copies.sum()))]
    scores = rng.integers(0, 6, n) / 5.0  # six values: many ties
    return boxes, scores


def test_equals_the_sequential_greedy_loop_on_random_cases():
    rng = np.random.default_rng(0)
    rounds = 0
    for case in range(400):
        n = int(rng.integers(0, 41))
        boxes, scores = _random_case(rng, n)
        t = float(rng.choice([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]))
        got = nms(torch.from_numpy(boxes), torch.from_numpy(scores), t).tolist()
        assert got == greedy_nms(boxes.tolist(), scores.tolist(), t), f"case {case} (n {n}, threshold {t})"
        rounds += sum(got) < n
    assert rounds > 200  # most cases suppress something: the comparison is not vacuous


def test_a_batch_equals_each_image_alone_and_float32_equals_float64():
    rng = np.random.default_rng(1)
    cases = [_random_case(rng, 25) for _ in range(6)]
    boxes = torch.from_numpy(np.stack([b for b, _ in cases]))
    scores = torch.from_numpy(np.stack([s for _, s in cases]))
    keep = nms(boxes, scores, 0.4)
    assert keep.shape == (6, 25)
    for i, (b, s) in enumerate(cases):
        assert keep[i].tolist() == greedy_nms(b.tolist(), s.tolist(), 0.4)
    # integer-grid boxes: single precision gives the same IoUs on either side of 0.4
    assert torch.equal(nms(boxes.float().view(2, 3, 25, 4), scores.float().view(2, 3, 25), 0.4), keep.view(2, 3, 25))


def test_postprocess_marks_what_nms_suppresses():
    # three queries, one class: queries 0 and 1 are near-copies of one object, query 2 another
    logits = torch.tensor([[[3.0], [2.0], [1.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])
    raw = postprocess({"logits": logits, "boxes": boxes}, top_k=3)
    assert raw.keep.tolist() == [[True, True, True]]
    out = postprocess({"logits": logits, "boxes": boxes}, top_k=3, nms_iou=0.5)
    assert out.keep.tolist() == [[True, False, True]]
    torch.testing.assert_close(out.boxes, raw.boxes)
    torch.testing.assert_close(out.scores, raw.scores)


def test_invalid_thresholds_are_one_line_errors():
    assert check_nms_iou(None, "x") is None and check_nms_iou(0.5, "x") == 0.5 and check_nms_iou(1, "x") == 1.0
    for bad in (1.5, -0.1, "0.5", True, float("nan")):
        with pytest.raises(ConfigError, match=r"^where: the NMS IoU threshold must be a number in \[0, 1\]"):
            check_nms_iou(bad, "where")
