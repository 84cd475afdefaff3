"""The long-range task from recipes (``data.kind: long_range``): online training order, streamed
validation and test that score each held-out video's last clip after its earlier clips (MeMViT, METHODS.md 7)."""

from __future__ import annotations

import json

import pytest
import torch

from tubelet.config import load_recipe
from tubelet.data.builder import build_dataset
from tubelet.data.online import OnlineClips
from tubelet.errors import ConfigError, TubeletError
from tubelet.eval.multiview import memory_clearer, predict_views, stream_scores
from tubelet.methods.supervised import Supervised
from tubelet.models import create_model

SMALL = ["data.long_range.num_videos=8", "data.long_range.val_videos=6", "data.long_range.clips=3"]
MODEL = dict(num_classes=4, depth=4, embed_dim=32, num_heads=1, transitions=(1, 3), kv_stride=(1, 2, 2),
             num_frames=8, img_size=32, drop_path_rate=0.0, head_dropout=0.0)


def method(memory: bool = True) -> Supervised:
    torch.manual_seed(0)
    return Supervised(create_model("memvit_16", memory=memory, **MODEL)).eval()


def test_the_recipe_builds_the_online_order_for_training_and_streams_for_evaluation():
    recipe = load_recipe("memvit_synthetic", SMALL)
    train = build_dataset(recipe.data, "train", seed=recipe.seed)
    assert isinstance(train, OnlineClips) and train.num_streams == recipe.data.batch_size == 8
    assert len(train) == 8 * 3  # 8 videos x 3 clips over 8 streams: 3 steps
    val = build_dataset(recipe.data, "val", seed=recipe.seed)
    assert len(val) == 6
    s = val[0]
    assert s["streamed"] is True and s["video"].shape == (3, 3, 4, 32, 32)
    # the held-out videos are not training videos, and test streams the same ones as validation
    test = build_dataset(recipe.data, "test", seed=recipe.seed)
    torch.testing.assert_close(test[2]["video"], val[2]["video"], rtol=0, atol=0)
    assert not torch.equal(val[0]["video"][0], train.source.clip(0, 0)["video"])


def test_clip_size_must_match_the_data_section():
    recipe = load_recipe("memvit_synthetic", [*SMALL, "data.crop_size=48"])
    with pytest.raises(ConfigError, match="data.long_range renders 4x32x32 clips but .* data.crop_size 48"):
        build_dataset(recipe.data, "train")


def test_stream_scores_run_each_video_in_time_order_from_an_empty_memory():
    m = method()
    g = torch.Generator().manual_seed(3)
    video = torch.randn(2, 3, 3, 8, 32, 32, generator=g)  # 2 videos of 3 clips
    with torch.no_grad():
        m.classify(torch.randn(2, 3, 8, 32, 32, generator=g), torch.tensor([7, 9]))  # stale memory
        got = stream_scores(m.classify, video, memory_clearer(m))
        m.backbone.clear_memory()
        for c in range(3):
            last = m.classify(video[:, c], torch.arange(2))
        want = last.softmax(-1)
        # memory matters: the last clip alone scores differently
        alone = m.classify(video[:, 2]).softmax(-1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (got - alone).abs().max() > 1e-4


def test_a_model_without_memory_is_scored_on_the_last_clip_alone():
    m = method(memory=False)
    assert memory_clearer(m) is None
    video = torch.randn(2, 3, 3, 8, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(stream_scores(m.classify, video), m.classify(video[:, 2]).softmax(-1),
                                   rtol=0, atol=1e-6)


def test_predict_views_streams_batches_marked_streamed_and_refuses_a_bad_shape():
    m = method()
    video = torch.randn(2, 3, 3, 8, 32, 32, generator=torch.Generator().manual_seed(5))
    batch = {"video": video, "label": torch.tensor([1, 2]), "index": torch.tensor([0, 1]),
             "streamed": torch.tensor([True, True])}
    with torch.no_grad():
        out = predict_views(m.classify, [batch], torch.device("cpu"), clear_memory=memory_clearer(m))
        want = stream_scores(m.classify, video, memory_clearer(m))
    assert out["num_views"] == 1
    torch.testing.assert_close(out["scores"], want, rtol=0, atol=1e-6)
    with pytest.raises(TubeletError, match=r"streamed batches must be \(B, N, C, T, H, W\)"):
        stream_scores(m.classify, video[:, 0])


def test_fit_then_test_from_the_cli(tmp_path):
    from tubelet.cli.main import main

    run = tmp_path / "run"
    over = [*SMALL, "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.checkpoint_every_n_steps=3",
            "optim.warmup_steps=1", "trainer.enable_progress_bar=false", f"run_dir={run}"]
    assert main(["fit", "memvit_synthetic", *over]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["val/top1"] <= 1.0
    assert main(["test", str(run / "config.yaml"), "--checkpoint", str(run / "method.safetensors")]) == 0
    res = json.loads((run / "report" / "test_results.json").read_text())
    assert res["num_videos"] == 6 and res["num_views"] == 1
    # the test scored what validation scored: the same streamed held-out videos, the same weights
    assert res["top1"] == pytest.approx(metrics["val/top1"])


def test_data_synth_writes_the_long_range_videos_as_files(tmp_path, capsys):
    import av
    import numpy as np

    from tubelet.cli.main import main
    from tubelet.data.builder import LONG_RANGE_HELD_OUT
    from tubelet.data.synthetic import render_long_video

    out = tmp_path / "long"
    assert main(["data", "synth", "--long-range", "--out", str(out), "--videos", "2", "--val-videos", "1",
                 "--clips", "3", "--frames", "4", "--size", "32", "--fps", "8"]) == 0
    train = (out / "train.csv").read_text().splitlines()
    assert train[0] == "path,label,start,end" and len(train) == 3
    assert train[1] == "videos/long_000000.mp4,0,0.0,1.5"  # 3 clips x 4 frames at 8 fps
    val = (out / "val.csv").read_text().splitlines()
    assert val[1].startswith("videos/long_val_000000.mp4,0,")  # label of index 1,000,000 % 4
    assert (out / "labels.txt").read_text().split() == ["red", "green", "blue", "yellow"]
    with av.open(str(out / "videos/long_val_000000.mp4")) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    want, label = render_long_video(0, LONG_RANGE_HELD_OUT, num_clips=3, clip_frames=4, size=32)
    assert decoded.shape == want.shape == (12, 32, 32, 3) and label == 0
    assert np.abs(decoded.astype(float) - want).mean() < 6  # H.264 at crf 18
    assert main(["data", "synth", "--long-range", "--out", str(out), "--videos", "1", "--clips", "1"]) != 0
    assert "--clips of at least 2" in capsys.readouterr().err
