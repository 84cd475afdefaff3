"""``tubelet track --mot``: a tiny UTT run trained from the CLI tracks a held-out synthetic sequence (a MOT
sequence folder with its frames, det.txt and gt.txt), writes MOT results and an identity-coloured GIF and
scores them; the track transformer's cost grows with K^2, not with the search map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TRACKING, error_lines
from tubelet.cli.main import main

TINY = ["trainer.max_steps=2", "trainer.log_every_n_steps=1", "data.crop_size=64", "data.synthetic.size=48",
        "data.synthetic.num_videos=16", "data.synthetic.frames=8", "data.mot.samples_per_epoch=4", "data.batch_size=2",
        "method.dim=32", "method.heads=2", "method.ffn_dim=64", "method.iterations=2", "trainer.accelerator=cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("utt_mot") / "run"
    assert main(["fit", "utt_mot_synthetic", *TINY, f"run_dir={out}"]) == 0
    return out


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    """A test-split synthetic clip as a MOT sequence folder, with the jittered ground truth as det.txt."""
    from tubelet.config import load_recipe
    from tubelet.data.datasets.tracking import jittered_detections, mot_sequences, write_mot_sequence

    seq = mot_sequences("synthetic", load_recipe("utt_mot_synthetic", TINY).data.synthetic, "test")[0]
    seq.det = jittered_detections(seq.gt, 0, frame_size=(48, 48), num_frames=seq.num_frames)
    return write_mot_sequence(seq, tmp_path_factory.mktemp("seq") / "SYN-01"), seq


def test_mot_track_writes_results_renders_identities_and_scores(run, sequence, tmp_path, capsys):
    folder, seq = sequence
    out, gif = tmp_path / "res.txt", tmp_path / "mot.gif"
    assert main(["track", str(folder), "--mot", "--run", str(run), "--out", str(out), "--render", str(gif),
                 "--eval", str(folder / "gt" / "gt.txt")]) == 0
    rows = np.loadtxt(out, delimiter=",", ndmin=2)
    assert rows.shape[1] == 10 and (rows[:, 0] >= 1).all() and (rows[:, 0] <= 8).all()
    for f in np.unique(rows[:, 0]):  # one box per identity per frame
        assert len(np.unique(rows[rows[:, 0] == f, 1])) == (rows[:, 0] == f).sum()
    assert (rows[:, 6] > 0.4).any()  # detection scores carried
    with Image.open(gif) as im:
        assert im.n_frames == 8 and im.size == (48, 48)
    std = capsys.readouterr()
    assert "det/det.txt" in std.out and "UTT track transformer" in std.out
    assert "HOTA " in std.out and "MOTA " in std.out and "IDF1 " in std.out
    assert "fps=" in std.err


def test_the_association_alone_from_jittered_ground_truth_and_the_iou_baseline(sequence, tmp_path, capsys):
    folder, seq = sequence
    gt = str(folder / "gt" / "gt.txt")
    scores = {}
    for link in ("giou", "iou"):
        out = tmp_path / f"{link}.txt"
        assert main(["track", str(folder), "--mot", "--jitter-gt", gt, "--jitter-drop", "0", "--jitter-fp", "0",
                     "--jitter-noise", "0", "--link", link, "--new-threshold", "0.2", "--out", str(out),
                     "--eval", gt]) == 0
        text = capsys.readouterr().out
        assert "stand-in for a detector" in text and "association alone" in text
        scores[link] = {k: float(text.split(f"{k} ")[1].split()[0]) for k in ("HOTA", "MOTA", "IDF1")}
    # exact boxes, each scored above the new-track threshold: every box is output, so only identity switches
    # (an object wrapping round the torus jumps) keep MOTA below 100
    from tubelet.data.datasets.tracking import read_mot_file

    res = read_mot_file(tmp_path / "giou.txt", "results")
    assert len(res) == len(seq.gt)
    for link in ("giou", "iou"):
        assert scores[link]["MOTA"] > 90 and scores[link]["HOTA"] > 60, scores


def test_mot_tracking_refuses_bad_inputs_with_one_line(run, sequence, tmp_path, capsys):
    folder, _ = sequence
    gt = str(folder / "gt" / "gt.txt")
    for argv, message in (
        ([str(folder), "--det", gt], "--det is for multi-object tracking: add --mot"),
        ([str(folder), "--init", "1,1,5,5", "--run", str(run), "--max-age", "3"], "--max-age is for multi-object tracking"),
        ([str(folder), "--mot", "--det", gt, "--jitter-seed", "2"], "set up --jitter-gt, which is not given"),
        ([str(folder), "--mot", "--init", "1,1,5,5"], "--init is the single object's first box"),
        ([str(folder), "--mot", "--det", gt, "--jitter-gt", gt], "--det and --jitter-gt: name one source"),
        ([str(TRACKING / "TUD-Campus"), "--mot", "--run", str(run), "--jitter-gt", str(TRACKING / "TUD-Campus" / "gt.txt")],
         "the sequence has no frames (img1/), which --run and --render need"),
        ([str(TRACKING / "TUD-Campus"), "--mot"], "no detections: name --det det.txt"),
        ([str(folder), "--mot", "--max-cost", "-1"], "max_cost"),
        ([str(tmp_path / "nothing"), "--mot"], "no such video, frame folder or MOT sequence folder"),
    ):
        assert main(["track", *argv]) != 0
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and message in lines[0], (argv, lines)


def test_the_propagator_maps_boxes_through_the_letterbox_and_back():
    from tubelet.methods.utt_mot import UTTPropagator
    from tubelet.models.utt import UTT, UTTConfig

    torch.manual_seed(0)
    utt = UTT(UTTConfig(backbone="resnet18_image", dim=32, heads=2, ffn_dim=64, iterations=2))
    prop = UTTPropagator(utt, 64, (0.5,) * 3, (0.25,) * 3)
    frames = np.random.default_rng(0).integers(0, 255, (2, 30, 50, 3), dtype=np.uint8)  # not square
    boxes = np.array([[5.0, 4, 20, 25], [30, 10, 49, 29]])
    assert prop(frames[0], boxes) is boxes  # no previous frame yet: nothing to move from
    # an untrained box head returns its proposal: the previous boxes, through the letterbox and back
    np.testing.assert_allclose(prop(frames[1], boxes), boxes, atol=1e-4)
    assert prop(frames[1], np.zeros((0, 4))).shape == (0, 4)


def test_the_correlation_cost_grows_with_k_squared_not_the_search_map():
    """Target transformer FLOPs (torch.utils.flop_counter) at two search maps and two RoI sizes K: equal
    across maps, and the K^2 C -> 2C layer and the correlation are exactly 2 N K^2 C (2C + 1) per
    iteration; the target decoder's full cross-attention grows with H W."""
    from torch.utils.flop_counter import FlopCounterMode

    from tubelet.models.utt import UTT, UTTConfig

    N, C, L = 10, 32, 2
    flops = {}
    for K in (5, 7):
        torch.manual_seed(0)
        utt = UTT(UTTConfig(backbone="resnet18_image", dim=C, heads=2, ffn_dim=64, roi_size=K, iterations=L)).eval()
        for hw in (8, 16):
            target = torch.randn(1, N, C)
            fmap = torch.randn(1, utt.backbone.channels(16), hw, hw)
            corner = torch.rand(1, N, 2) * 0.5
            with FlopCounterMode(display=False) as fc, torch.no_grad():
                utt.track(target, fmap, (16 * hw, 16 * hw), torch.cat([corner, corner + 0.3], -1))
            counts = fc.get_flop_counts()
            flops[K, hw] = {m: sum(counts[m].values()) for m in ("_RefineBlock", "_RefineBlock.fc.0", "_CrossBlock.attn")}
    for K in (5, 7):
        assert flops[K, 8]["_RefineBlock"] == flops[K, 16]["_RefineBlock"]  # whatever H W is
        assert flops[K, 8]["_RefineBlock.fc.0"] == L * 2 * N * K * K * C * 2 * C
        assert flops[K, 16]["_CrossBlock.attn"] > 3 * flops[K, 8]["_CrossBlock.attn"]  # 4x the positions
    k_part = {K: flops[K, 8]["_RefineBlock"] for K in (5, 7)}
    # what depends on K is the FC's K^2 C x 2C product and the correlation's K^2 C products
    assert k_part[7] - k_part[5] == L * 2 * N * (49 - 25) * C * (2 * C + 1)
