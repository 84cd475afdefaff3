"""The ResNet family of the PyTorchVideo zoo: sizes against the zoo's table, block layouts, SlowFast's
two pathways from one decode."""

from __future__ import annotations

import pytest
import torch

from tubelet.models import create_model, list_models

torch.set_num_threads(1)

# PyTorchVideo MODEL_ZOO.md, Kinetics-400: (clip frames fed to the model, params M, "GFLOPs" per view
# at 256x256, whether that figure includes fvcore's BatchNorm term). SlowFast's clip is the Fast
# pathway's 32 frames. Slow 8x8 and SlowFast R-50 8x8 carry PySlowFast's figures (conv/linear
# multiply-adds only); the other rows were counted by a later fvcore that also counts every BatchNorm
# at 5 FLOPs per output element (its formula for a training-mode BatchNorm with affine parameters).
ZOO = {
    "slow_r50": (8, 32.45, 54.52, False),
    "c2d_r50": (8, 24.33, 25.89, True),
    "i3d_r50": (8, 28.04, 37.53, True),
    "slowfast_r50_4x16": (32, 34.48, 36.69, True),
    "slowfast_r50_8x8": (32, 34.57, 65.71, False),
    "slowfast_r101_8x8": (32, 62.83, 127.20, True),
    "csn_r101": (32, 22.21, 75.62, True),
    "r2plus1d_r50": (16, 28.11, 76.45, True),
}


def _bn_elements(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Elements leaving every BatchNorm in one forward of ``model`` on ``x``."""
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        total += out.numel()

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return total


def test_registered():
    names = set(list_models())
    assert set(ZOO) | {"csn_r152"} <= names


@pytest.mark.parametrize("name", sorted(ZOO))
def test_params_and_gmacs_match_the_zoo_table(name):
    from tubelet.flops import count_flops

    frames, params_m, gmacs, with_bn = ZOO[name]
    with torch.device("meta"):
        m = create_model(name).eval()
        x = torch.randn(1, 3, frames, 256, 256)
    fc = count_flops(m, (x,))
    assert fc.params / 1e6 == pytest.approx(params_m, abs=0.005)  # the table's two decimals
    # Counted as the table counts: equal to its two decimals (0.02%).
    as_table = fc.macs + (5 * _bn_elements(m, x) if with_bn else 0)
    assert as_table / 1e9 == pytest.approx(gmacs, rel=2e-4)
    # Multiply-adds alone (what docs/models.md reports): within 2%, except ir-CSN, whose depthwise
    # 3x3x3 convs are so cheap that its BatchNorm term is 2.5% of the table's figure.
    assert fc.gmacs == pytest.approx(gmacs, rel=0.026 if name == "csn_r101" else 0.02)


def test_block_layouts():
    i3d = create_model("i3d_r50", num_classes=0)
    assert i3d.stem[0].kernel_size == (5, 7, 7)
    kts = [[b.conv_a.kernel_size[0] for b in stage] for stage in i3d.stages]
    assert kts == [[3, 3, 3], [3, 1, 3, 1], [3, 1, 3, 1, 3, 1], [1, 3, 1]]
    csn = create_model("csn_r101", num_classes=0)
    b = csn.stages[1][0]
    assert b.conv_b.groups == b.conv_b.in_channels == 128 and b.conv_b.kernel_size == (3, 3, 3)
    assert b.conv_b.stride == (2, 2, 2) and b.shortcut[0].stride == (2, 2, 2)
    r21 = create_model("r2plus1d_r50", num_classes=0)
    assert len(r21.stem) == 3  # no max-pool
    cb = r21.stages[2][0].conv_b
    assert cb.conv_t.kernel_size == (3, 1, 1) and cb.conv_t.stride == (2, 1, 1)
    assert cb.conv_xy.kernel_size == (1, 3, 3) and cb.conv_xy.stride == (1, 2, 2)


@pytest.mark.parametrize("name,frames,t_out", [("c2d_r50", 8, 4), ("i3d_r50", 8, 4), ("r2plus1d_r50", 8, 2),
                                                ("csn_r101", 8, 1), ("slow_r50", 4, 4)])
def test_tiny_forward_shapes(name, frames, t_out):
    depths = [1, 1, 1, 1]
    m = create_model(name, depths=depths, width=8, num_classes=3).eval()
    x = torch.randn(2, 3, frames, 64, 64)
    fmap = m.forward_feature_map(x)
    assert fmap.shape == (2, 8 * 8 * 4, t_out, 2, 2)
    assert m(x).shape == (2, 3)


def _tiny_slowfast(**kw):
    return create_model("slowfast_r50_8x8", depths=[1, 1, 1, 1], width=16, num_classes=5, **kw).eval()


def test_pack_pathway_one_decode_alpha_times_frames():
    from tubelet.data.transforms import PackPathway

    clip = torch.arange(32, dtype=torch.uint8).view(1, 32, 1, 1).expand(3, 32, 4, 4).contiguous()
    slow, fast = PackPathway(4)(clip)
    assert fast.shape[1] == 4 * slow.shape[1] == 32
    assert fast.data_ptr() == clip.data_ptr()  # the decoded clip itself, not a second decode
    assert slow[0, :, 0, 0].tolist() == [0, 4, 8, 13, 17, 22, 26, 31]  # PySlowFast / PyTorchVideo rule
    with pytest.raises(ValueError, match="multiple of alpha=4"):
        PackPathway(4)(clip[:, :30])


def test_slowfast_takes_the_fast_clip_or_the_packed_pair():
    from tubelet.data.transforms import PackPathway

    torch.manual_seed(0)
    m = _tiny_slowfast()
    x = torch.randn(2, 3, 16, 64, 64)
    pair = PackPathway(4)(x)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(pair))
        slow, fast = m.forward_feature_maps(x)
        assert slow.shape == (2, 16 * 8 * 4, 4, 2, 2) and fast.shape == (2, 16 * 8 * 4 // 8, 16, 2, 2)
        tokens = m.forward_features(x)
        assert tokens.shape == (2, 4 * 2 * 2, m.embed_dim)
        gap = torch.cat([slow.mean(dim=(2, 3, 4)), fast.mean(dim=(2, 3, 4))], dim=1)
        torch.testing.assert_close(m.forward_head(tokens, pre_logits=True), gap)
    with pytest.raises(ValueError, match="alpha=4 times"):
        m([pair[0][:, :, :3], pair[1]])


def test_slowfast_lateral_connections():
    m = create_model("slowfast_r50_8x8", num_classes=0)
    assert len(m.fusions) == 4  # after the stem, res2, res3, res4
    convs = [f.conv for f in m.fusions]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(8, 16), (32, 64), (64, 128), (128, 256)]
    assert all(c.kernel_size == (7, 1, 1) and c.stride == (4, 1, 1) for c in convs)
    assert m.slow_stages[0][0].conv_a.in_channels == 64 + 16
    m416 = create_model("slowfast_r50_4x16", num_classes=0)
    assert m416.fusions[1].conv.stride == (8, 1, 1) and m416.fusions[1].conv.kernel_size == (5, 1, 1)
    assert m.embed_dim == 2304
