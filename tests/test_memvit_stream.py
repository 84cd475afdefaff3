"""Streaming inference: a video clip by clip in time order, memory carried, equal to an offline loop."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch
import yaml

from tubelet.engine.predict import Predictor, stream_windows

RECIPE = {
    "model": {"name": "memvit_16", "num_frames": 4, "img_size": 32, "num_classes": 4,
              "overrides": {"depth": 2, "transitions": [1], "kv_stride": [1, 2, 2], "head_dropout": 0.0}},
    "data": {"kind": "synthetic", "num_frames": 4, "sampling_rate": 8, "crop_size": 32, "test_short_side": 32,
             "batch_size": 2, "synthetic": {"num_videos": 8, "num_classes": 4, "size": 32, "frames": 8}},
    "method": {"name": "supervised"},
}


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    from tubelet.config import load_recipe
    from tubelet.methods import build_method

    cfg = tmp_path_factory.mktemp("stream") / "memvit.yaml"
    cfg.write_text(yaml.safe_dump(RECIPE))
    recipe = load_recipe(cfg, [])
    torch.manual_seed(0)
    method = build_method(recipe).eval()
    return Predictor(recipe, method, torch.device("cpu"), ["a", "b", "c", "d"])


def test_windows_cover_the_video_in_order():
    w = stream_windows(Fraction(5, 2), Fraction(16, 15))
    assert w == [(0, Fraction(16, 15)), (Fraction(16, 15), Fraction(32, 15)), (Fraction(32, 15), Fraction(5, 2))]
    assert stream_windows(Fraction(0), Fraction(1)) == []


def test_stream_equals_an_offline_loop_over_the_same_clips(predictor, videos_dir):
    from tubelet.data.datasets import Sample

    path = str(videos_dir / "v_SoccerJuggling_g23_c01.avi")
    streamed = list(predictor.stream(path, topk=4))
    assert len(streamed) >= 6
    assert not predictor.method.backbone.memory_layers()[0].cached_entries  # the stream leaves no memory behind
    assert [p.clip for p in streamed] == list(range(len(streamed)))
    assert all(a.end == pytest.approx(b.start) for a, b in zip(streamed, streamed[1:]))
    # offline: every clip decoded first, then one loop through the model with its memory
    cfg = predictor.recipe.data.__class__(**{**predictor.recipe.data.__dict__, "test_clips": 1, "test_crops": 1})
    ds = predictor._file_dataset(cfg, [Sample(path, -1, Fraction(p.start), Fraction(p.end)) for p in streamed])
    clips = [ds[i]["video"][:1] for i in range(len(streamed))]
    model = predictor.method.backbone
    model.clear_memory()
    with torch.no_grad():
        offline = [model(c, video_ids=torch.zeros(1, dtype=torch.int64)).softmax(-1)[0] for c in clips]
        alone = []
        for c in clips:
            model.clear_memory()
            alone.append(model(c).softmax(-1)[0])
    for p, o in zip(streamed, offline):
        for label, _, score in p.topk:
            assert score == pytest.approx(float(o[label]), abs=1e-6)
    # memory was carried: later clips differ from the same clip seen alone
    assert max(float((o - a).abs().max()) for o, a in zip(offline[2:], alone[2:])) > 1e-4


def test_stream_reads_one_window_at_a_time(predictor, videos_dir, monkeypatch):
    from tubelet.data.decoding.reader import VideoReader

    sizes: list[int] = []

    def classes(c):
        yield c
        for sub in c.__subclasses__():
            yield from classes(sub)

    for cls in set(classes(VideoReader)):
        for name in ("_decode", "_decode_into", "_decode_with"):  # every backend's decode entry points
            if name in vars(cls):
                def spy(self, indices, *rest, _orig=vars(cls)[name]):
                    sizes.append(len(indices))
                    return _orig(self, indices, *rest)

                monkeypatch.setattr(cls, name, spy)
    preds = list(predictor.stream(str(videos_dir / "v_SoccerJuggling_g23_c01.avi"), topk=1))
    assert len(sizes) >= len(preds) and max(sizes) <= 4  # one clip's frames per decode, never the file


def test_cli_stream_prints_json_lines_and_a_progress_bar(predictor, videos_dir, tmp_path, capsys, monkeypatch):
    from tubelet.cli import predict as cli

    path = str(videos_dir / "bbb_480p_vp9_opus_1second.webm")
    bad = str(videos_dir / "corrupt_truncated.mp4")  # cannot be opened (SOURCES.md)
    rc = cli._stream(predictor, [path, bad], 2)
    out, err = capsys.readouterr()
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    assert rc == 1 and lines and all(r["path"] == path for r in lines)
    assert [r["clip"] for r in lines] == list(range(lines[0]["num_clips"]))
    assert all(len(r["topk"]) == 2 and r["end"] > r["start"] for r in lines)
    assert f"{lines[0]['num_clips']}/{lines[0]['num_clips']} clips" in err
    assert f"tubelet predict: error: {bad}:" in err


def test_cli_stream_from_a_run_folder(tiny_run, videos_dir, capsys):
    from tubelet.cli.main import main

    path = str(videos_dir / "bbb_480p_vp9_opus_1second.webm")
    capsys.readouterr()
    assert main(["predict", path, "--run", str(tiny_run), "--stream", "--topk", "2"]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    # the tiny run reads 4 frames x sampling_rate 4 at 30 fps: 8/15 s windows over a 1 s file
    assert [r["clip"] for r in lines] == [0, 1] and lines[1]["start"] == pytest.approx(8 / 15)
    assert "2/2 clips" in err
