"""``tubelet export --format aoti`` (AOTInductor) and ``--dtype bfloat16``: the compiled package equals eager
at other batch sizes and frame counts than it was made from, bf16 programs keep an fp32 interface with bf16
weights inside and stay within their tolerance of fp32 eager, ``tubelet predict --runtime aoti`` classifies
real clips as eager does, and what cannot be done fails with one line."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import error_lines

from tubelet.errors import ConfigError
from tubelet.export import require_compiler, example_inputs, export_model, load_runtime
from tubelet.models import create_model

try:
    require_compiler()
    NO_COMPILER = ""
except ConfigError as exc:
    NO_COMPILER = str(exc)
needs_compiler = pytest.mark.skipif(bool(NO_COMPILER), reason=NO_COMPILER)

X3D = dict(base_depths=[1, 1, 1, 1], head_dim=16, stem_base=4, img_size=32, num_classes=10)
VIT = dict(embed_dim=32, depth=1, num_heads=2, img_size=32, num_frames=4, num_classes=10)
FP32 = 1e-5  # of the output's magnitude
BF16 = 3e-2  # bf16 keeps 8 bits of mantissa: about 0.4% per rounding, a few roundings deep here


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@needs_compiler
def test_aoti_dynamic_batch_and_frames_equal_eager(tmp_path):
    torch.manual_seed(0)
    x3d = create_model("x3d_xs", **X3D).eval()
    path = tmp_path / "x3d.aoti.pt2"
    report = export_model(x3d, path, "aoti", example_inputs(x3d, batch=2), threads=1)
    assert report.fmt == "aoti" and report.relative_diff < FP32
    meta = json.loads((tmp_path / "x3d.aoti.pt2.json").read_text())
    assert meta["inputs"][0]["dynamic"] == {"0": "batch", "2": "frames (multiple of 1)"} and meta["dtype"] == "float32"
    run = load_runtime(path, "aoti", threads=1)
    for batch, frames in ((1, 4), (3, 4), (2, 8), (1, 3)):
        x = torch.randn(batch, 3, frames, 32, 32)
        with torch.no_grad():
            ref = x3d(x)
        got = run(x)
        assert got.shape == (batch, 10) and got.dtype == torch.float32 and _rel(got, ref) < FP32, (batch, frames)
    # the package is not a torch.export program, and the names say which loader opens which
    with pytest.raises(ConfigError, match=r"--runtime torch-export runs \*\.pt2 files"):
        load_runtime(path, "torch-export")


def test_bf16_program_has_bf16_weights_and_an_fp32_interface(tmp_path):
    torch.manual_seed(0)
    vit = create_model("vit_tiny", **VIT).eval()
    x = example_inputs(vit, batch=2)
    path = tmp_path / "v_bf16.pt2"
    report = export_model(vit, path, "torch-export", x, threads=1, dtype="bfloat16")
    assert report.dtype == "bfloat16" and 1e-4 < report.relative_diff < BF16  # really rounded, and not far
    assert next(vit.parameters()).dtype == torch.float32  # the caller's model is left as it was
    program = torch.export.load(str(path))
    floats = {v.dtype for v in program.state_dict.values() if v.is_floating_point()}
    assert floats == {torch.bfloat16}
    got = load_runtime(path, "torch-export", threads=1)(x[0][:1])
    with torch.no_grad():
        bf16_eager = _cast_copy(vit)(x[0][:1].bfloat16()).float()
    assert got.dtype == torch.float32 and _rel(got, bf16_eager) < 1e-6  # the same bf16 computation as eager's


def _cast_copy(model):
    import copy

    return copy.deepcopy(model).to(torch.bfloat16)


@needs_compiler
def test_bf16_aoti_within_tolerance_of_fp32_eager(tmp_path):
    torch.manual_seed(0)
    vit = create_model("vit_tiny", **VIT).eval()
    path = tmp_path / "v.aoti.pt2"
    report = export_model(vit, path, "aoti", example_inputs(vit, batch=2), threads=1, dtype="bfloat16")
    assert 1e-4 < report.relative_diff < BF16
    x = torch.randn(3, 3, 4, 32, 32)
    with torch.no_grad():
        ref = vit(x)
    got = load_runtime(path, "aoti", threads=1)(x)
    assert got.dtype == torch.float32 and _rel(got, ref) < BF16


def test_refusals_are_one_line(tmp_path, monkeypatch, capsys):
    from tubelet.cli.main import main

    vit = create_model("vit_tiny", **VIT).eval()
    with pytest.raises(ConfigError, match="--dtype bfloat16: onnx has no CPU kernels for it here; export --format "
                                          "torch-export or aoti"):
        export_model(vit, tmp_path / "v.onnx", "onnx", dtype="bfloat16")
    with pytest.raises(ConfigError, match="--int8 and --dtype bfloat16: choose one"):
        export_model(vit, tmp_path / "v.pt2", "torch-export", quantize=True, dtype="bfloat16")
    with pytest.raises(ConfigError, match=r"v\.pt2: a aoti artifact is named \*\.aoti\.pt2"):
        export_model(vit, tmp_path / "v.pt2", "aoti")
    monkeypatch.setenv("CXX", "")
    monkeypatch.setattr("shutil.which", lambda name: None)
    capsys.readouterr()
    assert main(["export", "--random-init", "--model", "vit_tiny", "--format", "aoti", "-o",
                 str(tmp_path / "v.aoti.pt2")]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "--format aoti compiles C++: no compiler found (install g++ or clang++" in lines[0]


@needs_compiler
def test_predict_runtime_aoti_equals_eager_on_a_real_clip(tiny_run, videos_dir, tmp_path, capsys):
    from tubelet.cli.main import main

    out = tmp_path / "tiny.aoti.pt2"
    assert main(["export", "--checkpoint", str(tiny_run), "--format", "aoti", "-o", str(out), "--threads", "1"]) == 0
    clip = str(videos_dir / "v_SoccerJuggling_g23_c01.avi")
    capsys.readouterr()
    assert main(["predict", clip, "--run", str(tiny_run), "--runtime", "aoti", "--exported", str(out),
                 "--threads", "1", "--per-clip", "--json"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert main(["predict", clip, "--run", str(tiny_run), "--per-clip", "--json"]) == 0
    eager = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(got) == len(eager) > 1
    for a, b in zip(got, eager):
        assert (a["clip"], a["start"]) == (b["clip"], b["start"])
        assert [t["label"] for t in a["topk"]] == [t["label"] for t in b["topk"]]
        assert max(abs(x["score"] - y["score"]) for x, y in zip(a["topk"], b["topk"])) < 1e-5
