"""Checkpoint import: torchvision's MViT (logits of a real torchvision model, tests/fixtures) and PySlowFast
names onto tubelet; errors list what does not fit; files are read without unpickling code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import error_lines
from safetensors import safe_open
from safetensors.torch import load_file

from tubelet.cli.main import main as cli_main
from tubelet.errors import CheckpointError
from tubelet.models import create_model
from tubelet.models.convert import convert_checkpoint, convert_state_dict, pyslowfast, read_foreign_state_dict

FIX = Path(__file__).resolve().parent / "fixtures"
TV_SMALL = FIX / "mvit_tv_small.safetensors"
META = json.loads((FIX / "mvit_tv_small.json").read_text())
OVERRIDES = META["tubelet_overrides"]


@pytest.fixture(scope="module")
def io():
    return load_file(str(FIX / "mvit_tv_small_io.safetensors"))


def test_torchvision_logits_match(tmp_path, io):
    dst = tmp_path / "small.safetensors"
    result = convert_checkpoint(TV_SMALL, dst, "torchvision", model="mvitv2_s", overrides=OVERRIDES)
    assert result.model == "mvitv2_s" and result.notes == []
    model = create_model("mvitv2_s", checkpoint=str(dst), **result.overrides).eval()
    with torch.no_grad():
        logits = model(io["input"])
    assert logits.shape == io["logits"].shape == (2, 10)
    torch.testing.assert_close(logits, io["logits"], atol=1e-4, rtol=0)
    # Same logits in the training-time attention formulation (dropout and drop path are off here).
    for blk in model.blocks:
        blk.attn.attn_impl = "concat"
    model.head_drop.p = 0.0
    torch.testing.assert_close(model.train()(io["input"]).detach(), io["logits"], atol=1e-4, rtol=0)
    with safe_open(str(dst), "pt") as f:
        meta = f.metadata()
    assert meta["tubelet_model"] == "mvitv2_s" and json.loads(meta["tubelet_overrides"])["num_classes"] == 10


def test_cli_convert_and_pth_source(tmp_path, io, capsys):
    # A torchvision-style .pth (plain state dict, as torch.save writes it) goes through weights_only loading.
    pth = tmp_path / "tv.pth"
    torch.save(load_file(str(TV_SMALL)), pth)
    dst = tmp_path / "out.safetensors"
    sets = [f"--set={k}={json.dumps(v)}" for k, v in OVERRIDES.items()]
    assert cli_main(["convert", str(pth), str(dst), "--from", "torchvision", "--model", "mvitv2_s", *sets]) == 0
    assert "create_model('mvitv2_s'" in capsys.readouterr().out
    model = create_model("mvitv2_s", checkpoint=str(dst), **OVERRIDES).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["logits"], atol=1e-4, rtol=0)


def test_full_mvit_v2_s_names_map_onto_mvitv2_s():
    keys = json.loads((FIX / "mvit_v2_s_keys.json").read_text())
    assert len(keys) == 397
    state = {k: torch.empty(shape, device="meta") for k, shape in keys.items()}
    result = convert_state_dict(state, "torchvision")  # model inferred from depth and width
    assert result.model == "mvitv2_s" and result.overrides == {"num_classes": 400}
    assert len(result.state) == 397
    assert result.state["cls_token"].shape == (1, 1, 96)


def test_errors_list_missing_unexpected_and_mismatched():
    state = load_file(str(TV_SMALL))
    broken = dict(state)
    del broken["blocks.2.attn.qkv.weight"]
    broken["blocks.0.attn.extra_thing"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as err:
        convert_state_dict(broken, "torchvision", "mvitv2_s", OVERRIDES)
    msg = str(err.value)
    assert "missing keys:\n  blocks.2.attn.qkv.weight" in msg
    assert "blocks.0.attn.extra_thing (no mvitv2_s counterpart)" in msg
    with pytest.raises(CheckpointError) as err:
        convert_state_dict(state, "torchvision", "mvitv2_s", {**OVERRIDES, "embed_dim": 32})
    assert "shape mismatches:" in str(err.value) and "patch_embed.proj.weight" in str(err.value)
    with pytest.raises(CheckpointError, match="unknown checkpoint source"):
        convert_state_dict(state, "timm")


def test_unsafe_or_broken_files_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pth"
    torch.save({"model_state": {"w": torch.zeros(1)}, "x": Payload()}, evil)
    with pytest.raises(CheckpointError, match="refused: a pickle, not a checkpoint of tensors.*would import: print\\)"):
        read_foreign_state_dict(evil)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_foreign_state_dict(bad)
    with pytest.raises(CheckpointError, match="not found"):
        read_foreign_state_dict(tmp_path / "nope.pth")


def _to_pyslowfast(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """tubelet names -> PySlowFast names, written out from slowfast/models (MViT, MultiScaleBlock,
    MultiScaleAttention, TransformerBasicHead): only the head differs."""
    out = {}
    for k, v in state.items():
        out["head.projection." + k.split(".")[-1] if k.startswith("head.") else k] = v
    return out


def test_pyslowfast_checkpoint_round_trip(tmp_path, io):
    tv = convert_state_dict(load_file(str(TV_SMALL)), "torchvision", "mvitv2_s", OVERRIDES)
    sf = _to_pyslowfast(tv.state)
    names = ("blocks.1.attn.pool_q.weight", "blocks.1.attn.norm_q.bias", "blocks.1.proj.weight",
             "blocks.0.attn.rel_pos_t", "blocks.3.mlp.fc2.weight", "patch_embed.proj.weight",
             "head.projection.weight")
    for name in names:
        assert name in sf and pyslowfast.rename(name) is not None
    # PySlowFast saves {"model_state", "optimizer_state", "cfg" (YAML text), "epoch"}; DDP adds "module.".
    ckpt = {"epoch": 3, "cfg": "MVIT:\n  DEPTH: 4\n", "model_state": {"module." + k: v for k, v in sf.items()}}
    src = tmp_path / "checkpoint_epoch_00003.pyth"
    torch.save(ckpt, src)
    dst = tmp_path / "sf.safetensors"
    result = convert_checkpoint(src, dst, "pyslowfast", overrides=OVERRIDES)
    assert result.model == "mvitv2_s"
    model = create_model("mvitv2_s", checkpoint=str(dst), **result.overrides).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["logits"], atol=1e-4, rtol=0)


def test_pyslowfast_floored_rel_tables_are_resampled():
    # PySlowFast sizes tables from floored grids (MViTv2-L at 312: 19 instead of 20); resample on import.
    tv = convert_state_dict(load_file(str(TV_SMALL)), "torchvision", "mvitv2_s", OVERRIDES)
    sf = _to_pyslowfast(tv.state)
    sf["blocks.2.attn.rel_pos_h"] = torch.randn(9, sf["blocks.2.attn.rel_pos_h"].shape[1])
    result = convert_state_dict(sf, "pyslowfast", "mvitv2_s", OVERRIDES)
    assert result.state["blocks.2.attn.rel_pos_h"].shape == tv.state["blocks.2.attn.rel_pos_h"].shape
    assert result.notes == ["blocks.2.attn.rel_pos_h: resampled 9 -> 11 rows"]
    with pytest.raises(CheckpointError, match="blocks.2.attn.rel_pos_h"):
        convert_state_dict(sf, "pyslowfast", "mvitv2_s", OVERRIDES, interpolate_rel_pos_tables=False)


def test_pyslowfast_image_checkpoint_infers_image_model():
    with torch.device("meta"):
        ref = create_model("mvitv2_t_img")
    sf = _to_pyslowfast({k: torch.empty_like(v, device="meta") for k, v in ref.state_dict().items()})
    result = convert_state_dict(sf, "pyslowfast")
    assert result.model == "mvitv2_t_img" and result.overrides == {"num_classes": 1000}


@pytest.mark.parametrize("source,expected", [("torchvision", "conv_proj.weight"),
                                             ("pyslowfast", "patch_embed.proj.weight")])
def test_cli_convert_file_without_known_keys_is_one_line(tmp_path, capsys, source, expected):
    # used to crash with "max() arg is an empty sequence"
    from safetensors.torch import save_file

    src = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2), "decoder.bias": torch.zeros(3)}, str(src))
    assert cli_main(["convert", str(src), str(tmp_path / "out.safetensors"), "--from", source]) == 1
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "max()" not in err
    assert str(src) in err and f"no {source} model key" in err and expected in err
    assert not (tmp_path / "out.safetensors").exists()


def test_checkpoint_without_blocks_names_what_is_missing(tmp_path):
    with pytest.raises(CheckpointError, match=r"x\.pth: cannot tell which model.*no blocks\.N"):
        convert_state_dict({"norm.weight": torch.zeros(4)}, "pyslowfast", origin="x.pth")


# -- mae_st ---------------------------------------------------------------------------------------------------
MAE_TINY = dict(embed_dim=32, depth=2, num_heads=4, patch_size=8, tubelet_size=2, num_frames=4, img_size=32)


def _mae_st_reference(model, fine_tuned: bool) -> dict[str, torch.Tensor]:
    """``model``'s weights in mae_st's layout, written independently of the converter: separate q/k/v,
    separable tables as pos_embed_spatial/temporal, a class position split off the CLS token."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    ref: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if ".attn.qkv." in k:
            for name, part in zip("qkv", v.chunk(3, dim=0)):
                ref[k.replace(".qkv.", f".{name}.")] = part.clone()
        elif k == "pos_embed.spatial":
            ref["pos_embed_spatial"] = v
        elif k == "pos_embed.temporal":
            ref["pos_embed_temporal"] = v
        elif k.startswith("head.fc."):
            ref[k.replace("head.fc.", "head.")] = v
        elif k.startswith("fc_norm."):
            ref[k.replace("fc_norm.", "norm.")] = v
        elif k == "cls_token":
            cls_pos = torch.randn_like(v)
            ref["pos_embed_class"] = cls_pos
            ref["cls_token"] = v - cls_pos
        else:
            ref[k] = v
    if not fine_tuned:  # a pre-training checkpoint also holds the decoder
        ref["mask_token"] = torch.zeros(1, 1, 16)
        ref["decoder_embed.weight"] = torch.zeros(16, 32)
    return ref


