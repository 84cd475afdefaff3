import csv
import dataclasses
import json

import av
import numpy as np
import pytest
import torch

from tubelet.config.schema import DataConfig, SyntheticConfig
from tubelet.data.builder import build_dataset
from tubelet.data.datasets import ClipDataset
from tubelet.data.synthetic import (
    COLOURS,
    MOTION_PHRASES,
    MOTIONS,
    SHAPES,
    TEXTURES,
    SyntheticSource,
    clip_path,
    hflip_label_map,
    mirror_caption,
    render_clip,
    split_indices,
    write_dataset,
)
from tubelet.errors import ConfigError

SMALL = SyntheticConfig(num_videos=64, num_classes=8, frames=8, size=24, seed=3)


def data_cfg(**kw) -> DataConfig:
    """The set at its rendered scale: random crops without resizing in training, the whole frame
    centre-cropped in evaluation (as the quickstart recipe sets it)."""
    syn = dataclasses.replace(SMALL, **kw.pop("synthetic", {}))
    base = dict(kind="synthetic", num_frames=8, sampling_rate=4, target_fps=32.0, crop_size=24, synthetic=syn,
                test_short_side=syn.size)
    base.update(kw)
    cfg = DataConfig(**base)
    cfg.augment.random_resized_crop, cfg.augment.short_side = False, [syn.size, syn.size]
    return cfg


def dataset(cfg: DataConfig, split: str, **kw) -> ClipDataset:
    ds = build_dataset(cfg, split, **kw)
    assert isinstance(ds, ClipDataset) and isinstance(ds.opener, SyntheticSource)
    return ds


def frames_of(ds: ClipDataset, i: int) -> torch.Tensor:
    """Clip ``i``'s rendered frames as float ``(C, F, S, S)`` in [0, 1]."""
    return torch.from_numpy(render_clip(ds.cfg.synthetic, ds.opener.index(ds.samples[i].path)).frames).permute(
        3, 0, 1, 2).float() / 255


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
    x = dataset(cfg, "val")[3]["video"]
    y = dataset(cfg, "val")[3]["video"]
    assert torch.equal(x, y)
    assert not torch.equal(x, dataset(cfg, "val")[4]["video"])


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
    ds = dataset(cfg, "val")
    s = ds[0]
    assert s["video"].shape == (1, 3, 8, 24, 24) and s["video"].dtype == torch.float32  # one view
    assert s["label"].dtype == torch.int64 and s["label"].dim() == 0
    assert torch.allclose(s["video"][0], (frames_of(ds, 0) - 0.5) / 0.25, atol=1e-6)
    index = split_indices(SMALL, "val")[0]
    assert ds.samples[0].path == clip_path(index) and int(s["label"]) == index % 8 == render_clip(SMALL, index).label
    assert s["index"] == 0 and s["caption"] == render_clip(SMALL, index).caption
    assert ds.class_names == list(MOTIONS) and ds.num_classes == 8


def test_reader_timing_is_the_rendered_frame_rate():
    ds = dataset(data_cfg(), "train")
    reader = ds.opener(ds.samples[0].path)
    assert reader.fps == 8 and reader.num_frames == 8 and reader.duration == 1
    assert reader.indices_in(0.25, 0.75).tolist() == [2, 3, 4, 5]
    assert np.array_equal(reader.get_frames([5, 1]), render_clip(SMALL, 0).frames[[5, 1]])
    with pytest.raises(ValueError, match="not a synthetic clip path"):
        ds.opener("videos/a.mp4")


def test_flip_swaps_left_right_and_rotation_labels():
    names = list(MOTIONS)
    m = hflip_label_map(names)
    assert [names[m[i]] for i in range(8)] == [
        "move_right", "move_left", "move_up", "move_down", "rotate_ccw", "rotate_cw", "grow", "shrink",
    ]


