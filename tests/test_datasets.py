"""Datasets on the real clips: manifests, class folders, frame folders, images, bad files."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tubelet.config.schema import DataConfig
from tubelet.data.builder import build_collate, build_dataset
from tubelet.data.datasets import ClipDataset, FailureTracker, LabelMap, load_label_map, read_manifest
from tubelet.data.decoding import open_video
from tubelet.data.mixing import BadSample
from tubelet.data.sampling import sample_rng
from tubelet.errors import DataError

GOOD = ["v_SoccerJuggling_g23_c01.avi", "WUzgd7C1pWA.mp4", "bbb_480p_vp9_opus_1second.webm", "unordered.mov"]


def small_cfg(**kw) -> DataConfig:
    cfg = DataConfig(num_frames=4, sampling_rate=2, crop_size=32, test_short_side=36, **kw)
    cfg.augment.short_side = [36, 44]
    return cfg


def write_manifest(tmp_path, rows, name="train.csv"):
    p = tmp_path / name
    p.write_text("path,label\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return p


def test_manifest_train_and_test_views(tmp_path, videos_dir):
    m = write_manifest(tmp_path, [(n, i % 2) for i, n in enumerate(GOOD)])
    cfg = small_cfg(kind="manifest", train=str(m), val=str(m), root=str(videos_dir), test_clips=2, test_crops=3)
    ds = build_dataset(cfg, "train")
    s = ds[0]
    assert s["video"].shape == (3, 4, 32, 32) and s["video"].dtype == torch.float32
    assert s["label"].dtype == torch.int64 and s["label"].ndim == 0 and s["index"] == 0
    t = build_dataset(cfg, "test")[1]
    assert t["video"].shape == (6, 3, 4, 32, 32)  # V = 2 clips x 3 crops
    assert int(t["label"]) == 1


def test_deterministic_per_epoch(tmp_path, videos_dir):
    m = write_manifest(tmp_path, [("v_SoccerJuggling_g23_c01.avi", 0)])
    cfg = small_cfg(kind="manifest", train=str(m), root=str(videos_dir))
    a, b = build_dataset(cfg, "train", seed=3), build_dataset(cfg, "train", seed=3)
    assert torch.equal(a[0]["video"], b[0]["video"])
    a.set_epoch(1)
    assert not torch.equal(a[0]["video"], b[0]["video"])
    b.set_epoch(1)
    assert torch.equal(a[0]["video"], b[0]["video"])


def test_clip_frames_are_the_sampled_frames(tmp_path, videos_dir):
    # No transform: the clip equals the frames at the sampled indices of a direct decode.
    m = write_manifest(tmp_path, [("frames.webm", 0)])
    cfg = small_cfg(kind="manifest", train=str(m), root=str(videos_dir))
    samples, _ = read_manifest(m, root=videos_dir)
    ds = ClipDataset(samples, cfg, "train", transform=None, seed=0)
    rng_idx = ds.clip_indices(
        open_video(videos_dir / "frames.webm"),
        samples[0],
        sample_rng(0, 0, 0),
    )[0]
    clip = ds[0]["video"]
    assert clip.dtype == torch.uint8 and clip.shape == (3, 4, 1080, 1080)
    ref = open_video(videos_dir / "frames.webm").get_frames(rng_idx)
    assert np.array_equal(clip.permute(1, 2, 3, 0).numpy(), ref)
    # 4 x 2 at 30 fps: a window of 8 source frames, trunc(linspace(0, 7, 4)) of them
    assert (rng_idx - rng_idx[0]).tolist() == [0, 2, 4, 7]


def test_short_video_pads_with_last_frame(tmp_path, videos_dir):
    m = write_manifest(tmp_path, [("unordered.mov", 0)])  # 4 frames, 0.125 s
    cfg = DataConfig(num_frames=8, sampling_rate=4)
    samples, _ = read_manifest(m, root=videos_dir)
    ds = ClipDataset(samples, cfg, "train", transform=None)

    idx = ds.clip_indices(open_video(videos_dir / "unordered.mov"), samples[0], sample_rng(0, 0, 0))[0]
    assert idx[0] == 0 and idx[-1] == 3 and list(idx) == sorted(idx) and (idx == 3).sum() >= 4


def test_repeated_sampling_and_rho_span(tmp_path, videos_dir):
    m = write_manifest(tmp_path, [("WUzgd7C1pWA.mp4", 2)])
    cfg = small_cfg(kind="manifest", train=str(m), root=str(videos_dir), repeated_sampling=3, clip_max_span=3.0)
    ds = build_dataset(cfg, "train")
    s = ds[0]
    assert s["video"].shape == (3, 3, 4, 32, 32) and s["label"].tolist() == [2, 2, 2]
    assert not torch.equal(s["video"][0], s["video"][1])  # independent clips / augmentations

    for i in range(20):
        w = ds.windows(ds.samples[0].end or open_video(ds.samples[0].path).duration, sample_rng(0, 0, i))
        assert max(e for _, e in w) - min(s for s, _ in w) <= 3


def test_bad_rows_are_skipped_and_counted(tmp_path, videos_dir):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    rows = [(GOOD[0], 0), ("corrupt_truncated.mp4", 1), (GOOD[1], 1), ("missing.mp4", 0), (str(empty), 1), (GOOD[3], 0)]
    m = write_manifest(tmp_path, rows)
    cfg = small_cfg(kind="manifest", train=str(m), max_failure_fraction=0.5)
    # no data.root: relative paths resolve next to the manifest, so point them at the clips
    m.write_text("path,label\n" + "".join(f"{videos_dir / a if not a.startswith('/') else a},{b}\n" for a, b in rows))
    ds = build_dataset(cfg, "train")
    items = [ds[i] for i in range(len(ds))]
    bad = [x for x in items if isinstance(x, BadSample)]
    assert [b.index for b in bad] == [1, 3, 4]
    assert "corrupt_truncated.mp4" in bad[0].path and "not found" in bad[1].reason and "empty" in bad[2].reason
    assert len(ds.failures) == 3
    batch = build_collate(cfg, "train")(items)
    assert batch["video"].shape[0] == 3 and len(batch["bad_samples"]) == 3
    assert batch["index"].tolist() == [0, 2, 5]  # nothing substituted
    tracker = FailureTracker(len(ds), 0.5)
    tracker.observe(batch)
    tracker.write(tmp_path / "bad_files.txt")
    assert len((tmp_path / "bad_files.txt").read_text().splitlines()) == 3
    with pytest.raises(DataError, match="missing.mp4"):
        FailureTracker(len(ds), 0.2).observe(batch)


def test_failure_fraction_exceeded_raises_with_report(tmp_path, videos_dir):
    m = write_manifest(tmp_path, [("corrupt_truncated.mp4", 0), (GOOD[0], 0), (GOOD[1], 0)])
    ds = build_dataset(
        small_cfg(kind="manifest", train=str(m), root=str(videos_dir), max_failure_fraction=0.2), "train"
    )
    with pytest.raises(DataError) as ei:
        ds[0]
    assert "corrupt_truncated.mp4" in str(ei.value) and "1 of 3" in str(ei.value)


def test_path_escape_refused(tmp_path, videos_dir):
    m = write_manifest(tmp_path, [(GOOD[0], 0), ("../../etc/passwd", 0)])
    with pytest.raises(DataError, match=r"train.csv:3.*escapes data.root"):
        read_manifest(m, root=videos_dir)
    m2 = write_manifest(tmp_path, [("/etc/passwd", 0)], "abs.csv")
    with pytest.raises(DataError, match="abs.csv:2"):
        read_manifest(m2, root=videos_dir)
    errors = []
    samples, _ = read_manifest(m, root=videos_dir, row_errors=errors)
    assert len(samples) == 1 and errors[0][0].endswith("train.csv:3")


def test_jsonl_manifest_names_ranges_captions(tmp_path, videos_dir):
    (tmp_path / "labels.txt").write_text("walk\nsoccer\n")
    rows = [
        {"path": GOOD[0], "label": "soccer", "start": "1/2", "end": 2, "caption": "a boy juggles"},
        {"path": GOOD[1], "label": "walk"},
    ]
    m = tmp_path / "train.jsonl"
    m.write_text("\n".join(json.dumps(r) for r in rows))
    samples, lmap = read_manifest(m, root=videos_dir, label_map=tmp_path / "labels.txt")
    assert [s.label for s in samples] == [1, 0] and samples[0].caption == "a boy juggles"
    assert samples[0].start == 0.5 and samples[0].end == 2
    cfg = small_cfg(kind="manifest", train=str(m), root=str(videos_dir), label_map=str(tmp_path / "labels.txt"))
    ds = build_dataset(cfg, "train")
    assert ds[0]["caption"] == "a boy juggles"
    # the clip lies in [0.5, 2): check the indices directly

    r = open_video(samples[0].path)
    idx = ds.clip_indices(r, samples[0], sample_rng(0, 0, 0))[0]
    ts = [r.timestamps[i] for i in idx]
    assert min(ts) >= 0.5 and max(ts) < 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"path": GOOD[0], "label": "dance"}))
    with pytest.raises(DataError, match="bad.jsonl:1.*dance"):
        read_manifest(bad, root=videos_dir, label_map=tmp_path / "labels.txt")


def test_label_maps(tmp_path):
    (tmp_path / "labels.txt").write_text("a\nb\n\nc\n")
    lm = load_label_map(tmp_path / "labels.txt")
    assert lm.names == ["a", "b", "c"] and lm.id("c") == 2 and lm.name(1) == "b"
    (tmp_path / "l.json").write_text(json.dumps({"x": 1, "y": 0}))
    assert load_label_map(tmp_path / "l.json").names == ["y", "x"]
    (tmp_path / "l2.json").write_text(json.dumps(["p", "q"]))
    assert load_label_map(tmp_path / "l2.json").id("q") == 1
    (tmp_path / "bad.json").write_text(json.dumps({"x": 0, "y": 2}))
    with pytest.raises(DataError, match="bad.json"):
        load_label_map(tmp_path / "bad.json")
    with pytest.raises(DataError):
        LabelMap(["a", "a"])
    with pytest.raises(DataError):
        lm.id("zzz")
    lm.save(tmp_path / "out.json")
    assert load_label_map(tmp_path / "out.json").names == lm.names


def test_class_folders(tmp_path, videos_dir):
    for cls, names in {"soccer": [GOOD[0]], "walk": [GOOD[1], GOOD[3]]}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            (tmp_path / cls / n).symlink_to(videos_dir / n)
    (tmp_path / "walk" / "readme.txt").write_text("not a video")
    cfg = small_cfg(kind="folders", train=str(tmp_path), val=str(tmp_path))
    ds = build_dataset(cfg, "train")
    assert len(ds) == 3 and [s.label for s in ds.samples] == [0, 1, 1] and ds.class_names == ["soccer", "walk"]
    assert ds[2]["video"].shape == (3, 4, 32, 32)


def test_frame_folders(tmp_path):
    root = tmp_path / "frames"
    for cls, vid, n in [("push", "v1", 12), ("pull", "v2", 7)]:
        d = root / cls / vid
        d.mkdir(parents=True)
        for i in range(n):
            # frame i is a flat image of value 10 * i (robust to JPEG)
            Image.fromarray(np.full((24, 30, 3), 10 * i, dtype=np.uint8)).save(d / f"{i + 1:05d}.jpg", quality=95)
    cfg = DataConfig(
        kind="frames",
        train=str(root),
        val=str(root),
        num_frames=4,
        sampling_rate=1,
        frames_fps=30,
        crop_size=24,
        test_short_side=24,
    )
    ds = build_dataset(cfg, "train")
    assert [s.label for s in ds.samples] == [0, 1] and ds.class_names == ["pull", "push"]
    samples = ds.samples
    raw = ClipDataset(samples, cfg, "train", transform=None, opener=ds.opener)
    clip = raw[1]["video"]  # push/v1, 12 frames: 4 consecutive frames
    vals = clip[0, :, 0, 0].int().tolist()
    assert clip.shape == (3, 4, 24, 30)
    assert [round(v / 10) for v in vals] == list(range(round(vals[0] / 10), round(vals[0] / 10) + 4))
    t = build_dataset(cfg, "test")[0]
    assert t["video"].shape == (1, 3, 4, 24, 24)
    (root / "pull" / "empty").mkdir()
    cfg.max_failure_fraction = 0.5
    bad = build_dataset(cfg, "train")[0]  # pull/empty sorts first
    assert isinstance(bad, BadSample) and bad.path.endswith("empty") and "no images" in bad.reason


def test_images_as_one_frame_clips(tmp_path):
    for cls in ["cat", "dog"]:
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(tmp_path / cls / "a.png")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"not an image")
    cfg = small_cfg(kind="images", train=str(tmp_path), val=str(tmp_path), max_failure_fraction=0.5)
    ds = build_dataset(cfg, "train")
    assert len(ds) == 3
    assert ds[0]["video"].shape == (3, 1, 32, 32)
    assert ds[1]["video"].shape == (3, 1, 32, 32)
    bad = ds[2]  # dog/broken.jpg
    assert isinstance(bad, BadSample) and bad.path.endswith("broken.jpg") and "cannot read image" in bad.reason
    assert build_dataset(cfg, "test")[0]["video"].shape == (1, 3, 1, 32, 32)


def test_unknown_kind_and_missing_source():
    from tubelet.errors import ConfigError

    with pytest.raises(ConfigError):
        build_dataset(DataConfig(kind="webdataset"), "train")
    with pytest.raises(ConfigError, match="data.train"):
        build_dataset(DataConfig(kind="manifest"), "train")
    with pytest.raises(ConfigError, match="data.decoder"):
        build_dataset(DataConfig(kind="manifest", train="x.csv", decoder="opencv"), "train")
    with pytest.raises(ConfigError, match="test_crops"):
        build_dataset(DataConfig(kind="manifest", train="x.csv", test_crops=2), "train")


def test_dataloader_workers(tmp_path, videos_dir):
    # Each worker opens its own decoders (nothing is shared across processes); bad files are
    # reported in the batch by the collate, even from workers.
    import pickle

    from torch.utils.data import DataLoader

    m = write_manifest(tmp_path, [(GOOD[0], 0), ("corrupt_truncated.mp4", 1), (GOOD[3], 1), (GOOD[2], 0)])
    cfg = small_cfg(kind="manifest", train=str(m), root=str(videos_dir), max_failure_fraction=0.5)
    ds = build_dataset(cfg, "train")
    ds[0]  # the parent has used its decoders before the fork
    copy = pickle.loads(pickle.dumps(ds))  # what spawn-started workers receive
    assert torch.equal(copy[2]["video"], ds[2]["video"])
    dl = DataLoader(
        ds, batch_size=2, num_workers=2, collate_fn=build_collate(cfg, "train"), multiprocessing_context="fork"
    )
    batches = list(dl)
    assert sum(b["video"].shape[0] for b in batches) == 3
    assert [p for b in batches for _, p, _ in b["bad_samples"]] == [str(videos_dir / "corrupt_truncated.mp4")]
    ref = [ds[i] for i in (0, 2, 3)]
    got = torch.cat([b["video"] for b in batches])
    assert torch.equal(got, torch.stack([r["video"] for r in ref]))  # same draws in workers and in-process


def test_device_transforms_finish_the_loader_pipeline(tmp_path, videos_dir):
    """uint8 crops out of the loader; DeviceTransforms on the batch gives what the loader would have."""
    from tubelet.data.transforms import build_device_transform

    m = write_manifest(tmp_path, [(n, i % 2) for i, n in enumerate(GOOD)])
    off = small_cfg(kind="manifest", train=str(m), root=str(videos_dir), repeated_sampling=2)
    on = small_cfg(kind="manifest", train=str(m), root=str(videos_dir), repeated_sampling=2, device_transforms=True)
    assert build_device_transform(off) is None
    a, b = build_dataset(off, "train", seed=5), build_dataset(on, "train", seed=5)
    items = [b[i] for i in range(len(b))]
    assert items[0]["video"].dtype == torch.uint8 and items[0]["video"].shape == (2, 3, 4, 32, 32)
    batch = build_collate(on, "train")(items)
    got = build_device_transform(on, seed=5)(batch)["video"]
    want = torch.stack([a[i]["video"] for i in range(len(a))])
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-5)


def test_device_transforms_draw_per_clip_and_mix_like_the_collate(tmp_path, videos_dir):
    """RandAugment and erasing on the device draw from (seed, epoch, index, clip), whatever the batch
    holds; Mixup on the device mixes as the loader's collate does (mixing commutes with normalising)."""
    from tubelet.data.transforms import build_device_transform

    m = write_manifest(tmp_path, [(n, i % 2) for i, n in enumerate(GOOD)])
    cfg = small_cfg(kind="manifest", train=str(m), root=str(videos_dir), device_transforms=True)
    cfg.augment.randaugment, cfg.augment.random_erasing = "rand-m9-n2-mstd0.5-inc1", 1.0
    ds = build_dataset(cfg, "train", seed=5)
    batch = build_collate(cfg, "train")([ds[i] for i in range(len(ds))])
    dev = build_device_transform(cfg, seed=5)
    assert [type(t).__name__ for t in dev.transform.transforms] == ["RandAugment", "Normalize", "RandomErasing"]
    full = dev(dict(batch), epoch=2)["video"]
    one = dev({"video": batch["video"][2:3], "index": batch["index"][2:3]}, epoch=2)["video"]
    assert torch.equal(full[2:3], one)
    assert not torch.equal(full, dev(dict(batch), epoch=3)["video"])
    with pytest.raises(ValueError, match="sample indices"):
        dev({"video": batch["video"]})

    mix = small_cfg(kind="manifest", train=str(m), root=str(videos_dir))
    mix.augment.mixup_alpha, mix.augment.label_smoothing = 0.8, 0.1
    loader = build_collate(mix, "train", num_classes=2, seed=7)([build_dataset(mix, "train")[i] for i in range(4)])
    mix_on = dataclasses.replace(mix, device_transforms=True)
    assert build_collate(mix_on, "train", num_classes=2).mixup is None
    raw = build_collate(mix_on, "train", num_classes=2)([build_dataset(mix_on, "train")[i] for i in range(4)])
    moved = build_device_transform(mix_on, seed=7, num_classes=2)(raw)
    assert moved["mix_lambda"] == loader["mix_lambda"] < 1.0
    assert torch.allclose(moved["label"], loader["label"]) and moved["label"].shape == (4, 2)
    assert torch.allclose(moved["video"], loader["video"], atol=1e-4)


def test_device_transforms_refused_by_datasets_that_ignore_them():
    from tubelet.config.schema import RhoConfig, SyntheticConfig
    from tubelet.errors import ConfigError

    syn = SyntheticConfig(num_videos=16, frames=16, size=24)
    with pytest.raises(ConfigError, match="device_transforms"):
        build_dataset(DataConfig(crop_size=16, device_transforms=True, rho=RhoConfig(clips=2), synthetic=syn), "train")
    # the synthetic set is a clip dataset like any other: its workers hand over uint8 crops too
    s = build_dataset(DataConfig(crop_size=16, num_frames=4, device_transforms=True, synthetic=syn), "train")[0]
    assert s["video"].dtype == torch.uint8 and s["video"].shape == (3, 4, 16, 16)
