"""The box toolkit: IoU and GIoU on hand-made boxes, the delta codec, soft-argmax, and RoIAlign against an
explicit point-by-point bilinear sampling written as torchvision's documentation and kernel describe it."""

from __future__ import annotations

import math

import pytest
import torch

from tubelet.models.layers.boxes import (
    box_convert,
    box_iou,
    decode_deltas,
    encode_deltas,
    generalized_box_iou,
    roi_align,
    soft_argmax_2d,
)


def test_iou_and_giou_on_hand_made_boxes():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3], [2, 0, 3, 1], [0, 0, 2, 2]])
    # overlap 1 of union 7; disjoint; identical
    torch.testing.assert_close(box_iou(a, b, aligned=True), torch.tensor([1 / 7, 0.0, 1.0]))
    # enclosing boxes 9, 3, 4: GIoU = IoU - (enclose - union) / enclose
    torch.testing.assert_close(generalized_box_iou(a, b, aligned=True), torch.tensor([1 / 7 - 2 / 9, -1 / 3, 1.0]))
    pair = generalized_box_iou(a, b)
    assert pair.shape == (3, 3)
    torch.testing.assert_close(pair.diagonal(), generalized_box_iou(a, b, aligned=True))
    # a box inside another: GIoU = IoU (the enclosing box is the union)
    assert generalized_box_iou(torch.tensor([0.0, 0, 4, 4]), torch.tensor([1.0, 1, 2, 2]), aligned=True).item() \
        == pytest.approx(1 / 16)


def test_giou_has_a_gradient_for_disjoint_boxes():
    p = torch.tensor([[0.0, 0, 1, 1]], requires_grad=True)
    (1 - generalized_box_iou(p, torch.tensor([[2.0, 0, 3, 1]]), aligned=True)).sum().backward()
    assert p.grad.abs().sum() > 0 and box_iou(p, torch.tensor([[2.0, 0, 3, 1]]), aligned=True).item() == 0


def test_box_formats_round_trip_and_deltas_decode_to_the_encoded_boxes():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(64, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 1 + torch.rand(64, 2, generator=g) * 50], 1)
    for fmt in ("xywh", "cxcywh"):
        torch.testing.assert_close(box_convert(box_convert(boxes, "xyxy", fmt), fmt, "xyxy"), boxes)
    torch.testing.assert_close(box_convert(torch.tensor([1.0, 2, 4, 6]), "xyxy", "cxcywh"), torch.tensor([2.5, 4, 3, 4]))
    refs = boxes.flip(0)
    for w in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        d = encode_deltas(boxes, refs, w)
        torch.testing.assert_close(decode_deltas(d, refs, w), boxes, rtol=1e-5, atol=1e-4)
    # hand case: a box twice the size, shifted by half its reference width
    d = encode_deltas(torch.tensor([1.0, 0, 5, 4]), torch.tensor([0.0, 1, 2, 3]))
    torch.testing.assert_close(d, torch.tensor([1.0, 0.0, math.log(2), math.log(2)]))


def test_soft_argmax_corners_lie_in_the_unit_square():
    logits = torch.randn(3, 2, 8, 10) * 20
    xy, prob = soft_argmax_2d(logits)
    assert xy.shape == (3, 2, 2) and ((xy >= 0) & (xy <= 1)).all()
    torch.testing.assert_close(prob.sum((-2, -1)), torch.ones(3, 2))
    peak = torch.full((1, 4, 4), -1e4)
    peak[0, 1, 3] = 0
    torch.testing.assert_close(soft_argmax_2d(peak)[0], torch.tensor([[3.5 / 4, 1.5 / 4]]))


