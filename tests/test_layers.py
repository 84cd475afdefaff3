"""Shared transformer layers: values checked against independent computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from tubelet.models.heads import ClassifierHead, pool_tokens
from tubelet.models.layers import Attention, DropPath, Mlp, PatchEmbed3d, SeparablePosEmbed, sincos_1d, sincos_2d
from tubelet.models.vit import Block


def test_mlp_is_linear_gelu_linear():
    torch.manual_seed(0)
    m = Mlp(8, 32, 5)
    x = torch.randn(2, 3, 8)
    ref = F.linear(F.gelu(F.linear(x, m.fc1.weight, m.fc1.bias)), m.fc2.weight, m.fc2.bias)
    assert m.fc1.weight.shape == (32, 8) and m.fc2.weight.shape == (5, 32)
    torch.testing.assert_close(m(x), ref)
    assert Mlp(6).fc1.out_features == 6 and Mlp(6).fc2.out_features == 6


def test_drop_path_identity_in_eval_and_per_sample_in_train():
    x = torch.randn(64, 5, 7)
    dp = DropPath(0.25)
    dp.eval()
    assert torch.equal(dp(x), x)
    dp.train()
    torch.manual_seed(0)
    y = dp(x)
    kept = (y != 0).flatten(1).any(1)
    # each sample is either dropped entirely or kept and scaled by 1 / keep
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    assert torch.all(y[~kept] == 0)
    assert 0 < int((~kept).sum()) < 64
    big = DropPath(0.25).train()(torch.ones(20000, 1))
    assert abs(big.mean().item() - 1.0) < 0.03  # unbiased in expectation
    assert torch.equal(DropPath(0.0).train()(x), x)
    with pytest.raises(ValueError):
        DropPath(1.0)


def _reference_attention(m: Attention, x: torch.Tensor, mask=None) -> torch.Tensor:
    """Per-head softmax(q k^T / sqrt(d)) v with einsum, from the module's weights."""
    B, N, C = x.shape
    H, d = m.num_heads, m.head_dim
    qkv = F.linear(x, m.qkv.weight, m.qkv.bias).view(B, N, 3, H, d)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, H, d)
    s = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(d)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    o = torch.einsum("bhnm,bmhd->bnhd", s.softmax(-1), v).reshape(B, N, C)
    return F.linear(o, m.proj.weight, m.proj.bias)


def test_attention_sdpa_equals_explicit_and_reference():
    torch.manual_seed(0)
    m = Attention(24, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(2, 11, 24)
    fused = m(x)
    m.fused_attn = False
    explicit = m(x)
    ref = _reference_attention(m, x)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explicit, ref, atol=1e-5, rtol=1e-5)
    mask = torch.rand(2, 1, 11, 11) > 0.3
    mask[..., 0] = True  # every query sees at least one key
    m.fused_attn = True
    torch.testing.assert_close(m(x, mask), _reference_attention(m, x, mask), atol=1e-5, rtol=1e-5)
    m.fused_attn = False
    torch.testing.assert_close(m(x, mask), _reference_attention(m, x, mask), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        Attention(10, num_heads=3)


@pytest.mark.parametrize("fused", [True, False])
def test_query_subset_equals_the_full_output_gathered(fused):
    # Attention/Block with query_idx compute only some tokens' outputs (every token stays a key):
    # values and all gradients must equal the full computation gathered at those tokens.
    torch.manual_seed(0)
    blk = Block(16, 4, qkv_bias=True, fused_attn=fused)
    x = torch.randn(2, 11, 16, requires_grad=True)
    idx = torch.tensor([[10, 0, 3, 3], [5, 6, 1, 9]])
    g = torch.randn(2, 4, 16)
    params = [x, *blk.parameters()]
    for layer, inp in ((blk.attn, blk.norm1), (blk, None)):
        h = x if inp is None else inp(x)
        sub = layer(h, query_idx=idx)
        full = torch.gather(layer(h), 1, idx[..., None].expand(-1, -1, 16))
        assert sub.shape == (2, 4, 16)
        torch.testing.assert_close(sub, full, atol=1e-5, rtol=1e-5)
        for a, b in zip(torch.autograd.grad(sub, params, g, retain_graph=True, allow_unused=True),
                        torch.autograd.grad(full, params, g, allow_unused=True)):
            if b is None:
                assert a is None
            else:
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="query_idx"):
        blk.attn(x, torch.ones(2, 1, 11, 11, dtype=torch.bool), query_idx=idx)
    with pytest.raises(ValueError, match="query_idx"):
        blk(x, torch.ones(2, 1, 11, 11, dtype=torch.bool), query_idx=idx)


