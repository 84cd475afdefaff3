"""Castling-ViT (arXiv 2211.10526): the linear-angular kernel, its layers in the ViT and MViTv2 blocks."""

import math

import pytest
import torch
import torch.nn.functional as F

from tubelet.errors import ConfigError
from tubelet.models import create_model
from tubelet.models.layers.angular_attention import (
    CastlingPoolingAttention,
    LinearAngularAttention,
    angular_similarity,
    arcsin_taylor_coefficients,
    linear_angular,
    set_branch_weight,
    truncated_angular_similarity,
)
from tubelet.models.layers.rel_pos import decomposed_rel_pos, rel_pos_bias

VIT = dict(num_frames=4, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)
MVIT = dict(depth=4, transitions=(1, 3), embed_dim=16, num_frames=8, img_size=48, kv_stride=(1, 4, 4), num_classes=5)


def vit(**kw):
    torch.manual_seed(0)
    return create_model("vit_tiny", **{**VIT, "attention": "castling", **kw}).eval()


def mvit(**kw):
    torch.manual_seed(0)
    return create_model("mvitv2_s", **{**MVIT, "attention": "castling", **kw}).eval()


# ------------------------------------------------------------------------------------------ kernel maths
def test_truncation_error_of_the_linear_and_cubic_terms():
    x = torch.linspace(-1, 1, 200001, dtype=torch.float64)
    exact = angular_similarity(x)
    err1 = (exact - truncated_angular_similarity(x, 0)).abs()
    err3 = (exact - truncated_angular_similarity(x, 1)).abs()
    assert float(err1.max()) == pytest.approx(0.5 - 1 / math.pi, abs=1e-9)  # 0.18169
    assert round(0.5 - 1 / math.pi, 5) == 0.18169
    assert float(x[err1.argmax()].abs()) == 1.0  # at |x| = 1
    assert float(err3.max()) == pytest.approx(0.12864, abs=1e-5)
    assert float(x[err3.argmax()].abs()) == 1.0
    assert float(angular_similarity(torch.tensor(0.3, dtype=torch.float64))) == pytest.approx(1 - math.acos(0.3) / math.pi)


def test_taylor_coefficients():
    assert arcsin_taylor_coefficients(3) == pytest.approx([1 / 6, 3 / 40, 5 / 112], abs=1e-15)
    # the series converges to arcsin inside the interval
    x = 0.6
    series = x + sum(c * x ** (2 * k + 1) for k, c in enumerate(arcsin_taylor_coefficients(40), start=1))
    assert series == pytest.approx(math.asin(x), abs=1e-12)


def test_linear_form_equals_explicit_quadratic_form():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 3, 50, 8, dtype=torch.float64).unbind(0)
    qn, kn = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    explicit = (qn @ kn.transpose(-2, -1)) @ v / math.pi  # materialises 50 x 50
    torch.testing.assert_close(linear_angular(q, k, v), explicit, rtol=1e-12, atol=1e-12)
    # Nq != Nk (pooled keys)
    torch.testing.assert_close(linear_angular(q, k[:, :, :7], v[:, :, :7]),
                               (qn @ kn[:, :, :7].transpose(-2, -1)) @ v[:, :, :7] / math.pi)


