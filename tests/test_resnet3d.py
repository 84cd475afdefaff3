"""Slow-only 3D ResNet: paper sizes, kernel layout, interface, supervised use and the frozen probe."""

from __future__ import annotations

import pytest
import torch

from tubelet.config.loader import from_dict
from tubelet.models import create_model, list_models

torch.set_num_threads(1)


def _tiny(**kw):
    return create_model("slow_r50", depths=[1, 1, 1, 1], width=4, **kw)


def test_registered():
    assert {"slow_r50", "slow_r18"} <= set(list_models("slow_*"))


def test_paper_size_and_cost_on_meta():
    from tubelet.flops import count_flops

    with torch.device("meta"):
        m = create_model("slow_r50")
        x = torch.randn(1, 3, 8, 224, 224)
    fc = count_flops(m, (x,))
    assert fc.params == pytest.approx(32.45e6, rel=2e-3)  # SlowFast zoo: 32.5M (K400 head)
    assert fc.macs / 1e9 == pytest.approx(41.9, rel=0.01)  # zoo: 41.9 "GFLOPs" = GMACs, 8x224^2


def test_kernel_layout_and_no_temporal_downsampling():
    m = create_model("slow_r50", num_classes=0)
    assert tuple(m.stem[0].kernel_size) == (1, 7, 7)
    kts = [stage[0].conv_a.kernel_size[0] for stage in m.stages]
    assert kts == [1, 1, 3, 3]
    assert all(b.conv_b.stride[0] == 1 for s in m.stages for b in s)
    assert m.embed_dim == 2048
    tiny = _tiny(num_classes=5)
    x = torch.randn(2, 3, 8, 64, 64)
    fmap = tiny.forward_feature_map(x)
    assert fmap.shape == (2, 4 * 8 * 4, 8, 2, 2)  # T kept, H and W / 32
    tokens = tiny.forward_features(x)
    assert tokens.shape == (2, 8 * 2 * 2, 128)
    # time-slowest token order: token t*H'W' + h*W' + w is fmap[:, :, t, h, w]
    torch.testing.assert_close(tokens[:, 1 * 4 + 1 * 2 + 0], fmap[:, :, 1, 1, 0])
    assert tiny.forward_head(tokens, pre_logits=True).shape == (2, 128)
    assert tiny(x).shape == (2, 5)


def test_layer_ids_and_zero_init():
    m = create_model("slow_r50", num_classes=10)
    assert m.num_layers() == 16
    assert m.get_layer_id("stem.0.weight") == 0
    assert m.get_layer_id("stages.0.0.conv_a.weight") == 1
    assert m.get_layer_id("stages.3.2.bn_c.weight") == 16
    assert m.get_layer_id("head.fc.weight") == 17
    assert all(float(b.bn_c.weight.abs().sum()) == 0 for s in m.stages for b in s)


def test_checkpoint_round_trip(tmp_path):
    from safetensors.torch import save_file

    a = _tiny(num_classes=3)
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, tmp_path / "w.safetensors")
    b = create_model("slow_r50", checkpoint=str(tmp_path / "w.safetensors"), depths=[1, 1, 1, 1], width=4,
                     num_classes=3)
    a.eval(), b.eval()
    x = torch.randn(1, 3, 4, 32, 32)
    torch.testing.assert_close(a(x), b(x))


def _recipe(method: dict) -> object:
    return from_dict({
        "model": {"name": "slow_r50", "num_classes": 4, "num_frames": 4, "img_size": 32,
                  "overrides": {"depths": [1, 1, 1, 1], "width": 4}},
        "data": {"synthetic": {"num_classes": 4}},
        "method": method,
    })


def test_supervised_baseline_trains():
    from tubelet.methods import build_method

    m = build_method(_recipe({"name": "supervised"}))
    out = m({"video": torch.randn(2, 3, 4, 32, 32), "label": torch.tensor([0, 3])})
    out["loss"].backward()
    assert m.backbone.stem[0].weight.grad is not None


def test_linear_probe_freezes_bn_statistics():
    from tubelet.methods import build_method

    m = build_method(_recipe({"name": "linear_probe", "feature_norm": "none"}))
    m.train()
    bn = m.backbone.stem[1]
    before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    out = m({"video": torch.randn(3, 3, 4, 32, 32) * 3 + 1, "label": torch.tensor([0, 1, 2])})
    out["loss"].backward()
    opt.step()
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == before[2]
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert m.head.weight.grad is not None
