"""FLOP counting: attention is counted on CPU, GMACs match hand formulas and the MAE-ST zoo."""

import pytest
import torch

from tubelet.cli.main import main
from tubelet.flops import count_flops, register_cpu_sdpa_formulas, saved_for_backward
from tubelet.models import create_model
from tubelet.models.vit import VisionTransformer, ViTConfig

CFG = dict(embed_dim=32, depth=2, num_heads=4, num_frames=4, img_size=32, patch_size=8, num_classes=5)


def tiny(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(**{**CFG, **kw})).eval()


def vit_macs(dim, depth, classes, tokens, patch_dim, cls=True, mlp_ratio=4):
    """Multiply-adds of a ViT forward, written out by hand."""
    n = tokens + (1 if cls else 0)
    per_block = n * (3 * dim * dim + dim * dim + 2 * dim * mlp_ratio * dim) + 2 * n * n * dim
    return tokens * patch_dim * dim + depth * per_block + dim * classes


def test_sdpa_is_counted_and_equals_explicit_attention():
    x = torch.randn(2, 3, 4, 32, 32)
    sdpa = count_flops(tiny(), x)
    explicit = count_flops(tiny(fused_attn=False), x)
    assert sdpa.macs == explicit.macs
    attn = sdpa.by_op["_scaled_dot_product_flash_attention_for_cpu"]
    n = 33
    assert attn == 2 * 2 * (2 * n * n * 32) == explicit.by_op["bmm"]  # batch x depth x (QK^T + AV)
    assert sdpa.macs == 2 * vit_macs(32, 2, 5, 32, 3 * 2 * 8 * 8)


def test_backward_counts_attention():
    x = torch.randn(1, 3, 4, 32, 32)
    fwd = count_flops(tiny(), x)
    both = count_flops(tiny().train(), x, backward=True)
    attn_fwd = fwd.by_op["_scaled_dot_product_flash_attention_for_cpu"]
    # flash backward: recomputed scores + 4 gradient matmuls = 2.5x the forward's 2 matmuls
    assert both.by_op["_scaled_dot_product_flash_attention_for_cpu_backward"] == attn_fwd * 5 // 2
    explicit = count_flops(tiny(fused_attn=False).train(), x, backward=True)
    assert both.macs - explicit.macs == attn_fwd // 2  # the recomputed QK^T only
    # linear layers: backward = 2x forward (input and weight gradients); the patch projection (a GEMM
    # over the cubes, 32 tokens x 384 values x 32 outputs here) needs no input gradient (the clip does
    # not require grad), so its backward equals its forward
    patch = 32 * (3 * 2 * 8 * 8) * 32
    assert both.by_op["mm"] == 2 * fwd.by_op["addmm"] - patch
    assert both.macs == 3 * fwd.macs - patch + attn_fwd // 2


def test_gmacs_of_known_config_by_hand():
    x = torch.randn(1, 3, 8, 48, 48)
    m = tiny(num_frames=8, img_size=48, num_classes=7, class_token=False)
    tokens = 4 * 6 * 6
    assert count_flops(m, x).macs == vit_macs(32, 2, 7, tokens, 384, cls=False)
    assert count_flops(m, x).params == sum(p.numel() for p in m.parameters())


def test_meta_device_counts_equal_cpu_counts():
    x = torch.randn(1, 3, 4, 32, 32)
    cpu = count_flops(tiny(), x)
    with torch.device("meta"):
        meta = count_flops(tiny(), torch.empty(1, 3, 4, 32, 32))
    assert meta.macs == cpu.macs and meta.params == cpu.params


@pytest.mark.parametrize(
    "name, zoo_gmacs, zoo_params_m",
    [("vit_base", 180, 87), ("vit_large", 598, 304), ("vit_huge", 1193, 632)],
)
def test_mae_st_zoo_costs(name, zoo_gmacs, zoo_params_m):
    """REFERENCE_NUMBERS C: GMACs per 16x224x224 view B / L / H = 180 / 598 / 1193."""
    with torch.device("meta"):
        result = count_flops(create_model(name).eval(), torch.empty(1, 3, 16, 224, 224))
    assert abs(result.gmacs - zoo_gmacs) / zoo_gmacs < 0.005
    assert abs(result.params / 1e6 - zoo_params_m) < 1


def test_vit_base_macs_exact():
    with torch.device("meta"):
        result = count_flops(create_model("vit_base").eval(), torch.empty(1, 3, 16, 224, 224))
    assert result.macs == vit_macs(768, 12, 400, 1568, 1536)
    assert result.flops == 2 * result.macs