def test_patch_embed_grid_order_and_subset():
    torch.manual_seed(0)
    pe = PatchEmbed3d((2, 4, 4), in_chans=3, embed_dim=16)
    assert pe.grid_size(16, 224, 224) == (8, 56, 56)
    assert PatchEmbed3d((2, 16, 16)).grid_size(16, 224, 224) == (8, 14, 14)  # 1568 tokens
    x = torch.randn(2, 3, 6, 8, 12)  # grid 3 x 2 x 3
    tokens = pe(x)
    assert tokens.shape == (2, 18, 16)
    # token n = t*H'W' + h*W' + w is the projection of cube (t, h, w)
    t, h, w = 2, 1, 2
    n = t * 6 + h * 3 + w
    cube = x[:, :, 2 * t : 2 * t + 2, 4 * h : 4 * h + 4, 4 * w : 4 * w + 4].reshape(2, -1)
    torch.testing.assert_close(tokens[:, n], F.linear(cube, pe.proj.weight.reshape(16, -1), pe.proj.bias))
    assert torch.equal(pe.patchify(x)[:, n], cube)
    keep = torch.tensor([[17, 0, 5], [3, 3, 9]])
    sub = pe.forward_subset(x, keep)
    torch.testing.assert_close(sub, torch.gather(tokens, 1, keep[..., None].expand(-1, -1, 16)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not divisible"):
        pe(torch.randn(1, 3, 5, 8, 12))
    with pytest.raises(ValueError):
        pe(torch.randn(3, 6, 8, 12))


def test_patch_embed_equals_its_conv3d_forward_and_backward():
    # The projection is computed as cubes @ W^T; the stored Conv3d (what checkpoints hold) must give
    # the same tokens and the same weight, bias and input gradients.
    torch.manual_seed(0)
    pe = PatchEmbed3d((2, 4, 4), in_chans=3, embed_dim=16)
    x = torch.randn(2, 3, 6, 8, 12, requires_grad=True)
    g = torch.randn(2, 18, 16)
    tokens = pe(x)
    grads = torch.autograd.grad(tokens, (x, pe.proj.weight, pe.proj.bias), g)
    ref = pe.proj(x).flatten(2).transpose(1, 2)
    ref_grads = torch.autograd.grad(ref, (x, pe.proj.weight, pe.proj.bias), g)
    torch.testing.assert_close(tokens, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_separable_positions_are_pos_t_plus_pos_s():
    torch.manual_seed(0)
    pe = SeparablePosEmbed(8, (3, 2, 4))
    assert pe.spatial.shape == (1, 8, 8) and pe.temporal.shape == (1, 3, 8)
    table = pe.table((3, 2, 4))[0]
    for t in range(3):
        for s in range(8):
            torch.testing.assert_close(table[t * 8 + s], pe.temporal[0, t] + pe.spatial[0, s])
    x = torch.randn(2, 24, 8)
    torch.testing.assert_close(pe(x, (3, 2, 4)), x + table)
    keep = torch.tensor([[5, 23], [0, 7]])
    sub = torch.randn(2, 2, 8)
    torch.testing.assert_close(pe(sub, (3, 2, 4), keep), sub + table[keep])
    # the kept-token path indexes the two tables; its gradients equal those through the joint table
    g = torch.randn(2, 2, 8)
    got = torch.autograd.grad(pe(sub, (3, 2, 4), keep), (pe.temporal, pe.spatial), g)
    ref = torch.autograd.grad(sub + pe.table((3, 2, 4))[0][keep], (pe.temporal, pe.spatial), g)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError):
        pe(torch.randn(2, 23, 8), (3, 2, 4))


def test_learned_positions_interpolate_separately():
    pe = SeparablePosEmbed(4, (8, 2, 3))
    with torch.no_grad():
        pe.temporal.copy_(torch.arange(8.0).view(1, 8, 1).expand(1, 8, 4))
        pe.spatial.fill_(0.5)
    pos_t, pos_s = pe.tables((16, 5, 7))
    assert pos_t.shape == (16, 4) and pos_s.shape == (35, 4)
    # linear, align_corners=False: output i samples source position i/2 - 1/4, clamped to [0, 7]
    expected = (torch.arange(16.0) / 2 - 0.25).clamp(0, 7)
    torch.testing.assert_close(pos_t[:, 0], expected)
    torch.testing.assert_close(pos_s, torch.full((35, 4), 0.5))  # a constant field stays constant
    # a spatial table that varies along rows only keeps varying along rows only
    with torch.no_grad():
        pe.spatial.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]).view(1, 6, 1).expand(1, 6, 4))
    rows = pe.tables((8, 4, 5))[1][:, 0].view(4, 5)
    torch.testing.assert_close(rows, rows[:, :1].expand(4, 5))
    assert rows[0, 0] < rows[-1, 0]
    # unchanged grid: tables are returned as they are
    pos_t, pos_s = pe.tables((8, 2, 3))
    assert torch.equal(pos_s, pe.spatial[0]) and torch.equal(pos_t, pe.temporal[0])


