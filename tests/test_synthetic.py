import csv
import dataclasses
import json

import av
import numpy as np
import pytest
import torch

from tubelet.config.schema import DataConfig, SyntheticConfig
from tubelet.data.builder import build_dataset
from tubelet.data.synthetic import (
    MOTIONS,
    SyntheticVideoDataset,
    hflip_label_map,
    render_clip,
    split_indices,
    write_dataset,
)
from tubelet.errors import ConfigError

SMALL = SyntheticConfig(num_videos=64, num_classes=8, frames=8, size=24, seed=3)


def data_cfg(**kw) -> DataConfig:
    syn = dataclasses.replace(SMALL, **kw.pop("synthetic", {}))
    base = dict(kind="synthetic", num_frames=8, sampling_rate=4, target_fps=32.0, crop_size=24, synthetic=syn)
    base.update(kw)
    return DataConfig(**base)


def test_clip_is_pure_function_of_seed_and_index():
    a, b = render_clip(SMALL, 5), render_clip(SMALL, 5)
    assert np.array_equal(a.frames, b.frames) and a.caption == b.caption
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.ids, b.ids)
    assert not np.array_equal(a.frames, render_clip(SMALL, 6).frames)
    assert not np.array_equal(a.frames, render_clip(dataclasses.replace(SMALL, seed=4), 5).frames)
    assert a.frames.shape == (8, 24, 24, 3) and a.frames.dtype == np.uint8
    assert a.boxes.shape == (8, 3, 4) and a.ids.shape == (8, 3)


def test_dataset_deterministic_same_seed_same_tensor():
    cfg = data_cfg()
    x = SyntheticVideoDataset(cfg, "val")[3]["video"]
    y = SyntheticVideoDataset(cfg, "val")[3]["video"]
    assert torch.equal(x, y)
    assert not torch.equal(x, SyntheticVideoDataset(cfg, "val")[4]["video"])