def test_count_flops_keeps_existing_grads_and_registration_is_idempotent():
    m = tiny().train()
    x = torch.randn(1, 3, 4, 32, 32)
    m(x).sum().backward()
    before = {n: p.grad.clone() for n, p in m.named_parameters()}
    count_flops(m, x, backward=True)
    for n, p in m.named_parameters():
        assert torch.equal(p.grad, before[n])
    register_cpu_sdpa_formulas()
    register_cpu_sdpa_formulas()
    assert count_flops(tiny(), x).by_op["_scaled_dot_product_flash_attention_for_cpu"] > 0


def test_dict_inputs_and_loss_outputs():
    class Method(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = tiny()

        def forward(self, batch):
            return {"loss": self.backbone(batch["video"]).square().mean()}

    x = torch.randn(1, 3, 4, 32, 32)
    method = Method()
    assert count_flops(method, {"video": x}).macs == count_flops(method.backbone, x).macs
    assert count_flops(method, {"video": x}, backward=True).macs > count_flops(method, {"video": x}).macs


def test_cli_prints_params_and_gmacs(capsys):
    assert main(["flops", "--model", "vit_base"]) == 0
    out = capsys.readouterr().out
    assert "86,701,456" in out and "180.49" in out and "multiply-add" in out
    argv = ["flops", "--model", "vit_tiny", "--frames", "4", "--size", "32", "--classes", "3", "--backward"]
    assert main(argv + ["--device", "cpu"]) == 0
    assert "forward + backward" in capsys.readouterr().out
    assert main(["flops", "--model", "vit_tiny", "--frames", "5"]) == 1
    assert "not divisible" in capsys.readouterr().err
    assert main(["flops", "--model", "vit_tin"]) == 1
    assert "vit_tiny" in capsys.readouterr().err


def _mvit_cost(device: str, executed: bool, **overrides):
    with torch.device(device):
        model = create_model("mvitv2_s", **overrides).eval()
        x = torch.randn(1, 3, overrides.get("num_frames", 16), overrides.get("img_size", 224), overrides.get("img_size", 224))
    before = [b.attn.attn_impl for b in model.blocks]
    result = count_flops(model, x, executed=executed)
    assert [b.attn.attn_impl for b in model.blocks] == before  # the setting is restored
    return result


def test_mvit_counts_the_papers_multiply_adds_by_default():
    # "concat" is what CPU runs; forced here on the meta device, which computes nothing.
    # REFERENCE_NUMBERS B: MViTv2-S at 16x224^2 = 64.224 GMACs (zoo "64 GFLOPs")
    paper = _mvit_cost("meta", executed=False, attn_impl="concat")
    executed = _mvit_cost("meta", executed=True, attn_impl="concat")
    assert round(paper.gmacs, 3) == 64.224
    assert executed.gmacs > paper.gmacs + 4  # the relative-position columns in Q K^T and A V (68.5)
    assert _mvit_cost("meta", executed=True, attn_impl="mask").macs == paper.macs


def test_mvit_cpu_count_equals_the_meta_count():
    small = dict(depth=4, transitions=(1, 3), embed_dim=16, num_frames=8, img_size=48, kv_stride=(1, 4, 4))
    cpu = _mvit_cost("cpu", executed=False, **small)  # "auto" runs "concat" on CPU
    assert cpu.macs == _mvit_cost("meta", executed=False, **small).macs
    assert _mvit_cost("cpu", executed=True, **small).macs > cpu.macs


def test_cli_flops_executed_flag(capsys):
    def gmacs(*extra):
        assert main(["flops", "--model", "mvitv2_s", "--frames", "8", "--size", "96", *extra]) == 0
        line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("GMACs"))
        return float(line.split()[1])

    meta = gmacs()
    assert gmacs("--device", "cpu") == meta
    assert gmacs("--device", "cpu", "--executed") > meta


def test_saved_for_backward_counts_activations_apart_from_parameters():
    """Linear(64, 256) -> GELU -> Linear(256, 8) on a (4, 64) input that needs no gradient: the first
    Linear keeps its input (4 x 64 floats) for its weight's gradient, GELU its input (4 x 256), the
    second Linear its input (4 x 256) and its weight (256 x 8), a parameter, counted apart."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 8))
    model[0].weight.grad = torch.ones_like(model[0].weight)
    saved = saved_for_backward(model, torch.randn(4, 64), {"first": model[0], "gelu": model[1]})
    assert (saved.activations, saved.parameters) == (4 * (4 * 64 + 4 * 256 + 4 * 256), 4 * 256 * 8)
    assert saved.by_part == {"first": 4 * 4 * 64, "gelu": 4 * 4 * 256, "other": 4 * 4 * 256}
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))  # left as it was
    assert model[2].weight.grad is None
