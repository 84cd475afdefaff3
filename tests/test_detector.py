"""The detector the MOT tracker calls: a trained-for-a-few-steps Deformable DETR run loaded by ``load_detector``,
its boxes in frame pixels, refusal of another method's run, and the detection metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tubelet.data.builder import build_dataset
from tubelet.data.datasets.frame_boxes import resize_frame
from tubelet.engine.detector import evaluate_detector, load_detector
from tubelet.errors import CheckpointError, ConfigError
from tubelet.eval.detection import detection_metrics

# the shipped recipe, shrunk: a tiny detector trained for 3 steps through `tubelet fit -c deformable_detr_synthetic`
TINY = ["model.overrides={dim: 32, heads: 2, points: 2, encoder_layers: 1, decoder_layers: 2, ffn_dim: 32, "
        "num_queries: 6}", "data.synthetic.num_videos=8", "data.synthetic.frames=4", "data.batch_size=2",
        "method.top_k=5", "optim.lr=1e-4", "optim.warmup_steps=1", "trainer.max_steps=3",
        "trainer.checkpoint_every_n_steps=3", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def detr_run(tmp_path_factory):
    from tubelet.cli.main import main

    run = tmp_path_factory.mktemp("detr_run") / "run"
    assert main(["fit", "-c", "deformable_detr_synthetic", *TINY, f"run_dir={run}"]) == 0
    return run


def test_the_detector_gives_top_k_boxes_in_the_frames_pixels(detr_run):
    det = load_detector(detr_run)
    frame = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    boxes, scores = det(frame)
    assert boxes.shape == (5, 4) and scores.shape == (5,)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    assert (np.diff(scores) <= 0).all() and ((scores > 0) & (scores < 1)).all()
    # the run's resize and normalisation, then normalised xyxy scaled by the frame's width and height
    image = resize_frame(frame, 64, det.mean, det.std)[None]
    b, s, _, keep = det.method.detect(image, 5)
    assert keep.all()  # the recipe sets no NMS
    np.testing.assert_allclose(boxes, (b[0] * torch.tensor([80.0, 48.0, 80.0, 48.0])).numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scores, s[0].numpy(), rtol=1e-6)
    assert det.mean == (0.485, 0.456, 0.406) and det.size == 64  # the recipe's data section, not a default
    # the same weights through the run's files; a score threshold drops the low ones
    for path in (detr_run / "method.safetensors", *sorted((detr_run / "checkpoints").glob("*.ckpt"))):
        again, _ = load_detector(path)(frame)
        np.testing.assert_allclose(again, boxes, rtol=1e-5, atol=1e-4)
    kept, kept_scores = load_detector(detr_run, score_threshold=float(scores[2]))(frame)
    assert len(kept) == len(kept_scores) == 3
    metrics = evaluate_detector(det, build_dataset(load_detector_recipe(detr_run).data, "val"))
    assert 0 <= metrics["recall"] <= metrics["recall_all"] <= 1 and metrics["num_frames"] == 4.0


def test_tubelet_test_scores_a_detector_on_the_test_frames(detr_run, capsys):
    from tubelet.cli.main import main

    assert main(["test", "--config", str(detr_run / "config.yaml"), "--checkpoint",
                 str(detr_run / "method.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "frames 4, boxes" in out and "at IoU 0.5: recall (score >= 0.3)" in out and "AP" in out


def test_nms_of_the_detector_drops_what_the_greedy_loop_drops(detr_run, tmp_path):
    from test_nms import greedy_nms

    frames = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    raw = load_detector(detr_run)
    assert raw.nms_iou is None  # the recipe's default: DETR's raw top_k
    for iou in (0.0, 0.3, 0.7):
        det = load_detector(detr_run, nms_iou=iou)
        for frame in frames:
            boxes, scores = raw(frame)
            keep = greedy_nms(boxes.astype(np.float64).tolist(), scores.tolist(), iou)
            got, got_scores = det(frame)
            assert len(got) == sum(keep)
            np.testing.assert_allclose(got, boxes[keep], rtol=1e-6)
            np.testing.assert_allclose(got_scores, scores[keep], rtol=1e-6)
    # a few steps leave the queries apart; a model that emits duplicates shows the suppression: query 1 is a
    # copy of query 0 (IoU 0.95), query 2 overlaps query 0 by 1/3 only, query 4 is query 3 again
    centres = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.505, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1],
                            [0.2, 0.2, 0.1, 0.1]])

    class Duplicates(torch.nn.Module):
        def forward(self, images):
            B = images.shape[0]
            return {"logits": torch.tensor([3.0, 2.0, 1.5, 1.0, 1.0])[None, :, None].expand(B, 5, 1),
                    "boxes": centres[None].expand(B, 5, 4), "aux": []}

    det = load_detector(detr_run, nms_iou=0.5, top_k=5)
    det.method.detr = Duplicates()
    boxes, scores = det(frames[0])
    np.testing.assert_allclose(scores, torch.tensor([3.0, 1.5, 1.0]).sigmoid().numpy(), rtol=1e-6)
    np.testing.assert_allclose(boxes / 64, [[0.4, 0.4, 0.6, 0.6], [0.5, 0.4, 0.7, 0.6], [0.15, 0.15, 0.25, 0.25]],
                               atol=1e-6)
    det.nms_iou = None
    assert len(det(frames[0])[0]) == 5
    # the run's method.nms_iou is the default; nms_iou=None turns it off
    run = tmp_path / "run"
    run.mkdir()
    (run / "method.safetensors").write_bytes((detr_run / "method.safetensors").read_bytes())
    text = (detr_run / "config.yaml").read_text()
    assert "nms_iou: null" in text
    (run / "config.yaml").write_text(text.replace("nms_iou: null", "nms_iou: 0.3"))
    assert load_detector(run).nms_iou == 0.3 and load_detector(run, nms_iou=None).nms_iou is None
    np.testing.assert_allclose(load_detector(run)(frames[0])[0], load_detector(detr_run, nms_iou=0.3)(frames[0])[0])
    with pytest.raises(ConfigError, match=r"the NMS IoU threshold must be a number in \[0, 1\] or none, got 1.5"):
        load_detector(detr_run, nms_iou=1.5)


def test_tubelet_track_detects_with_nms(detr_run, tmp_path, capsys):
    from conftest import error_lines
    from tubelet.cli.main import main
    from tubelet.data.datasets.tracking import load_mot_sequence, mot_sequences, read_mot_file, write_mot_sequence

    seq = mot_sequences("synthetic", load_detector_recipe(detr_run).data.synthetic, "test")[0]
    folder = write_mot_sequence(seq, tmp_path / "SYN")
    frame0 = load_mot_sequence(folder).reader().get_frames([0])[0]  # as the CLI reads it
    counts = {}
    for nms in ("none", "0.3"):
        out = tmp_path / f"{nms}.txt"
        # every detection starts a track on frame 1, so frame 1's rows are the detector's boxes
        assert main(["track", str(folder), "--mot", "--detector", str(detr_run), "--nms-iou", nms,
                     "--det-threshold", "0", "--new-threshold", "0", "--out", str(out)]) == 0
        said = capsys.readouterr().out
        assert ("no NMS" if nms == "none" else "NMS at IoU 0.3") in said
        rows = read_mot_file(out, "results")
        counts[nms] = int((rows.frame == 1).sum())
    assert counts["none"] == 5 and counts["0.3"] == len(load_detector(detr_run, nms_iou=0.3)(frame0)[0])
    for argv, message in (
        (["--detector", str(detr_run), "--nms-iou", "2"], "--nms-iou 2: the NMS IoU threshold must be a number in [0, 1]"),
        (["--detector", str(detr_run), "--nms-iou", "half"], "--nms-iou half: not a number in [0, 1] or none"),
        (["--jitter-gt", str(folder / "gt" / "gt.txt"), "--nms-iou", "0.5"], "--nms-iou sets up --detector"),
    ):
        assert main(["track", str(folder), "--mot", *argv]) != 0
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and message in lines[0], (argv, lines)


def load_detector_recipe(run):
    from tubelet.config import load_recipe

    return load_recipe(run / "config.yaml")


def test_another_methods_run_is_refused_naming_the_file(tiny_run, detr_run, tmp_path):
    with pytest.raises(CheckpointError, match=rf"{tiny_run / 'method.safetensors'}: a checkpoint of method 'supervised'"):
        load_detector(tiny_run)
    with pytest.raises(CheckpointError, match="no such run folder"):
        load_detector(tmp_path / "nowhere")
    lone = tmp_path / "method.safetensors"
    lone.write_bytes((detr_run / "method.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=rf"{lone}: no config.yaml beside it"):
        load_detector(lone)


def test_detection_metrics_follow_vocs_matching():
    gts = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.zeros((0, 4))]
    preds = [(np.array([[0, 0, 9, 10], [0, 0, 10, 10], [50, 50, 60, 60]], float), np.array([0.8, 0.9, 0.2])),
             (np.array([[0, 0, 5, 5]], float), np.array([0.5]))]
    m = detection_metrics(preds, gts, iou=0.5, score_threshold=0.3)
    # 0.9 takes the first box; 0.8 overlaps the same box (a duplicate: false positive); the rest hit nothing
    assert m["recall"] == 0.5 and m["precision"] == pytest.approx(1 / 3) and m["recall_all"] == 0.5
    assert m["ap"] == pytest.approx(0.5) and m["num_gt"] == 2
    assert detection_metrics(preds, gts, iou=0.5, score_threshold=0.95)["precision"] != \
        detection_metrics(preds, gts, iou=0.5, score_threshold=0.95)["precision"]  # NaN: nothing kept


def test_the_mot_detector_recipe_trains_on_the_mot_recipes_frames():
    """deformable_detr_synthetic_mot sees the frames the MOT recipes track (same set, seed and split), so the
    MOT test sequences are held out from the detector too; at their 96 px, with NMS for tracking."""
    from tubelet.config import load_recipe
    from tubelet.data.synthetic import split_indices

    det = load_recipe("deformable_detr_synthetic_mot")
    for mot in (load_recipe("utt_mot_synthetic"), load_recipe("utt_unified_synthetic")):
        assert det.data.synthetic == mot.data.synthetic and det.seed == mot.seed
    assert det.data.crop_size == det.data.synthetic.size == 96 and det.method.nms_iou == 0.5
    train, test = (set(split_indices(det.data.synthetic, s)) for s in ("train", "test"))
    assert len(train) == 384 and len(test) == 64 and not train & test
