"""Crops taken while decoding (data/decode_crop.py) against the tensor path: crop of the RGB frames,
torch's antialiased bilinear resize, flip."""

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tubelet.config.schema import DataConfig
from tubelet.data.datasets import ClipDataset, Sample
from tubelet.data.decoding import ResizedCrop, VideoReader, open_video
from tubelet.data.transforms import build_transforms

CLIPS = [
    "v_SoccerJuggling_g23_c01.avi",
    "WUzgd7C1pWA.mp4",
    "hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi",
    "RATRACE_wave_f_nm_np1_fr_goo_37.avi",
    "bbb_480p_vp9_opus_1second.webm",
    "frames.webm",
    "video_0.mov",
    "video_90.mov",
    "video_180.mov",
    "video_270.mov",
]


def _tensor_path(frames: np.ndarray, c: ResizedCrop) -> np.ndarray:
    """Independent oracle: ``(T, H, W, 3)`` RGB frames -> crop, torch resize, flip -> ``(3, T, h, w)``."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)[:, :, c.top : c.top + c.height, c.left : c.left + c.width]
    x = F.interpolate(x, size=c.size, mode="bilinear", antialias=True, align_corners=False)
    if c.flip:
        x = x.flip(-1)
    return x.permute(1, 0, 2, 3).numpy()


@pytest.mark.parametrize("name", CLIPS)
def test_decode_crop_matches_tensor_path(videos_dir, name):
    r = open_video(videos_dir / name)
    h, w = r.metadata.height, r.metadata.width
    idx = np.linspace(0, r.num_frames - 1, 6).astype(np.int64)
    # odd offsets (chroma at a half-sample offset), a non-square box and output, shrink and enlarge.
    # Output widths are multiples of 8 and heights even, as training sizes are: there swscale's SIMD
    # YUV->RGB conversion runs, as in the RGB path; odd sizes take its C code, which rounds about one
    # level brighter on average (closer to the exact BT.601 matrix).
    crops = [
        ResizedCrop(h // 5 + 1, w // 7 + 1, h // 2 + 1, w // 2 + 3, (56, 48), flip=True),
        ResizedCrop(3, 1, h - 5, w - 2, (h // 4 * 2 + 6, w // 24 * 8 + 8)),
        ResizedCrop(h // 3, w // 3, h // 4, w // 5, (40, 40), flip=True),
    ]
    frames = r.get_frames(idx)
    for c in crops:
        got = r.get_resized_clips([idx], [c])[0]
        want = _tensor_path(frames, c)
        assert got.shape == want.shape == (3, len(idx), *c.size) and got.dtype == np.uint8
        d = np.abs(got.astype(np.int16) - want.astype(np.int16))
        # the two resamplers (swscale's bilinear in YUV, torch's in RGB) differ by 0-1.8 levels on
        # average; a box one pixel off, a rotation or flip the wrong way gives 5 or more
        assert d.mean() < 2.5, (name, c, d.mean())
        chan = got.reshape(3, -1).mean(1) - want.reshape(3, -1).mean(1)
        assert np.abs(chan).max() < 0.8, (name, c, chan)  # colour matrix and range as the RGB path


def _write_lossless(path, frames: np.ndarray, codec: str, pix_fmt: str, options=None) -> None:
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=25, options=options or {})
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


# decoded as: gbrp (planar RGB, cropped in place), rgb24 (packed, in place), bgr0 (other: via rgb24)
LOSSLESS = [("libx264rgb", "rgb24", {"qp": "0"}, "gbrp"), ("png", "rgb24", {}, "rgb24"), ("ffv1", "bgr0", {}, "bgr0")]


@pytest.mark.parametrize("codec,pix_fmt,options,decoded", LOSSLESS)
def test_unscaled_crop_of_lossless_video_is_exact(tmp_path, codec, pix_fmt, options, decoded):
    """Output size = box size: the crop's geometry, flip and clip split, bit for bit."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (10, 36, 52, 3), dtype=np.uint8)
    path = tmp_path / ("rgb.mov" if codec == "png" else "rgb.mkv")
    _write_lossless(path, frames, codec, pix_fmt, options)
    with av.open(str(path)) as c:
        assert next(c.decode(video=0)).format.name == decoded
    r = open_video(path)
    assert np.array_equal(r.get_frames(np.arange(10)), frames)
    idx = [np.array([1, 3, 5, 5]), np.array([2, 3, 9])]
    crops = [ResizedCrop(5, 7, 20, 30, (20, 30), flip=True), ResizedCrop(16, 22, 20, 30, (20, 30))]
    got = r.get_resized_clips(idx, crops)
    want0 = frames[idx[0], 5:25, 7:37][:, :, ::-1].transpose(3, 0, 1, 2)
    want1 = frames[idx[1], 16:36, 22:52].transpose(3, 0, 1, 2)
    assert np.array_equal(got[0], want0) and np.array_equal(got[1], want1)


def test_planar_rgb_check_finds_the_converter_gap():
    """The width check agrees with a direct comparison of the two conversions on a real frame."""
    from tubelet.data.decoding.crop import planar_rgb_ok

    assert planar_rgb_ok("yuv420p", 224) and planar_rgb_ok("yuv444p", 40)
    for w in (40, 56, 62, 64, 168):
        f = av.VideoFrame(w, 8, "yuv420p")
        for i, p in enumerate(f.planes):
            np.frombuffer(p, np.uint8)[:] = np.arange(p.buffer_size) * (7 + i) % 200 + 16
        packed = f.reformat(format="rgb24").to_ndarray()
        g, b, r = (np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :w] for p in f.reformat(format="gbrp").planes)
        same = np.abs(np.stack([r, g, b], -1).astype(int) - packed).max() <= 1
        assert planar_rgb_ok("yuv420p", w) == same, w