def _explicit_vit_attention(layer: LinearAngularAttention, x: torch.Tensor, grid) -> torch.Tensor:
    """The layer written out with the N x N kernel matrix and a hand-made conv."""
    B, N, C = x.shape
    h, d = layer.num_heads, layer.head_dim
    q, k, v = layer.qkv(x).reshape(B, N, 3, h, d).permute(2, 0, 3, 1, 4)
    qn, kn = F.normalize(q, dim=-1, eps=1e-6), F.normalize(k, dim=-1, eps=1e-6)
    y = 0.5 * v + (qn @ kn.transpose(-2, -1)) / math.pi @ v
    if layer.current_weight:
        a = ((q @ k.transpose(-2, -1)) / math.sqrt(d)).softmax(-1)
        y = y + layer.current_weight * torch.where(a > layer.threshold, a, 0) @ v
    y = y / y.norm(dim=-1, keepdim=True)
    p = N - math.prod(grid)
    w = layer.value_conv.conv.weight[:, 0, :, 0]  # (h, k)
    kk = w.shape[1]
    vp = F.pad(v[:, :, p:], (0, 0, kk // 2, kk // 2))
    conv = sum(w[None, :, j, None, None] * vp[:, :, j:j + N - p] for j in range(kk))
    y = y + F.pad(conv, (0, 0, p, 0))
    return layer.proj(y.transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("weight", [0.0, 0.7])
def test_vit_layer_equals_the_explicit_form(weight):
    torch.manual_seed(0)
    layer = LinearAngularAttention(32, 4, qkv_bias=True).double()
    layer.set_branch_weight(weight)
    x = torch.randn(2, 1 + 4 * 3 * 3, 32, dtype=torch.float64)
    torch.testing.assert_close(layer(x, grid=(4, 3, 3)), _explicit_vit_attention(layer, x, (4, 3, 3)))
    if weight:
        assert 0 < float(layer.kept_mass.detach()) <= 1


def test_rows_are_unit_norm_after_the_normalisation():
    torch.manual_seed(0)
    layer = LinearAngularAttention(32, 4, dwconv="none")
    with torch.no_grad():
        layer.proj.weight.copy_(torch.eye(32))
        layer.proj.bias.zero_()
    for weight in (0.0, 1.0):
        layer.set_branch_weight(weight)
        y = layer(torch.randn(3, 20, 32) * 5, grid=(5, 2, 2)).reshape(3, 20, 4, 8)
        torch.testing.assert_close(y.norm(dim=-1), torch.ones(3, 20, 4))


@pytest.mark.parametrize("build", [vit, mvit])
def test_zero_and_constant_inputs_stay_finite(build):
    m = build(qkv_bias=False)
    T, S = (VIT if build is vit else MVIT)["num_frames"], (VIT if build is vit else MVIT)["img_size"]
    for x in (torch.zeros(1, 3, T, S, S), torch.full((1, 3, T, S, S), 0.7)):
        for weight in (1.0, 0.0):
            set_branch_weight(m, weight)
            assert torch.isfinite(m(x)).all()
    layer = LinearAngularAttention(32, 4, qkv_bias=False)
    out = layer(torch.zeros(1, 10, 32), grid=(1, 3, 3))
    assert torch.isfinite(out).all()
    # the release's normalisation (no epsilon) turns the same zero vectors into NaN
    zero = torch.zeros(1, 1, 10, 8)
    assert torch.isnan(zero / zero.norm(dim=-1, keepdim=True)).all()


def test_mvit_layer_equals_the_explicit_form_with_pooling_rel_pos_and_residual():
    """Pooled K/V, decomposed relative positions as a key offset, residual pooling, a query stride."""
    torch.manual_seed(0)
    grid = (2, 6, 6)
    layer = CastlingPoolingAttention(8, 16, 2, input_grid=grid, q_stride=(1, 2, 2), kv_stride=(1, 3, 3),
                                     num_prefix=1, dwconv="grid").double()
    with torch.no_grad():
        for t in (layer.rel_pos_t, layer.rel_pos_h, layer.rel_pos_w):
            t.normal_(0, 0.3)
    x = torch.randn(2, 1 + 72, 8, dtype=torch.float64)
    for weight in (0.0, 0.5):
        layer.set_branch_weight(weight)
        out, q_grid = layer(x, grid)
        assert q_grid == (2, 3, 3) and out.shape == (2, 1 + 18, 16)

        # explicit: the dense (Nq x Nk) kernel matrix with the relative term, per-token terms sliced
        B, N, _ = x.shape
        q, k, v_in = layer.qkv(x).reshape(B, N, 3, 2, 8).permute(2, 0, 3, 1, 4)
        q, _ = layer._pool(q, layer.pool_q, layer.norm_q, grid)
        k, k_grid = layer._pool(k, layer.pool_k, layer.norm_k, grid)
        v, _ = layer._pool(v_in, layer.pool_v, layer.norm_v, grid)
        qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        tables = (layer.rel_pos_t, layer.rel_pos_h, layer.rel_pos_w)
        xk = qn @ kn.transpose(-2, -1) + rel_pos_bias(*decomposed_rel_pos(qn[:, :, 1:], q_grid, k_grid, *tables),
                                                      k_grid, 1)

        def at_q(t):  # the query positions: every second token in h and w
            patch = t[:, :, 1:].reshape(B, 2, *grid, 8)[:, :, :, ::2, ::2].reshape(B, 2, -1, 8)
            return torch.cat((t[:, :, :1], patch), dim=2)

        y = 0.5 * at_q(v_in) + xk @ v / math.pi
        if weight:
            bias = rel_pos_bias(*decomposed_rel_pos(q[:, :, 1:], q_grid, k_grid, *tables), k_grid, 1)
            a = ((q @ k.transpose(-2, -1)) / math.sqrt(8) + bias).softmax(-1)
            y = y + weight * torch.where(a > 0.02, a, 0) @ v
        y = y / y.norm(dim=-1, keepdim=True)
        vp = v_in[:, :, 1:].reshape(B, 2, *grid, 8).permute(0, 5, 1, 2, 3, 4).reshape(B * 8, 2, *grid)
        conv = F.conv3d(vp, layer.value_conv.conv.weight, padding=1, groups=2)
        conv = conv.reshape(B, 8, 2, -1).permute(0, 2, 3, 1)
        y = y + at_q(F.pad(conv, (0, 0, 1, 0)))
        y = y + F.pad(q[:, :, 1:], (0, 0, 1, 0))  # residual pooling, patch tokens only
        ref = layer.proj(y.transpose(1, 2).reshape(B, -1, 16))
        torch.testing.assert_close(out, ref)


def test_value_conv_excludes_cls_and_grid_mode_follows_the_grid():
    torch.manual_seed(0)
    layer = LinearAngularAttention(16, 2, dwconv="grid", grid_kernel=(3, 3, 3))
    v = torch.randn(1, 2, 1 + 2 * 3 * 4, 8)
    out = layer.value_conv(v, (2, 3, 4))
    assert torch.equal(out[:, :, 0], torch.zeros(1, 2, 8))
    ref = F.conv3d(v[:, :, 1:].reshape(1, 2, 2, 3, 4, 8).permute(0, 5, 1, 2, 3, 4).reshape(8, 2, 2, 3, 4),
                   layer.value_conv.conv.weight, padding=1, groups=2)
    torch.testing.assert_close(out[:, :, 1:], ref.reshape(1, 8, 2, 24).permute(0, 2, 3, 1))


def test_the_blocks_get_the_layer_from_the_config():
    assert all(type(b.attn) is LinearAngularAttention for b in vit().blocks)
    assert all(type(b.attn) is CastlingPoolingAttention for b in mvit().blocks)
    soft = create_model("vit_tiny", **VIT)
    assert all(type(b.attn).__name__ == "Attention" for b in soft.blocks)
    with pytest.raises(ConfigError, match=r"^model option attention='linear' is not one of softmax, castling$"):
        create_model("vit_tiny", **VIT, attention="linear")
    with pytest.raises(ConfigError, match="castling_dwconv='conv'"):
        create_model("mvitv2_s", **MVIT, attention="castling", castling_dwconv="conv")


def test_softmax_weights_fit_castling_but_for_the_value_convs():
    for build, name, kw in ((vit, "vit_tiny", VIT), (mvit, "mvitv2_s", MVIT)):
        soft = create_model(name, **kw).state_dict()
        cast = build()
        own = cast.state_dict()
        assert set(own) - set(soft) == set(cast.init_only_keys())
        assert set(soft) <= set(own)
        assert all(own[k].shape == soft[k].shape for k in soft)
        assert all(k.endswith((".attn.value_conv.conv.weight", ".attn.branch_weight")) for k in cast.init_only_keys())


def test_vit_forward_backward_and_token_subsets_are_refused():
    m = vit().train()
    x = torch.randn(2, 3, 4, 32, 32)
    m(x).sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="castling attention needs every token of the grid"):
        m.forward_features(x, keep_idx=torch.arange(8).expand(2, 8))
    # activation checkpointing passes the grid through: same outputs and gradients
    ref = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x).sum().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, ref[n])