@pytest.mark.parametrize("decode_crop", [True, False])
def test_train_flip_mirrors_video_and_label(decode_crop):
    cfg = data_cfg(synthetic={"size": 28}, crop_size=24, decode_crop=decode_crop)
    cfg.augment.hflip = 1.0
    if not decode_crop:  # only the decoder's crop says whether a clip was flipped
        with pytest.raises(ConfigError, match="data.decode_crop"):
            dataset(cfg, "train")
        return
    ds = dataset(cfg, "train")
    for i in range(8):
        s = ds[i]
        assert int(s["label"]) == hflip_label_map(list(MOTIONS))[ds.samples[i].label]
        # the caption describes the mirrored clip: its motion phrase is the flipped label's
        index = split_indices(SMALL, "train")[i]
        flipped = MOTIONS[int(s["label"])]
        original = render_clip(cfg.synthetic, index).caption
        own = MOTION_PHRASES[MOTIONS[ds.samples[i].label]]
        assert s["caption"] == original.replace(own, MOTION_PHRASES[flipped], 1)
        # the flipped crop is found in the mirrored full frames, at the rendered scale
        full = frames_of(ds, i).flip(-1)
        video = s["video"] * 0.225 + 0.45
        found = any(
            torch.allclose(video, full[:, :, y : y + 24, x : x + 24], atol=1e-5) for y in range(5) for x in range(5)
        )
        assert found
    cfg.augment.hflip = 0.0
    plain = dataset(cfg, "train")
    assert [int(plain[i]["label"]) for i in range(8)] == [s.label for s in plain.samples[:8]]
    assert [plain[i]["caption"] for i in range(8)] == [
        render_clip(cfg.synthetic, split_indices(SMALL, "train")[i]).caption for i in range(8)]


def test_mirror_caption_swaps_whole_motion_phrases_once():
    assert mirror_caption("a red striped circle moves left next to a small blue square") == (
        "a red striped circle moves right next to a small blue square")
    assert mirror_caption("a x rotates clockwise") == "a x rotates counterclockwise"
    assert mirror_caption("a x rotates counterclockwise") == "a x rotates clockwise"
    assert mirror_caption("a x moves up") == "a x moves up" and mirror_caption("a x grows") == "a x grows"


def test_flip_refused_when_mirror_class_missing():
    cfg = data_cfg(synthetic={"num_classes": 6, "classes": ["move_left", "move_up", "move_down", "rotate_cw",
                                                             "grow", "shrink"]})
    cfg.augment.hflip = 0.5
    with pytest.raises(ConfigError, match=r"data.augment.hflip=0.5 .*move_right, rotate_ccw"):
        dataset(cfg, "train")
    cfg.augment.hflip = 0.0
    assert len(dataset(cfg, "train")) > 0


def test_repeated_sampling_and_multiview_test():
    ds = dataset(data_cfg(repeated_sampling=2), "train")
    s = ds[0]
    assert s["video"].shape == (2, 3, 8, 24, 24) and s["label"].shape == (2,)
    cfg = data_cfg(synthetic={"size": 32, "frames": 12}, crop_size=24, num_frames=8, test_clips=2)
    test = dataset(cfg, "test")
    t = test[0]
    assert t["video"].shape == (2, 3, 8, 24, 24) and t["label"].dim() == 0
    raw = frames_of(test, 0)
    # windows [0, 1) s and [0.5, 1.5) s at 8 fps: frames 0-7 and 4-11, centre crops of the 32 px frame
    assert torch.allclose(t["video"][0] * 0.225 + 0.45, raw[:, 0:8, 4:28, 4:28], atol=1e-5)
    assert torch.allclose(t["video"][1] * 0.225 + 0.45, raw[:, 4:12, 4:28, 4:28], atol=1e-5)
    three = dataset(dataclasses.replace(cfg, test_crops=3), "test")[0]["video"]
    assert three.shape == (6, 3, 8, 24, 24)  # the shared protocol: short side to crop_size, three crops


def test_single_frame_repeats_one_frame():
    v = dataset(data_cfg(single_frame=True), "val")[0]["video"][0]
    assert torch.equal(v, v[:, 4:5].expand_as(v))  # the middle frame
    ds = dataset(data_cfg(single_frame=True), "train")
    picks = set()
    for i in range(6):
        v = ds[i]["video"]
        assert torch.equal(v, v[:, :1].expand_as(v))
        raw = frames_of(ds, i)
        picks |= {t for t in range(8) if any(torch.allclose(v[:, 0] * 0.225 + 0.45, raw[:, t, y:y + 24, x:x + 24],
                                                            atol=1e-5) for y in range(1) for x in range(1))}
    assert len(picks) > 1  # a random frame of the clip in training, not always the same one


