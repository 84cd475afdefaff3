"""Space-time ViT (MAE-ST encoder): shapes, reference parameter counts, and equalities that must hold."""

import math

import pytest
import torch

from tubelet.models import create_model, list_models
from tubelet.models.vit import VisionTransformer, ViTConfig


def tiny(**kw) -> VisionTransformer:
    cfg = dict(embed_dim=32, depth=2, num_heads=4, num_frames=4, img_size=32, patch_size=8, num_classes=5)
    cfg.update(kw)
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(**cfg))


def clip(b=2, t=4, s=32) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(b, 3, t, s, s)


def vit_params(dim, depth, classes, grid=(8, 14, 14), patch=2 * 16 * 16 * 3, cls=True, mlp_ratio=4):
    """Parameter count from the architecture, written out independently of the module code."""
    hidden = dim * mlp_ratio
    block = 2 * 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (dim * hidden + hidden) + (hidden * dim + dim)
    embed = patch * dim + dim + grid[1] * grid[2] * dim + grid[0] * dim + (dim if cls else 0)
    return embed + depth * block + 2 * dim + dim * classes + classes


def test_registry_variants_and_param_counts():
    assert set(list_models("vit_*")) >= {"vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge"}
    expected = {
        "vit_tiny": (192, 12, 3),
        "vit_small": (384, 12, 6),
        "vit_base": (768, 12, 12),
        "vit_large": (1024, 24, 16),
        "vit_huge": (1280, 32, 16),
    }
    counts = {}
    for name, (dim, depth, heads) in expected.items():
        with torch.device("meta"):
            m = create_model(name)
        assert (m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads) == (dim, depth, heads)
        assert m.patch_embed.patch_size == (2, 16, 16)
        counts[name] = sum(p.numel() for p in m.parameters())
        assert counts[name] == vit_params(dim, depth, 400), name
    assert counts["vit_base"] == 86_701_456
    # REFERENCE_NUMBERS C: zoo params B / L / H = 87M / 304M / 632M
    assert round(counts["vit_base"] / 1e6) == 87
    assert abs(counts["vit_large"] / 1e6 - 304) < 1
    assert abs(counts["vit_huge"] / 1e6 - 632) < 1


def test_vit_base_token_count_1568():
    with torch.device("meta"):
        m = create_model("vit_base")
        x = torch.empty(1, 3, 16, 224, 224)
        assert m.patch_embed.grid_size(16, 224, 224) == (8, 14, 14)
        assert m.embed(x).shape == (1, 1568, 768)
        assert m.forward_features(x).shape == (1, 1569, 768)
    # a real (narrow, shallow) model on a real 16x224x224 clip
    m = create_model("vit_tiny", depth=1, num_classes=3)
    with torch.no_grad():
        out = m.forward_features(torch.randn(1, 3, 16, 224, 224))
    assert out.shape == (1, 1569, 192) and m.num_prefix_tokens == 1


def test_forward_shapes_and_keep_idx():
    m = tiny().eval()
    x = clip()
    n = 2 * 4 * 4
    assert m.forward_features(x).shape == (2, n + 1, 32)
    assert m(x).shape == (2, 5)
    keep = torch.stack([torch.randperm(n)[:7] for _ in range(2)])
    assert m.forward_features(x, keep).shape == (2, 7 + 1, 32)
    no_cls = tiny(class_token=False).eval()
    assert no_cls.forward_features(x, keep).shape == (2, 7, 32)
    assert no_cls.num_prefix_tokens == 0 and no_cls.cls_token is None


def test_keep_idx_gathers_positioned_tokens():
    m = tiny().eval()
    x = clip()
    full = m.embed(x)
    keep = torch.tensor([[31, 0, 4, 17], [2, 2, 30, 9]])
    sub = m.embed(x, keep)
    torch.testing.assert_close(sub, torch.gather(full, 1, keep[..., None].expand(-1, -1, 32)), atol=1e-5, rtol=1e-5)
    # all tokens in a shuffled order: attention is permutation-equivariant, so the encoder output is
    # the full-sequence output, shuffled the same way
    perm = torch.stack([torch.randperm(32) for _ in range(2)])
    with torch.no_grad():
        out_full = m.forward_features(x)
        out_perm = m.forward_features(x, perm)
    torch.testing.assert_close(out_perm[:, 0], out_full[:, 0], atol=1e-5, rtol=1e-4)  # CLS
    restored = torch.empty_like(out_perm[:, 1:]).scatter_(1, perm[..., None].expand(-1, -1, 32), out_perm[:, 1:])
    torch.testing.assert_close(restored, out_full[:, 1:], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError):
        m.forward_features(x, torch.tensor([[0, 32], [1, 2]]))
    with pytest.raises(ValueError):
        m.forward_features(x, torch.tensor([[0, 1]]))


