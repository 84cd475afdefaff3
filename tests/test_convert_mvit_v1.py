"""MViTv1-B checkpoint import (``tubelet convert --from pytorchvideo | pyslowfast | torchvision``): the
logits of PyTorchVideo's and torchvision's own modules (tests/fixtures/make_mvit_v1_fixture.py, MViTv1-B's
architecture at width 8), PySlowFast's key layout written from the same weights, full-size key sets,
and errors that name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tubelet.cli.main import main as cli_main
from tubelet.errors import CheckpointError
from tubelet.models import create_model
from tubelet.models.convert import convert_state_dict
from tubelet.models.weights import model_from_file

torch.set_num_threads(1)

FIX = Path(__file__).resolve().parent / "fixtures"
META = json.loads((FIX / "mvit_v1_small.json").read_text())
OVERRIDES = META["tubelet_overrides"]
# source -> (state-dict fixture, reference logits in mvit_v1_small_io.safetensors). PySlowFast's logits by
# default are those of its code of the MViTv1 release, which PyTorchVideo's module computes.
SOURCES = {"pytorchvideo": ("mvit_v1_ptv_small", "logits_ptv"),
           "pyslowfast": ("mvit_v1_pyslowfast_small", "logits_ptv"),
           "torchvision": ("mvit_v1_tv_small", "logits_tv")}


@pytest.fixture(scope="module")
def io():
    return load_file(str(FIX / "mvit_v1_small_io.safetensors"))


def _state(source: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIX / f"{SOURCES[source][0]}.safetensors"))


def _logits(result, x: torch.Tensor, **extra) -> torch.Tensor:
    model = create_model(result.model, **{**result.overrides, **extra}).eval()
    model.load_state_dict(result.state)
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("source", list(SOURCES))
def test_reference_module_logits(source, io):
    res = convert_state_dict(_state(source), source, model="mvitv1_b_16x4", overrides=OVERRIDES)
    assert res.model == "mvitv1_b_16x4" and res.overrides["num_classes"] == META["num_classes"]
    out = _logits(res, io["input"])
    ref = io[SOURCES[source][1]]
    assert out.shape == ref.shape == (2, 5)
    assert (out - ref).abs().max() < 1e-5


def test_pooling_norm_eps_is_part_of_the_function(io):
    """The LayerNorms after the Q/K/V pooling run at eps 1e-5 in PyTorchVideo's module and in PySlowFast's
    code of the MViTv1 release, at 1e-6 in PySlowFast since 2022 and in torchvision: the imports set
    attn_norm_eps accordingly (PySlowFast's says so), and the two eps are measurably different functions."""
    res = convert_state_dict(_state("pytorchvideo"), "pytorchvideo", model="mvitv1_b_16x4", overrides=OVERRIDES)
    assert res.overrides["attn_norm_eps"] == 1e-5
    assert (_logits(res, io["input"], attn_norm_eps=None) - io["logits_ptv"]).abs().max() > 1e-5
    sf = convert_state_dict(_state("pyslowfast"), "pyslowfast", model="mvitv1_b_16x4", overrides=OVERRIDES)
    assert sf.overrides["attn_norm_eps"] == 1e-5 and "--set attn_norm_eps=null" in sf.notes[0]
    current = convert_state_dict(_state("pyslowfast"), "pyslowfast", model="mvitv1_b_16x4",
                                 overrides={**OVERRIDES, "attn_norm_eps": None})
    assert (_logits(current, io["input"]) - io["logits_pyslowfast_2022"]).abs().max() < 1e-5
    tv = convert_state_dict(_state("torchvision"), "torchvision", model="mvitv1_b_16x4", overrides=OVERRIDES)
    assert "attn_norm_eps" not in tv.overrides


def test_pyslowfast_separate_qkv_layout(io):
    """PySlowFast's MViTv1 code of mid-2021 (and SEPARATE_QKV) keeps q, k, v as three Linears."""
    state = _state("pyslowfast")
    split = {}
    for k, v in state.items():
        if k.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            for name, part in zip("qkv", v.chunk(3, dim=0)):
                split[k.replace(".qkv.", f".{name}.")] = part
        else:
            split[k] = v
    res = convert_state_dict(split, "pyslowfast", model="mvitv1_b_16x4", overrides=OVERRIDES)
    assert res.notes[0] == "separate q/k/v projections fused into qkv"
    assert (_logits(res, io["input"]) - io["logits_ptv"]).abs().max() < 1e-5
    del split["blocks.2.attn.v.bias"]
    with pytest.raises(CheckpointError, match=r"blocks\.2\.attn\.v\.bias missing"):
        convert_state_dict(split, "pyslowfast", model="mvitv1_b_16x4", overrides=OVERRIDES)


def test_cli_pyth_wrapped_checkpoint_round_trip(tmp_path, io, capsys):
    """A PyTorchVideo zoo file (``{"model_state": ...}``, torch.save) through the CLI; the written file
    describes its model, attn_norm_eps included, so load_model rebuilds the reference function."""
    src = tmp_path / "MVIT_B_small.pyth"
    torch.save({"model_state": _state("pytorchvideo"), "epoch": torch.tensor(1)}, src)
    dst = tmp_path / "out.safetensors"
    sets = [f"--set={k}={json.dumps(v)}" for k, v in OVERRIDES.items()]
    assert cli_main(["convert", str(src), str(dst), "--from", "pytorchvideo", "--model", "mvitv1_b_16x4", *sets]) == 0
    assert "attn_norm_eps=1e-05" in capsys.readouterr().out
    model = model_from_file(dst).eval()
    with torch.no_grad():
        assert (model(io["input"]) - io["logits_ptv"]).abs().max() < 1e-5


def test_full_size_layouts_infer_the_model():
    """torchvision's mvit_v1_b (every entry's name and shape, from the fixture script) and PySlowFast's
    layout of both MViTv1-B variants convert whole, the variant read from the temporal position rows."""
    keys = json.loads((FIX / "mvit_v1_b_keys.json").read_text())
    state = {k: torch.empty(s, device="meta") for k, s in keys.items()}
    res = convert_state_dict(state, "torchvision")
    assert res.model == "mvitv1_b_16x4" and res.overrides == {"num_classes": 400} and len(res.state) == len(keys)
    for name in ("mvitv1_b_16x4", "mvitv1_b_32x3"):
        with torch.device("meta"):
            own = create_model(name).state_dict()
        foreign = {("head.projection." + k[len("head."):] if k.startswith("head.") else k): v for k, v in own.items()}
        res = convert_state_dict(foreign, "pyslowfast")
        assert res.model == name and set(res.state) == set(own)


def test_mismatched_and_foreign_keys_are_named():
    state = _state("pytorchvideo")
    state["cls_positional_encoding.pos_embed_spatial"] = torch.zeros(1, 63, 8)
    with pytest.raises(CheckpointError, match=r"pos_embed_spatial: checkpoint \(1, 63, 8\) vs model \(1, 64, 8\)"):
        convert_state_dict(state, "pytorchvideo", model="mvitv1_b_16x4", overrides=OVERRIDES)
    # PySlowFast's joint position table (SEP_POS_EMBED: False) has no counterpart.
    state = _state("pyslowfast")
    state["pos_embed"] = torch.zeros(1, 257, 8)
    with pytest.raises(CheckpointError, match=r"pos_embed \(no mvitv1_b_16x4 counterpart\)"):
        convert_state_dict(state, "pyslowfast", model="mvitv1_b_16x4", overrides=OVERRIDES)
    with pytest.raises(CheckpointError, match="no registered MViTv1 has depth 4 and width 8"):
        convert_state_dict(_state("torchvision"), "torchvision")
    # PySlowFast's names under --from pytorchvideo would get PyTorchVideo's pooling-norm eps: refused.
    with pytest.raises(CheckpointError, match="not a pytorchvideo checkpoint: .*use --from pyslowfast"):
        convert_state_dict(_state("pyslowfast"), "pytorchvideo", model="mvitv1_b_16x4", overrides=OVERRIDES)