def test_linear_branch_never_materialises_n_by_n():
    """After the branch is off, the only token-token products are the d x d ones: O(N d^2)."""
    from tubelet.flops import count_flops

    m = vit(class_token=False, castling_dwconv="none", num_frames=8, img_size=64)
    set_branch_weight(m, 0.0)
    n, d, h = 4 * 8 * 8, 8, 4
    bmm = count_flops(m, torch.randn(1, 3, 8, 64, 64)).by_op["bmm"]
    assert bmm == 2 * 2 * h * n * d * d  # depth x (K^T V + Q (K^T V))


# ------------------------------------------------------------------------------- branch, schedule, switch
def test_branch_schedule():
    from tubelet.methods.castling import branch_weight_at

    lin = [branch_weight_at(s, 10, 1.0, 0.2, 0.6, "linear") for s in range(12)]
    assert lin == pytest.approx([1, 1, 1, 0.75, 0.5, 0.25, 0, 0, 0, 0, 0, 0])
    cos = [branch_weight_at(s, 10, 0.5, 0.0, 0.5, "cosine") for s in range(7)]
    assert cos == pytest.approx([0.5] + [0.25 * (1 + math.cos(math.pi * s / 5)) for s in range(1, 5)] + [0.0, 0.0])
    assert cos[1] == pytest.approx(0.4523, abs=1e-4)
    assert branch_weight_at(0, 10, 1.0, 0.0, 0.0) == 0.0  # no decay window: no branch at all


