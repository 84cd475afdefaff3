"""AVA data (tubelet.data.datasets.ava), the RoI head and the detection method."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from tubelet.data.datasets.ava import (
    AVADataset,
    Keyframe,
    clip_frame_indices,
    group_keyframes,
    keyframe_index,
    read_ava_csv,
    transform_boxes,
)
from tubelet.data.decoding import ConstantRateReader
from tubelet.models.detection import BoxMemoryBlock, RoIHead, feature_map


class _Reader(ConstantRateReader):
    """Frames whose pixel value encodes the frame index."""

    def __init__(self, n: int, fps: float, h: int = 24, w: int = 32, frames=None) -> None:
        super().__init__("mem", n, Fraction(fps).limit_denominator(1001), w, h, "array")
        self.frames = frames if frames is not None else np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None],
                                                                  1, 0) * np.ones((1, h, w, 3), np.uint8)

    def _decode(self, idx):
        return self.frames[idx]


@pytest.mark.parametrize("fps, offset, ts, frame", [(30, 900, 902, 60), (25, 900, 902, 50), (30, 0, 1.5, 45),
                                                     (25, 0, 3, 75)])
def test_keyframe_timestamps_map_to_frames(fps, offset, ts, frame):
    assert int(keyframe_index(ts, fps, offset)) == frame


@pytest.mark.parametrize("fps, stride", [(30, 4), (25, 3)])
def test_clip_is_centred_on_the_keyframe_at_30_and_25_fps(fps, stride):
    n = 10 * fps
    reader = _Reader(n, fps)
    kf = Keyframe("v", 5.0, np.array([[0.1, 0.1, 0.5, 0.5]]), np.zeros((1, 3), np.float32))
    ds = AVADataset([kf], lambda v: reader, "test", 3, num_frames=8, sampling_rate=4, target_fps=30, crop_size=24)
    idx = ds.frame_indices(kf, reader)
    centre = 5 * fps
    assert idx.tolist() == [centre - 16 * stride // 4 + k * stride for k in range(8)]
    assert np.diff(idx).tolist() == [stride] * 7  # same clip length in seconds at both rates
    assert clip_frame_indices(1, 4, 2, 100).tolist() == [0, 0, 1, 3]  # clamped at the start


def test_boxes_follow_the_crop_and_the_flip():
    b = np.array([[0.25, 0.5, 0.75, 1.0]])  # in a 100 (H) x 200 (W) frame: x 50..150, y 50..100
    out = transform_boxes(b, (100, 200), crop=(0, 40, 100, 140), out_hw=(50, 50), flip=False)
    assert out.tolist() == [[5.0, 25.0, 50.0, 50.0]]  # x: (50-40)/2 .. clipped at 100/2; y: 50/2 .. 100/2
    flipped = transform_boxes(b, (100, 200), crop=(0, 40, 100, 140), out_hw=(50, 50), flip=True)
    assert flipped.tolist() == [[0.0, 25.0, 45.0, 50.0]]


def test_training_sample_box_marks_the_same_pixels_as_the_clip():
    # a white box on black: after the random crop and flip, the pixels inside the returned box are white
    H, W = 60, 80
    frames = np.zeros((40, H, W, 3), np.uint8)
    frames[:, 20:40, 10:30] = 255
    reader = _Reader(40, 10, H, W, frames)
    kf = Keyframe("v", 2.0, np.array([[10 / W, 20 / H, 30 / W, 40 / H]]), np.ones((1, 2), np.float32))
    ds = AVADataset([kf], lambda v: reader, "train", 2, num_frames=4, sampling_rate=1, target_fps=10, crop_size=48,
                    short_side=(60, 60), hflip=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    s = ds[0]
    x1, y1, x2, y2 = s["boxes"][0].tolist()
    img = s["video"][0, 0]
    assert s["box_mask"][0] and not s["box_mask"][1]
    inside = img[int(y1) + 1:int(y2) - 1, int(x1) + 1:int(x2) - 1]
    assert inside.numel() > 0 and inside.min() > 0.9
    outside = img.clone()
    outside[max(0, int(y1) - 1):int(y2) + 2, max(0, int(x1) - 1):int(x2) + 2] = 0
    assert outside.max() < 0.1
    # the flip really happened: the box sits mirrored with respect to an unflipped crop of the frame
    assert x1 > 48 - 30 * 48 / 60 - 2


def test_rows_of_one_box_make_one_multi_label_keyframe(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("v,0902,0.1,0.1,0.5,0.5,1,0\nv,0902,0.1,0.1,0.5,0.5,3,0\nv,0902,0.6,0.6,0.9,0.9,2,1\n"
                 "v,0903,0.1,0.1,0.5,0.5,2,0\nw,0902,0.1,0.1,0.5,0.5,2,0\n")
    kfs = group_keyframes(read_ava_csv(p), 3, excluded={"w,902.000000"})
    assert [(k.video, k.time, len(k.boxes)) for k in kfs] == [("v", 902.0, 2), ("v", 903.0, 1)]
    assert kfs[0].labels.tolist() == [[1, 0, 1], [0, 1, 0]]
    with pytest.raises(Exception, match=r"a.csv:1: action id 1 exceeds model.num_classes=0"):
        group_keyframes(read_ava_csv(p), 0)


def test_roi_head_pools_the_box_region():
    fmap = torch.zeros(1, 2, 2, 4, 4)
    fmap[0, 0, :, 0, 0] = 1.0  # top-left cell of channel 0
    head = RoIHead(2, 3)
    boxes = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [16.0, 16.0, 32.0, 32.0]]])  # input 32 px: stride 8
    f = head.pool(fmap, boxes, (32, 32))
    assert f.shape == (1, 2, 2)
    assert f[0, 0, 0] > 0.5 and f[0, 1, 0] == 0  # the first box sees the cell, the second does not


@pytest.mark.parametrize("name, overrides, grid", [
    ("mvitv2_s", dict(depth=2, embed_dim=16, num_heads=1, transitions=(1,), kv_stride=(1, 4, 4)), (4, 4, 4)),
    ("vit_tiny", dict(patch_size=8, tubelet_size=2, embed_dim=32, depth=1, num_heads=2), (4, 4, 4)),
    ("memvit_16", dict(depth=2, embed_dim=16, num_heads=1, transitions=(1,), kv_stride=(1, 4, 4)), (4, 4, 4)),
])
def test_tokens_become_a_grid(name, overrides, grid):
    from tubelet.models.registry import create_model

    m = create_model(name, num_classes=0, num_frames=8, img_size=32, **overrides).eval()
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        f = feature_map(m, x)
    assert f.shape[2:] == grid and f.shape[0] == 2
    tokens = m.forward_features(x)[:, int(getattr(m, "num_prefix_tokens", 0)):]
    assert torch.allclose(f.flatten(2).transpose(1, 2), tokens if not hasattr(m, "fc_norm") or
                          not isinstance(m.fc_norm, torch.nn.LayerNorm) else m.fc_norm(tokens), atol=1e-5)


def test_box_block_sees_earlier_clips_of_the_same_video_only():
    torch.manual_seed(0)
    blk = BoxMemoryBlock(8, 2, memory=True, gap=2, attn_max_len=3).eval()
    x = torch.randn(1, 3, 8)
    mask = torch.tensor([[True, True, False]])
    ids = torch.tensor([7])
    with torch.no_grad():
        first = blk(x, mask, ids)
        for _ in range(2):
            blk(torch.randn(1, 3, 8), mask, ids)
        with_memory = blk(x, mask, ids)
        assert blk.last_offsets == [2]  # three cached clips: gap2 reads t-2 once t-4 is missing
        assert not torch.allclose(first, with_memory)
        other = blk(x, mask, torch.tensor([8]))  # a new video: memory masked out
        assert torch.allclose(other[:, :2], first[:, :2], atol=1e-6)
        blk.clear_memory()
        assert torch.allclose(blk(x, mask, ids), first, atol=1e-6)
        # a padded box changes nothing for the real ones
        x2 = x.clone()
        x2[0, 2] = 100.0
        blk.clear_memory()
        assert torch.allclose(blk(x2, mask, ids)[:, :2], first[:, :2], atol=1e-6)


def test_detection_method_loss_ignores_padding():
    from tubelet.config.loader import load_recipe
    from tubelet.methods import build_method

    r = load_recipe("ava_synthetic_mvitv2", ["model.img_size=32", "data.crop_size=32"])
    m = build_method(r)
    B, M = 2, 4
    batch = {"video": torch.randn(B, 3, 8, 32, 32), "boxes": torch.tensor([[[0.0, 0, 16, 16]] * M] * B),
             "box_mask": torch.tensor([[True, False, False, False], [True, True, False, False]]),
             "labels": torch.zeros(B, M, 9)}
    out = m(batch)
    assert out["boxes"] == 3
    batch["labels"][0, 2] = 1.0  # a label on a padded box: no effect
    torch.manual_seed(0)
    m.eval()
    a = m(batch)["loss"]
    batch["labels"][0, 2] = 0.0
    b = m(batch)["loss"]
    assert torch.allclose(a, b)
    assert m.detect(batch["video"], batch["boxes"], batch["box_mask"]).shape == (B, M, 9)


def test_two_writers_of_one_synthetic_ava_root_do_not_clash(tmp_path, monkeypatch):
    """The synthetic ViT and MeMViT recipes read the MViTv2 recipe's data root, so two runs may write it at
    once: a second writer running between the first one's write and rename must leave both intact."""
    from tubelet.config.loader import load_recipe
    from tubelet.data import synthetic_ava

    data = load_recipe("ava_synthetic_mvitv2", [f"data.root={tmp_path}", "data.synthetic.num_videos=16"]).data
    clean = synthetic_ava.write_synthetic_ava(tmp_path / "alone", data)
    real, nested = synthetic_ava.write_ava_csv, []

    def write_then_another_writer(path, *args, **kwargs):
        real(path, *args, **kwargs)
        if not nested:  # once, right after the first file is written and before it is renamed
            nested.append(None)  # before the call: the second writer comes through here too
            nested[0] = synthetic_ava.write_synthetic_ava(tmp_path, data)

    monkeypatch.setattr(synthetic_ava, "write_ava_csv", write_then_another_writer)
    paths = synthetic_ava.write_synthetic_ava(tmp_path, data)
    assert nested and sorted(paths) == sorted(nested[0]) == sorted(clean)
    for name, p in paths.items():
        assert p.read_bytes() == clean[name].read_bytes(), name
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
