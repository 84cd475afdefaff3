"""X3D (arXiv 2004.04730): PyTorchVideo zoo sizes and costs, block layout, interface, training use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tubelet.models import create_model, list_models
from tubelet.models.x3d import X3DBlock, round_width

torch.set_num_threads(1)

# name: (frames, test crop, PyTorchVideo zoo params, zoo "GFLOPs" per view, PySlowFast zoo GFLOPs at train crop, train crop)
ZOO = {
    "x3d_xs": (4, 182, 3.79e6, 0.91, 0.60, 160),
    "x3d_s": (13, 182, 3.79e6, 2.96, 1.96, 160),
    "x3d_m": (16, 256, 3.79e6, 6.72, 4.73, 224),
    "x3d_l": (16, 356, 6.15e6, 26.64, 18.37, 312),
}


def _bn_elements(model: nn.Module, x: torch.Tensor) -> int:
    """Elements leaving every BatchNorm of one forward (fvcore counts 5 FLOPs per element for a
    training-mode BatchNorm with affine parameters)."""
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        total += out.numel()

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm3d)]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return total


def test_registered():
    assert {"x3d_xs", "x3d_s", "x3d_m", "x3d_l", "efficient_x3d_xs", "efficient_x3d_s"} <= set(list_models("*x3d*"))


def test_round_width_matches_release_rule():
    assert round_width(12, 2.0) == 24
    assert [round_width(c, 0.0625) for c in (54, 108, 216, 432)] == [8, 8, 16, 32]  # SE widths


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_params_and_gmacs(name):
    from tubelet.flops import count_flops

    frames, crop, params, zoo_gflops, psf_gflops, train_crop = ZOO[name]
    with torch.device("meta"):
        m = create_model(name)
        x_test = torch.randn(1, 3, frames, crop, crop)
        x_train = torch.randn(1, 3, frames, train_crop, train_crop)
    exact = {"x3d_xs": 3_794_274, "x3d_s": 3_794_274, "x3d_m": 3_794_274, "x3d_l": 6_153_384}[name]
    n = sum(p.numel() for p in m.parameters())
    assert n == exact and n == pytest.approx(params, rel=2e-3)
    # PySlowFast's zoo counts conv/linear multiply-adds at the training crop: equal to 1%.
    assert count_flops(m, (x_train,)).macs / 1e9 == pytest.approx(psf_gflops, rel=0.01)
    # PyTorchVideo's zoo counts at the test crop and adds fvcore's BatchNorm count (5 per element):
    # multiply-adds alone are 7-8% under its figure, with the BatchNorm term within 1%.
    macs = count_flops(m, (x_test,)).macs
    assert 0.91 < macs / 1e9 / zoo_gflops < 0.94
    assert (macs + 5 * _bn_elements(m, x_test)) / 1e9 == pytest.approx(zoo_gflops, rel=0.01)


def test_efficient_form_normalises_every_projected_shortcut():
    ref = create_model("x3d_xs", num_classes=10)
    eff = create_model("efficient_x3d_xs", num_classes=10)
    first = ref.stages[0][0]
    assert first.shortcut is not None and first.shortcut_bn is None  # 24 -> 24 at stride 2: no BN in X3D
    assert eff.stages[0][0].shortcut_bn is not None
    n_ref, n_eff = (sum(p.numel() for p in m.parameters()) for m in (ref, eff))
    assert n_eff - n_ref == 48  # one BatchNorm(24)
    # the mobile zoo's S is the same network at X3D-S's 13 frames
    eff_s = create_model("efficient_x3d_s", num_classes=10)
    assert {k: v.shape for k, v in eff_s.state_dict().items()} == {k: v.shape for k, v in eff.state_dict().items()}
    assert (eff_s.cfg.num_frames, eff.cfg.num_frames) == (13, 4)


def test_block_layout():
    m = create_model("x3d_s", num_classes=0)
    assert [len(s) for s in m.stages] == [3, 5, 11, 7]
    assert [s[0].conv_c.out_channels for s in m.stages] == [24, 48, 96, 192]
    assert [s[0].conv_b.out_channels for s in m.stages] == [54, 108, 216, 432]
    b = m.stages[2]
    assert [blk.se is not None for blk in b][:4] == [True, False, True, False]
    assert all(blk.conv_b.groups == blk.conv_b.in_channels for s in m.stages for blk in s)  # depthwise
    assert isinstance(m.stages[0][0].act_b, nn.SiLU)
    assert create_model("x3d_l").cfg.depths() == [5, 10, 25, 15]
    plain = create_model("x3d_xs", se_ratio=0.0, inner_act="relu")
    assert all(blk.se is None and isinstance(blk.act_b, nn.ReLU) for s in plain.stages for blk in s)
    with pytest.raises(ValueError, match="inner_act"):
        create_model("x3d_xs", inner_act="gelu")


def test_interface_shapes_and_time_kept():
    m = create_model("x3d_xs", num_classes=5, base_depths=[1, 1, 1, 1], depth_factor=1.0).eval()
    x = torch.randn(2, 3, 4, 64, 64)
    fmap = m.forward_feature_map(x)
    assert fmap.shape == (2, 432, 4, 2, 2)  # T kept, H and W / 32
    tokens = m.forward_features(x)
    assert tokens.shape == (2, 4 * 2 * 2, 432)
    torch.testing.assert_close(tokens[:, 1 * 4 + 1 * 2 + 0], fmap[:, :, 1, 1, 0])
    assert m.forward_head(tokens, pre_logits=True).shape == (2, 2048)
    assert m(x).shape == (2, 5)
    assert m.num_layers() == 4 and m.get_layer_id("stem.0.weight") == 0
    assert m.get_layer_id("stages.2.0.conv_a.weight") == 3 and m.get_layer_id("head.fc.weight") == 5
    assert all(float(b.bn_c.weight.abs().sum()) == 0 for s in m.stages for b in s)  # blocks start as identities


def test_trains_one_step():
    torch.manual_seed(0)
    m = create_model("x3d_xs", num_classes=3, base_depths=[1, 1, 1, 1], depth_factor=1.0)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 4, 32, 32), torch.tensor([0, 1, 2, 0])
    losses = []
    for _ in range(3):
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert isinstance(m.stages[0][0], X3DBlock)
