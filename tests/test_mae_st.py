"""MAE-ST method (arXiv 2205.09113; METHODS.md §2 "Facts a test can check") and the linear probe."""

import pytest
import torch

from tubelet.errors import ConfigError
from tubelet.config.schema import ModelConfig, Recipe
from tubelet.methods.linear_probe import LinearProbeConfig
from tubelet.methods.mae_st import MAESTConfig
from tubelet.data.masking import mask_tokens
from tubelet.methods import build_method
from tubelet.methods.linear_probe import LinearProbe
from tubelet.methods.mae_st import MAEST, normalize_patches, patchify, unpatchify
from tubelet.models import create_model

TINY = dict(num_frames=4, img_size=32)  # 2x16x16 tubelets -> 2x2x2 = 8 tokens


def tiny_mae(**method) -> MAEST:
    kw = dict(decoder_dim=32, decoder_depth=1, decoder_heads=4)
    kw.update(method)
    recipe = Recipe(
        model=ModelConfig(name="vit_tiny", overrides={"depth": 2}, **TINY), method=MAESTConfig(**kw)
    )
    torch.manual_seed(0)
    return build_method(recipe)


# ---------------------------------------------------------------- patchify / targets


@pytest.mark.parametrize("frames,patch", [("cube", (2, 16, 16)), ("first", (1, 16, 16))])
def test_unpatchify_inverts_patchify(frames, patch):
    x = torch.randn(2, 3, 4, 32, 48)
    p = patchify(x, (2, 16, 16), frames=frames)
    assert p.shape == (2, 2 * 2 * 3, 3 * patch[0] * 16 * 16)
    y = unpatchify(p, patch, (2, 2, 3))
    expected = x if frames == "cube" else x[:, :, ::2]  # first frame of every 2-frame cube
    assert torch.equal(y, expected)


def test_patch_values_match_conv3d_weight_order_and_token_order():
    x = torch.randn(1, 3, 4, 32, 32)
    p = patchify(x, (2, 16, 16))
    t, h, w = 1, 0, 1
    n = t * 4 + h * 2 + w  # time slowest
    cube = x[0, :, 2 * t : 2 * t + 2, 16 * h : 16 * h + 16, 16 * w : 16 * w + 16]
    assert torch.equal(p[0, n], cube.reshape(-1))
    # the Conv3d patch embedding is a linear map on exactly these values
    conv = torch.nn.Conv3d(3, 5, (2, 16, 16), (2, 16, 16))
    ref = conv(x).flatten(2).transpose(1, 2)
    assert torch.allclose(p @ conv.weight.reshape(5, -1).T + conv.bias, ref, atol=1e-5)


def test_target_sizes_and_first_frames():
    x = torch.randn(1, 3, 16, 224, 224)
    assert patchify(x, (2, 16, 16), frames="first").shape == (1, 1568, 768)
    assert patchify(x, (2, 16, 16), frames="cube").shape == (1, 1568, 1536)
    # frames 0, 2, ..., 14 (the paper's/SlowFast's choice), not mae_st's linspace 0, 2, ..., 12, 15
    first = unpatchify(patchify(x, (2, 16, 16), frames="first"), (1, 16, 16), (8, 14, 14))
    assert torch.equal(first, x[:, :, [0, 2, 4, 6, 8, 10, 12, 14]])


def test_patchify_subset_equals_gathered_full():
    x = torch.randn(2, 3, 4, 32, 32)
    idx = torch.tensor([[7, 0, 3], [2, 5, 6]])
    for frames in ("first", "cube"):
        full = patchify(x, (2, 16, 16), frames=frames)
        sub = patchify(x, (2, 16, 16), idx, frames=frames)
        assert torch.equal(sub, torch.stack([full[b, idx[b]] for b in range(2)]))


def test_normalised_targets_have_zero_mean_unit_variance():
    y = torch.rand(4, 10, 768) * 3 + 2
    z, mean, var = normalize_patches(y)
    assert torch.allclose(z.mean(-1), torch.zeros(4, 10), atol=1e-5)
    assert torch.allclose(z.var(-1), torch.ones(4, 10), atol=1e-4)
    assert torch.allclose(z * (var + 1e-6) ** 0.5 + mean, y, atol=1e-5)
    torch.testing.assert_close(var, y.var(-1, keepdim=True))  # the unbiased variance
    # the method's own targets, on a clip with non-zero mean and scale
    t = tiny_mae().targets(torch.rand(2, 3, 4, 32, 32) * 4 + 1)
    assert t.shape == (2, 8, 768)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 8), atol=1e-5)
    assert torch.allclose(t.var(-1), torch.ones(2, 8), atol=1e-4)