def test_embed_adds_separable_positions():
    m = tiny().eval()
    x = clip()
    with torch.no_grad():
        pos = m.embed(x) - m.patch_embed(x)
    pos_t, pos_s = m.pos_embed.temporal[0], m.pos_embed.spatial[0]
    for t in range(2):
        for s in range(16):
            torch.testing.assert_close(pos[:, t * 16 + s], (pos_t[t] + pos_s[s]).expand(2, -1), atol=1e-5, rtol=1e-5)


def test_other_input_sizes_interpolate_positions():
    m = tiny().eval()
    x = clip(1, t=8, s=48)  # grid 4x6x6 instead of the built 2x4x4
    with torch.no_grad():
        tokens = m.forward_features(x)
        pos = m.embed(x) - m.patch_embed(x)
    assert tokens.shape == (1, 1 + 4 * 36, 32)
    pos_t, pos_s = m.pos_embed.tables((4, 6, 6))
    assert pos_t.shape == (4, 32) and pos_s.shape == (36, 32)
    torch.testing.assert_close(pos[0, 3 * 36 + 7], pos_t[3] + pos_s[7], atol=1e-5, rtol=1e-5)
    assert m(x).shape == (1, 5) and torch.isfinite(m(x)).all()
    sincos = tiny(pos_embed="sincos").eval()
    assert sincos(x).shape == (1, 5)
    assert "pos_embed.spatial" not in dict(sincos.named_parameters())


def test_sdpa_equals_explicit_attention():
    m = tiny().eval()
    ref = tiny(fused_attn=False).eval()
    ref.load_state_dict(m.state_dict())
    x = clip()
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), atol=1e-5, rtol=1e-5)
        keep = torch.tensor([[1, 5, 9], [0, 2, 4]])
        torch.testing.assert_close(m.forward_features(x, keep), ref.forward_features(x, keep), atol=1e-5, rtol=1e-5)


def test_drop_path_linear_over_depth_and_identity_in_eval():
    m = tiny(depth=5, drop_path_rate=0.2)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in m.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    plain = tiny(depth=5)
    plain.load_state_dict(m.state_dict())
    x = clip()
    m.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(m(x), plain(x))
        m.train()
        assert not torch.allclose(m(x), plain(x))  # and active in training


def test_grad_checkpointing_leaves_outputs_and_grads_unchanged():
    x = clip()
    results = []
    for ckpt in (False, True):
        m = tiny(drop_path_rate=0.3, grad_checkpointing=ckpt).train()
        torch.manual_seed(123)  # same drop-path draws in both runs
        out = m(x)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, msg=name)
    m = tiny()
    m.set_grad_checkpointing(True)
    assert m.grad_checkpointing


def test_pooling_modes_and_fc_norm():
    x = clip()
    m = tiny().eval()
    tokens = torch.randn(2, 33, 32)
    torch.testing.assert_close(m.forward_head(tokens, pre_logits=True), tokens[:, 1:].mean(1))
    torch.testing.assert_close(m.forward_head(tokens), m.head.fc(tokens[:, 1:].mean(1)))
    tok = tiny(global_pool="token").eval()
    torch.testing.assert_close(tok.forward_head(tokens, pre_logits=True), tokens[:, 0])
    no_cls = tiny(class_token=False).eval()
    torch.testing.assert_close(no_cls.forward_head(tokens[:, 1:], pre_logits=True), tokens[:, 1:].mean(1))
    with pytest.raises(ValueError):
        tiny(class_token=False, global_pool="token")
    fc = tiny(fc_norm=True).eval()
    assert isinstance(fc.norm, torch.nn.Identity) and isinstance(fc.fc_norm, torch.nn.LayerNorm)
    pooled = fc.forward_head(fc.forward_features(x), pre_logits=True)
    torch.testing.assert_close(pooled.mean(-1), torch.zeros(2), atol=1e-5, rtol=0)  # normed after pooling
    assert fc.fc_norm.eps == 1e-6 and m.norm.eps == 1e-6
    m.reset_classifier(0)
    assert m(x).shape == (2, 32) and m.num_classes == 0


def test_layer_ids_and_no_weight_decay():
    m = tiny(depth=3)
    names = dict(m.named_parameters())
    assert m.num_layers() == 3
    assert m.get_layer_id("cls_token") == 0
    assert m.get_layer_id("pos_embed.spatial") == 0
    assert m.get_layer_id("patch_embed.proj.weight") == 0
    assert m.get_layer_id("blocks.0.attn.qkv.weight") == 1
    assert m.get_layer_id("blocks.2.mlp.fc2.bias") == 3
    assert m.get_layer_id("norm.weight") == 4 and m.get_layer_id("head.fc.weight") == 4
    assert {m.get_layer_id(n) for n in names} == {0, 1, 2, 3, 4}
    assert m.no_weight_decay() == {"cls_token", "pos_embed.spatial", "pos_embed.temporal"}
    assert m.no_weight_decay() <= set(names)