def test_switch_is_refused_while_the_branch_has_weight():
    from tubelet.errors import TubeletError

    m = vit()
    set_branch_weight(m, 0.25)
    with pytest.raises(TubeletError, match=r"^cannot switch castling attention to inference: the auxiliary softmax "
                                           r"branch still has weight 0\.25; train until its schedule reaches 0$"):
        m.switch_to_inference()
    assert all(b.attn.branch for b in m.blocks)
    with pytest.raises(TubeletError, match="has no castling attention to switch"):
        create_model("vit_tiny", **VIT).switch_to_inference()


@pytest.mark.parametrize("build", [vit, mvit])
def test_after_the_schedule_the_switched_model_equals_the_training_model(build):
    from tubelet.methods.castling import Castling

    cfg = VIT if build is vit else MVIT
    x = torch.randn(2, 3, cfg["num_frames"], cfg["img_size"], cfg["img_size"])
    method = Castling(build(), total_steps=10, decay_end=0.5, decay_shape="linear")
    method.set_step(0)
    with_branch = method.backbone(x)
    method.set_step(3)
    assert method.current_weight == pytest.approx(0.4)
    assert not torch.allclose(method.backbone(x), with_branch)  # the branch does act while it has weight
    # another mask threshold changes the model only while the branch has weight
    other = build(castling_threshold=0.3)
    other.load_state_dict(method.backbone.state_dict())
    assert not torch.allclose(other(x), method.backbone(x))
    method.set_step(5)
    assert method.current_weight == 0.0
    training = method.backbone(x)
    set_branch_weight(other, 0.0)
    torch.testing.assert_close(other(x), training, rtol=0, atol=0)
    method.finish_training(10)
    switched = method.backbone
    assert not any(layer.branch for layer in castling_layers_of(switched))
    assert switched.variant.config.castling_branch is False and switched.cfg.castling_branch is False
    torch.testing.assert_close(switched(x), training, rtol=0, atol=0)
    # the inference form rebuilt from its own config, with the weights, is the same model
    rebuilt = create_model(switched.variant.name, **{f: getattr(switched.variant.config, f)
                                                     for f in switched.variant.config.__dataclass_fields__})
    rebuilt.load_state_dict(switched.state_dict())
    rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), training, rtol=0, atol=0)


def castling_layers_of(model):
    from tubelet.models.layers.angular_attention import castling_layers

    return castling_layers(model)


def test_method_logs_the_weight_and_the_l1_penalty():
    from tubelet.methods.castling import Castling

    method = Castling(vit().train(), total_steps=4, decay_end=0.5, l1=0.5)
    batch = {"video": torch.randn(2, 3, 4, 32, 32), "label": torch.tensor([1, 3])}
    method.set_step(0)
    out = method(batch)
    assert float(out["branch_weight"]) == 1.0
    assert 0 < float(out["branch_kept_mass"]) <= 1
    assert float(out["castling_l1"]) == pytest.approx(0.5 * float(out["branch_kept_mass"]))
    out["loss"].backward()
    method.set_step(2)
    out = method(batch)
    assert float(out["branch_weight"]) == 0.0 and "castling_l1" not in out and "branch_kept_mass" not in out