# ---------------------------------------------------------------- encoder sees kept tokens only


@pytest.mark.parametrize("ratio,kept", [(0.9, 156), (0.95, 78), (0.75, 392)])
def test_masked_tokens_never_enter_the_encoder(ratio, kept):
    recipe = Recipe(
        model=ModelConfig(name="vit_tiny", num_frames=16, img_size=224, overrides={"depth": 1}),
        method=MAESTConfig(mask_ratio=ratio, decoder_dim=32, decoder_depth=1, decoder_heads=4),
    )
    mae = build_method(recipe)
    seen = {}
    mae.backbone.blocks[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("enc", a[0].shape[1]))
    mae.decoder_blocks[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("dec", a[0].shape[1]))
    embedded = {}
    mae.backbone.patch_embed.register_forward_hook(lambda m, a, o: embedded.__setitem__("full", True))
    with torch.no_grad():
        out = mae({"video": torch.randn(1, 3, 16, 224, 224)})
    assert seen["enc"] == kept + 1  # K kept tokens + CLS, never N = 1568
    assert seen["dec"] == 1568  # the decoder works on every position
    assert "full" not in embedded  # the dense patch embedding of all 1568 tubelets never ran
    assert torch.isfinite(out["loss"])


# ---------------------------------------------------------------- loss


def reference_loss(video, pred, masked, norm_pix=True, first_frame=True):
    """Independent MAE-ST loss with explicit loops: per removed token, MSE against its target patch."""
    B, C, T, H, W = video.shape
    h_tokens, w_tokens = H // 16, W // 16
    total, count = 0.0, 0
    for b in range(B):
        for n in masked[b].tolist():
            t, r = divmod(n, h_tokens * w_tokens)
            i, j = divmod(r, w_tokens)
            frames = slice(2 * t, 2 * t + 1) if first_frame else slice(2 * t, 2 * t + 2)
            patch = video[b, :, frames, 16 * i : 16 * i + 16, 16 * j : 16 * j + 16].reshape(-1)
            if norm_pix:
                mu = patch.sum() / patch.numel()
                var = ((patch - mu) ** 2).sum() / (patch.numel() - 1)
                patch = (patch - mu) / torch.sqrt(var + 1e-6)
            total += float(((pred[b, n] - patch) ** 2).mean())
            count += 1
    return total / count


@pytest.mark.parametrize("norm_pix,target_frames", [(True, "first"), (False, "first"), (True, "cube")])
def test_loss_equals_independent_computation(norm_pix, target_frames):
    mae = tiny_mae(norm_pix_loss=norm_pix, target_frames=target_frames, mask_ratio=0.75)
    video = torch.randn(3, 3, 4, 32, 32)
    mask = mask_tokens(3, (2, 2, 2), 0.75, generator=torch.Generator().manual_seed(0))
    dim = 768 if target_frames == "first" else 1536
    pred = torch.randn(3, 8, dim)
    removed = torch.gather(pred, 1, mask.masked.unsqueeze(-1).expand(-1, -1, dim))  # (B, M, dim)
    loss = mae.forward_loss(video, removed, mask)
    ref = reference_loss(video, pred, mask.masked, norm_pix, target_frames == "first")
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    # the forward pass predicts the right number of values per token
    with torch.no_grad():
        full = mae.forward_decoder(mae.forward_encoder(video, mask), mask, (2, 2, 2))
    assert full.shape == (3, 8, dim)


def test_loss_scores_the_removed_positions_only():
    mae = tiny_mae(mask_ratio=0.5)
    video = torch.randn(2, 3, 4, 32, 32)
    mask = mask_tokens(2, (2, 2, 2), 0.5, generator=torch.Generator().manual_seed(1))
    pred = torch.randn(2, 4, 768)  # the 4 removed tokens of each clip
    base = mae.forward_loss(video, pred, mask)
    changed = pred.clone()
    changed[0, 0] += 1.0
    assert mae.forward_loss(video, changed, mask) != base
    with pytest.raises(ValueError, match="removed"):
        mae.forward_loss(video, torch.randn(2, 8, 768), mask)  # all positions: not what it scores


