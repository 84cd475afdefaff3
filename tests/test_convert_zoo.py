"""``--from pytorchvideo`` / ``--from pyslowfast`` for the ResNet family: state dicts written in the
reference layouts (the module names of pytorchvideo.models.{net,resnet,slowfast,r2plus1d} and of
PySlowFast's video_model_builder / resnet_helper) convert to the tubelet model they came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tubelet.errors import CheckpointError
from tubelet.models import create_model
from tubelet.models.convert import convert_state_dict

torch.set_num_threads(1)

TINY = {"depths": [1, 1, 1, 1], "width": 16, "num_classes": 7}
_PTV_PART = {"shortcut.0": "branch1_conv", "shortcut.1": "branch1_norm", "conv_a": "branch2.conv_a",
             "bn_a": "branch2.norm_a", "conv_b": "branch2.conv_b", "bn_b": "branch2.norm_b", "conv_c": "branch2.conv_c",
             "bn_c": "branch2.norm_c", "conv_b.conv_t": "branch2.conv_b.conv_t", "conv_b.bn_t": "branch2.conv_b.norm",
             "conv_b.conv_xy": "branch2.conv_b.conv_xy"}
_SF_PART = {"shortcut.0": "branch1", "shortcut.1": "branch1_bn", "conv_a": "branch2.a", "bn_a": "branch2.a_bn",
            "conv_b": "branch2.b", "bn_b": "branch2.b_bn", "conv_c": "branch2.c", "bn_c": "branch2.c_bn"}


def _randomised(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_model(name, **TINY)
    with torch.no_grad():  # non-trivial BN statistics and final-BN scales, so that a swap would show
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm3d):
                mod.weight.uniform_(0.5, 1.5), mod.bias.uniform_(-0.2, 0.2)
                mod.running_mean.uniform_(-0.2, 0.2), mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _ptv_layout(name: str, state: dict) -> dict:
    """PyTorchVideo's names: blocks.0 stem, stages at blocks 1.. (one more after res2's pool for
    C2D/I3D), the head last; SlowFast under multipathway_blocks / multipathway_fusion."""
    pooled = name in ("c2d_r50", "i3d_r50")
    stage_block = [1, 3, 4, 5] if pooled else [1, 2, 3, 4]
    head = 6 if (pooled or name.startswith("slowfast")) else 5
    out = {}
    for k, v in state.items():
        p = k.split(".")
        if p[0] == "head":
            out[f"blocks.{head}.proj.{p[2]}"] = v
        elif p[0] in ("stem", "slow_stem", "fast_stem"):
            part = "conv" if p[1] == "0" else "norm"
            pre = "blocks.0." if p[0] == "stem" else f"blocks.0.multipathway_blocks.{int(p[0] == 'fast_stem')}."
            out[f"{pre}{part}.{p[2]}"] = v
        elif p[0] == "fusions":
            part = "conv_fast_to_slow" if p[2] == "conv" else "norm"
            out[f"blocks.{p[1]}.multipathway_fusion.{part}.{p[3]}"] = v
        else:
            s, b, rest, leaf = int(p[1]), p[2], ".".join(p[3:-1]), p[-1]
            pre = f"blocks.{stage_block[s]}." if p[0] == "stages" else \
                f"blocks.{s + 1}.multipathway_blocks.{int(p[0] == 'fast_stages')}."
            out[f"{pre}res_blocks.{b}.{_PTV_PART[rest]}.{leaf}"] = v
    return out


def _pyslowfast_layout(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        p = k.split(".")
        path = int(p[0].startswith("fast"))
        if p[0] == "head":
            out[f"head.projection.{p[2]}"] = v
        elif p[0].endswith("stem"):
            out[f"s1.pathway{path}_stem.{'conv' if p[1] == '0' else 'bn'}.{p[2]}"] = v
        elif p[0] == "fusions":
            out[f"s{int(p[1]) + 1}_fuse.{'conv_f2s' if p[2] == 'conv' else 'bn'}.{p[3]}"] = v
        else:
            out[f"s{int(p[1]) + 2}.pathway{path}_res{p[2]}.{_SF_PART['.'.join(p[3:-1])]}.{p[-1]}"] = v
    return out


@pytest.mark.parametrize("name", ["slow_r50", "c2d_r50", "i3d_r50", "r2plus1d_r50", "csn_r101", "slowfast_r50_8x8"])
def test_pytorchvideo_layout_converts_with_equal_logits(name):
    ref = _randomised(name)
    foreign = _ptv_layout(name, ref.state_dict())
    res = convert_state_dict(foreign, "pytorchvideo", model=name, overrides={k: v for k, v in TINY.items()
                                                                              if k != "num_classes"})
    assert res.model == name and res.overrides["num_classes"] == 7
    back = create_model(name, **{**TINY, **res.overrides}).eval()
    back.load_state_dict(res.state)
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        assert (back(x) - ref(x)).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["slow_r50", "c2d_r50", "i3d_r50", "slowfast_r50_8x8"])
def test_pyslowfast_layout_converts_with_equal_logits(name):
    ref = _randomised(name)
    res = convert_state_dict(_pyslowfast_layout(ref.state_dict()), "pyslowfast", model=name,
                             overrides={"depths": [1, 1, 1, 1], "width": 16})
    back = create_model(name, **{**TINY, **res.overrides}).eval()
    back.load_state_dict(res.state)
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        assert (back(x) - ref(x)).abs().max() < 1e-4


def test_model_is_inferred_from_full_size_layouts():
    for name in ["slow_r50", "c2d_r50", "i3d_r50", "r2plus1d_r50", "csn_r101", "slowfast_r50_8x8",
                 "slowfast_r50_4x16", "slowfast_r101_8x8"]:
        with torch.device("meta"):
            sd = create_model(name).state_dict()
        assert convert_state_dict(_ptv_layout(name, sd), "pytorchvideo").model == name


def test_shape_mismatch_names_the_key():
    ref = _randomised("slow_r50")
    foreign = _ptv_layout("slow_r50", ref.state_dict())
    foreign["blocks.2.res_blocks.0.branch2.conv_a.weight"] = torch.zeros(1, 1, 1, 1, 1)
    with pytest.raises(CheckpointError, match=r"stages\.1\.0\.conv_a\.weight: checkpoint \(1, 1, 1, 1, 1\)"):
        convert_state_dict(foreign, "pytorchvideo", model="slow_r50", overrides={"depths": [1, 1, 1, 1],
                                                                                 "width": 16})


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", ["i3d_r50", "r2plus1d_r50", "csn_r101", "slowfast_r50_8x8"])
def test_reference_module_logits(name):
    """Weights and logits of PyTorchVideo's own modules (tests/fixtures/make_zoo_resnet_fixture.py: the
    zoo model's settings at full depth, width 4 / 8, random weights and BN statistics): the model is
    inferred from PyTorchVideo's keys alone, and the logits agree to 1e-4."""
    from safetensors.torch import load_file

    meta = json.loads((FIXTURES / "zoo_ptv.json").read_text())[name]
    state = load_file(str(FIXTURES / f"zoo_ptv_{name}.safetensors"))
    io = load_file(str(FIXTURES / f"zoo_ptv_{name}_io.safetensors"))
    overrides = {k: v for k, v in meta["overrides"].items() if k != "num_classes"}
    res = convert_state_dict(state, "pytorchvideo", overrides=overrides)
    assert res.model == name and res.overrides["num_classes"] == meta["overrides"]["num_classes"]
    m = create_model(name, **res.overrides).eval()
    m.load_state_dict(res.state)
    with torch.no_grad():
        out = m([io["slow"], io["fast"]]) if name.startswith("slowfast") else m(io["input"])
        if name.startswith("slowfast"):  # the one decoded Fast clip gives the same Slow frames
            torch.testing.assert_close(m(io["fast"]), out, rtol=0, atol=0)
    assert out.shape == io["logits"].shape
    assert (out - io["logits"]).abs().max() < 1e-4