def test_a_softmax_checkpoint_converts_with_the_new_tensors_named(tmp_path, caplog):
    from safetensors.torch import save_file

    from tubelet.config.schema import ModelConfig
    from tubelet.errors import CheckpointError
    from tubelet.methods.backbone import build_backbone

    soft = create_model("vit_tiny", **VIT)
    path = tmp_path / "softmax.safetensors"
    save_file(soft.state_dict(), str(path))
    overrides = {k: v for k, v in VIT.items() if k not in ("num_frames", "img_size", "num_classes")}
    model_cfg = ModelConfig(name="vit_tiny", num_frames=4, img_size=32, num_classes=5, checkpoint=str(path),
                            overrides={**overrides, "attention": "castling"})
    with caplog.at_level("WARNING"):
        cast = build_backbone(model_cfg)
    report = cast.load_report
    assert report.loaded == sorted(soft.state_dict())
    assert report.new == sorted(cast.init_only_keys()) and len(report.new) == 4
    assert report.head_reinit == []
    assert "4 tensors new in this model, kept at their initialisation (blocks.0.attn.branch_weight" in caplog.text
    for k, v in soft.state_dict().items():
        assert torch.equal(cast.state_dict()[k], v)
    # a file with some of the castling tensors is not a softmax checkpoint: those missing are an error
    partial_state = {**soft.state_dict(), "blocks.0.attn.branch_weight": torch.tensor(0.0)}
    save_file(partial_state, str(tmp_path / "partial.safetensors"))
    import dataclasses

    with pytest.raises(CheckpointError, match="missing keys"):
        build_backbone(dataclasses.replace(model_cfg, checkpoint=str(tmp_path / "partial.safetensors")))
    # and a castling checkpoint does not load into a softmax model
    save_file(cast.state_dict(), str(tmp_path / "castling.safetensors"))
    soft_cfg = dataclasses.replace(model_cfg, checkpoint=str(tmp_path / "castling.safetensors"), overrides=overrides)
    with pytest.raises(CheckpointError, match="has castling attention .* but the model has softmax attention"):
        build_backbone(soft_cfg)


def test_fit_anneals_logs_and_saves_the_switched_model(tmp_path, caplog):
    """Through the CLI: the weight is logged every step, reaches 0, and the run's files hold the
    inference form, which tubelet.load_model rebuilds and `tubelet test` evaluates."""
    import csv

    import yaml
    from test_engine import TINY_RECIPE

    import tubelet
    from tubelet.cli.main import main
    from tubelet.models.weights import file_metadata

    recipe = {**TINY_RECIPE, "run_dir": str(tmp_path / "run"),
              "method": {"name": "castling", "decay_end": 0.5, "decay_shape": "linear", "l1": 0.1},
              "trainer": {**TINY_RECIPE["trainer"], "max_steps": 4, "val_check_interval": 4}}
    cfg = tmp_path / "castling.yaml"
    cfg.write_text(yaml.safe_dump(recipe))
    with caplog.at_level("WARNING"):
        assert main(["fit", "--config", str(cfg)]) == 0
    assert "switched the backbone to linear-angular attention only" in caplog.text
    run = tmp_path / "run"
    rows = list(csv.DictReader((run / "logs" / "csv" / "metrics.csv").open()))
    weights = [float(r["train/branch_weight"]) for r in rows if r.get("train/branch_weight")]
    assert weights == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert any(r.get("train/castling_l1") for r in rows)
    meta = file_metadata(run / "backbone.safetensors")
    assert '"attention": "castling"' in meta["tubelet_config"] and '"castling_branch": false' in meta["tubelet_config"]
    model = tubelet.load_model(run)
    layers = castling_layers_of(model)
    assert layers and not any(layer.branch for layer in layers)
    assert main(["test", "--config", str(cfg), "--checkpoint", str(run / "method.safetensors")]) == 0