def test_labels_balanced_and_splits_disjoint():
    splits = {s: set(split_indices(SMALL, s)) for s in ("train", "val", "test")}
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"])
    assert not (splits["val"] & splits["test"])
    assert set().union(*splits.values()) == set(range(SMALL.num_videos))
    labels = [render_clip(SMALL, i).label for i in range(SMALL.num_videos)]
    assert np.bincount(labels).tolist() == [SMALL.num_videos // 8] * 8


def test_caption_names_the_main_motion():
    for i in range(8):
        clip = render_clip(SMALL, i)
        phrase = {"move_left": "moves left", "move_right": "moves right", "rotate_cw": "rotates clockwise",
                  "grow": "grows", "shrink": "shrinks", "move_up": "moves up", "move_down": "moves down",
                  "rotate_ccw": "rotates counterclockwise"}[MOTIONS[clip.label]]
        assert phrase in clip.caption.split(" next to ")[0]
        assert clip.objects[0]["motion"] == MOTIONS[clip.label]
        n = len(clip.objects)
        assert (clip.ids[:, :n] == np.arange(n)).mean() > 0.9 and (clip.ids[:, n:] == -1).all()


def test_first_frame_does_not_depend_on_label():
    # Construction argument: the random draws are the same for every label, which only picks the non-zero
    # velocity, so frame 0 is bit-identical while later frames differ.
    for index in range(4):
        clips = [render_clip(SMALL, index, label=k) for k in range(8)]
        for c in clips[1:]:
            assert np.array_equal(c.frames[0], clips[0].frames[0])
        assert len({c.frames[-1].tobytes() for c in clips}) == 8


def test_last_frame_position_and_size_independent_of_motion():
    # Later frames: wrapped motion keeps positions and log-sizes uniform. If motion were clamped or not wrapped,
    # left-moving objects would end left of right-moving ones and grown objects would end larger.
    cfg = dataclasses.replace(SMALL, max_objects=1, size=32, frames=12)
    n = 64
    stats = {}
    for name in ("move_left", "move_right", "grow", "shrink"):
        k = MOTIONS.index(name)
        boxes = np.stack([render_clip(cfg, i, label=k).boxes[:, 0] for i in range(n)])  # (n, T, 4)
        b, start = boxes[:, -1], boxes[:, 0]
        cx = (b[:, 0] + b[:, 2]) / 2
        stats[name] = (cx.mean(), np.log(b[:, 2] - b[:, 0]).mean(), ((start[:, 0] + start[:, 2]) / 2).mean())
    se = 32 / np.sqrt(12) / np.sqrt(n) * np.sqrt(2)
    assert abs(stats["move_left"][0] - stats["move_right"][0]) < 3 * se
    # without wrapping the gap would be ~2 * speed * 11 frames ~ 2*0.055*32*11 = 39 px
    assert abs(stats["grow"][1] - stats["shrink"][1]) < 0.15
    # sanity: the motion is there (starts are identical draws, ends differ clip by clip)
    assert stats["move_left"][2] == pytest.approx(stats["move_right"][2])


def test_sample_contract_and_normalisation():
    cfg = data_cfg(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    ds = SyntheticVideoDataset(cfg, "val")
    s = ds[0]
    assert s["video"].shape == (3, 8, 24, 24) and s["video"].dtype == torch.float32
    assert s["label"].dtype == torch.int64 and s["label"].dim() == 0
    raw = torch.from_numpy(ds.clip(0).frames).permute(3, 0, 1, 2).float() / 255
    assert torch.allclose(s["video"], (raw - 0.5) / 0.25)
    assert s["index"] == split_indices(SMALL, "val")[0]
    assert isinstance(s["caption"], str) and s["boxes"].shape == (8, 3, 4) and s["ids"].shape == (8, 3)


def test_builder_dispatches_to_synthetic():
    assert isinstance(build_dataset(data_cfg(), "train"), SyntheticVideoDataset)


def test_flip_swaps_left_right_and_rotation_labels():
    names = list(MOTIONS)
    m = hflip_label_map(names)
    assert [names[m[i]] for i in range(8)] == [
        "move_right", "move_left", "move_up", "move_down", "rotate_ccw", "rotate_cw", "grow", "shrink",
    ]


def test_train_flip_mirrors_video_label_and_boxes():
    cfg = data_cfg(synthetic={"size": 28}, crop_size=24)
    cfg.augment.hflip = 1.0
    ds = SyntheticVideoDataset(cfg, "train")
    torch.manual_seed(0)
    for i in range(8):
        s = ds[i]
        clip = ds.clip(i)
        assert int(s["label"]) == hflip_label_map(list(MOTIONS))[clip.label]
        # the flipped crop must be found in the mirrored full frames
        full = torch.from_numpy(clip.frames).flip(2).permute(3, 0, 1, 2).float() / 255
        video = s["video"] * 0.225 + 0.45
        found = any(
            torch.allclose(video, full[:, :, y : y + 24, x : x + 24], atol=1e-5) for y in range(5) for x in range(5)
        )
        assert found
        valid = s["ids"] >= 0
        assert (s["boxes"][valid][:, 2] > s["boxes"][valid][:, 0]).all()
        assert (s["boxes"] >= 0).all() and (s["boxes"] <= 24).all()


def test_flip_disabled_when_mirror_class_missing():
    cfg = data_cfg(synthetic={"num_classes": 6, "classes": ["move_left", "move_up", "move_down", "rotate_cw",
                                                             "grow", "shrink"]})
    cfg.augment.hflip = 1.0
    ds = SyntheticVideoDataset(cfg, "train")
    clip = ds.clip(0)
    s = ds[0]
    assert int(s["label"]) == clip.label
    raw = torch.from_numpy(clip.frames).permute(3, 0, 1, 2).float() / 255
    assert torch.allclose(s["video"] * 0.225 + 0.45, raw, atol=1e-5)


def test_repeated_sampling_and_multiview_test():
    ds = SyntheticVideoDataset(data_cfg(repeated_sampling=2), "train")
    s = ds[0]
    assert s["video"].shape == (2, 3, 8, 24, 24) and s["label"].shape == (2,)
    cfg = data_cfg(synthetic={"size": 32, "frames": 12}, crop_size=24, num_frames=8, test_clips=2, test_crops=3)
    t = SyntheticVideoDataset(cfg, "test")[0]
    assert t["video"].shape == (6, 3, 8, 24, 24) and t["label"].dim() == 0
    assert not torch.equal(t["video"][0], t["video"][1])  # different crops
    raw = torch.from_numpy(SyntheticVideoDataset(cfg, "test").clip(0).frames).permute(3, 0, 1, 2).float() / 255
    assert torch.allclose(t["video"][5] * 0.225 + 0.45, raw[:, 4:12, 4:28, 8:32], atol=1e-5)  # last clip, right crop


def test_single_frame_repeats_one_frame():
    s = SyntheticVideoDataset(data_cfg(synthetic={"single_frame": True}), "val")[0]
    assert torch.equal(s["video"], s["video"][:, 4:5].expand_as(s["video"]))
    s = SyntheticVideoDataset(data_cfg(synthetic={"single_frame": True}), "train")[0]
    assert torch.equal(s["video"], s["video"][:, :1].expand_as(s["video"]))


def test_config_errors():
    with pytest.raises(ConfigError, match="crop_size"):
        SyntheticVideoDataset(data_cfg(crop_size=32), "train")
    with pytest.raises(ConfigError, match="num_frames"):
        SyntheticVideoDataset(data_cfg(num_frames=9), "train")
    with pytest.raises(ConfigError, match="unknown motion"):
        SyntheticVideoDataset(data_cfg(synthetic={"num_classes": 2, "classes": ["move_left", "jump"]}), "train")


def test_lossless_written_video_reads_back_bit_exact(tmp_path):
    cfg = dataclasses.replace(SMALL, size=24, frames=6)
    out = write_dataset(tmp_path / "syn", 8, cfg, lossless=True)
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert len(rows) == 8 and rows[0]["path"].endswith(".mkv")
    for row in rows[:3]:
        with av.open(str(out / row["path"])) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        clip = render_clip(cfg, int(row["path"][-10:-4]))
        assert frames.shape == clip.frames.shape
        assert np.array_equal(frames, clip.frames)
        assert int(row["label"]) == clip.label and row["caption"] == clip.caption
    ann = json.loads((out / "annotations.json").read_text())
    assert ann["clips"][rows[1]["path"]]["ids"] == render_clip(cfg, 1).ids.tolist()
    assert (out / "labels.txt").read_text().split() == list(MOTIONS)
    n_split = sum(len(list(csv.DictReader((out / f"{s}.csv").open()))) for s in ("train", "val", "test"))
    assert n_split == 8


def test_lossy_default_is_mp4_and_close(tmp_path):
    cfg = dataclasses.replace(SMALL, size=32, frames=4)
    out = write_dataset(tmp_path / "syn", 2, cfg)
    path = out / "videos" / "000000.mp4"
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    ref = render_clip(cfg, 0).frames
    assert frames.shape == ref.shape
    assert np.abs(frames.astype(float) - ref).mean() < 12  # H.264 4:2:0 at crf 18 on noisy 32 px frames


def test_cli_data_synth(tmp_path, capsys):
    from tubelet.cli.main import main

    rc = main(["data", "synth", "--out", str(tmp_path / "s"), "--videos", "3", "--size", "16", "--frames", "4",
               "--seed", "7", "--lossless"])
    assert rc == 0 and "wrote 3 lossless" in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "s" / "manifest.csv").open()))
    cfg = dataclasses.replace(SyntheticConfig(), size=16, frames=4, seed=7)
    assert [r["caption"] for r in rows] == [render_clip(cfg, i).caption for i in range(3)]


