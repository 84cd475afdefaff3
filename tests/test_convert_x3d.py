"""``tubelet convert --from pytorchvideo`` for X3D: key renaming, shape checks naming the key, same logits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tubelet.errors import CheckpointError
from tubelet.models import create_model
from tubelet.models.convert import pytorchvideo_x3d as ptv

torch.set_num_threads(1)

FIXTURE = Path(__file__).parent / "fixtures" / "x3d_ptv_small.safetensors"
TINY = dict(base_depths=[1, 1, 1, 1], depth_factor=2.0, num_classes=7)  # 2 blocks per stage: SE on, SE off


def _ptv_key(k: str) -> str:
    """PyTorchVideo's name of a tubelet X3D key, written from PyTorchVideo's module tree (create_x3d:
    Net.blocks[0] = ResNetBasicStem(conv=Conv2plus1d(conv_t=<1x3x3>, conv_xy=<5x1x1>), norm), blocks[1-4]
    = ResStage(res_blocks=[ResBlock(branch1_conv, branch1_norm, branch2=BottleneckBlock)]), blocks[5] =
    ResNetBasicHead(pool=ProjectedPool(pre_conv, pre_norm, post_conv), proj))."""
    fixed = {"stem.0.weight": "blocks.0.conv.conv_t.weight", "stem.1.weight": "blocks.0.conv.conv_xy.weight",
             "conv5.weight": "blocks.5.pool.pre_conv.weight", "lin5.weight": "blocks.5.pool.post_conv.weight"}
    if k in fixed:
        return fixed[k]
    if k.startswith("stem.2."):
        return "blocks.0.norm." + k[len("stem.2."):]
    if k.startswith("bn5."):
        return "blocks.5.pool.pre_norm." + k[len("bn5."):]
    if k.startswith("head.fc."):
        return "blocks.5.proj." + k[len("head.fc."):]
    s, b, rest = re.match(r"^stages\.(\d)\.(\d+)\.(.*)$", k).groups()
    part = {"shortcut.": "branch1_conv.", "shortcut_bn.": "branch1_norm.", "conv_a.": "branch2.conv_a.",
            "conv_b.": "branch2.conv_b.", "conv_c.": "branch2.conv_c.", "bn_a.": "branch2.norm_a.",
            "bn_b.": "branch2.norm_b.0.", "bn_c.": "branch2.norm_c.", "se.fc1.": "branch2.norm_b.1.block.0.",
            "se.fc2.": "branch2.norm_b.1.block.2."}
    for ours, theirs in part.items():
        if rest.startswith(ours):
            return f"blocks.{int(s) + 1}.res_blocks.{b}.{theirs}{rest[len(ours):]}"
    raise AssertionError(k)


def _as_ptv(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in model.state_dict().items():
        out[_ptv_key(k)] = v.reshape(*v.shape, 1, 1, 1) if k == "lin5.weight" else v.clone()
    return out


def _randomised(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_model("x3d_xs", **kw)
    with torch.no_grad():
        for name, t in m.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.1)
    return m.eval()


def test_every_key_renamed_and_logits_equal(tmp_path):
    src = _randomised(**TINY)
    state = _as_ptv(src)
    assert "blocks.1.res_blocks.0.branch2.norm_b.1.block.0.weight" in state  # SE on block 0
    assert "blocks.1.res_blocks.0.branch1_norm.weight" not in state  # 24 -> 24 at stride 2: no BN
    converted, name, used = ptv.convert_state_dict(state, "x3d_xs", {k: v for k, v in TINY.items()
                                                                      if k != "num_classes"})
    assert name == "x3d_xs" and used["num_classes"] == 7
    dst = create_model("x3d_xs", **TINY).eval()
    dst.load_state_dict(converted)
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_shape_mismatch_names_the_key():
    state = _as_ptv(_randomised(**TINY))
    state["blocks.2.res_blocks.1.branch2.conv_b.weight"] = torch.zeros(108, 1, 3, 3, 1)
    with pytest.raises(CheckpointError, match=r"stages\.1\.1\.conv_b\.weight: checkpoint \(108, 1, 3, 3, 1\)"):
        ptv.convert_state_dict(state, "x3d_xs", {"base_depths": [1, 1, 1, 1], "depth_factor": 2.0})


def test_unknown_and_missing_keys_are_listed():
    state = _as_ptv(_randomised(**TINY))
    state["blocks.9.extra.weight"] = torch.zeros(1)
    del state["blocks.5.pool.pre_conv.weight"]
    with pytest.raises(CheckpointError) as err:
        ptv.convert_state_dict(state, "x3d_xs", {"base_depths": [1, 1, 1, 1], "depth_factor": 2.0})
    msg = str(err.value)
    assert "missing keys:\n  conv5.weight" in msg and "blocks.9.extra.weight (no x3d_xs counterpart)" in msg
    with pytest.raises(CheckpointError, match="no PyTorchVideo X3D key"):
        ptv.convert_state_dict({"foo": torch.zeros(1)}, "x3d_xs")


def test_full_size_key_set_and_inference():
    with torch.device("meta"):
        m = create_model("x3d_l")
    state = {_ptv_key(k): v for k, v in m.state_dict().items()}
    assert ptv.infer_model(state) == "x3d_l"
    assert {ptv.rename(k) for k in state} == set(m.state_dict())


def test_cli_round_trip(tmp_path):
    from safetensors.torch import save_file

    from tubelet.cli.main import main

    src = _randomised(**TINY)
    save_file({k: v.contiguous() for k, v in _as_ptv(src).items()}, tmp_path / "x3d.safetensors")
    rc = main(["convert", str(tmp_path / "x3d.safetensors"), str(tmp_path / "out.safetensors"), "--from",
               "pytorchvideo", "--model", "x3d_xs", "--set", "base_depths=[1,1,1,1]", "--set", "depth_factor=2.0"])
    assert rc == 0
    back = create_model("x3d_xs", checkpoint=str(tmp_path / "out.safetensors"), **TINY).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(x), src(x), rtol=0, atol=0)


@pytest.mark.skipif(not FIXTURE.exists(), reason="PyTorchVideo X3D fixture not generated")
def test_reference_module_logits():
    """Weights and logits of PyTorchVideo's own create_x3d (tests/fixtures/make_x3d_fixture.py)."""
    import json

    from safetensors.torch import load_file

    meta = json.loads((FIXTURE.with_suffix(".json")).read_text())
    io = load_file(str(FIXTURE.with_name("x3d_ptv_small_io.safetensors")))
    state, name, used = ptv.convert_state_dict(load_file(str(FIXTURE)), meta["model"], meta["overrides"])
    m = create_model(name, **used).eval()
    m.load_state_dict(state)
    with torch.no_grad():
        out = m(io["input"])
    assert (out - io["logits"]).abs().max() < 1e-4