def test_a_resumed_run_with_no_step_left_exports_and_tests_the_switched_model(tmp_path):
    """A run killed after its last checkpoint (e.g. in the final validation) and resumed has no step to
    train: Lightning skips the training loop, and with it on_train_end. The switch must still happen,
    so that the weights files hold the inference form; and `tubelet test` of the finished run scores
    exactly what that switched model scores, bit for bit."""
    import yaml
    from test_engine import TINY_RECIPE

    import tubelet
    from tubelet.cli.main import main
    from tubelet.config import load_recipe
    from tubelet.engine import evaluate
    from tubelet.methods.supervised import Supervised
    from tubelet.models.weights import file_metadata

    run = tmp_path / "run"
    recipe = {**TINY_RECIPE, "run_dir": str(run),
              "method": {"name": "castling", "decay_end": 0.5, "decay_shape": "linear"},
              "trainer": {**TINY_RECIPE["trainer"], "max_steps": 4, "checkpoint_every_n_steps": 4}}
    cfg = tmp_path / "castling.yaml"
    cfg.write_text(yaml.safe_dump(recipe))
    assert main(["fit", "--config", str(cfg)]) == 0
    for name in ("method.safetensors", "backbone.safetensors"):  # killed before they were written
        (run / name).unlink()
    assert main(["fit", "--config", str(cfg), "--resume", "auto"]) == 0
    for name in ("method.safetensors", "backbone.safetensors"):
        assert '"castling_branch": false' in file_metadata(run / name)["tubelet_config"], name
    switched = tubelet.load_model(run)
    assert not any(layer.branch for layer in castling_layers_of(switched))
    loaded = load_recipe(str(cfg))
    tested = evaluate(loaded, run / "method.safetensors", report_dir=tmp_path / "a")
    direct = evaluate(loaded, None, method=Supervised(switched), report_dir=tmp_path / "b")
    assert tested["weights"] == "method" and tested["num_videos"] == direct["num_videos"] > 0
    assert tested["predictions"] == direct["predictions"]  # scores compared exactly
    assert tested["top1"] == direct["top1"]
    # the last step's checkpoint (before the switch, branch weight 0 here) scores the same
    before = evaluate(loaded, run / "checkpoints" / "step=000004.ckpt", report_dir=tmp_path / "c")
    assert before["predictions"] == direct["predictions"]


# ------------------------------------------------------------------------------------------------ FLOPs
def test_castling_vit_macs_by_hand():
    """Linear form: K^T V and Q (K^T V) are 2 N d^2 per head, the token conv 9 (N - 1) d per head; the
    branch adds the softmax's 2 N^2 D while it is on and nothing after the switch."""
    from tubelet.flops import count_flops

    from test_flops import vit_macs

    x = torch.randn(1, 3, 8, 48, 48)
    n, D, depth, d = 4 * 6 * 6 + 1, 32, 2, 8
    soft = count_flops(create_model("vit_tiny", **{**VIT, "num_frames": 8, "img_size": 48}).eval(), x).macs
    assert soft == vit_macs(32, 2, 5, n - 1, 384)
    m = vit(num_frames=8, img_size=48)
    linear = depth * (2 * n * d * D + 9 * (n - 1) * D)
    with_branch = count_flops(m, x).macs
    assert with_branch == soft + linear
    set_branch_weight(m, 0.0)
    m.switch_to_inference()
    assert count_flops(m, x).macs == soft - depth * 2 * n * n * D + linear


def test_mvitv2_s_castling_at_16x224_builds_runs_and_costs_fewer_gmacs(capsys):
    from tubelet.cli.main import main
    from tubelet.flops import count_flops

    with torch.device("meta"):  # the full size, counted without computing
        m = create_model("mvitv2_s", attention="castling").train()
        both = count_flops(m, torch.empty(1, 3, 16, 224, 224), backward=True)
    assert both.macs > 0
    # a real forward and backward, batch 1, at 224 (4 frames keep it light on a CPU; 16 frames took
    # 12.5 s forward and 17 s backward on one contended core)
    torch.manual_seed(0)
    m = create_model("mvitv2_s", attention="castling", castling_dwconv="grid", num_frames=4).train()
    y = m(torch.randn(1, 3, 4, 224, 224))
    assert y.shape == (1, 400)
    y.sum().backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert float(m.blocks[0].attn.value_conv.conv.weight.grad.abs().sum()) > 0

    def gmacs(*options):
        assert main(["flops", "--model", "mvitv2_s", *options]) == 0
        out = capsys.readouterr().out
        return float(next(ln for ln in out.splitlines() if ln.startswith("GMACs")).split()[1]), out

    softmax, _ = gmacs()
    inference, out = gmacs("attention=castling", "castling_branch=false")
    assert "attention  castling, inference form" in out
    training, out = gmacs("attention=castling")
    assert "auxiliary softmax branch on" in out
    assert softmax == 64.22 and inference < softmax - 10 and training > inference + 10
    assert main(["flops", "--model", "mvitv2_s", "attention=castlin"]) == 1
    assert "attention='castlin' is not one of softmax, castling" in capsys.readouterr().err
    assert main(["flops", "--model", "mvitv2_s", "atention=castling"]) == 1
    assert "did you mean 'attention'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- recipes