def test_shared_cache_and_render_all():
    cache = {}
    video = SyntheticVideoDataset(data_cfg(), "val", cache=cache)
    assert video.render_all() == len(video) == len(cache)
    still = SyntheticVideoDataset(data_cfg(synthetic={"single_frame": True}), "val", cache=cache)
    assert still.render_all() == 0  # every clip came from the shared cache
    assert torch.equal(still[0]["video"][:, 0], video[0]["video"][:, 4])


@pytest.mark.parametrize("key, value", [("randaugment", "rand-m9-n2-mstd0.5-inc1"), ("color_jitter", 0.4),
                                        ("random_erasing", 1.0)])
def test_train_samples_go_through_the_shared_augmentations(key, value):
    # these options used to be ignored on the synthetic set: the sample was bit-identical with them
    base = data_cfg(crop_size=16)
    plain = SyntheticVideoDataset(base, "train", seed=5)
    aug = dataclasses.replace(base.augment, **{key: value})
    augmented = SyntheticVideoDataset(dataclasses.replace(base, augment=aug), "train", seed=5)
    differ = [not torch.equal(plain[i]["video"], augmented[i]["video"]) for i in range(4)]
    assert any(differ)


def test_train_draws_come_from_seed_epoch_and_index_only():
    ds = SyntheticVideoDataset(data_cfg(crop_size=16), "train", seed=5)
    state = torch.get_rng_state()
    a = ds[3]["video"]
    torch.manual_seed(123)  # the global RNG plays no part
    b = ds[3]["video"]
    assert torch.equal(a, b)
    torch.set_rng_state(state)
    before = torch.get_rng_state()
    ds[2]
    assert torch.equal(before, torch.get_rng_state())  # and is left untouched
    others = []
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        others.append(ds[3]["video"])
    assert not torch.equal(others[0], others[1]) or not torch.equal(a, others[0])
    assert not torch.equal(SyntheticVideoDataset(data_cfg(crop_size=16), "train", seed=6)[3]["video"], a)