@pytest.mark.parametrize("fine_tuned", [True, False])
def test_mae_st_checkpoint_gives_the_same_outputs(tmp_path, fine_tuned):
    from tubelet.models.vit import VisionTransformer, ViTConfig

    torch.manual_seed(0)
    cfg = ViTConfig(**MAE_TINY, num_classes=5 if fine_tuned else 0, fc_norm=fine_tuned, global_pool="avg")
    model = VisionTransformer(cfg).eval()
    for p in model.parameters():  # non-trivial norms and biases
        p.data.add_(0.1 * torch.randn_like(p))
    assert not any(".qkv." in k for k in _mae_st_reference(model, fine_tuned))
    src = tmp_path / "mae_st.pth"
    torch.save({"model": _mae_st_reference(model, fine_tuned)}, src)
    dst = tmp_path / "vit.safetensors"
    over = {k: MAE_TINY[k] for k in ("embed_dim", "depth", "num_heads", "num_frames", "img_size")}
    result = convert_checkpoint(src, dst, "mae_st", model="vit_tiny", overrides=over)
    assert result.overrides["fc_norm"] is fine_tuned and result.overrides["patch_size"] == 8
    converted = create_model("vit_tiny", checkpoint=str(dst), **result.overrides).eval()  # strict load
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(converted.forward_features(x), model.forward_features(x), atol=1e-5, rtol=1e-5)
    assert fine_tuned or any("decoder" in n for n in result.notes)


