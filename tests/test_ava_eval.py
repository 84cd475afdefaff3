"""AVA frame-mAP (tubelet.eval.ava): hand-computed cases of the official evaluator's rules."""

from __future__ import annotations

import heapq

import numpy as np
import pytest

from tubelet.data.datasets.ava import read_ava_csv, read_excluded, read_label_map, write_label_map
from tubelet.errors import DataError
from tubelet.eval.ava import average_precision, cap_detections, evaluate_ava_files, frame_map

A = "0.1,0.1,0.5,0.5"
A_SHIFT = "0.12,0.1,0.52,0.5"  # IoU with A about 0.9: a duplicate of A
B = "0.6,0.6,0.9,0.9"
C = "0.2,0.2,0.6,0.6"
FAR = "0.7,0.0,0.95,0.3"


def _files(tmp_path, gt_rows, det_rows, excluded_rows=(), names=None):
    names = names or {1: "a", 2: "b", 3: "c"}
    lm = write_label_map(tmp_path / "labels.pbtxt", names)
    (tmp_path / "gt.csv").write_text("\n".join(gt_rows) + "\n")
    (tmp_path / "det.csv").write_text("\n".join(det_rows) + "\n")
    (tmp_path / "ex.csv").write_text("\n".join(excluded_rows) + ("\n" if excluded_rows else ""))
    return lm, tmp_path / "gt.csv", tmp_path / "det.csv", tmp_path / "ex.csv"


def _hand_case(tmp_path):
    gt = [f"v1,0902,{A},1,0", f"v1,0902,{A},2,0", f"v1,0902,{B},1,1", f"v1,0903,{C},1,0",
          f"v1,0904,{A},2,0"]  # 0904 is excluded: its box is no ground truth
    det = [
        f"v1,0902,{A},1,0.9",  # class 1: TP
        f"v1,0902,{A_SHIFT},1,0.7",  # class 1: duplicate of A -> FP (ties with the TP at 0903)
        f"v1,0902,{A},2,0.6",  # class 2: TP
        f"v1,0902,{B},3,0.95",  # class 3 has no ground truth: no AP, out of the mean
        f"v1,0903,{C},1,0.7",  # class 1: TP, score tied with the duplicate
        f"v1,0903,{FAR},1,0.5",  # class 1: FP
        f"v1,0904,{A},2,0.99",  # excluded frame: ignored
        f"v2,0902,{A},2,0.8",  # a frame without ground truth: FP (v2.2 evaluator)
    ]
    return _files(tmp_path, gt, det, ["v1,0904"])


def test_hand_computed_map_with_ties_duplicates_and_a_class_without_ground_truth(tmp_path):
    res = evaluate_ava_files(*_hand_case(tmp_path))
    # class 1, 3 ground-truth boxes (A, B, C): scores 0.9 T, 0.7 F (0902), 0.7 T (0903), 0.5 F. Among the tied
    # 0.7s the later detection comes first: T T F F -> precision 1, 1, 2/3, 1/2 at recall 1/3, 2/3, 2/3, 2/3:
    # AP = 1/3 * 1 + 1/3 * 1 = 2/3 (the other tie order would give 1/3 + 1/3 * 2/3 = 5/9)
    assert res.ap[1] == pytest.approx(2 / 3, abs=1e-12)
    # class 2, one ground-truth box (0904 excluded): 0.8 F (v2, no ground truth), 0.6 T -> AP = 1 * 1/2
    assert res.ap[2] == pytest.approx(0.5, abs=1e-12)
    assert np.isnan(res.ap[3]) and res.num_gt[3] == 0
    assert res.mAP == pytest.approx((2 / 3 + 0.5) / 2, abs=1e-12)
    assert res.num_gt == {1: 3, 2: 1, 3: 0}
    assert res.num_det[1] == 4 and res.num_det[2] == 2  # the excluded frame's detection is gone


def test_frames_the_ground_truth_does_not_list_are_ignored_under_the_2020_rule(tmp_path):
    res = evaluate_ava_files(*_hand_case(tmp_path), ignore_unlisted=True)
    assert res.ap[2] == pytest.approx(1.0)  # the v2 detection no longer counts
    assert res.mAP == pytest.approx((2 / 3 + 1.0) / 2, abs=1e-12)


def test_without_exclusions_the_excluded_frame_counts(tmp_path):
    lm, gt, det, _ = _hand_case(tmp_path)
    res = evaluate_ava_files(lm, gt, det, None)
    # class 2 now has 2 boxes (0902, 0904): 0.99 T (0904), 0.8 F, 0.6 T -> p 1, 1/2, 2/3 at r 1/2, 1/2, 1
    assert res.ap[2] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-12)


def test_the_50_detection_cap_drops_a_true_positive(tmp_path):
    fps = [f"v1,0902,{FAR},1,{0.5 + i / 100:.2f}" for i in range(50)]  # 50 false positives, 0.50 .. 0.99
    files = _files(tmp_path, [f"v1,0902,{A},1,0"], fps + [f"v1,0902,{A},1,0.1"], names={1: "a"})
    capped = evaluate_ava_files(*files)
    assert capped.ap[1] == 0.0 and capped.num_det[1] == 50  # the TP was the 51st: cut
    uncapped = evaluate_ava_files(*files, capacity=0)
    assert uncapped.ap[1] == pytest.approx(1 / 51)  # recall 1 at precision 1/51