EFFICIENT = Path(__file__).parent / "fixtures" / "efficient_x3d_small.safetensors"


def _efficient_reference():
    import json

    from safetensors.torch import load_file

    meta = json.loads(EFFICIENT.with_suffix(".json").read_text())
    return load_file(str(EFFICIENT)), load_file(str(EFFICIENT.with_name("efficient_x3d_small_io.safetensors"))), meta


def test_efficient_x3d_reference_module_logits():
    """PyTorchVideo's mobile-CPU EfficientX3d (tests/fixtures/make_efficient_x3d_fixture.py: XS with 2, 2,
    1, 1 blocks and a 128-wide lin_5): every key renamed, the model inferred from the keys, equal logits;
    without the normalised 24 -> 24 shortcut (the zoo X3D's form) its BatchNorm has no place."""
    from tubelet.models.convert import convert_state_dict

    state, io, meta = _efficient_reference()
    assert "s2.pathway0_res0._res_proj.kernel.bn.weight" in state  # 24 -> 24 at stride 2, normalised
    res = convert_state_dict(state, "pytorchvideo", overrides=meta["overrides"])
    assert res.model == "efficient_x3d_xs" and res.overrides["num_classes"] == 7
    assert len(res.state) == len(state)
    m = create_model(res.model, **res.overrides).eval()
    m.load_state_dict(res.state)
    with torch.no_grad():
        out = m(io["input"])
    assert out.shape == io["logits"].shape == (1, 7)
    assert (out - io["logits"]).abs().max() < 1e-5
    with pytest.raises(CheckpointError, match=r"stages\.0\.0\.shortcut_bn\.weight \(renamed from pytorchvideo; not in"):
        convert_state_dict(state, "pytorchvideo", model="x3d_xs", overrides={**meta["overrides"],
                                                                              "norm_shortcut_always": False})


def test_efficient_x3d_shape_mismatch_names_the_key():
    from tubelet.models.convert import convert_state_dict

    state, _, meta = _efficient_reference()
    state["s3.pathway0_res1.layers.conv_1.kernel.conv.weight"] = torch.zeros(108, 1, 3, 3, 1)
    with pytest.raises(CheckpointError, match=r"stages\.1\.1\.conv_b\.weight: checkpoint \(108, 1, 3, 3, 1\)"):
        convert_state_dict(state, "pytorchvideo", overrides=meta["overrides"])