@pytest.mark.parametrize("name", json.loads((FIXTURES / "zoo_ptv_keys.json").read_text()))
def test_full_size_reference_keys_and_parameters(name):
    """PyTorchVideo's full-size hub models (names and shapes, tests/fixtures/make_zoo_keys.py): every
    entry converts onto the tubelet model of the same name, which has exactly their parameter count."""
    ref = json.loads((FIXTURES / "zoo_ptv_keys.json").read_text())[name]
    state = {k: torch.empty(s, device="meta") for k, s in ref["shapes"].items()}
    # X3D-XS/S/M share every weight: M is inferred (the efficient form: XS)
    model = name if name in ("x3d_xs", "x3d_s", "efficient_x3d_s") else None
    res = convert_state_dict(state, "pytorchvideo", model=model)
    # options the layout fixes: the efficient form's normalised shortcut, PyTorchVideo MViT's pooling-norm eps
    fixed = {"norm_shortcut_always": True} if name.startswith("efficient") else \
        {"attn_norm_eps": 1e-5} if name.startswith("mvit") else {}
    assert res.model == name and res.overrides == {**fixed, "num_classes": 400}
    # every element lands somewhere (MViT's q, k, v become one qkv tensor)
    assert sum(v.numel() for v in res.state.values()) == sum(v.numel() for v in state.values())
    with torch.device("meta"):
        ours = create_model(name)
    assert sum(p.numel() for p in ours.parameters()) == ref["params"]
