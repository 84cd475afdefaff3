"""MViTv2 (arXiv 2112.01526): reference sizes and costs, token grids, relative positions, attention
formulations, any input size, checkpointing and gradients. Paper-scale models run on the meta device."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from tubelet.flops import count_flops
from tubelet.models import create_model, list_models
from tubelet.models.layers.rel_pos import (
    decomposed_rel_pos,
    interpolate_rel_pos,
    rel_pos_bias,
    rel_pos_index,
)

TINY = dict(depth=4, transitions=(1, 3), embed_dim=16, num_heads=1, num_classes=7, num_frames=8, img_size=48,
            kv_stride=(1, 4, 4), drop_path_rate=0.0, head_dropout=0.0)


def meta_cost(name: str, shape: tuple[int, ...], **overrides):
    with torch.device("meta"):
        model = create_model(name, **overrides).eval()
        x = torch.empty(*shape)
    return model, count_flops(model, x)


def set_impl(model, impl: str) -> None:
    for blk in model.blocks:
        blk.attn.attn_impl = impl


# -- reference numbers (REFERENCE_NUMBERS.md section B) ------------------------------------------------------
def test_mvitv2_s_params_and_macs():
    model, fc = meta_cost("mvitv2_s", (1, 3, 16, 224, 224))
    assert fc.params == 34_537_744
    assert fc.gmacs == pytest.approx(64.224, rel=1e-3)


def test_mvitv2_b_params_and_macs():
    _, fc = meta_cost("mvitv2_b", (1, 3, 32, 224, 224))
    assert fc.params / 1e6 == pytest.approx(51.23, rel=1e-3)
    assert fc.gmacs == pytest.approx(224.5, rel=0.01)


def test_mvitv2_l_params_and_macs():
    # Zoo: 217.6M, config-implied 213.4M (UNVERIFIED gap, METHODS.md): test only within a few percent.
    model, fc = meta_cost("mvitv2_l", (1, 3, 40, 312, 312))
    assert fc.params / 1e6 == pytest.approx(213.4, rel=0.01)
    assert fc.gmacs == pytest.approx(2828, rel=0.01)
    # True conv output sizes (METHODS.md: 20x78² -> 39² -> 20² -> 10²; the reference floors to 19, 9).
    grids = model.grid_sizes(40, 312, 312)
    assert grids[0] == (20, 78, 78) and grids[3] == (20, 39, 39) and grids[9] == (20, 20, 20)
    assert grids[-1] == (20, 10, 10)
    assert model.blocks[8].attn.rel_pos_h.shape == (39, 72) and model.blocks[0].attn.rel_pos_t.shape == (39, 72)


@pytest.mark.parametrize(
    "name,mparams,gmacs",
    [("mvitv2_t_img", 24, 4.7), ("mvitv2_s_img", 35, 7.0), ("mvitv2_b_img", 52, 10.2), ("mvitv2_l_img", 218, None)],
)
def test_image_variants_match_release_table(name, mparams, gmacs):
    # The release table rounds to whole millions and 0.1 GFLOPs; L's 42.1 is not reproduced (43.7 counted).
    _, fc = meta_cost(name, (1, 3, 224, 224))
    assert fc.params / 1e6 == pytest.approx(mparams, abs=0.6)
    if gmacs is not None:
        assert fc.gmacs == pytest.approx(gmacs, rel=0.015)


# -- structure facts of MViTv2-S at 16x224x224 ------------------------------------------------------------------
@pytest.fixture(scope="module")
def s_meta():
    with torch.device("meta"):
        return create_model("mvitv2_s").eval()


def test_token_grid_and_kv_strides(s_meta):
    grids = []
    hooks = [b.register_forward_hook(lambda m, i, o: grids.append(o[1])) for b in s_meta.blocks]
    with torch.device("meta"), torch.no_grad():
        out = s_meta(torch.empty(2, 3, 16, 224, 224))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 400)
    expected = [(8, 56, 56)] + [(8, 28, 28)] * 2 + [(8, 14, 14)] * 11 + [(8, 7, 7)] * 2
    assert grids == expected  # grid after each block: 56 -> 28 (blk 1) -> 14 (blk 3) -> 7 (blk 14)
    assert s_meta.grid_sizes(16, 224, 224)[1:] == expected
    kv = [b.attn.kv_stride for b in s_meta.blocks]
    assert kv == [(1, 8, 8)] + [(1, 4, 4)] * 2 + [(1, 2, 2)] * 11 + [(1, 1, 1)] * 2
    assert [i for i, b in enumerate(s_meta.blocks) if b.attn.q_stride != (1, 1, 1)] == [1, 3, 14]


def test_rel_tables_widths_and_projections(s_meta):
    rows = [b.attn.rel_pos_h.shape[0] for b in s_meta.blocks]
    assert rows == [111] + [55] * 2 + [27] * 12 + [13]
    assert all(b.attn.rel_pos_w.shape == b.attn.rel_pos_h.shape for b in s_meta.blocks)
    assert all(b.attn.rel_pos_t.shape == (15, 96) for b in s_meta.blocks)
    assert all(b.attn.head_dim == 96 for b in s_meta.blocks)
    assert [i for i, b in enumerate(s_meta.blocks) if b.proj is not None] == [1, 3, 14]
    assert s_meta.blocks[0].attn.pool_q.weight.shape == (96, 1, 3, 3, 3)
    assert [b.attn.num_heads for b in s_meta.blocks] == [1, 2, 2] + [4] * 11 + [8, 8]
    assert s_meta.embed_dim == 768 and s_meta.num_prefix_tokens == 1


def test_maskfeat_option_keeps_last_stage_grid():
    with torch.device("meta"):
        model = create_model("mvitv2_s", q_stride_last_stage=False)
    grids = model.grid_sizes(16, 224, 224)
    assert grids[-1] == (8, 14, 14)
    assert model.blocks[14].attn.q_stride == (1, 1, 1) and model.blocks[14].attn.kv_stride == (1, 2, 2)
    assert model.embed_dim == 768  # widths and heads still double


def test_registry_names():
    assert {"mvitv2_s", "mvitv2_b", "mvitv2_l", "mvitv2_t_img", "mvitv2_s_img", "mvitv2_b_img", "mvitv2_l_img"} <= set(
        list_models("mvitv2_*")
    )


# -- decomposed relative positions ----------------------------------------------------------------------------
def test_rel_pos_index_rule():
    # METHODS.md step 4: floor(i*max(k/q,1) - j*max(q/k,1) + (k-1)*max(q/k,1)).
    for q, k in [(7, 7), (28, 14), (14, 28), (56, 7), (5, 3), (3, 5)]:
        idx = rel_pos_index(q, k)
        for i, j in itertools.product(range(q), range(k)):
            a, b = max(k / q, 1.0), max(q / k, 1.0)
            assert idx[i, j].item() == int(i * a - j * b + (k - 1) * b)
        assert idx.min() >= 0 and idx.max() <= 2 * max(q, k) - 2


def test_interpolate_rel_pos_linear():
    ramp = torch.linspace(0, 1, 13)[:, None].repeat(1, 4)
    assert interpolate_rel_pos(ramp, 13) is ramp
    up = interpolate_rel_pos(ramp, 27)
    assert up.shape == (27, 4)
    torch.testing.assert_close(up[:, 0], up[:, 3])
    assert (up[1:, 0] - up[:-1, 0] >= -1e-6).all()  # linear resampling keeps a ramp monotone
    assert up[0, 0] == pytest.approx(0.0, abs=0.03) and up[-1, 0] == pytest.approx(1.0, abs=0.03)


def test_decomposed_bias_matches_explicit_sum():
    torch.manual_seed(0)
    qg, kg, C = (2, 3, 4), (2, 2, 2), 5
    q = torch.randn(1, 2, 24, C)
    tables = [torch.randn(2 * max(a, b) - 1, C) for a, b in zip(qg, kg)]
    rel_t, rel_h, rel_w = decomposed_rel_pos(q, qg, kg, tables[0], tables[1], tables[2])
    bias = rel_pos_bias(rel_t, rel_h, rel_w, kg)
    ref = torch.zeros(1, 2, 24, 8)
    for i, (t, h, w) in enumerate(itertools.product(*map(range, qg))):
        for j, (u, v, x) in enumerate(itertools.product(*map(range, kg))):
            r = sum(
                tab[rel_pos_index(a, b)[ia, ja]] for tab, a, b, ia, ja in zip(tables, qg, kg, (t, h, w), (u, v, x))
            )
            ref[0, :, i, j] = q[0, :, i] @ r
    torch.testing.assert_close(bias, ref)


# -- attention formulations agree ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,shape", [("mvitv2_s", (2, 3, 8, 48, 48)), ("mvitv2_t_img", (2, 3, 48, 40))])
def test_attention_formulations_agree(name, shape):
    torch.manual_seed(0)
    img = dict(depth=3, transitions=(1, 2), embed_dim=16, num_classes=5, drop_path_rate=0.0)
    over = dict(TINY) if name == "mvitv2_s" else img
    model = create_model(name, **over).train()
    x = torch.randn(*shape)
    outs, grads = {}, {}
    for impl in ("math", "mask", "concat"):
        set_impl(model, impl)
        model.zero_grad()
        y = model(x)
        (y.square().sum() + model.forward_features(x).sum()).backward()
        outs[impl] = y.detach()
        grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for impl in ("mask", "concat"):
        torch.testing.assert_close(outs[impl], outs["math"], atol=1e-5, rtol=1e-5)
        for n, g in grads[impl].items():
            torch.testing.assert_close(g, grads["math"][n], atol=1e-4, rtol=1e-4, msg=n)


def test_formulations_agree_without_grad():
    # Inference writes the "mask" bias straight into a CLS-padded buffer; check it and "concat".
    torch.manual_seed(0)
    model = create_model("mvitv2_s", **TINY).eval()
    x = torch.randn(2, 3, 8, 48, 48)
    outs = {}
    with torch.no_grad():
        for impl in ("math", "mask", "concat"):
            set_impl(model, impl)
            outs[impl] = model.forward_features(x)
    torch.testing.assert_close(outs["mask"], outs["math"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["concat"], outs["math"], atol=1e-5, rtol=1e-5)
    rel_h, rel_w, rel_t = torch.randn(1, 2, 6, 3), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 2)
    with torch.no_grad():
        padded = rel_pos_bias(rel_t, rel_h, rel_w, (2, 3, 4), num_prefix=1)
    torch.testing.assert_close(padded, F.pad(rel_pos_bias(rel_t, rel_h, rel_w, (2, 3, 4)), (1, 0, 1, 0)))


def test_rel_pos_uses_unscaled_query():
    # Noted exception (METHODS.md): the relative term uses Q before 1/sqrt(d), then is added to the
    # scaled logits. Check one block's attention against that explicit formula.
    torch.manual_seed(0)
    model = create_model("mvitv2_s", **TINY).eval()
    attn = model.blocks[0].attn
    x = torch.randn(1, 1 + 4 * 12 * 12, 16)
    grid = (4, 12, 12)
    with torch.no_grad():
        y, qg = attn(x, grid)
        qkv = attn.qkv(x).reshape(1, -1, 3, 1, 16).permute(2, 0, 3, 1, 4)
        q, qg2 = attn._pool(qkv[0], attn.pool_q, attn.norm_q, grid)
        k, kg = attn._pool(qkv[1], attn.pool_k, attn.norm_k, grid)
        v, _ = attn._pool(qkv[2], attn.pool_v, attn.norm_v, grid)
        terms = decomposed_rel_pos(q[:, :, 1:], qg2, kg, attn.rel_pos_t, attn.rel_pos_h, attn.rel_pos_w)
        rel = rel_pos_bias(*terms, kg)
        logits = q @ k.transpose(-2, -1) / 4.0  # sqrt(16)
        logits[:, :, 1:, 1:] += rel
        out = logits.softmax(-1) @ v
        out[:, :, 1:] += q[:, :, 1:]
        ref = attn.proj(out.transpose(1, 2).reshape(1, -1, 16))
    assert qg == (4, 12, 12)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spatial,temporal", [(False, True), (True, False), (False, False)])
def test_rel_pos_flags_are_independent(spatial, temporal):
    # rel_pos_temporal used to be switched off whenever rel_pos_spatial was
    torch.manual_seed(0)
    model = create_model("mvitv2_s", **TINY, rel_pos_spatial=spatial, rel_pos_temporal=temporal).eval()
    for blk in model.blocks:
        assert hasattr(blk.attn, "rel_pos_t") == temporal
        assert hasattr(blk.attn, "rel_pos_h") == spatial and hasattr(blk.attn, "rel_pos_w") == spatial
    attn = model.blocks[0].attn
    x = torch.randn(1, 1 + 4 * 12 * 12, 16)
    grid = (4, 12, 12)
    with torch.no_grad():
        outs = {}
        for impl in ("math", "mask", "concat"):
            attn.attn_impl = impl
            outs[impl] = attn(x, grid)[0]
        # independent reference: scaled logits + the explicit sum of the present axes' terms
        qkv = attn.qkv(x).reshape(1, -1, 3, 1, 16).permute(2, 0, 3, 1, 4)
        q, qg = attn._pool(qkv[0], attn.pool_q, attn.norm_q, grid)
        k, kg = attn._pool(qkv[1], attn.pool_k, attn.norm_k, grid)
        v, _ = attn._pool(qkv[2], attn.pool_v, attn.norm_v, grid)
        logits = q @ k.transpose(-2, -1) / 4.0
        tables = [getattr(attn, f"rel_pos_{a}", None) for a in "thw"]
        if temporal or spatial:
            for i, (t, h, w) in enumerate(itertools.product(*map(range, qg))):
                for j, (u, vv, z) in enumerate(itertools.product(*map(range, kg))):
                    r = sum(tab[rel_pos_index(a, b)[ia, ja]] for tab, a, b, ia, ja in
                            zip(tables, qg, kg, (t, h, w), (u, vv, z)) if tab is not None)
                    logits[0, :, 1 + i, 1 + j] += q[0, :, 1 + i] @ r
        out = logits.softmax(-1) @ v
        out[:, :, 1:] += q[:, :, 1:]
        ref = attn.proj(out.transpose(1, 2).reshape(1, -1, 16))
        for impl, y in outs.items():
            torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5, msg=impl)
        if temporal:  # the temporal table is used: changing it changes the output
            attn.attn_impl = "auto"
            before = attn(x, grid)[0]
            attn.rel_pos_t.add_(torch.randn_like(attn.rel_pos_t))
            assert not torch.allclose(attn(x, grid)[0], before, atol=1e-4)


# -- any input size, contract, checkpointing, gradients -----------------------------------------------------------
@pytest.mark.parametrize(
    "shape,grid",
    [((1, 3, 8, 96, 96), (4, 6, 6)), ((1, 3, 4, 160, 128), (2, 10, 8)), ((2, 3, 6, 50, 70), (3, 4, 5))],
)
def test_any_input_size(shape, grid):
    torch.manual_seed(0)
    model = create_model("mvitv2_s", **TINY).eval()
    with torch.no_grad():
        tokens, g = model.forward_features(torch.randn(*shape), return_grid=True)
        logits = model.forward_head(tokens)
    assert g == grid and g == model.grid_sizes(*shape[2:])[-1]
    assert tokens.shape == (shape[0], 1 + grid[0] * grid[1] * grid[2], 64)
    assert logits.shape == (shape[0], 7) and torch.isfinite(logits).all()


def test_interpolated_tables_are_used_at_other_sizes():
    # At a different input size the block must use the resampled table: changing a table changes output,
    # and a model whose tables were resampled by hand to that grid gives identical logits.
    torch.manual_seed(0)
    small = create_model("mvitv2_s", **TINY).eval()
    big = create_model("mvitv2_s", **{**TINY, "img_size": 96, "num_frames": 16}).eval()
    state = small.state_dict()
    own = big.state_dict()
    state = {k: interpolate_rel_pos(v, own[k].shape[0]) if ".rel_pos_" in k else v for k, v in state.items()}
    big.load_state_dict(state)
    x = torch.randn(1, 3, 16, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(small(x), big(x), atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_same_outputs_and_grads():
    torch.manual_seed(0)
    model = create_model("mvitv2_s", **TINY).train()
    x = torch.randn(2, 3, 8, 48, 48)
    results = []
    for ckpt in (False, True):
        model.set_grad_checkpointing(ckpt)
        model.zero_grad()
        torch.manual_seed(1)
        y = model(x)
        y.square().sum().backward()
        results.append((y.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys()
    for n in results[0][1]:
        torch.testing.assert_close(results[0][1][n], results[1][1][n], msg=n)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = create_model("mvitv2_s", **{**TINY, "drop_path_rate": 0.1}).train()
    x = torch.randn(2, 3, 8, 48, 48)
    tokens = model.forward_features(x)
    # Patch tokens of the last block feed no CLS logit, so include them in the loss.
    (model.forward_head(tokens).square().sum() + tokens.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_drop_path_schedule_and_layer_ids():
    model = create_model("mvitv2_s", **{**TINY, "drop_path_rate": 0.3})
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert model.num_layers() == 4
    assert model.get_layer_id("cls_token") == 0 and model.get_layer_id("patch_embed.proj.weight") == 0
    assert model.get_layer_id("blocks.2.attn.qkv.weight") == 3
    assert model.get_layer_id("head.weight") == 5 and model.get_layer_id("norm.bias") == 5


def test_head_pools_and_images():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 48, 48)
    model = create_model("mvitv2_s", **{**TINY, "head_pool": "mean_norm"}).eval()
    with torch.no_grad():
        tokens = model.forward_features(x)
        ref = model.head(model.norm(tokens[:, 1:].mean(1)))
        torch.testing.assert_close(model.forward_head(tokens), ref)
        assert model.forward_head(tokens, pre_logits=True).shape == (2, 64)
    img = create_model("mvitv2_t_img", depth=3, transitions=(1, 2), embed_dim=16, num_classes=5).eval()
    with torch.no_grad():
        a = img(torch.randn(2, 3, 64, 48))
        b = img(torch.randn(2, 3, 1, 64, 48))  # one-frame clips are images
    assert a.shape == b.shape == (2, 5) and img.num_prefix_tokens == 0
    with pytest.raises(ValueError):
        create_model("mvitv2_t_img", head_pool="cls")


def test_bf16_autocast_runs():
    torch.manual_seed(0)
    model = create_model("mvitv2_s", **TINY).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.randn(1, 3, 8, 48, 48))
    y.float().sum().backward()
    assert torch.isfinite(y.float()).all()


def test_sdpa_is_used_for_attention():
    # On CPU the fused kernel runs with the relative term folded into q and k ("concat"), in inference
    # and in training; no dense bias is built.
    model = create_model("mvitv2_s", **TINY)
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.scaled_dot_product_attention:
                seen.append(("mask" if (kwargs or {}).get("attn_mask") is not None else "concat"))
            return func(*args, **(kwargs or {}))

    x = torch.randn(1, 3, 8, 48, 48)
    with Spy():
        with torch.no_grad():
            model.eval()(x)
        model.train()(x).sum().backward()
    assert seen == ["concat"] * 8


# -- recipes ---------------------------------------------------------------------------------------------------
def test_recipes_load_and_build():
    from tubelet.config.loader import load_recipe
    from tubelet.methods import build_method
    from tubelet.models import get_model_config

    k400 = load_recipe("mvitv2_s_k400")
    m = k400.model
    cfg = get_model_config(m.name, num_classes=m.num_classes, num_frames=m.num_frames, img_size=m.img_size,
                           drop_path_rate=m.drop_path_rate, **m.overrides)
    assert (cfg.depth, cfg.drop_path_rate, cfg.head_dropout) == (16, 0.2, 0.0)
    assert k400.method.head_dropout == 0.5 and k400.data.repeated_sampling == 2
    a = k400.data.augment
    assert (a.mixup_alpha, a.cutmix_alpha, a.label_smoothing) == (0.8, 1.0, 0.1)
    assert a.randaugment == "rand-m7-n4-mstd0.5-inc1"
    assert k400.optim.name == "adamw" and k400.optim.schedule == "cosine" and k400.optim.warmup_steps > 0

    syn = load_recipe("mvitv2_synthetic")
    torch.manual_seed(0)
    method = build_method(syn).train()
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3)
    batch = {"video": torch.randn(4, 3, 8, 32, 32), "label": torch.tensor([0, 1, 2, 3])}
    losses = []
    for _ in range(3):
        out = method(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0]
    assert method.backbone.blocks[-1].attn.q_stride == (1, 2, 2) and len(method.backbone.blocks) == 4