def test_init_statistics():
    # MAE's reference init: xavier-uniform Linears and tubelet projection, zero biases, LN 1/0, CLS normal(0.02)
    torch.manual_seed(0)
    m = VisionTransformer(ViTConfig(embed_dim=192, depth=1, num_heads=3, num_classes=10))
    linears = {"fc1": m.blocks[0].mlp.fc1, "fc2": m.blocks[0].mlp.fc2, "qkv": m.blocks[0].attn.qkv,
               "proj": m.blocks[0].attn.proj}
    for name, lin in linears.items():
        fan_out, fan_in = lin.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        n = lin.weight.numel()
        # std of U(-b, b) is b / sqrt(3); its estimate's relative sampling error is about sqrt(0.8 / n)
        assert lin.weight.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=4 * math.sqrt(0.8 / n)), name
        assert lin.weight.abs().max().item() <= bound and lin.weight.abs().max().item() > 0.99 * bound, name
        assert torch.all(lin.bias == 0), name
    w = m.patch_embed.proj.weight  # (192, 3, 2, 16, 16): a Linear from 1536 to 192
    bound = math.sqrt(6.0 / (192 + 3 * 2 * 16 * 16))
    assert w.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=4 * math.sqrt(0.8 / w.numel()))
    assert w.abs().max().item() <= bound and torch.all(m.patch_embed.proj.bias == 0)
    assert torch.all(m.norm.weight == 1) and torch.all(m.norm.bias == 0)
    assert torch.all(m.blocks[0].norm1.weight == 1) and torch.all(m.blocks[0].norm1.bias == 0)
    assert 0.015 < m.cls_token.std() < 0.025
    assert 0.01 < m.pos_embed.spatial.std() < 0.03


def test_weights_round_trip_through_registry(tmp_path):
    from safetensors.torch import save_file

    m = create_model("vit_tiny", depth=2, num_frames=4, img_size=32, num_classes=7).eval()
    path = tmp_path / "vit.safetensors"
    save_file(m.state_dict(), str(path))
    again = create_model("vit_tiny", depth=2, num_frames=4, img_size=32, num_classes=7, checkpoint=str(path)).eval()
    x = clip(1)
    with torch.no_grad():
        assert torch.equal(m(x), again(x))


def test_bf16_autocast_forward_backward():
    m = tiny().train()
    x = clip()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters())


def _tiny(**kw):
    from tubelet.models import create_model

    # no class token: with one, the doubled patch keys would outweigh it (the identity below needs none)
    base = dict(num_classes=3, img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, class_token=False,
                global_pool="avg")
    return create_model("vit_tiny", **{**base, **kw}).eval()


def test_image_weights_inflate_to_a_video_vit_with_equal_logits_on_a_still_clip(tmp_path):
    """Video <-> image transfer (ViT checkpoint_filter_fn): an image ViT's projection, repeated over t
    frames and divided by t, with its one-step time table repeated, gives a video ViT whose logits on a
    clip of one repeated frame are the image model's (duplicated keys leave attention's average as it is)."""
    from safetensors.torch import save_file

    from tubelet.errors import CheckpointError
    from tubelet.methods.backbone import load_backbone_weights

    torch.manual_seed(0)
    image = _tiny(num_frames=1, tubelet_size=1)
    with torch.no_grad():
        for p in image.parameters():
            p.normal_(0, 0.2)  # not the init: every tensor matters
    path = tmp_path / "image.safetensors"
    save_file({k: v.contiguous() for k, v in image.state_dict().items()}, str(path))
    video = _tiny(num_frames=4, tubelet_size=2)
    report = load_backbone_weights(video, str(path))
    assert "patch_embed.proj.weight" in report.loaded and not report.head_reinit
    frame = torch.randn(2, 3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(video(frame.expand(-1, -1, 4, -1, -1)), image(frame), atol=1e-5, rtol=1e-5)
        w = video.patch_embed.proj.weight
        torch.testing.assert_close(w.sum(dim=2, keepdim=True), image.patch_embed.proj.weight)
    # and back: a video tubelet summed over time embeds a still frame as the video model embeds the still clip
    back = _tiny(num_frames=1, tubelet_size=1)
    save_file({k: v.contiguous() for k, v in video.state_dict().items()}, str(tmp_path / "video.safetensors"))
    load_backbone_weights(back, str(tmp_path / "video.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(back.patch_embed(frame), video.patch_embed(frame.expand(-1, -1, 2, -1, -1)),
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(CheckpointError, match="2-frame tubelet cannot become a 3-frame"):
        load_backbone_weights(_tiny(num_frames=3, tubelet_size=3), str(tmp_path / "video.safetensors"))