@pytest.mark.parametrize("depth", [2, 0])
def test_training_step_equals_the_full_decoder_gathered(depth):
    # forward() runs the decoder's last block, norm and prediction on the removed tokens only. It must
    # give the loss and gradients of the plain computation: predict every position, keep the removed.
    torch.manual_seed(0)
    mae = tiny_mae(mask_ratio=0.75, decoder_depth=depth)
    video = torch.randn(2, 3, 4, 32, 32)
    mask = mask_tokens(2, (2, 2, 2), 0.75, generator=torch.Generator().manual_seed(3))
    params = [p for p in mae.parameters() if p.requires_grad]
    loss = mae({"video": video}, mask)["loss"]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    full = mae.forward_decoder(mae.forward_encoder(video, mask), mask, (2, 2, 2))  # (B, N, P)
    assert full.shape == (2, 8, 768)
    removed = torch.gather(full, 1, mask.masked.unsqueeze(-1).expand(-1, -1, 768))
    torch.testing.assert_close(
        mae.forward_decoder(mae.forward_encoder(video, mask), mask, (2, 2, 2), positions=mask.masked),
        removed, atol=1e-5, rtol=1e-5,
    )
    every = torch.stack([torch.randperm(8), torch.randperm(8)])  # all positions, in any order
    torch.testing.assert_close(
        mae.forward_decoder(mae.forward_encoder(video, mask), mask, (2, 2, 2), positions=every),
        torch.gather(full, 1, every.unsqueeze(-1).expand(-1, -1, 768)),
    )
    ref = (removed - mae.targets(video, mask.masked)).pow(2).mean()
    ref_grads = torch.autograd.grad(ref, params, allow_unused=True)
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    for a, b in zip(grads, ref_grads, strict=True):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_forward_trains_encoder_decoder_and_mask_token():
    mae = tiny_mae(mask_ratio=0.5)
    out = mae({"video": torch.randn(2, 3, 4, 32, 32), "label": torch.tensor([0, 1])})
    out["loss"].backward()
    assert mae.mask_token.grad is not None and mae.mask_token.grad.abs().sum() > 0
    assert mae.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    assert mae.decoder_pred.weight.grad.abs().sum() > 0
    assert mae.backbone.head.num_classes == 0  # pre-training saves a head-free backbone


def test_repeated_sampling_flattens_clips_with_one_mask_each():
    mae = tiny_mae(mask_ratio=0.5)
    video = torch.randn(2, 4, 3, 4, 32, 32)  # (B, r, C, T, H, W)
    torch.manual_seed(5)
    a = mae({"video": video})["loss"]
    torch.manual_seed(5)
    flat = video.flatten(0, 1)
    mask = mae.random_mask(flat)
    assert mask.keep.shape == (8, 4)
    assert len({tuple(sorted(k.tolist())) for k in mask.keep}) > 1  # clips of one video differ
    torch.manual_seed(5)
    b = mae({"video": flat})["loss"]
    assert torch.equal(a, b)


def test_reconstruction_of_a_perfect_prediction_is_the_original():
    mae = tiny_mae(mask_ratio=0.75)
    video = torch.randn(2, 3, 4, 32, 32)
    # a decoder that outputs the exact normalised targets of every token
    mae.forward_decoder = lambda latent, mask, grid: mae.targets(video)
    rec = mae.reconstruct(video, mask_tokens(2, (2, 2, 2), 0.75, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(rec["reconstruction"], video[:, :, ::2], atol=1e-5)
    assert torch.equal(rec["original"], video[:, :, ::2])
    assert (rec["masked"] == 0).float().mean().item() == pytest.approx(0.75)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1])
def test_mask_ratio_outside_the_open_interval_is_a_config_error(ratio):
    # 0 used to be accepted and then crash in patchify (no removed token to reconstruct)
    with pytest.raises(ConfigError, match=r"method\.mask_ratio must be in \(0, 1\).*got"):
        tiny_mae(mask_ratio=ratio)


def test_invalid_settings_are_rejected():
    with pytest.raises(ConfigError, match="method.target_frames"):
        tiny_mae(target_frames="last")


# ---------------------------------------------------------------- linear probe


