"""MViTv1-B (arXiv 2104.11227) as an MViT config: zoo sizes and costs, v1 layout, and the v2 default kept."""

from __future__ import annotations

import pytest
import torch

from tubelet.models import create_model

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "name, frames, params, zoo_gmacs",
    [
        # torchvision mvit_v1_b: 36,610,672 params, 70.599 GMACs; PyTorchVideo zoo 36.61M, 70.80 / 170.37.
        ("mvitv1_b_16x4", 16, 36_610_672, 70.80),
        ("mvitv1_b_32x3", 32, 36_610_672 + 8 * 96, 170.37),  # 8 more temporal position rows
    ],
)
def test_zoo_params_and_gmacs(name, frames, params, zoo_gmacs):
    from tubelet.flops import count_flops

    with torch.device("meta"):
        m = create_model(name)
        x = torch.randn(1, 3, frames, 224, 224)
    assert sum(p.numel() for p in m.parameters()) == params
    assert count_flops(m, (x,)).macs / 1e9 == pytest.approx(zoo_gmacs, rel=0.02)


def test_v1_layout():
    m = create_model("mvitv1_b_16x4")
    strided = [i for i, b in enumerate(m.blocks) if b.attn.pool_q is not None]
    assert strided == [1, 3, 14]  # Q pooled only where it is strided
    assert all(b.attn.pool_k is not None for b in m.blocks)
    assert not any(hasattr(b.attn, "rel_pos_h") for b in m.blocks)
    assert m.pos_embed_spatial.shape == (1, 56 * 56, 96) and m.pos_embed_temporal.shape == (1, 8, 96)
    assert (m.blocks[0].dim, m.blocks[0].dim_out) == (96, 192)  # widened in block 0's MLP
    assert m.get_layer_id("pos_embed_spatial") == 0
    v2 = create_model("mvitv2_s")
    assert all(b.attn.pool_q is not None for b in v2.blocks) and not hasattr(v2, "pos_embed_spatial")


def test_positions_enter_and_size_is_checked():
    m = create_model("mvitv1_b_16x4", depth=2, transitions=(1,), num_frames=4, img_size=32, num_classes=3).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    a = m(x)
    with torch.no_grad():
        m.pos_embed_spatial.add_(torch.randn_like(m.pos_embed_spatial))  # a constant shift would vanish in LayerNorm
    assert not torch.allclose(a, m(x))
    with pytest.raises(ValueError, match="built for a"):
        m(torch.randn(1, 3, 4, 64, 64))


def test_attn_norm_eps_reaches_the_pooling_norms_only():
    m = create_model("mvitv1_b_16x4", depth=4, transitions=(1, 3), attn_norm_eps=1e-5)
    pooled = {n: mod.eps for n, mod in m.named_modules() if isinstance(mod, torch.nn.LayerNorm) and ".attn." in n}
    rest = {n: mod.eps for n, mod in m.named_modules() if isinstance(mod, torch.nn.LayerNorm) and ".attn." not in n}
    assert len(pooled) == 4 * 2 + 2 and set(pooled.values()) == {1e-5}  # K and V everywhere, Q at the strides
    assert set(rest.values()) == {1e-6}
    default = create_model("mvitv1_b_16x4", depth=4, transitions=(1, 3))
    assert {mod.eps for mod in default.modules() if isinstance(mod, torch.nn.LayerNorm)} == {1e-6}
