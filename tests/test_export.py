"""``tubelet.export``: exported programs equal eager (fp32, ONNX Runtime and torch.export), a dynamic batch
and frame count, int8 within its tolerance, castling exported switched, and exports that cannot be done
naming the op or state that blocks them."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import error_lines

from tubelet.errors import ConfigError, TubeletError
from tubelet.export import example_inputs, export_model, load_runtime
from tubelet.models import create_model

pytest.importorskip("onnxruntime")

VIT = dict(embed_dim=32, depth=2, num_heads=2, img_size=32, num_frames=4, num_classes=10)
FP32 = 1e-5  # of the output's magnitude


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_model("vit_tiny", **VIT).eval()


X3D = dict(base_depths=[1, 1, 1, 1], head_dim=16, stem_base=4, img_size=32, num_classes=10)


@pytest.mark.parametrize("fmt, runtime", [("torch-export", "torch-export"), ("onnx", "onnxruntime")])
def test_dynamic_batch_and_frames_equal_eager(tmp_path, fmt, runtime):
    torch.manual_seed(0)
    x3d = create_model("x3d_xs", **X3D).eval()
    path = tmp_path / f"x3d.{'pt2' if fmt == 'torch-export' else 'onnx'}"
    report = export_model(x3d, path, fmt, example_inputs(x3d, batch=2), threads=1)
    assert report.relative_diff < FP32
    meta = json.loads((tmp_path / f"{path.name}.json").read_text())
    assert meta["model"] == "x3d_xs" and meta["inputs"][0]["shape"] == [2, 3, 4, 32, 32]
    assert meta["inputs"][0]["dynamic"] == {"0": "batch", "2": "frames (multiple of 1)"}
    run = load_runtime(path, runtime, threads=1)
    for batch, frames in ((1, 4), (3, 4), (2, 8), (1, 3)):  # batch 1 and other frame counts than exported
        x = torch.randn(batch, 3, frames, 32, 32)
        with torch.no_grad():
            ref = x3d(x)
        got = run(x)
        assert got.shape == (batch, 10) and _rel(got, ref) < FP32, (batch, frames)


@pytest.mark.parametrize("fmt, runtime", [("torch-export", "torch-export"), ("onnx", "onnxruntime")])
def test_vit_dynamic_batch_static_frames(vit, tmp_path, fmt, runtime):
    path = tmp_path / f"vit.{'pt2' if fmt == 'torch-export' else 'onnx'}"
    report = export_model(vit, path, fmt, example_inputs(vit, batch=2), threads=1)
    assert report.relative_diff < FP32 and "Python branch" in report.frames.reason
    run = load_runtime(path, runtime, threads=1)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 4, 32, 32)
        with torch.no_grad():
            assert _rel(run(x), vit(x)) < FP32
    with pytest.raises(ConfigError, match=r"input 0 has shape \(1, 3, 8, 32, 32\) but the program was exported for "
                                          r"\(B, 3, 4, 32, 32\) \(B <= 1024\)"):
        run(torch.randn(1, 3, 8, 32, 32))


def test_batch_one_example_is_refused(vit, tmp_path):
    with pytest.raises(ConfigError, match="example batch of 2 or more: from batch 1 the batch dimension is fixed"):
        export_model(vit, tmp_path / "v.pt2", "torch-export", example_inputs(vit, batch=1))


def test_static_frames_on_request_and_mvit_static(tmp_path):
    torch.manual_seed(0)
    mvit = create_model("mvitv2_s", embed_dim=8, depth=2, num_heads=1, transitions=(1,), img_size=32, num_frames=4)
    report = export_model(mvit, tmp_path / "m.onnx", "onnx", threads=1)
    assert report.relative_diff < FP32 and not report.frames.dynamic
    assert "relative-position tables" in report.frames.reason
    run = load_runtime(tmp_path / "m.onnx", "onnxruntime", threads=1)
    x = torch.randn(3, 3, 4, 32, 32)
    with torch.no_grad():
        assert _rel(run(x), mvit(x)) < FP32  # batch still dynamic
    with pytest.raises(ConfigError, match=r"exported for \(B, 3, 4, 32, 32\)"):
        run(torch.randn(1, 3, 8, 32, 32))
    with pytest.raises(ConfigError, match="mvitv2_s: the frame count cannot be dynamic: relative-position"):
        export_model(mvit, tmp_path / "m2.pt2", "torch-export", dynamic_frames=True)


def test_castling_exports_switched(tmp_path):
    from tubelet.models.layers.angular_attention import castling_layers, set_branch_weight

    torch.manual_seed(0)
    model = create_model("vit_tiny", attention="castling", **VIT).eval()
    with pytest.raises(TubeletError, match="auxiliary softmax branch still has weight 1"):
        export_model(model, tmp_path / "c.pt2", "torch-export")
    set_branch_weight(model, 0.0)
    x = example_inputs(model, batch=2)
    with torch.no_grad():
        before = model(x[0])
    report = export_model(model, tmp_path / "c.onnx", "onnx", x, threads=1)
    assert not any(m.branch for m in castling_layers(model))  # the branch is gone
    meta = json.loads((tmp_path / "c.onnx.json").read_text())
    assert meta["config"]["castling_branch"] is False and meta["config"]["attention"] == "castling"
    got = load_runtime(tmp_path / "c.onnx", "onnxruntime", threads=1)(x[0])
    assert report.relative_diff < FP32 and _rel(got, before) < FP32


def test_memory_model_is_refused_with_why(tmp_path):
    model = create_model("memvit_16", embed_dim=8, depth=2, num_heads=1, transitions=(1,), img_size=32, num_frames=4)
    with pytest.raises(TubeletError, match=r"memvit_16: cannot export a memory model: its memory "
                                           r"\(MemoryPoolingAttention._cache"):
        export_model(model, tmp_path / "m.onnx", "onnx")


class _Pooled(nn.Module):
    """A network with a 3-D adaptive pooling that is not global: an op the ONNX exporter has no function for."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 1)

    def forward(self, x):
        return nn.functional.adaptive_avg_pool3d(self.conv(x), (2, 1, 1)).flatten(1)


