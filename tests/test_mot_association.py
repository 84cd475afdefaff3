"""UTT's MOT association (METHODS.md section 9, "Inference, MOT"): the 1 - GIoU gate at 1.2, the age of
unmatched tracks (10 kept, 11 dropped), the score thresholds, identities across frames, the IoU-only
baseline, and the association on the TUD sequences with exact detections."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TRACKING
from tubelet.methods.utt_mot import AssociationConfig, MOTTracker, associate, pair_cost


def _tracker(**kw):
    return MOTTracker(AssociationConfig(**kw))


def test_pair_cost_is_one_minus_giou_and_iou():
    a = np.array([[0.0, 0, 2, 2]])
    b = np.array([[1.0, 1, 3, 3], [0, 0, 2, 2], [4, 0, 6, 2]])
    # overlap 1, union 7, hull 9: GIoU = 1/7 - 2/9; disjoint at distance 2: IoU 0, hull 12, union 8
    np.testing.assert_allclose(pair_cost(a, b, "giou")[0], [1 - (1 / 7 - 2 / 9), 0.0, 1 + 4 / 12])
    np.testing.assert_allclose(pair_cost(a, b, "iou")[0], [1 - 1 / 7, 0.0, 1.0])


def test_hungarian_accepts_cost_1_2_and_rejects_above():
    rows, cols = associate(np.array([[1.2]]), 1.2)
    assert rows.tolist() == [0] and cols.tolist() == [0]
    rows, _ = associate(np.array([[np.nextafter(1.2, 2.0)]]), 1.2)
    assert rows.tolist() == []
    # the optimum, not the greedy choice: greedy would give track 0 the 0.1 and leave track 1 at 1.0
    rows, cols = associate(np.array([[0.1, 0.2], [0.15, 1.0]]), 1.2)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}


def test_boxes_at_giou_minus_0_2_still_match_and_beyond_start_a_new_track():
    # unit boxes side by side with a gap of 0.5: IoU 0, hull 2.5, union 2, GIoU = -0.2, cost 1.2
    gap = np.array([[1.5, 0, 2.5, 1]])
    assert pair_cost(np.array([[0.0, 0, 1, 1]]), gap)[0, 0] == pytest.approx(1.2, abs=1e-12)
    t = _tracker()
    first = t.update(None, [[0, 0, 1, 1]], [0.9])[0]
    assert t.update(None, gap, [0.9])[0].tolist() == first.tolist()  # accepted: the same identity
    t = _tracker()
    t.update(None, [[0, 0, 1, 1]], [0.9])
    ids, _, _ = t.update(None, [[1.6, 0, 2.6, 1]], [0.9])  # GIoU -0.231, cost 1.23: rejected
    assert ids.tolist() == [2]


def test_an_unmatched_track_lives_ten_frames_and_is_dropped_at_eleven():
    box = [[10.0, 10, 20, 20]]
    for missed, same in ((10, True), (11, False)):
        t = _tracker()
        (tid,), _, _ = t.update(None, box, [0.9])
        for _ in range(missed):
            ids, _, _ = t.update(None, np.zeros((0, 4)), np.zeros(0))
            assert ids.size == 0  # an unmatched track is not output
        ids, _, _ = t.update(None, box, [0.9])
        assert (ids.tolist() == [tid]) is same, (missed, ids)
    t = _tracker(max_age=0)  # max_age 0: dropped after one miss
    t.update(None, box, [0.9])
    t.update(None, np.zeros((0, 4)), np.zeros(0))
    assert len(t.ids) == 0


def test_score_thresholds_for_detections_and_new_tracks():
    t = _tracker()
    ids, _, _ = t.update(None, [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [0.4, 0.41, 0.9])
    assert len(ids) == 2  # 0.4 is not above the new-track threshold
    # a detection at 0.3 continues a track but starts none; 0.1 is not a detection at all
    ids, boxes, scores = t.update(None, [[21, 0, 31, 10], [0, 0, 10, 10], [41, 0, 51, 10]], [0.3, 0.3, 0.1])
    assert ids.tolist() == [1] and boxes.tolist() == [[21, 0, 31, 10]] and scores.tolist() == [0.3]


def test_identities_follow_moving_objects_and_matched_tracks_take_the_detection():
    t = _tracker()
    out = []
    for step in range(8):  # two objects moving toward each other, 3 px a frame, 10 px wide
        dets = np.array([[3.0 * step, 0, 3.0 * step + 10, 10], [60 - 3.0 * step, 30, 70 - 3.0 * step, 40]])
        order = np.random.default_rng(step).permutation(2)  # detections in any order
        ids, boxes, _ = t.update(None, dets[order], np.array([0.9, 0.8])[order])
        out.append(dict(zip(ids.tolist(), map(tuple, boxes))))
    for step, frame in enumerate(out):
        assert frame[1] == (3.0 * step, 0, 3.0 * step + 10, 10)
        assert frame[2] == (60 - 3.0 * step, 30, 70 - 3.0 * step, 40)


def test_the_propagator_moves_tracks_before_matching():
    moved = []

    def shift(frame, boxes):  # a motion model that knows the objects move 30 px a frame
        moved.append(len(boxes))
        return boxes + np.array([30.0, 0, 30, 0])

    t = MOTTracker(AssociationConfig(), shift)
    t.update(None, [[0, 0, 10, 10]], [0.9])
    ids, _, _ = t.update(None, [[30, 0, 40, 10]], [0.9])  # 20 px from the old box: only the moved one matches
    assert ids.tolist() == [1] and moved == [0, 1]
    plain = _tracker()
    plain.update(None, [[0, 0, 10, 10]], [0.9])
    assert plain.update(None, [[30, 0, 40, 10]], [0.9])[0].tolist() == [2]


def test_the_iou_baseline_rejects_boxes_without_overlap():
    t = _tracker(cost="iou")
    t.update(None, [[0, 0, 10, 10]], [0.9])
    assert t.update(None, [[9, 0, 19, 10]], [0.9])[0].tolist() == [1]  # IoU 1/19: linked
    assert t.update(None, [[19.5, 0, 29.5, 10]], [0.9])[0].tolist() == [2]  # no overlap: a new track


@pytest.mark.parametrize("seq", ["TUD-Campus", "TUD-Stadtmitte"])
def test_exact_detections_on_tud_give_perfect_scores_and_jitter_costs_something(seq):
    from tubelet.data.datasets.tracking import jittered_detections, read_mot_file, read_seqinfo
    from tubelet.engine.track import track_mot
    from tubelet.eval.tracking import mot_metrics
    from tubelet.methods.utt_mot import DetectionsByFrame

    n = read_seqinfo(TRACKING / seq / "seqinfo.ini")["seqlength"]
    gt = read_mot_file(TRACKING / seq / "gt.txt", "gt", n)
    exact = jittered_detections(gt, 0, box_noise=0.0, drop=0.0, false_positives=0.0)
    np.testing.assert_allclose(np.sort(exact.boxes, 0), np.sort(gt.boxes, 0))
    assert (exact.conf >= 0.3).all() and (exact.conf <= 1).all()
    exact.conf[:] = 1.0  # a first detection below 0.4 would start its track a frame late
    noisy = jittered_detections(gt, 0)
    for link in ("giou", "iou"):
        for dets, perfect in ((exact, True), (noisy, False)):
            src = DetectionsByFrame(dets)
            rows = track_mot(_tracker(cost=link), n, lambda t, frame: src(t))
            res = mot_metrics({seq: (gt, rows, n)})["COMBINED"]
            if perfect:
                assert res["MOTA"] == pytest.approx(1.0) and res["IDF1"] == pytest.approx(1.0), (link, res)
                assert res["HOTA"] == pytest.approx(1.0, abs=1e-6)
            else:
                assert 0.5 < res["MOTA"] < 1.0 and 0.4 < res["HOTA"] < 1.0, (link, res)