def test_linear_probe_trains_only_the_head():
    recipe = Recipe(
        model=ModelConfig(name="vit_tiny", num_classes=5, overrides={"depth": 2, "drop_path_rate": 0.5}, **TINY),
        method=LinearProbeConfig(),
    )
    probe = build_method(recipe)
    assert isinstance(probe, LinearProbe)
    probe.train()
    assert not probe.backbone.training and probe.head.training
    trainable = [n for n, p in probe.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight", "head.bias"]
    before = {k: v.clone() for k, v in probe.backbone.state_dict().items()}
    opt = torch.optim.SGD([p for p in probe.parameters() if p.requires_grad], lr=0.1)
    video = torch.randn(4, 3, 4, 32, 32)
    out = probe({"video": video, "label": torch.tensor([0, 1, 2, 3])})
    out["loss"].backward()
    opt.step()
    assert all(torch.equal(v, probe.backbone.state_dict()[k]) for k, v in before.items())
    # features: mean of patch tokens (CLS excluded), standardised without parameters
    with torch.no_grad():
        tokens = probe.backbone.forward_features(video)
        f = tokens[:, 1:].mean(1)
        f = (f - f.mean(-1, keepdim=True)) / torch.sqrt(f.var(-1, unbiased=False, keepdim=True) + 1e-6)
        assert torch.allclose(probe.features(video), f, atol=1e-4)
        assert probe.classify(video).shape == (4, 5)
    # soft labels (after mixup) work too
    soft = torch.softmax(torch.randn(4, 5), -1)
    assert torch.isfinite(probe({"video": video, "label": soft})["loss"])
    # repeated sampling: (B, r, C, T, H, W) with one label per video
    out = probe({"video": video.view(2, 2, 3, 4, 32, 32), "label": torch.tensor([1, 3])})
    assert torch.isfinite(out["loss"])


def test_linear_probe_loads_a_pretrained_backbone(tmp_path):
    from safetensors.torch import save_file

    src = create_model("vit_tiny", num_classes=0, depth=2, **TINY)
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    recipe = Recipe(
        model=ModelConfig(name="vit_tiny", num_classes=3, checkpoint=str(path), overrides={"depth": 2}, **TINY),
        method=LinearProbeConfig(feature_norm="none"),
    )
    probe = build_method(recipe)
    for k, v in src.state_dict().items():
        assert torch.equal(probe.backbone.state_dict()[k], v)
    # an encoder that does not fit is an error, not a silently random probe
    from tubelet.errors import CheckpointError

    recipe.model.overrides = {"depth": 3}
    with pytest.raises(CheckpointError, match="missing keys"):
        build_method(recipe)


def test_reconstruction_png_is_written(tmp_path):
    from tubelet.report.figures import save_reconstructions

    mae = tiny_mae(mask_ratio=0.75)
    mae.train()
    path = save_reconstructions(mae, torch.randn(2, 3, 4, 32, 32), tmp_path / "report" / "reconstructions.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mae.training  # mode restored


# ---------------------------------------------------------------- CLI round trip


def _tiny_overrides(run_dir):
    return [
        f"run_dir={run_dir}", "trainer.max_steps=2", "trainer.enable_progress_bar=false", "trainer.num_threads=1",
        "data.batch_size=2", "data.synthetic.num_videos=16", "model.overrides.depth=2",
        "trainer.checkpoint_every_n_steps=100",
    ]


def test_cli_pretrain_then_finetune_and_probe_round_trip(tmp_path):
    from safetensors.torch import load_file

    from tubelet.cli.main import main

    pre = tmp_path / "pre"
    assert main(["fit", "--config", "mae_st_synthetic_pretrain", *_tiny_overrides(pre)]) == 0
    backbone = pre / "backbone.safetensors"
    pretrained = load_file(str(backbone))
    assert not any(k.startswith(("head.", "decoder")) for k in pretrained)  # encoder only, no head
    assert "blocks.1.attn.qkv.weight" in pretrained
    assert (pre / "report" / "reconstructions.png").read_bytes()[:4] == b"\x89PNG"

    # With a negligible learning rate the fine-tuned encoder must equal the pre-trained one (a fresh
    # initialisation would differ by ~0.02 per weight): the checkpoint really went in.
    frozen_lr = ["optim.lr=1e-12", "optim.warmup_lr=1e-12", "optim.min_lr=1e-12"]
    for recipe, name in (("mae_st_synthetic_finetune", "ft"), ("mae_st_synthetic_probe", "probe")):
        run = tmp_path / name
        args = ["fit", "--config", recipe, *_tiny_overrides(run), f"model.checkpoint={backbone}", *frozen_lr]
        assert main(args) == 0
        tuned = load_file(str(run / "backbone.safetensors"))
        for key in ("blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "patch_embed.proj.weight",
                    "blocks.0.norm1.weight", "norm.weight"):
            assert torch.allclose(tuned[key], pretrained[key], rtol=0, atol=1e-8), (name, key)
        assert not (run / "report" / "reconstructions.png").exists()  # only methods that reconstruct
        head = "backbone.head.fc.weight" if name == "ft" else "head.weight"  # the probe owns its classifier
        assert head in load_file(str(run / "method.safetensors"))


def test_run_report_shows_a_runs_reconstructions(tmp_path):
    from tubelet.report import write_report
    from tubelet.report.figures import save_reconstructions

    run = tmp_path / "pretrain"
    save_reconstructions(tiny_mae(mask_ratio=0.75), torch.randn(1, 3, 4, 32, 32), run / "report" / "reconstructions.png")
    index = write_report(tmp_path / "report", {"MAE-ST pre-training": run})
    assert '<img src="../pretrain/report/reconstructions.png"' in index.read_text()
