"""Tracking metrics on the real annotations of ../shared/data/tracking, against the values the field's
tools give on them (SOURCES.md)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TRACKING
from tubelet.data.datasets.tracking import MOTRows, read_box_file, read_mot_file, read_seqinfo
from tubelet.errors import ConfigError, DataError
from tubelet.eval.tracking import got10k_metrics, mot_metrics, sot_iou, sot_ope

pytest.importorskip("trackeval")

SEQS = ("TUD-Campus", "TUD-Stadtmitte")
# py-motmetrics test_motchallenge_files (SOURCES.md); MOTP there is 1 - mean IoU
EXPECTED = {
    "TUD-Campus": dict(IDF1=0.557659, IDP=0.729730, IDR=0.451253, CLR_Re=0.582173, CLR_Pr=0.941441, MT=1, PT=6,
                       ML=1, CLR_FP=13, CLR_FN=150, IDSW=7, Frag=7, MOTA=0.526462, MOTP=1 - 0.277201, HOTA=0.39140),
    "TUD-Stadtmitte": dict(IDF1=0.644619, IDP=0.819760, IDR=0.531142, CLR_Re=0.608997, CLR_Pr=0.939920, MT=5, PT=4,
                           ML=1, CLR_FP=45, CLR_FN=452, IDSW=7, Frag=6, MOTA=0.564014, MOTP=1 - 0.345904,
                           HOTA=0.39785),
    "COMBINED": dict(IDF1=0.624296, IDP=0.799176, IDR=0.512211, CLR_Re=0.602640, CLR_Pr=0.940268, MT=6, PT=10, ML=2,
                     CLR_FP=58, CLR_FN=602, IDSW=14, Frag=13, MOTA=0.555116, MOTP=1 - 0.330177, HOTA=0.39996),
}


def _tud(tracker_is_gt: bool = False) -> dict:
    out = {}
    for s in SEQS:
        n = int(read_seqinfo(TRACKING / s / "seqinfo.ini")["seqlength"])
        gt = read_mot_file(TRACKING / s / "gt.txt", "gt", n)
        out[s] = (gt, gt if tracker_is_gt else read_mot_file(TRACKING / s / "test.txt", "results", n), n)
    return out


def test_mot_metrics_reproduce_py_motmetrics_and_trackeval_on_tud():
    res = mot_metrics(_tud())
    for seq, want in EXPECTED.items():
        for key, value in want.items():
            assert res[seq][key] == pytest.approx(value, abs=1e-3), (seq, key)
    assert res["TUD-Campus"]["GT_IDs"] == 8 and res["TUD-Stadtmitte"]["GT_IDs"] == 10


def test_ground_truth_as_tracker_scores_100():
    res = mot_metrics(_tud(tracker_is_gt=True))
    for seq in (*SEQS, "COMBINED"):
        for key in ("HOTA", "MOTA", "MOTP", "IDF1", "DetA", "AssA"):
            assert res[seq][key] == pytest.approx(1.0), (seq, key)
        assert res[seq]["IDSW"] == 0 and res[seq]["CLR_FP"] == 0


def _rows(frame, ids, boxes, conf=None, cls=None, vis=None) -> MOTRows:
    n = len(frame)
    return MOTRows(np.asarray(frame), np.asarray(ids), np.asarray(boxes, float),
                   np.ones(n) if conf is None else np.asarray(conf, float),
                   np.ones(n, np.int64) if cls is None else np.asarray(cls), np.ones(n) if vis is None else
                   np.asarray(vis, float))


def test_mot17_preprocessing_drops_tracks_on_distractors_and_unflagged_gt():
    # frame 1: a pedestrian, a static person (class 7, a distractor) and an unflagged pedestrian
    gt = _rows([1, 1, 1], [1, 2, 3], [[0, 0, 10, 10], [50, 0, 10, 10], [100, 0, 10, 10]], conf=[1, 1, 0],
               cls=[1, 7, 1])
    tr = _rows([1, 1, 1], [1, 2, 3], [[0, 0, 10, 10], [50, 0, 10, 10], [100, 0, 10, 10]])
    mot17 = mot_metrics({"s": (gt, tr, 1)}, benchmark="MOT17")["s"]
    # the track on the distractor is removed; the one on the unflagged pedestrian stays a false positive
    assert (mot17["CLR_TP"], mot17["CLR_FP"], mot17["CLR_FN"]) == (1, 1, 0)
    mot15 = mot_metrics({"s": (gt, tr, 1)}, benchmark="MOT15")["s"]
    assert (mot15["CLR_TP"], mot15["CLR_FP"], mot15["CLR_FN"]) == (2, 1, 0)


def test_mot_metrics_refuse_frames_beyond_the_sequence_and_unknown_benchmarks():
    gt = _rows([1, 5], [1, 1], [[0, 0, 1, 1]] * 2)
    with pytest.raises(DataError, match="frame 5 beyond the sequence's 3 frames"):
        mot_metrics({"s": (gt, gt, 3)})
    with pytest.raises(ConfigError, match="MOT18"):
        mot_metrics({"s": (gt, gt, 5)}, benchmark="MOT18")


def _sot_fixture() -> tuple[list[np.ndarray], list[np.ndarray]]:
    gts, preds = [], []
    for v in ("video-1", "video-2"):
        gts.append(read_box_file(TRACKING / "sot_eval" / v / "gt_for_eval.txt"))
        p = read_box_file(TRACKING / "sot_eval" / v / "track_results.txt")  # x1,y1,x2,y2
        preds.append(np.concatenate([p[:, :2], p[:, 2:] - p[:, :2]], axis=1))
    return preds, gts


def test_sot_ope_reproduces_the_toolkit_values():
    preds, gts = _sot_fixture()
    r = sot_ope(preds, gts)
    assert r["success"] == pytest.approx(67.524, abs=1e-3)
    assert r["precision"] == pytest.approx(50.0, abs=1e-9)
    assert r["norm_precision"] == pytest.approx(70.0, abs=1e-9)
    assert r["success_curve"].shape == (21,) and r["success_curve"][0] == pytest.approx(1.0)
    perfect = sot_ope(gts, gts)
    assert (perfect["success"], perfect["precision"], perfect["norm_precision"]) == (pytest.approx(100 * 20 / 21),
                                                                                    100.0, 100.0)


def test_pytracking_convention_differs_where_it_says():
    gt = np.array([[10.0, 10, 10, 10], [10, 10, 10, 10], [5, 5, 0, 0]])
    pred = np.array([[100.0, 100, 5, 5], [15, 10, 10, 10], [300, 300, 5, 5]])
    # the +1 rule on inclusive pixel corners: 15..24 and 10..19 share 5 columns, as 15-25 and 10-20 do
    assert sot_iou(pred[1:2], gt[1:2], "pytracking")[0] == pytest.approx(50 / 150)
    assert sot_iou(pred[1:2], gt[1:2])[0] == pytest.approx(50 / 150)
    assert sot_iou(np.array([[0.0, 0, 2, 2]]), np.array([[1.0, 1, 2, 2]]), "pytracking")[0] == pytest.approx(1 / 7)
    tk, py = sot_ope([pred], [gt]), sot_ope([pred], [gt], "pytracking")
    # toolkit: frame 0 is a miss at every threshold, frame 1 hits below 1/3, frame 2 (empty gt) misses
    assert tk["success_curve"][0] == pytest.approx(1 / 3)
    # pytracking: frame 0 replaced by the ground truth, so it hits up to IoU 1 (exclusive)
    assert py["success_curve"][0] == pytest.approx(2 / 3) and py["success_curve"][-2] == pytest.approx(1 / 3)
    # centre errors: toolkit frame 0 is 95 px off (a miss), frame 2's empty gt still has a positive centre, so
    # its distance counts (a miss); pytracking counts frame 2 as a hit and frame 0 is the ground truth
    assert tk["precision"] == pytest.approx(100 / 3)
    assert py["precision"] == pytest.approx(100.0)
    with pytest.raises(ConfigError, match="'otb' is not one of toolkit, pytracking"):
        sot_ope([pred], [gt], "otb")


def test_got10k_ao_and_success_rates_skip_the_first_frame():
    gt = np.array([[0.0, 0, 10, 10]] * 4)
    pred = np.array([[50.0, 50, 1, 1], [0, 0, 10, 10], [0, 0, 10, 5], [5, 0, 10, 10]])
    r = got10k_metrics([pred], [gt])
    ious = np.array([1.0, 0.5, 50 / 150])
    assert r["AO"] == pytest.approx(100 * ious.mean())
    assert r["SR0.5"] == pytest.approx(100 / 3) and r["SR0.75"] == pytest.approx(100 / 3)
    # pooled over frames: a second sequence of 2 frames (1 evaluated, IoU 0) weighs 1/4, not 1/2
    r2 = got10k_metrics([pred, gt[:2] + 100], [gt, gt[:2]])
    assert r2["AO"] == pytest.approx(100 * ious.sum() / 4)
    with pytest.raises(DataError, match=r"predictions \(3, 4\) and ground truth \(4, 4\)"):
        got10k_metrics([pred[:3]], [gt])
