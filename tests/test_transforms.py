"""Clip-consistent transforms and Mixup/CutMix."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from tubelet.config.schema import DataConfig
from tubelet.data import transforms as T
from tubelet.data.mixing import BadSample, ClipCollate, Mixup, one_hot_smooth


def g(seed=0):
    return torch.Generator().manual_seed(seed)


def static_clip(t=4, h=48, w=64, seed=0):
    """A clip whose frames are all the same random image."""
    frame = torch.randint(0, 256, (3, 1, h, w), generator=g(seed), dtype=torch.uint8)
    return frame.expand(3, t, h, w).contiguous()


RANDOM = [
    T.RandomShortSideScale(32, 60),
    T.RandomResizedCrop(32, (0.08, 1.0)),
    T.RandomCrop(32),
    T.ScaleJitterCrop(36, 44, 32),
    T.RandomHorizontalFlip(1.0),
    T.ColorJitter(0.4, 0.4, 0.4, 0.1, p=1.0),
    T.RandomGrayscale(1.0),
    T.GaussianBlur(1.0),
    T.RandAugment("rand-m9-n4-mstd0.5-inc1"),
]


@pytest.mark.parametrize("tf", RANDOM, ids=lambda t: type(t).__name__)
def test_same_params_for_every_frame_and_uint8(tf):
    x = static_clip()
    for seed in range(5):
        y = tf(x, g(seed))
        assert y.dtype == torch.uint8
        assert y.shape[:2] == (3, 4)
        assert all(torch.equal(y[:, 0], y[:, t]) for t in range(1, 4))


def test_random_erasing_same_box_every_frame():
    x = T.Normalize([0.45] * 3, [0.225] * 3)(static_clip())
    y = T.RandomErasing(p=1.0)(x, g(1))
    changed = (y != x).any(0)  # (T, H, W)
    assert changed.any()
    assert all(torch.equal(changed[0], changed[t]) for t in range(4))


@pytest.mark.parametrize("tf", RANDOM + [T.RandomErasing(1.0)], ids=lambda t: type(t).__name__)
def test_batched_equals_loop(tf):
    xb = torch.randint(0, 256, (3, 3, 4, 40, 56), generator=g(2), dtype=torch.uint8)
    if isinstance(tf, T.RandomErasing):
        xb = xb.float()
    gen = g(7)
    ys = [tf(c, gen) for c in xb]
    if isinstance(tf, T.RandomShortSideScale):  # clip sizes differ: batching is refused, not faked
        assert len({y.shape for y in ys}) > 1
        with pytest.raises(ValueError, match="different sizes"):
            tf(xb, g(7))
        return
    assert torch.equal(tf(xb, g(7)), torch.stack(ys))


def test_flip_and_crop_are_the_expected_ops():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.uint8).view(2, 3, 4, 6).expand(3, 2, 3, 4, 6)[0].contiguous()
    assert torch.equal(T.RandomHorizontalFlip(1.0)(x, g()), x.flip(-1))
    assert torch.equal(T.RandomHorizontalFlip(0.0)(x, g()), x)
    clip = torch.randint(0, 256, (3, 2, 10, 20), dtype=torch.uint8)
    assert torch.equal(T.CenterCrop(6)(clip), clip[..., 2:8, 7:13])


def test_three_crop_positions():
    clip = torch.randint(0, 256, (3, 2, 8, 20), dtype=torch.uint8)
    v = T.ThreeCrop(8)(clip)
    assert v.shape == (3, 3, 2, 8, 8)
    assert torch.equal(v[0], clip[..., :, 0:8])
    assert torch.equal(v[1], clip[..., :, 6:14])
    assert torch.equal(v[2], clip[..., :, 12:20])
    tall = clip.transpose(-1, -2).contiguous()  # 20 x 8: top / centre / bottom
    v = T.ThreeCrop(8)(tall)
    assert torch.equal(v[0], tall[..., 0:8, :]) and torch.equal(v[2], tall[..., 12:20, :])


def test_short_side_scale():
    clip = torch.zeros(3, 2, 240, 320, dtype=torch.uint8)
    assert T.ShortSideScale(128)(clip).shape == (3, 2, 128, 170)
    assert T.ShortSideScale(128)(clip.transpose(-1, -2)).shape == (3, 2, 170, 128)
    for s in range(5):
        y = T.RandomShortSideScale(100, 120)(clip, g(s))
        assert 100 <= min(y.shape[-2:]) <= 120


def test_scale_jitter_crop_matches_scale_then_crop_box():
    # A flat-per-column ramp: after the fused op the crop's columns come from the mapped source box.
    ramp = torch.arange(200, dtype=torch.uint8).view(1, 1, 1, 200).expand(3, 2, 100, 200).contiguous()
    y = T.ScaleJitterCrop(50, 50, 40)(ramp, g(0))  # scale x0.5 -> 50x100, 40x40 crop = 80x80 source box
    assert y.shape == (3, 2, 40, 40)
    span = int(y[0, 0, 0, -1]) - int(y[0, 0, 0, 0])
    assert 74 <= span <= 80
    assert torch.equal(y[:, 0], y[:, 1])


def test_sharpness_degenerate_matches_pil():
    from PIL import ImageFilter

    x = torch.randint(0, 256, (1, 1, 12, 15), generator=g(8), dtype=torch.uint8)
    ref = np.asarray(Image.fromarray(x[0, 0].numpy(), mode="L").filter(ImageFilter.SMOOTH))
    assert np.array_equal(T._sharpness_degenerate(x.float())[0, 0].numpy().astype(np.uint8), ref)


def test_rrc_area_and_output():
    rrc = T.RandomResizedCrop(16, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    top, left, h, w = rrc.params(100, 100, g(0))
    assert (h, w) == (50, 50) and 0 <= top <= 50 and 0 <= left <= 50
    assert rrc(torch.zeros(3, 2, 100, 100, dtype=torch.uint8), g(0)).shape == (3, 2, 16, 16)


def test_normalize_values_and_only_float_after():
    x = torch.full((3, 2, 4, 4), 255, dtype=torch.uint8)
    y = T.Normalize([0.5, 0.25, 0.0], [0.5, 0.25, 1.0])(x)
    assert y.dtype == torch.float32
    assert torch.allclose(y[:, 0, 0, 0], torch.tensor([1.0, 3.0, 1.0]))


def test_grayscale_is_luma():
    x = torch.randint(0, 256, (3, 2, 5, 5), generator=g(3), dtype=torch.uint8)
    y = T.RandomGrayscale(1.0)(x, g())
    ref = (0.299 * x[0].float() + 0.587 * x[1].float() + 0.114 * x[2].float()).round()
    assert torch.equal(y[0].float(), ref) and torch.equal(y[1], y[2])


def test_hue_roundtrip_zero_shift():
    x = torch.randint(0, 256, (3, 2, 8, 8), generator=g(4), dtype=torch.uint8)
    y = T._to_u8(T._adjust_hue(x.float(), 0.0))
    assert (y.int() - x.int()).abs().max() <= 1
    z = T._to_u8(T._adjust_hue(x.float(), 0.5))
    assert (z.int() - x.int()).abs().max() > 10


def test_equalize_matches_pil():
    x = torch.randint(40, 120, (3, 2, 16, 16), generator=g(5), dtype=torch.uint8)
    y = T._equalize(x)
    for c in range(3):
        for t in range(2):
            ref = np.asarray(ImageOps.equalize(Image.fromarray(x[c, t].numpy(), mode="L")))
            assert np.array_equal(y[c, t].numpy().astype(np.uint8), ref)


def test_randaugment_parse():
    s = T.parse_randaugment("rand-m7-n4-mstd0.5-inc1")
    assert (s.magnitude, s.num_ops, s.magnitude_std, s.increasing) == (7.0, 4, 0.5, True)
    with pytest.raises(ValueError):
        T.parse_randaugment("auto-m7")
    with pytest.raises(ValueError):
        T.parse_randaugment("rand-m7-x3")


def test_randaugment_changes_clip_and_is_seeded():
    x = torch.randint(0, 256, (3, 2, 32, 32), generator=g(6), dtype=torch.uint8)
    ra = T.RandAugment("rand-m9-n4-mstd0.5-inc1")
    assert torch.equal(ra(x, g(3)), ra(x, g(3)))
    assert any(not torch.equal(ra(x, g(s)), x) for s in range(5))


def test_build_transforms_train_and_test():
    cfg = DataConfig(crop_size=32, test_short_side=40)
    cfg.augment.short_side = [40, 48]
    cfg.augment.randaugment = "rand-m7-n4-mstd0.5-inc1"
    cfg.augment.random_erasing = 0.25
    clip = torch.randint(0, 256, (3, 4, 60, 80), dtype=torch.uint8)
    y = T.build_transforms(cfg, "train")(clip, g())
    assert y.shape == (3, 4, 32, 32) and y.dtype == torch.float32
    y = T.build_transforms(cfg, "test")(clip, g())
    assert y.shape == (1, 3, 4, 32, 32)
    cfg.test_crops = 3
    assert T.build_transforms(cfg, "test")(clip, g()).shape == (3, 3, 4, 32, 32)


def test_temporal_subsample():
    x = torch.arange(20).view(1, 20, 1, 1).expand(3, 20, 2, 2)
    assert T.TemporalSubsample(10)(x)[0, :, 0, 0].tolist() == [0, 2, 4, 6, 8, 10, 12, 14, 16, 19]


def test_mixup_labels_sum_to_one_and_mix():
    video = torch.randn(4, 3, 2, 8, 8)
    label = torch.tensor([0, 1, 2, 3])
    for mix, cut in [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)]:
        m = Mixup(5, mix, cut, label_smoothing=0.1)
        v, y, lam = m(video, label, g(1))
        assert y.shape == (4, 5)
        assert torch.allclose(y.sum(-1), torch.ones(4))
        assert 0 <= lam <= 1
        # soft target = lam * smooth(y) + (1 - lam) * smooth(y reversed)
        ref = lam * one_hot_smooth(label, 5, 0.1) + (1 - lam) * one_hot_smooth(label.flip(0), 5, 0.1)
        assert torch.allclose(y, ref)
        if cut == 0.0:
            assert torch.allclose(v, lam * video + (1 - lam) * video.flip(0))


def test_cutmix_same_box_every_frame():
    video = torch.zeros(2, 3, 4, 16, 16)
    video[1] = 1.0
    v, y, lam = Mixup(2, 0.0, 1.0, 0.0)(video, torch.tensor([0, 1]), g(4))
    box = v[0, 0] == 1.0  # (T, H, W)
    assert all(torch.equal(box[0], box[t]) for t in range(4))
    assert abs((1 - box[0].float().mean().item()) - lam) < 1e-6


def test_collate_drops_bad_samples():
    good = {"video": torch.zeros(3, 2, 4, 4), "label": torch.tensor(1), "index": 0, "caption": "a"}
    bad = BadSample(1, "/x/broken.mp4", "cannot open")
    b = ClipCollate()([good, bad, dict(good, index=2)])
    assert b["video"].shape[0] == 2 and b["caption"] == ["a", "a"]
    assert b["bad_samples"] == [(1, "/x/broken.mp4", "cannot open")]
    assert ClipCollate()([bad]) == {"bad_samples": [(1, "/x/broken.mp4", "cannot open")]}
    mixed = ClipCollate(Mixup(3, 0.8, 0.0, 0.1), seed=1)([good, dict(good, index=2, label=torch.tensor(2))])
    assert mixed["label"].shape == (2, 3) and torch.allclose(mixed["label"].sum(-1), torch.ones(2))


def test_hue_shift_matches_colorsys():
    import colorsys

    x = torch.randint(0, 256, (3, 1, 4, 5), generator=g(9), dtype=torch.uint8).float()
    y = T._adjust_hue(x, 0.3)
    for i in range(4):
        for j in range(5):
            r, gg, b = (x[:, 0, i, j] / 255).tolist()
            hh, ss, vv = colorsys.rgb_to_hsv(r, gg, b)
            ref = colorsys.hsv_to_rgb((hh + 0.3) % 1.0, ss, vv)
            assert torch.allclose(y[:, 0, i, j] / 255, torch.tensor(ref, dtype=torch.float32), atol=1e-4)


def test_gaussian_blur_matches_numpy_separable():
    x = torch.randint(0, 256, (3, 2, 30, 40), generator=g(10), dtype=torch.uint8)
    blur = T.GaussianBlur(p=1.0, sigma=(1.5, 1.5))
    y = blur(x, g(0))
    k = max(3, int(0.1 * 30) | 1)
    r = k // 2
    ker = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * 1.5**2))
    ker /= ker.sum()
    xs = x.numpy().astype(np.float64)
    p = np.pad(xs, ((0, 0), (0, 0), (0, 0), (r, r)), mode="reflect")
    a = sum(ker[i] * p[..., i : i + 40] for i in range(k))
    p = np.pad(a, ((0, 0), (0, 0), (r, r), (0, 0)), mode="reflect")
    ref = np.clip(np.round(sum(ker[i] * p[..., i : i + 30, :] for i in range(k))), 0, 255)
    assert np.abs(y.numpy().astype(np.float64) - ref).max() <= 1


def test_a_call_without_a_generator_draws_afresh_each_time():
    # the default generator used to be re-seeded at 0, so every call made the same draw
    from tubelet.data.transforms import Compose, RandomHorizontalFlip, RandomResizedCrop

    x = torch.randint(0, 255, (3, 2, 48, 48), dtype=torch.uint8)
    crop = RandomResizedCrop(32)
    outs = {crop(x).numpy().tobytes() for _ in range(10)}
    assert len(outs) > 1
    pipe = Compose([RandomResizedCrop(32), RandomHorizontalFlip()])
    assert len({pipe(x).numpy().tobytes() for _ in range(10)}) > 1
    # with a generator the draw is reproducible, and torch.manual_seed repeats generator-less calls
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(crop(x, g1), crop(x, g2))
    torch.manual_seed(3)
    a = crop(x)
    torch.manual_seed(3)
    assert torch.equal(a, crop(x))