def test_shipped_castling_recipes(tmp_path):
    import dataclasses

    from safetensors.torch import save_file

    from tubelet.config import load_recipe
    from tubelet.methods import build_method
    from tubelet.methods.castling import Castling

    quick, scratch, convert = (load_recipe(n) for n in ("quickstart", "castling_synthetic", "castling_synthetic_convert"))
    assert scratch.method.name == convert.method.name == "castling"
    assert scratch.trainer.max_steps == quick.trainer.max_steps == convert.trainer.max_steps  # one budget
    assert convert.model.checkpoint == "runs/quickstart/backbone.safetensors"
    assert {k: v for k, v in scratch.model.overrides.items() if not k.startswith(("attention", "castling"))} \
        == quick.model.overrides
    # the converted recipe loads a quickstart (softmax) backbone
    soft = build_method(quick).backbone
    path = tmp_path / "backbone.safetensors"
    save_file(soft.state_dict(), str(path))
    method = build_method(dataclasses.replace(convert, model=dataclasses.replace(convert.model, checkpoint=str(path))))
    assert isinstance(method, Castling) and method.current_weight == 1.0
    assert method.backbone.load_report.loaded == sorted(soft.state_dict())
    assert len(method.backbone.load_report.new) == 2 * quick.model.overrides["depth"]
    for name in ("castling_mvitv2_s_k400", "castling_mvitv2_s_k400_convert"):
        r = load_recipe(name)
        assert r.method.name == "castling" and r.model.overrides["castling_dwconv"] == "grid"
        with torch.device("meta"):
            m = build_method(dataclasses.replace(r, model=dataclasses.replace(r.model, checkpoint=None)))
        assert type(m.backbone.blocks[0].attn).__name__ == "CastlingPoolingAttention"
    assert load_recipe("castling_mvitv2_s_k400_convert").model.checkpoint == "runs/mvitv2_s_k400/backbone.safetensors"
    with pytest.raises(ConfigError, match=r"^optim.ema_decay=0.99 cannot be combined with method castling"):
        build_method(dataclasses.replace(scratch, optim=dataclasses.replace(scratch.optim, ema_decay=0.99)))
    with pytest.raises(ConfigError, match=r"^method.decay_start must be at most method.decay_end \(0.5\)"):
        build_method(dataclasses.replace(scratch, method=dataclasses.replace(scratch.method, decay_start=0.8,
                                                                             decay_end=0.5)))
    softmax = dataclasses.replace(scratch, model=dataclasses.replace(
        scratch.model, overrides={**scratch.model.overrides, "attention": "softmax"}))
    with pytest.raises(ConfigError, match=r"^method castling trains castling attention; "
                                          r"model.overrides.attention='softmax'"):
        build_method(softmax)


def test_the_schedule_follows_the_trainers_step_so_a_resumed_run_continues_it():
    from types import SimpleNamespace

    from tubelet.methods.castling import Castling

    method = Castling(vit(), total_steps=8, decay_end=0.5, decay_shape="linear")
    (callback,) = method.callbacks()
    callback.on_train_batch_start(SimpleNamespace(global_step=3), None, None, 0)  # e.g. the first batch after resuming
    assert method.current_weight == pytest.approx(0.25)
    assert all(float(layer.branch_weight) == pytest.approx(0.25) for layer in castling_layers_of(method.backbone))
    callback.on_fit_end(SimpleNamespace(global_step=8), None)
    assert method.current_weight == 0.0 and method.backbone.cfg.castling_branch is False
