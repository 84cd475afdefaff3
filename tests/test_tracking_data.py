"""Tracking sequences (SOT and MOT formats, the synthetic set's boxes) on ../shared/data/tracking, with the
facts of its SOURCES.md, and the errors malformed rows give."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import TRACKING
from tubelet.config.schema import SyntheticConfig
from tubelet.data.datasets.tracking import (
    load_mot_sequence,
    load_sot_sequence,
    mot_training_boxes,
    parse_init_box,
    read_box_file,
    read_mot_file,
    read_seqinfo,
    sot_from_video,
    synthetic_mot_rows,
    synthetic_sot_sequence,
    vot_polygon_to_box,
)
from tubelet.data.synthetic import render_clip
from tubelet.errors import DataError


def test_vot_polygon_conversions_give_frame_1_of_bag_as_the_tools_do():
    poly = read_box_file(TRACKING / "bag" / "groundtruth.txt", widths=(8,))
    assert poly.shape == (196, 8)
    np.testing.assert_allclose(poly[0], [334.02, 128.36, 438.19, 188.78, 396.39, 260.83, 292.23, 200.41])
    np.testing.assert_allclose(vot_polygon_to_box(poly[:1], "vot")[0], [292.23, 128.36, 145.96, 132.47], atol=1e-9)
    x, y, w, h = vot_polygon_to_box(poly[:1], "pysot")[0]
    # pysot's get_axis_aligned_bbox: cx, cy, w, h = 365.208, 194.595, 106.131, 96.414
    np.testing.assert_allclose([x + (w - 1) / 2, y + (h - 1) / 2, w, h], [365.208, 194.595, 106.131, 96.414],
                               atol=1e-3)
    with pytest.raises(DataError, match="'opencv' is not one of vot, pysot"):
        vot_polygon_to_box(poly, "opencv")


def test_bag_loads_as_a_vot_sequence_with_its_frames():
    seq = load_sot_sequence(TRACKING / "bag")
    assert seq.boxes.shape == (196, 4) and seq.visible.all()
    np.testing.assert_allclose(seq.init_box, [292.23, 128.36, 145.96, 132.47])
    meta = seq.reader().metadata
    assert (meta.num_frames, meta.width, meta.height) == (196, 480, 360)


def test_mot_files_parse_with_the_counts_sources_states():
    for seq, rows, frames, ids, trows, tids in (("TUD-Campus", 359, 71, 8, 222, 13),
                                                ("TUD-Stadtmitte", 1156, 179, 10, 749, 12)):
        s = load_mot_sequence(TRACKING / seq)
        assert (s.name, s.num_frames) == (seq, frames)
        assert len(s.gt) == rows and len(np.unique(s.gt.id)) == ids and s.gt.frame.max() == frames
        t = read_mot_file(TRACKING / seq / "test.txt", "results", frames)
        assert len(t) == trows and len(np.unique(t.id)) == tids
    r = read_mot_file(TRACKING / "iotest" / "motchallenge.txt")
    # py-motmetrics' expected rows, whose X and Y are the file's minus 1 (its MATLAB correction)
    want = np.array([(1, 1, 398, 181, 121, 229, 1, -1, -1), (1, 2, 281, 200, 92, 184, 1, -1, -1),
                     (2, 2, 268, 201, 87, 182, 1, -1, -1), (2, 3, 70, 150, 100, 284, 1, -1, -1),
                     (2, 4, 199, 205, 55, 137, 1, -1, -1)], dtype=float)
    got = np.column_stack([r.frame, r.id, r.boxes[:, 0] - 1, r.boxes[:, 1] - 1, r.boxes[:, 2:], r.conf, r.cls, r.vis])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("text, message", [
    ("1,1,10,10,5,5,1\n0,2,10,10,5,5,1\n", r"x\.txt:2: frame < 1 \(MOT frames count from 1\) \(frame 0, id 2\)"),
    ("1,1,10,10,5,5,1\n1,1,20,10,5,5,1\n", r"x\.txt:2: id 1 appears twice in frame 1"),
    ("1,1,10,10,5\n", r"x\.txt:1: expected 6 or 7 or 8 or 9 or 10 numbers, got 5"),
    ("1,1,10,ten,5,5\n", r"x\.txt:1: not a number in '1,1,10,ten,5,5'"),
    ("1,1,10,10,5,5\n\n2,1,10,10,5,5\n", r"x\.txt:2: expected 6 .* got 0"),
    ("1,1,10,10,-5,5\n", r"x\.txt:1: negative width or height"),
    ("4,1,10,10,5,5\n", r"x\.txt:1: frame beyond seqLength 3"),
    ("1,0,10,10,5,5\n", r"x\.txt:1: id < 1"),
])
def test_malformed_mot_rows_name_file_and_line(tmp_path, text, message):
    p = tmp_path / "x.txt"
    p.write_text(text)
    with pytest.raises(DataError, match=message):
        read_mot_file(p, "gt", num_frames=3)


def test_detections_may_have_id_minus_one_and_seqinfo_needs_its_length(tmp_path):
    p = tmp_path / "det.txt"
    p.write_text("1,-1,10,10,5,5,0.9\n1,-1,12,10,5,5,0.8\n")
    assert read_mot_file(p, "det").id.tolist() == [-1, -1]
    ini = tmp_path / "seqinfo.ini"
    ini.write_text("[Sequence]\nname=a\nframeRate=30\n")
    with pytest.raises(DataError, match="seqinfo.ini: seqLength missing"):
        read_seqinfo(ini)
    ini.write_text("[Sequence]\nname=a\nseqLength=ten\n")
    with pytest.raises(DataError, match="seqlength=ten is not a number"):
        read_seqinfo(ini)


def test_mot17_training_rules_keep_flagged_visible_pedestrians(tmp_path):
    p = tmp_path / "gt.txt"
    p.write_text("1,1,0,0,10,10,1,1,0.9\n"   # target
                 "1,2,0,0,10,10,0,1,0.9\n"   # pedestrian not to be considered: neither target nor ignored
                 "1,3,0,0,10,10,1,7,1.0\n"   # static person: an ignore region
                 "1,4,0,0,10,10,1,1,0.1\n"   # pedestrian, 10% visible
                 "1,5,0,0,10,10,1,3,1.0\n")  # car: neither
    gt = read_mot_file(p)
    tgt, ign = mot_training_boxes(gt, "MOT17")
    assert tgt.id.tolist() == [1, 4] and ign.id.tolist() == [3]
    tgt, ign = mot_training_boxes(gt, "MOT17", min_visibility=0.25)
    assert tgt.id.tolist() == [1] and ign.id.tolist() == [3, 4]
    assert mot_training_boxes(gt, "MOT15")[0].id.tolist() == [1, 3, 4, 5]
    p.write_text("1,1,0,0,10,10,1,14,1\n")
    with pytest.raises(DataError, match="row 1 has class 14, not one of MOT17's 1-13"):
        mot_training_boxes(read_mot_file(p), "MOT17")


def _frames(folder, n):
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (32, 24), (i, 0, 0)).save(folder / f"{i + 1:08d}.jpg")


def test_got10k_and_lasot_layouts_read_visibility(tmp_path):
    got = tmp_path / "GOT-10k_Train_000001"
    _frames(got, 3)
    (got / "groundtruth.txt").write_text("1,2,10,8\n2,2,10,8\n0,0,0,0\n")
    (got / "absence.label").write_text("0\n1\n0\n")
    seq = load_sot_sequence(got)
    assert seq.visible.tolist() == [True, False, False] and seq.reader().metadata.num_frames == 3
    lasot = tmp_path / "airplane-1"
    _frames(lasot / "img", 2)
    (lasot / "groundtruth.txt").write_text("1\t2\t10\t8\n2\t2\t10\t8\n")
    (lasot / "full_occlusion.txt").write_text("0,0")
    (lasot / "out_of_view.txt").write_text("0,1")
    seq = load_sot_sequence(lasot)
    assert seq.visible.tolist() == [True, False] and seq.source.endswith("img")
    (lasot / "out_of_view.txt").write_text("0,1,1")
    with pytest.raises(DataError, match="out_of_view.txt: expected 2 flags"):
        load_sot_sequence(lasot)
    (got / "groundtruth.txt").write_text("1,2,10,8\n1,2,10,8\n1,2,10,8\n1,2,10,8\n")
    with pytest.raises(DataError, match="groundtruth.txt: 4 boxes but only 3 frames"):
        load_sot_sequence(got)


def test_a_video_with_an_initial_box():
    seq = sot_from_video(TRACKING / "demo.mp4", "371,411,79,235")
    np.testing.assert_array_equal(seq.init_box, [371, 411, 79, 235])
    assert seq.fps == 3.0 and seq.reader().metadata.num_frames == 8
    with pytest.raises(DataError, match="lies outside the 1920x1080 frames"):
        sot_from_video(TRACKING / "demo.mp4", "2000,411,79,235")
    with pytest.raises(DataError, match="initial box '1,2,3' must be four numbers x,y,w,h"):
        parse_init_box("1,2,3")
    with pytest.raises(DataError, match="width 0 and height 5: both must be > 0"):
        parse_init_box("1,2,0,5")


def test_synthetic_boxes_as_sot_and_mot_sequences():
    clip = render_clip(SyntheticConfig(frames=6, size=48, min_objects=2, max_objects=3), 3)
    seq = synthetic_sot_sequence(clip, "synthetic:3")
    b = clip.boxes[:, 0]
    np.testing.assert_allclose(seq.boxes, np.column_stack([b[:, :2], b[:, 2:] - b[:, :2]]), rtol=1e-6)
    assert seq.visible.all() and seq.reader().get_frames([0, 5]).shape == (2, 48, 48, 3)
    rows = synthetic_mot_rows(clip)
    present = clip.ids >= 0
    assert len(rows) == present.sum() and rows.frame.min() == 1 and rows.id.min() == 1
    t, k = np.nonzero(present)
    np.testing.assert_allclose(rows.boxes[:, 2:], (clip.boxes[t, k, 2:] - clip.boxes[t, k, :2]), rtol=1e-6)
    with pytest.raises(DataError, match="object 7 does not exist"):
        synthetic_sot_sequence(clip, "synthetic:3", object_id=7)