def test_blocked_op_is_named(tmp_path):
    x = (torch.randn(2, 3, 4, 8, 8),)
    with pytest.raises(TubeletError, match=r"_Pooled: ONNX export failed: No ONNX function found for "
                                           r"<OpOverload\(op='aten._adaptive_avg_pool3d'"):
        export_model(_Pooled(), tmp_path / "p.onnx", "onnx", x)
    assert export_model(_Pooled(), tmp_path / "p.pt2", "torch-export", x).relative_diff == 0.0


def test_int8_within_tolerance_and_smaller(tmp_path):
    pytest.importorskip("torchao")
    torch.manual_seed(0)
    kw = dict(VIT, embed_dim=128, num_heads=4)
    x = example_inputs(create_model("vit_tiny", **kw), batch=2)
    sizes = {}
    for fmt, suffix in (("torch-export", "pt2"), ("onnx", "onnx")):
        for int8 in (False, True):
            torch.manual_seed(0)
            model = create_model("vit_tiny", **kw).eval()
            r = export_model(model, tmp_path / f"v{int8}.{suffix}", fmt, x, quantize=int8, threads=1)
            sizes[fmt, int8] = r.size_bytes
            # int8: dynamic per-token activations and per-channel weights over two blocks
            assert r.relative_diff < (0.05 if int8 else FP32), (fmt, int8, r.relative_diff)
            assert r.int8 == int8
    # the linear layers hold most weights (torchao's file also keeps the fp32 embeddings and its scales)
    assert sizes["torch-export", True] < 0.8 * sizes["torch-export", False], sizes
    assert sizes["onnx", True] < 0.6 * sizes["onnx", False], sizes


def test_int8_refuses_a_model_without_linear_layers(tmp_path):
    pytest.importorskip("torchao")
    with pytest.raises(ConfigError, match="has no linear layer to quantise"):
        export_model(_Pooled(), tmp_path / "p.pt2", "torch-export", (torch.randn(2, 3, 4, 8, 8),), quantize=True)


def test_executorch_runs_2d_models_and_names_the_3d_convolution(tmp_path):
    from tubelet.export import executorch_available

    if executorch_available() is not None:
        with pytest.raises(ConfigError, match="--format executorch: ExecuTorch is not usable here"):
            export_model(create_model("resnet18_image", depths=[1, 1, 1, 1], num_classes=10), tmp_path / "r.pte",
                         "executorch", (torch.randn(2, 3, 64, 64),))
        return
    torch.manual_seed(0)
    model = create_model("resnet18_image", depths=[1, 1, 1, 1], num_classes=10).eval()
    report = export_model(model, tmp_path / "r.pte", "executorch", (torch.randn(2, 3, 64, 64),))
    assert report.relative_diff < FP32
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert _rel(load_runtime(tmp_path / "r.pte", "executorch")(x), model(x)) < FP32
    x3d = create_model("x3d_xs", **X3D)
    with pytest.raises(TubeletError, match=r"x3d_xs: cannot run in ExecuTorch: op aten.conv3d on a 5-D input"):
        export_model(x3d, tmp_path / "x.pte", "executorch")


def test_cli_errors_are_one_line(tmp_path, capsys):
    from tubelet.cli.main import main

    cases = [
        (["--model", "vit_tiny", "--format", "onnx"], "give --checkpoint W (or --random-init"),
        (["--random-init", "--format", "onnx"], "--random-init needs --model NAME"),
        (["--checkpoint", str(tmp_path / "none.safetensors"), "--format", "onnx"], "none.safetensors: no such"),
        (["--random-init", "--model", "vit_tiny", "--set", "embed_dimm=8", "--format", "onnx"],
         "model 'vit_tiny' has no option 'embed_dimm'; did you mean 'embed_dim'?"),
        (["--random-init", "--model", "vit_tiny", "--format", "onnx", "--batch", "1"],
         "export from an example batch of 2 or more"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(["export", *args]) == 1, args
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and message in lines[0], (args, lines)


def test_cli_export_from_a_run_folder(tiny_run, tmp_path, capsys):
    from tubelet.cli.main import main

    capsys.readouterr()
    out = tmp_path / "t.pt2"
    assert main(["export", "--checkpoint", str(tiny_run), "--format", "torch-export", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "vit_tiny, torch-export" in text
    assert "dynamic: batch\n" in text and "max |exported - eager| = 0 " in text
    eager = load_runtime(tiny_run / "backbone.safetensors", "eager")
    x = torch.randn(2, 3, 4, 16, 16)
    assert torch.equal(load_runtime(out, "torch-export")(x), eager(x))
