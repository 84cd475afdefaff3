"""int8 and bf16 accuracy on the synthetic test set: the quickstart ViT trained on the procedural motion set,
then tested (``tubelet test``'s multi-view pipeline) in eager fp32, ONNX Runtime fp32, torchao int8, ONNX
Runtime int8, and AOTInductor fp32, bf16 and int8 (the last three skipped without a C++ compiler), with each
artifact's size on disk. One run; a few minutes on two cores.

    PYTHONPATH=src python benchmarks/deploy_int8_accuracy.py
    PYTHONPATH=src python benchmarks/deploy_int8_accuracy.py --steps 20      # smoke run
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch

# the quickstart recipe (docs/quickstart.md): a 4-block space-time ViT, 128 wide, on 8x32x32 motion clips
RECIPE = "quickstart"
STEPS = 600


def main() -> None:
    from tubelet.cli.main import main as cli
    from tubelet.config import load_recipe
    from tubelet.engine.evaluate import evaluate, load_method_weights
    from tubelet.engine.predict import RuntimeClassifier
    from tubelet.errors import ConfigError
    from tubelet.export import require_compiler, example_inputs, export_model, load_runtime, quantize_int8
    from tubelet.methods import build_method

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=STEPS, help=f"training steps (default {STEPS}, the recipe's)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="deploy_int8_"))
    assert cli(["fit", RECIPE, f"run_dir={tmp / 'run'}", f"trainer.max_steps={args.steps}",
                "trainer.num_threads=2", "trainer.enable_progress_bar=false"]) == 0
    rec = load_recipe(tmp / "run" / "config.yaml")
    method = build_method(rec)
    load_method_weights(method, tmp / "run" / "method.safetensors")
    method.eval()
    backbone = method.backbone
    x = example_inputs(backbone, batch=2)
    sizes = {}
    for name, int8 in (("onnx", False), ("onnx_int8", True)):
        r = export_model(copy.deepcopy(backbone), tmp / f"{name}.onnx", "onnx", x, quantize=int8, threads=2)
        sizes[name] = r.size_bytes
    r = export_model(copy.deepcopy(backbone), tmp / "fp32.pt2", "torch-export", x, threads=2)
    sizes["pt2"] = r.size_bytes
    r = export_model(copy.deepcopy(backbone), tmp / "int8.pt2", "torch-export", x, quantize=True, threads=2)
    sizes["pt2_int8"] = r.size_bytes
    q = copy.deepcopy(method)
    quantize_int8(q.backbone)
    scorers = {
        "eager fp32": (method, ""),
        # wrapped: evaluate's .to(device) cannot move torchao's tensor subclasses (and need not, on the CPU)
        "torchao int8 (eager)": (RuntimeClassifier(q.classify), f"{sizes['pt2_int8'] / 1e6:.2f} (.pt2; fp32 {sizes['pt2'] / 1e6:.2f})"),
        "onnxruntime fp32": (RuntimeClassifier(load_runtime(tmp / "onnx.onnx", "onnxruntime", threads=2)),
                             f"{sizes['onnx'] / 1e6:.2f}"),
        "onnxruntime int8": (RuntimeClassifier(load_runtime(tmp / "onnx_int8.onnx", "onnxruntime", threads=2)),
                             f"{sizes['onnx_int8'] / 1e6:.2f}"),
    }
    try:
        require_compiler()
        aoti = [("aoti fp32", "float32", False), ("aoti bf16", "bfloat16", False), ("aoti int8", "float32", True)]
    except ConfigError as exc:
        print(f"[deploy_int8_accuracy] no AOTInductor rows: {exc}")
        aoti = []
    for name, dtype, int8 in aoti:
        path = tmp / f"{name.replace(' ', '_')}.aoti.pt2"
        r = export_model(copy.deepcopy(backbone), path, "aoti", x, quantize=int8, dtype=dtype, threads=2)
        scorers[name] = (RuntimeClassifier(load_runtime(path, "aoti", threads=2)), f"{r.size_bytes / 1e6:.2f}")
    rows = []
    for name, (scorer, size) in scorers.items():
        with torch.inference_mode():
            out = evaluate(rec, None, method=scorer, report_dir=tmp / name.replace(" ", "_"))
        rows.append((name, out["top1"], [p["pred"] for p in out["predictions"]], size))
    base = rows[0]
    print(f"\nrecipe {RECIPE} (vit_tiny, depth 4, 128 wide, 8x32x32) trained {args.steps} steps on the synthetic "
          f"set; test: {len(base[2])} videos, {rec.data.test_clips} x {rec.data.test_crops} views")
    print("| runtime | top-1 | change | agreement with eager fp32 | size on disk (MB) |")
    print("|---|--:|--:|--:|--:|")
    for name, top1, preds, size in rows:
        agree = sum(a == b for a, b in zip(preds, base[2])) / len(preds)
        print(f"| {name} | {top1:.4f} | {top1 - base[1]:+.4f} | {agree:.4f} | {size} |")


if __name__ == "__main__":
    main()