def _bilinear(f: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """One sample as torchvision's roi_align kernel takes it (``bilinear_interpolate``)."""
    H, W = f.shape[-2:]
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return torch.zeros(f.shape[0], dtype=f.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    yl, xl = int(math.floor(y)), int(math.floor(x))
    if yl >= H - 1:
        yl = yh = H - 1
        y = float(yl)
    else:
        yh = yl + 1
    if xl >= W - 1:
        xl = xh = W - 1
        x = float(xl)
    else:
        xh = xl + 1
    ly, lx = y - yl, x - xl
    return ((1 - ly) * (1 - lx) * f[:, yl, xl] + (1 - ly) * lx * f[:, yl, xh] + ly * (1 - lx) * f[:, yh, xl]
            + ly * lx * f[:, yh, xh])


def _reference_roi_align(feat, rois, ph, pw, scale, ratio, aligned):
    out = torch.zeros(len(rois), feat.shape[1], ph, pw, dtype=feat.dtype)
    off = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        x1, y1, x2, y2 = x1 * scale - off, y1 * scale - off, x2 * scale - off, y2 * scale - off
        w, h = x2 - x1, y2 - y1
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        bh, bw = h / ph, w / pw
        gh = ratio if ratio > 0 else max(math.ceil(h / ph), 1)
        gw = ratio if ratio > 0 else max(math.ceil(w / pw), 1)
        for p in range(ph):
            for q in range(pw):
                acc = torch.zeros(feat.shape[1], dtype=feat.dtype)
                for iy in range(gh):
                    for ix in range(gw):
                        acc += _bilinear(feat[int(b)], y1 + p * bh + (iy + 0.5) * bh / gh,
                                         x1 + q * bw + (ix + 0.5) * bw / gw)
                out[k, :, p, q] = acc / (gh * gw)
    return out


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [2, -1])
def test_roi_align_equals_explicit_bilinear_sampling(aligned, ratio):
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64)
    rois = torch.tensor([[0, 1.0, 2.0, 7.5, 6.0], [1, -3.0, -2.0, 4.0, 3.0], [1, 10.0, 12.0, 30.0, 25.0],
                         [0, 3.3, 3.3, 3.6, 3.9], [1, 0.0, 0.0, 22.0, 18.0], [0, 18.0, 2.0, 26.0, 16.0]],
                        dtype=torch.float64)
    got = roi_align(feat, rois, (3, 4), spatial_scale=0.5, sampling_ratio=ratio, aligned=aligned)
    want = _reference_roi_align(feat, rois, 3, 4, 0.5, ratio, aligned)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_roi_align_hand_computed_cases():
    f = (torch.arange(4.0)[None, :] + 10 * torch.arange(4.0)[:, None])[None, None]  # f(y, x) = x + 10 y
    # aligned: the box of pixel (1, 2) is [2, 1, 3, 2]; its one bin samples that pixel's centre
    assert roi_align(f, torch.tensor([[0.0, 2, 1, 3, 2]]), 1, aligned=True).item() == pytest.approx(12.0)
    # without the half-pixel shift the same box is centred between pixels: f(1.5, 2.5) = 17.5
    assert roi_align(f, torch.tensor([[0.0, 2, 1, 3, 2]]), 1, aligned=False).item() == pytest.approx(17.5)
    # the whole map in 2x2 bins: bin centres at (0.5, 0.5), (0.5, 2.5) ... after the shift; f is linear, so each
    # bin's mean is f at its centre
    out = roi_align(f, torch.tensor([[0.0, 0, 0, 4, 4]]), 2, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(out[0, 0], torch.tensor([[5.5, 7.5], [25.5, 27.5]]))
    # a sample more than one pixel outside the map is zero, within one pixel it takes the border value
    assert roi_align(f, torch.tensor([[0.0, -4, -4, -3, -3]]), 1, aligned=True).item() == 0.0
    assert roi_align(f, torch.tensor([[0.0, -1, 1, 0, 2]]), 1, aligned=True).item() == pytest.approx(10.0)
    assert roi_align(f, torch.tensor([[0.0, 4, 0, 5, 1]]), 1, aligned=True).item() == pytest.approx(3.0)


def test_roi_align_is_differentiable_in_features_and_boxes():
    g = torch.Generator().manual_seed(2)
    feat = torch.randn(1, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[1.3, 0.7, 4.9, 4.2], [0.4, 1.1, 5.5, 5.3]], dtype=torch.float64, requires_grad=True)

    def f(feat, boxes):
        rois = torch.cat([torch.zeros(2, 1, dtype=boxes.dtype), boxes], 1)
        return roi_align(feat, rois, 2, sampling_ratio=2)

    assert torch.autograd.gradcheck(f, (feat, boxes))