def test_mae_st_position_tables_are_resampled_to_the_target_grid(tmp_path):
    from tubelet.models.layers.pos_embed import SeparablePosEmbed
    from tubelet.models.vit import VisionTransformer, ViTConfig

    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(**MAE_TINY, num_classes=3, fc_norm=True)).eval()  # grid 2x4x4
    ref = _mae_st_reference(model, fine_tuned=True)
    over = {k: MAE_TINY[k] for k in ("embed_dim", "depth", "num_heads")}
    result = convert_state_dict(ref, "mae_st", "vit_tiny", {**over, "num_frames": 8, "img_size": 48})  # 4x6x6
    assert result.state["pos_embed.spatial"].shape == (1, 36, 32)
    assert result.state["pos_embed.temporal"].shape == (1, 4, 32)
    pos_t, pos_s = model.pos_embed.tables((4, 6, 6))  # the model's own run-time interpolation
    torch.testing.assert_close(result.state["pos_embed.spatial"][0], pos_s)
    torch.testing.assert_close(result.state["pos_embed.temporal"][0], pos_t)
    assert any("resampled" in n for n in result.notes) and isinstance(model.pos_embed, SeparablePosEmbed)


def test_mae_st_incomplete_qkv_is_a_checkpoint_error():
    state = {"patch_embed.proj.weight": torch.zeros(32, 3, 2, 8, 8), "blocks.0.attn.q.weight": torch.zeros(32, 32)}
    with pytest.raises(CheckpointError, match=r"f\.pth: not a mae_st checkpoint: q/k/v.*blocks\.0\.attn\.k\.weight"):
        convert_state_dict(state, "mae_st", origin="f.pth")
