"""Optimizer groups, layer-wise LR decay, the LR rule and the per-step schedule."""

import math

import pytest
import torch
from toys import ToyMethod

from tubelet.config.schema import OptimConfig
from tubelet.engine.optim import build_optimizer, param_groups, resolve_lr
from tubelet.engine.schedules import WarmupCosine, lr_at
from tubelet.errors import ConfigError


def test_schedule_endpoints():
    kw = dict(peak=1e-3, max_steps=100, warmup_steps=10, warmup_lr=1e-6, min_lr=1e-5)
    assert lr_at(0, **kw) == pytest.approx(1e-6)  # warmup starts at warmup_lr
    assert lr_at(5, **kw) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)  # linear
    assert lr_at(10, **kw) == pytest.approx(1e-3)  # peak right after warmup
    mid = 10 + 45  # half of the cosine: halfway between peak and min_lr
    assert lr_at(mid, **kw) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_at(100, **kw) == pytest.approx(1e-5)  # final = min_lr
    assert lr_at(150, **kw) == pytest.approx(1e-5)  # stays there
    assert lr_at(60, **{**kw, "schedule": "constant"}) == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="schedule"):
        lr_at(0, **{**kw, "schedule": "step"})


def test_lambda_lr_follows_schedule_per_step_and_group_scale():
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [p1], "lr": 0.1}, {"params": [p2], "lr": 0.1 * 0.25}], lr=0.1)
    f = WarmupCosine(peak=0.1, max_steps=8, warmup_steps=2, warmup_lr=0.0, min_lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    seen = []
    for step in range(9):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx([0.0, 0.0])
    assert seen[1] == pytest.approx([0.05, 0.0125])
    assert seen[2] == pytest.approx([0.1, 0.025])
    assert seen[8] == pytest.approx([0.01, 0.0025])  # min_lr scaled like the group
    state = sched.state_dict()
    reloaded = torch.load(__import__("io").BytesIO(_save(state)), weights_only=True)
    assert reloaded["lr_lambdas"][0]["peak"] == 0.1


def _save(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_lr_rule_counts_videos():
    assert resolve_lr(OptimConfig(base_lr=1.6e-3, lr=None), 512) == pytest.approx(3.2e-3)
    assert resolve_lr(OptimConfig(base_lr=1.6e-3, lr=5e-4), 512) == 5e-4


def test_no_weight_decay_on_biases_norms_and_listed_names():
    method = ToyMethod()
    groups = param_groups(method, weight_decay=0.05)
    by_name = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert set(by_name) == {n for n, _ in method.named_parameters()}
    assert by_name["backbone.patch_embed.weight"] == 0.05
    assert by_name["backbone.head.weight"] == 0.05
    assert by_name["backbone.patch_embed.bias"] == 0.0  # 1-D
    assert by_name["backbone.norm.weight"] == 0.0  # 1-D norm scale
    assert by_name["backbone.pos_embed"] == 0.0  # 2-D, but in no_weight_decay()


def test_layer_decay_scales():
    method = ToyMethod()  # depth 2: layer ids 0 (embed), 1, 2 (blocks), 3 (norm/head)
    groups = param_groups(method, weight_decay=0.05, layer_decay=0.5)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["backbone.patch_embed.weight"] == pytest.approx(0.5 ** 3)
    assert scale["backbone.pos_embed"] == pytest.approx(0.5 ** 3)
    assert scale["backbone.blocks.0.0.weight"] == pytest.approx(0.5 ** 2)
    assert scale["backbone.blocks.1.0.bias"] == pytest.approx(0.5 ** 1)
    assert scale["backbone.head.weight"] == pytest.approx(1.0)
    opt = build_optimizer(method, OptimConfig(name="adamw", layer_decay=0.5), lr=0.2)
    lrs = {n: g["lr"] for g in opt.param_groups for n in g["names"]}
    assert lrs["backbone.blocks.0.0.weight"] == pytest.approx(0.2 * 0.25)
    assert isinstance(opt, torch.optim.AdamW)


def test_layer_decay_needs_layer_ids_and_unknown_optimizer():
    with pytest.raises(ConfigError, match="get_layer_id"):
        param_groups(torch.nn.Linear(2, 2), 0.05, layer_decay=0.7)
    with pytest.raises(ConfigError, match="optim.name"):
        build_optimizer(ToyMethod(), OptimConfig(name="adam"), lr=0.1)
    sgd = build_optimizer(ToyMethod(), OptimConfig(name="sgd", momentum=0.8), lr=0.1)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.8
    assert not math.isnan(sgd.param_groups[0]["lr"])


def test_adamw_and_sgd_use_fused_kernels_on_cpu_and_update_like_the_for_loop():
    """build_optimizer picks torch's fused kernels on CPU (the for-loop default re-reads every tensor
    per operation); the update agrees with the for-loop AdamW to float rounding."""
    torch.manual_seed(0)
    ref, new = ToyMethod(), ToyMethod()
    new.load_state_dict(ref.state_dict())
    cfg = OptimConfig(name="adamw", weight_decay=0.05)
    opt = build_optimizer(new, cfg, lr=1e-2)
    assert opt.defaults["fused"] is True
    assert build_optimizer(new, OptimConfig(name="sgd"), lr=1e-2).defaults["fused"] is True
    loop = torch.optim.AdamW(param_groups(ref, 0.05), lr=1e-2, weight_decay=0.05)
    for _ in range(3):
        for m, o in ((ref, loop), (new, opt)):
            o.zero_grad()
            sum((p * p).sum() for p in m.parameters()).backward()
            o.step()
    for (n, a), b in zip(ref.named_parameters(), new.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=n)