def test_sincos_tables():
    code = sincos_1d(torch.arange(5), 8)
    assert code.shape == (5, 8)
    torch.testing.assert_close(code[:, 0], torch.sin(torch.arange(5.0)))
    torch.testing.assert_close(code[:, 4], torch.cos(torch.arange(5.0)))
    torch.testing.assert_close(code[3, 1].double(), torch.tensor(math.sin(3 / 10000 ** 0.25), dtype=torch.float64))
    s2 = sincos_2d(2, 3, 8)
    assert s2.shape == (6, 8)
    # first half follows the column, second the row (MAE layout)
    torch.testing.assert_close(s2[4, :4], sincos_1d(torch.tensor([1]), 4)[0])
    torch.testing.assert_close(s2[4, 4:], sincos_1d(torch.tensor([1]), 4)[0])
    torch.testing.assert_close(s2[2, :4], sincos_1d(torch.tensor([2]), 4)[0])
    torch.testing.assert_close(s2[2, 4:], sincos_1d(torch.tensor([0]), 4)[0])
    pe = SeparablePosEmbed(8, (2, 2, 3), kind="sincos")
    assert list(pe.parameters()) == []
    table = pe.table((4, 2, 3))[0]  # any grid, computed exactly
    torch.testing.assert_close(table[3 * 6 + 4], sincos_1d(torch.tensor([3]), 8)[0] + s2[4])


def test_pooling_and_head():
    tokens = torch.arange(24.0).view(1, 4, 6).expand(2, 4, 6)
    torch.testing.assert_close(pool_tokens(tokens, "avg", 1), tokens[:, 1:].mean(1))
    torch.testing.assert_close(pool_tokens(tokens, "avg", 0), tokens.mean(1))
    assert torch.equal(pool_tokens(tokens, "token", 1), tokens[:, 0])
    with pytest.raises(ValueError):
        pool_tokens(tokens, "token", 0)
    head = ClassifierHead(6, 3, drop_rate=0.5).eval()
    x = torch.randn(2, 6)
    torch.testing.assert_close(head(x), x @ head.fc.weight.T)  # zero bias at init
    assert head.fc.weight.abs().max() <= 0.04 + 1e-7 and 0.005 < head.fc.weight.std() < 0.03
    head.reset(0)
    assert torch.equal(head(x), x)
