"""HOG target of MaskFeat (methods/hog.py) against an explicit per-pixel loop and skimage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tubelet.methods.hog import HOGLayer, hog_per_token, hog_video_targets

torch.set_num_threads(1)


def loop_hog(img: np.ndarray, nbins: int = 9, cell: int = 8) -> np.ndarray:
    """Independent HOG of one (C, H, W) frame, written pixel by pixel and cell by cell (float64).

    Reflect padding by one pixel, Sobel gx = [[1,0,-1],[2,0,-2],[1,0,-1]] and gy = gx^T as a
    cross-correlation, angle atan2(gx, gy), bin floor(angle / pi * nbins) mod nbins, magnitude votes
    summed per cell, then per (channel, cell) L2 normalisation with eps 1e-12 (torch's F.normalize).
    """
    C, H, W = img.shape
    kx = [[1, 0, -1], [2, 0, -2], [1, 0, -1]]
    out = np.zeros((C, nbins, H // cell, W // cell))
    for c in range(C):
        p = np.pad(img[c].astype(np.float64), 1, mode="reflect")
        for y in range(H // cell * cell):
            for x in range(W // cell * cell):
                gx = gy = 0.0
                for i in range(3):
                    for j in range(3):
                        gx += kx[i][j] * p[y + i, x + j]
                        gy += kx[j][i] * p[y + i, x + j]
                mag = math.sqrt(gx * gx + gy * gy)
                b = math.floor(math.atan2(gx, gy) / math.pi * nbins) % nbins
                out[c, b, y // cell, x // cell] += mag
        for cy in range(H // cell):
            for cx in range(W // cell):
                v = out[c, :, cy, cx]
                out[c, :, cy, cx] = v / max(np.sqrt((v * v).sum()), 1e-12)
    return out


def test_shapes_224_frame_and_16_frame_clip():
    layer = HOGLayer()
    hog = layer(torch.randn(2, 3, 224, 224))
    assert hog.shape == (2, 3, 9, 28, 28)
    norms = hog.norm(dim=2)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)  # random frames: no flat cell
    tokens = hog_per_token(hog, (14, 14))
    assert tokens.shape == (2, 196, 108)
    clip = torch.randn(1, 3, 16, 64, 64)
    targets = hog_video_targets(layer, clip, (8, 4, 4), frame_stride=2)
    assert targets.shape == (1, 8 * 16, 108)
    # Token (t=3, h=1, w=2) holds HOG frame 6 (the first frame of cube 3), cells rows 2-3, cols 4-5.
    frame6 = layer(clip[:, :, 6])[0]  # (3, 9, 8, 8)
    expect = frame6[:, :, 2:4, 4:6].reshape(-1)  # (channel, bin, cell row, cell col)
    assert torch.equal(targets[0, 3 * 16 + 1 * 4 + 2], expect)


def test_per_cell_histograms_equal_an_explicit_loop():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(3, 24, 35, generator=g)  # 35: the partial last cell column is ignored
    img[:, :9, :9] = 0.5  # cell (0, 0) and its surround flat (0.5: Sobel sums cancel exactly): zero histogram
    ours = HOGLayer()(img[None])[0].double().numpy()
    ref = loop_hog(img.numpy())
    assert ours.shape == ref.shape == (3, 9, 3, 4)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    assert np.all(ours[:, :, 0, 0] == 0)


def test_matches_skimage_where_its_hog_can_match():
    """skimage.feature.hog cannot be configured to reproduce this HOG on general images, because
    (1) its gradient is the central difference [-1, 0, 1] with zeroed border rows/columns, not the
    Sobel filter with reflect padding (no option changes it); (2) its angle is atan2(g_row, g_col)
    measured from the column axis, while the reference uses atan2(gx, gy), measured from the row
    axis, which moves the 20-degree bin boundaries by half a bin (10 degrees); (3) on colour input it
    keeps, per pixel, only the channel with the largest gradient instead of one histogram per channel.
    Binning itself is hard assignment in skimage 0.26 (no interpolation between bins), and its
    per-cell mean (instead of sum) disappears under the L2 normalisation.

    It does match exactly where these differences vanish: on an *additively separable* image
    I(y, x) = f(x) + g(y) the Sobel responses are 4x the central differences (the [1, 2, 1] smoothing
    sums to 4 on a function constant along it), and transposing the frame swaps the angle's reference
    axis. So per-cell histograms of the transposed frame agree on interior cells (border cells differ
    by the padding), one channel at a time. The general case relies on the explicit loop above.
    """
    skimage_feature = pytest.importorskip("skimage.feature")
    rng = np.random.default_rng(1)
    H, W = 48, 56
    img = rng.normal(size=H).cumsum()[:, None] + rng.normal(size=W).cumsum()[None, :]
    ours = HOGLayer()(torch.tensor(img, dtype=torch.float32).expand(1, 3, H, W).contiguous())[0, 0].numpy()
    sk = skimage_feature.hog(img.T, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(1, 1),
                             block_norm="L2", feature_vector=False)[:, :, 0, 0, :]  # (W/8, H/8, 9)
    sk = np.moveaxis(sk.transpose(1, 0, 2), -1, 0)  # (9, H/8, W/8)
    inner = (slice(None), slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(ours[inner], sk[inner], atol=1e-5)
    assert (ours[inner] > 0).sum(axis=0).max() > 1  # non-trivial: cells spread over several bins
    # Without the transposition the half-bin offset shows: the histograms disagree.
    sk_plain = skimage_feature.hog(img, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(1, 1),
                                   block_norm="L2", feature_vector=False)[:, :, 0, 0, :]
    assert np.abs(np.moveaxis(sk_plain, -1, 0)[inner] - ours[inner]).max() > 0.1


def test_constant_image_is_zero():
    hog = HOGLayer()(torch.full((1, 3, 32, 32), 0.3))
    assert torch.count_nonzero(hog) == 0


def test_horizontal_ramp_puts_all_mass_in_one_bin():
    x = torch.arange(32, dtype=torch.float32).view(1, 1, 1, 32).expand(1, 3, 32, 32).contiguous()
    hog = HOGLayer()(x)[0]  # (3, 9, 4, 4)
    # gx = -8 (I(x-1) - I(x+1), Sobel-weighted), gy = 0: angle atan2(-8, 0) = -pi/2 -> floor(-4.5) mod 9 = 4.
    assert torch.allclose(hog[:, 4], torch.ones(3, 4, 4))
    assert torch.count_nonzero(hog[:, [0, 1, 2, 3, 5, 6, 7, 8]]) == 0


@pytest.mark.parametrize("theta", [0.1, 0.5, 1.0, 1.4, 2.0, 2.7, 3.0])
def test_theta_and_theta_plus_pi_share_a_bin(theta):
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    plane = math.cos(theta) * xx + math.sin(theta) * yy  # gradient direction theta
    flipped = -plane  # gradient direction theta + pi
    layer = HOGLayer()
    a = layer(plane.expand(1, 3, 32, 32).contiguous())[0, 0, :, 1:-1, 1:-1]
    b = layer(flipped.expand(1, 3, 32, 32).contiguous())[0, 0, :, 1:-1, 1:-1]
    assert torch.equal(a.argmax(0), b.argmax(0))
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a.max(0).values, torch.ones(2, 2))  # a plane: one bin per interior cell
    # Random images: negating flips every gradient by pi and leaves HOG unchanged.
    img = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(int(theta * 10)))
    assert torch.allclose(layer(img), layer(-img), atol=1e-6)


def test_no_gradient_and_float32_output():
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    out = HOGLayer()(x)
    assert not out.requires_grad and out.dtype == torch.float32
    assert HOGLayer()(x.detach().bfloat16()).dtype == torch.float32