def test_at_a_tie_on_the_cap_boundary_the_earlier_rows_stay(tmp_path):
    same = [f"v1,0902,{FAR},1,0.5"] * 50
    tp = f"v1,0902,{A},1,0.5"
    late = evaluate_ava_files(*_files(tmp_path, [f"v1,0902,{A},1,0"], same + [tp], names={1: "a"}))
    assert late.ap[1] == 0.0  # not strictly above the least score: never enters the heap
    early = evaluate_ava_files(*_files(tmp_path, [f"v1,0902,{A},1,0"], [tp] + same, names={1: "a"}))
    assert early.num_det[1] == 50 and early.ap[1] > 0


def _reference_cap(frame, score, action, boxes, capacity):
    """The released read_csv, row by row."""
    entries: dict[int, list] = {}
    for f, s, a, b in zip(frame.tolist(), score.tolist(), action.tolist(), boxes.tolist()):
        e = entries.setdefault(f, [])
        t = (s, a, b[1], b[0], b[3], b[2])
        if capacity < 1 or len(e) < capacity:
            heapq.heappush(e, t)
        elif s > e[0][0]:
            heapq.heapreplace(e, t)
    return [(f, t) for f, e in entries.items() for t in sorted(e, key=lambda x: -x[0])]


def test_cap_equals_the_row_by_row_heap():
    rng = np.random.default_rng(0)
    n = 600
    frame = rng.integers(0, 8, n)
    score = np.where(rng.random(n) < 0.3, rng.choice([0.2, 0.4], n), rng.random(n).round(5))
    score[frame == 7] = rng.random(int((frame == 7).sum()))  # a frame without ties: the vectorised path
    action = rng.integers(1, 4, n)
    boxes = rng.random((n, 4))
    f, s, a, b = cap_detections(frame, score, action, boxes, 50)
    ref = _reference_cap(frame, score, action, boxes, 50)
    assert [int(x) for x in f] == [r[0] for r in ref]
    assert s.tolist() == [r[1][0] for r in ref]
    assert a.tolist() == [r[1][1] for r in ref]
    assert b[:, [1, 0, 3, 2]].tolist() == [list(r[1][2:]) for r in ref]


def test_average_precision_is_the_voc_area():
    # T F T with 2 GT: p 1, 1/2, 2/3 at r 1/2, 1/2, 1 -> 1/2 * 1 + 1/2 * 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2) == pytest.approx(5 / 6)
    assert np.isnan(average_precision(np.array([0.5]), np.array([False]), 0))
    assert average_precision(np.zeros(0), np.zeros(0, bool), 3) == 0.0


def test_frame_map_on_tables_equals_the_files(tmp_path):
    lm, gt, det, ex = _hand_case(tmp_path)
    res = frame_map(read_ava_csv(gt), read_ava_csv(det, "detections"), read_label_map(lm), read_excluded(ex))
    assert res.mAP == pytest.approx(evaluate_ava_files(lm, gt, det, ex).mAP)


@pytest.mark.parametrize("row, message", [
    ("v1,0902,0.1,0.1,0.5", "expected 2 or 7 or 8 columns"),
    ("v1,09x2,0.1,0.1,0.5,0.5,1,0", "timestamp '09x2' is not a number"),
    ("v1,0902,0.1,0.1,1.5,0.5,1,0", "outside [0, 1]"),
    ("v1,0902,0.5,0.1,0.1,0.5,1,0", "x2 < x1"),
    ("v1,0902,0.1,0.1,0.5,0.5,zero,0", "action id 'zero' is not a number"),
    ("v1,0902,0.1,0.1,0.5,0.5,0,0", "action id 0 is not >= 1"),
])
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    p = tmp_path / "bad.csv"
    p.write_text(f"v1,0901,0.1,0.1,0.5,0.5,1,0\n{row}\n")
    with pytest.raises(DataError) as e:
        read_ava_csv(p)
    assert str(e.value).startswith(f"{p}:2: ") and message in str(e.value) and "\n" not in str(e.value)


def test_label_map_reads_both_pbtxt_layouts(tmp_path):
    p = tmp_path / "a.pbtxt"
    p.write_text('item {\n  name: "bend/bow (at the waist)"\n  id: 1\n}\nitem {\n  name: "crawl"\n  id: 3\n}\n')
    assert read_label_map(p) == {1: "bend/bow (at the waist)", 3: "crawl"}
    q = write_label_map(tmp_path / "b.pbtxt", {2: "stand", 80: "watch (a person)"})
    assert read_label_map(q) == {2: "stand", 80: "watch (a person)"}
    p.write_text('label {\n  name: "x"\n  label_id: 1\n}\nlabel {\n  name: "y"\n  label_id: 1\n}\n')
    with pytest.raises(DataError, match=r"a.pbtxt:7: id 1 appears twice"):
        read_label_map(p)
