"""``tubelet track``: a tiny UTT run trained from the CLI tracks the real demo clip from its known first box."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import TRACKING, error_lines
from tubelet.cli.main import main
from tubelet.cli.track import draw_boxes

TINY = ["trainer.max_steps=2", "trainer.log_every_n_steps=1", "data.crop_size=64", "data.synthetic.size=48", "data.synthetic.num_videos=16",
        "data.sot.samples_per_epoch=8", "data.batch_size=2", "method.dim=32", "method.heads=2", "method.ffn_dim=64",
        "trainer.accelerator=cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("utt") / "run"
    assert main(["fit", "utt_synthetic", *TINY, f"run_dir={out}"]) == 0
    return out


def test_a_utt_run_trains_on_pairs_without_a_video_key(run):
    import json

    # tracking pairs hold "reference" and "search", no "video": every step must still train and log
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and metrics["skipped_steps"] == 0
    assert np.isfinite(metrics["train/loss"]) and 0 <= metrics["train/iou"] <= 1


def test_track_writes_one_box_per_frame_renders_and_scores(run, tmp_path, capsys):
    gt = tmp_path / "gt.txt"
    gt.write_text("".join("371,411,79,235\n" for _ in range(8)))
    boxes_file, gif = tmp_path / "boxes.txt", tmp_path / "demo.gif"
    rc = main(["track", str(TRACKING / "demo.mp4"), "--init", "371,411,79,235", "--run", str(run),
               "--out", str(boxes_file), "--render", str(gif), "--eval", str(gt)])
    assert rc == 0
    boxes = np.loadtxt(boxes_file, delimiter=",")
    assert boxes.shape == (8, 4)
    np.testing.assert_array_equal(boxes[0], [371, 411, 79, 235])
    assert ((boxes[:, 0] >= 0) & (boxes[:, 0] + boxes[:, 2] <= 1920 + 1e-6) & (boxes[:, 2] > 0)).all()
    with Image.open(gif) as im:
        assert im.n_frames == 8 and im.size == (1920, 1080)
    out = capsys.readouterr()
    assert "boxes: " in out.out and "success " in out.out and "precision " in out.out
    assert "fps=" in out.err  # the progress bar's rate


def test_track_refuses_bad_inputs_with_one_line(run, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("1,1,5,5\n")
    demo, init = str(TRACKING / "demo.mp4"), "371,411,79,235"
    for argv, message in (
        (["--init", init, "--run", str(run), "--render", "x.avi"], "--render x.avi: the file must end in .mp4 or .gif"),
        (["--init", "371,411", "--run", str(run)], "initial box '371,411' must be four numbers x,y,w,h"),
        (["--init", init, "--run", str(run), "--eval", str(short)], "1 boxes for the 8 frames"),
        (["--init", init, "--run", str(tmp_path)], "not a run folder (no config.yaml)"),
    ):
        assert main(["track", demo, *argv]) != 0
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and message in lines[0], lines


def test_draw_boxes_outlines_the_box_only():
    f = np.zeros((1, 10, 10, 3), np.uint8)
    out = draw_boxes(f, np.array([[2.0, 3, 4, 5]]), colour=(255, 255, 255), width=1)
    assert out[0, 3, 2:7].min() == 255 and out[0, 8, 2:7].min() == 255  # top and bottom edges
    assert out[0, 3:9, 2].min() == 255 and out[0, 3:9, 6].min() == 255  # left and right edges
    assert out[0, 5, 4].max() == 0 and f.max() == 0  # inside untouched, input not modified


def test_the_tracker_crops_with_the_factor_the_run_was_trained_with(run):
    from tubelet.config import load_recipe
    from tubelet.engine.track import load_tracker

    # utt_synthetic trains on crops of 4x the target; tracking at another factor would show the model its
    # target at a scale it never saw
    trained = load_recipe(run / "config.yaml").data.sot.search_factor
    assert trained == 4.0
    assert load_tracker(run).factor == trained