def test_decode_crop_at_widths_the_planar_converter_gets_wrong(videos_dir):
    r = open_video(videos_dir / "v_SoccerJuggling_g23_c01.avi")
    idx = np.arange(0, 32, 4)
    frames = r.get_frames(idx)
    for size in [(40, 40), (24, 168), (30, 66)]:
        c = ResizedCrop(80, 106, 60, 64, size, flip=True)
        d = np.abs(r.get_resized_clips([idx], [c])[0].astype(np.int16) - _tensor_path(frames, c))
        assert d.mean() < 2.5, (size, d.mean())


def test_clips_of_one_decode_equal_separate_decodes(videos_dir):
    r = open_video(videos_dir / "v_SoccerJuggling_g23_c01.avi")
    idx = [np.arange(10, 74, 4), np.arange(30, 94, 4), np.full(16, 40)]
    crops = [ResizedCrop(20, 30, 150, 200, (64, 64), True), ResizedCrop(0, 0, 240, 320, (64, 64)),
             ResizedCrop(101, 77, 99, 131, (64, 64), True)]  # fmt: skip
    together = r.get_resized_clips(idx, crops)
    for i, c, got in zip(idx, crops, together):
        assert np.array_equal(got, open_video(r.path).get_resized_clips([i], [c])[0])


def test_base_reader_path_matches_tensor_path(videos_dir):
    """Readers without a decoder crop (frame folders, images, torchcodec) crop their RGB frames."""
    r = open_video(videos_dir / "video_90.mov")
    idx = np.array([0, 1, 2, 2])
    c = ResizedCrop(100, 20, 300, 250, (64, 80), flip=True)
    got = VideoReader.get_resized_clips(r, [idx], [c])[0]
    d = np.abs(got.astype(np.int16) - _tensor_path(r.get_frames(idx), c).astype(np.int16))
    assert got.shape == (3, 4, 64, 80) and d.mean() < 2.5


def test_crop_errors(videos_dir):
    r = open_video(videos_dir / "v_SoccerJuggling_g23_c01.avi")
    with pytest.raises(ValueError, match="does not fit a 240x320 frame"):
        r.get_resized_clips([np.arange(4)], [ResizedCrop(200, 0, 50, 50, (10, 10))])
    with pytest.raises(ValueError, match="share an output size"):
        r.get_resized_clips([np.arange(4)] * 2, [ResizedCrop(0, 0, 9, 9, (8, 8)), ResizedCrop(0, 0, 9, 9, (9, 9))])
    with pytest.raises(IndexError):
        r.get_resized_clips([np.array([0, 240])], [ResizedCrop(0, 0, 9, 9, (8, 8))])


@pytest.mark.parametrize("repeats", [1, 3])
def test_dataset_decode_crop_draws_as_tensor_path(videos_dir, repeats):
    """Same seed, same boxes and flips: the training clips with the crop taken while decoding differ
    from the tensor path's only by the resampler."""
    cfg = DataConfig(kind="manifest", num_frames=8, sampling_rate=2, crop_size=96, repeated_sampling=repeats)
    cfg.augment.hflip = 0.5
    samples = [Sample(str(videos_dir / n), i) for i, n in enumerate(CLIPS[:4] + ["video_270.mov"])]
    fused = ClipDataset(samples, cfg, "train", transform=build_transforms(cfg, "train"), seed=3)
    cfg2 = DataConfig(**{**vars(cfg), "decode_crop": False})
    plain = ClipDataset(samples, cfg2, "train", transform=build_transforms(cfg2, "train"), seed=3)
    assert fused.transform.decode_crop_steps == 2
    for i in range(len(samples)):
        a, b = fused[i]["video"], plain[i]["video"]
        assert a.shape == b.shape == ((repeats,) if repeats > 1 else ()) + (3, 8, 96, 96)
        # normalised units: 1 grey level is 1 / (255 * 0.225) = 0.017
        assert (a - b).abs().mean() < 2.5 / (255 * 0.225), (samples[i].path, (a - b).abs().mean())


def test_missing_frames_take_the_nearest_frame_of_their_own_clip():
    """A frame the decoder never produced is filled from the same clip (the same crop), nearest first."""
    from tubelet.data.decoding.crop import CropWriter

    clip_of = np.array([0, 0, 0, 1, 1, 1])
    crops = [ResizedCrop(0, 0, 8, 8, (4, 4)), ResizedCrop(4, 4, 8, 8, (4, 4))]
    w = CropWriter(6, clip_of, crops, lambda: 0)
    rng = np.random.default_rng(0)
    for pos in (0, 2, 5):  # slots 1 (clip 0), 3 and 4 (clip 1) never written
        w.write(av.VideoFrame.from_ndarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), format="rgb24"), [pos])
    w.fill_missing()
    out = w.out
    assert np.array_equal(out[:, 1], out[:, 0]) or np.array_equal(out[:, 1], out[:, 2])
    assert np.array_equal(out[:, 3], out[:, 5]) and np.array_equal(out[:, 4], out[:, 5])  # never slot 2 (clip 0)


def test_frame_size_change_is_reported_not_cropped_wrongly():
    from tubelet.data.decoding.crop import CropWriter

    w = CropWriter(2, np.array([0, 0]), [ResizedCrop(0, 0, 8, 8, (4, 4))], lambda: 0)
    w.write(av.VideoFrame.from_ndarray(np.zeros((12, 12, 3), np.uint8), format="rgb24"), [0])
    with pytest.raises(ValueError, match="frame size changes mid-stream"):
        w.write(av.VideoFrame.from_ndarray(np.zeros((24, 24, 3), np.uint8), format="rgb24"), [1])
