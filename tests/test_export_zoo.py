"""Every registered model exports (or names what blocks it): at a small width and input, the torch.export
program and the ONNX model in ONNX Runtime give eager's outputs within 1e-5 of their magnitude, from an
example batch of 2 with the batch dynamic. On the shared 2-core machine nearly every model's two exports
took over 20 s (the whole file: 20 minutes); the ones that took over 40 s are marked slow (both UTT
trackers, the three SlowFasts, X3D-M/L, MViTv2-B)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tubelet.errors import TubeletError
from tubelet.export import example_inputs, export_model, load_runtime
from tubelet.models import create_model, list_models
from tubelet.models.registry import get_model_config

pytest.importorskip("onnxruntime")

FP32 = 1e-5
SMALL = {
    "ViTConfig": dict(embed_dim=32, depth=1, num_heads=2, img_size=32, num_frames=4),
    "MViTConfig": dict(embed_dim=8, depth=2, num_heads=1, transitions=(1,), img_size=32, num_frames=4),
    "MeMViTConfig": dict(embed_dim=8, depth=2, num_heads=1, transitions=(1,), img_size=32, num_frames=4),
    "ResNet3dConfig": dict(width=4, depths=[1, 1, 1, 1], img_size=32, num_classes=10),
    "X3DConfig": dict(base_depths=[1, 1, 1, 1], head_dim=16, stem_base=4, img_size=32, num_classes=10),
    "SlowFastConfig": dict(width=8, depths=[1, 1, 1, 1], img_size=32, num_frames=8, num_classes=10),
    "ResNet2dConfig": dict(depths=[1, 1, 1, 1], num_classes=10),
    "TextConfig": dict(embed_dim=32, depth=1, num_heads=2, vocab_size=100, context_length=8),
    "UTTConfig": dict(dim=32, heads=2, ffn_dim=32, iterations=1, roi_size=3),
    "DeformableDETRConfig": dict(backbone="resnet18_image", dim=32, heads=2, levels=4, points=2,
                                 encoder_layers=1, decoder_layers=1, ffn_dim=32, num_queries=8),
}
SLOW = {"utt_r18", "utt_r50", "slowfast_r50_8x8", "slowfast_r50_4x16", "slowfast_r101_8x8", "x3d_l", "x3d_m",
        "mvitv2_b"}
REFUSED = {"memvit_16": "cannot export a memory model", "memvit_24": "cannot export a memory model"}


def small(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """``name`` at a small width and its smallest convenient input, batch 2."""
    cfg = get_model_config(name)
    kw = dict(SMALL[type(cfg).__name__])
    if type(cfg).__name__ == "ViTConfig" and cfg.num_frames == 1:  # image ViT: one frame, two patches a side
        kw.update(num_frames=1, img_size=2 * cfg.patch_size)
    if dataclasses.is_dataclass(cfg) and hasattr(cfg, "video") and not cfg.video:
        kw.pop("num_frames")
    torch.manual_seed(0)
    model = create_model(name, **kw).eval()
    size = 64 if type(cfg).__name__ in ("UTTConfig", "ResNet2dConfig", "DeformableDETRConfig") else None
    return model, example_inputs(model, batch=2, size=size)


def _params():
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in list_models()]


@pytest.mark.parametrize("name", _params())
def test_every_model_exports_equal_to_eager(name, tmp_path):
    model, inputs = small(name)
    if name in REFUSED:
        with pytest.raises(TubeletError, match=REFUSED[name]):
            export_model(model, tmp_path / "m.onnx", "onnx", inputs)
        return
    with torch.no_grad():
        ref = model(*inputs)
    from torch.utils._pytree import tree_leaves

    ref = [ref] if torch.is_tensor(ref) else tree_leaves(ref)  # UTT's list, the detector's dict
    for fmt, runtime, suffix in (("torch-export", "torch-export", "pt2"), ("onnx", "onnxruntime", "onnx")):
        report = export_model(model, tmp_path / f"m.{suffix}", fmt, inputs, threads=1)
        assert report.relative_diff < FP32, (fmt, report.relative_diff)
        # the batch is dynamic: one sample of the example batch runs alone
        one = tuple(x[:1] for x in inputs)
        got = load_runtime(tmp_path / f"m.{suffix}", runtime, threads=1).run_all(*one)
        assert len(got) == len(ref)
        for g, r in zip(got, ref):
            assert g.shape == r[:1].shape
            assert float((g - r[:1]).abs().max()) <= FP32 * float(r.abs().max()) + 1e-7, fmt