def test_appearance_lists_restrict_what_objects_look_like_and_nothing_else():
    """data.synthetic.shapes/textures/colours: every object (main and distractors, and so every caption)
    is drawn from the lists; a clip keeps its positions, motions and label, since the lists change what
    a draw picks, not how many draws are made; the full lists are the default set."""
    few = dataclasses.replace(SMALL, shapes=["circle", "square"], textures=["striped"], colours=["red", "blue"])
    full = dataclasses.replace(SMALL, shapes=list(SHAPES), textures=list(TEXTURES), colours=list(COLOURS))
    seen = set()
    for i in range(40):
        clip, default = render_clip(few, i), render_clip(SMALL, i)
        for o in clip.objects:
            seen.add((o["shape"], o["texture"], o["colour"]))
        assert [o["motion"] for o in clip.objects] == [o["motion"] for o in default.objects]
        assert clip.label == default.label and clip.ids.tolist() == default.ids.tolist()
        assert clip.caption.split()[1:4] == [clip.objects[0]["colour"], "striped", clip.objects[0]["shape"]]
    assert seen == {(s, "striped", c) for s in ("circle", "square") for c in ("red", "blue")}
    assert np.array_equal(render_clip(full, 3).frames, render_clip(SMALL, 3).frames)
    with pytest.raises(ConfigError, match=r"data.synthetic.shapes must be a list of circle, .* \(unknown: hexagon\)"):
        dataclasses.replace(SMALL, shapes=["circle", "hexagon"])
    with pytest.raises(ConfigError, match="data.synthetic.colours must be a list without repeats"):
        dataclasses.replace(SMALL, colours=["red", "red"])


def test_config_errors():
    with pytest.raises(ConfigError, match="crop_size"):
        dataset(data_cfg(crop_size=32), "train")
    with pytest.raises(ConfigError, match="num_frames"):
        dataset(data_cfg(num_frames=9), "train")
    with pytest.raises(ConfigError, match="unknown motion"):
        dataset(data_cfg(synthetic={"num_classes": 2, "classes": ["move_left", "jump"]}), "train")


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
    video = dataset(data_cfg(), "val", cache=cache)
    assert video.opener.render_all(s.path for s in video.samples) == len(video) == len(cache)
    still = dataset(data_cfg(single_frame=True), "val", cache=cache)
    assert still.opener.render_all(s.path for s in still.samples) == 0  # every clip came from the shared cache
    assert torch.equal(still[0]["video"][0, :, 0], video[0]["video"][0, :, 4])


@pytest.mark.parametrize("key, value", [("randaugment", "rand-m9-n2-mstd0.5-inc1"), ("color_jitter", 0.4),
                                        ("random_erasing", 1.0)])
def test_train_samples_go_through_the_shared_augmentations(key, value):
    # these options used to be ignored on the synthetic set: the sample was bit-identical with them
    base = data_cfg(crop_size=16)
    plain = dataset(base, "train", seed=5)
    aug = dataclasses.replace(base.augment, **{key: value})
    augmented = dataset(dataclasses.replace(base, augment=aug), "train", seed=5)
    differ = [not torch.equal(plain[i]["video"], augmented[i]["video"]) for i in range(4)]
    assert any(differ)


def test_train_draws_come_from_seed_epoch_and_index_only():
    ds = dataset(data_cfg(crop_size=16), "train", seed=5)
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
    assert not torch.equal(dataset(data_cfg(crop_size=16), "train", seed=6)[3]["video"], a)


def test_unscaled_crops_are_sliced_exactly_as_the_scaler_would_copy_them():
    from av.video.frame import VideoFrame

    from tubelet.data.decoding import ResizedCrop
    from tubelet.data.decoding.crop import CropWriter

    reader = dataset(data_cfg(), "train").opener(clip_path(3))
    clips = [np.arange(0, 8), np.arange(0, 8, 2)]
    crops = [ResizedCrop(3, 5, 20, 17, (20, 17), flip=True), ResizedCrop(0, 4, 20, 17, (20, 17))]
    sliced = reader.get_resized_clips(clips, crops)
    frames = reader.get_frames(np.concatenate(clips))
    writer = CropWriter(len(frames), np.repeat([0, 1], [8, 4]), crops, lambda: 0)
    for pos, frame in enumerate(frames):
        writer.write(VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"), [pos])
    scaled = writer.result()
    assert [c.shape for c in sliced] == [(3, 8, 20, 17), (3, 4, 20, 17)]
    assert all(np.array_equal(a, b) for a, b in zip(sliced, scaled))
    assert np.array_equal(sliced[1], frames[8:, 0:20, 4:21].transpose(3, 0, 1, 2))
