"""int8 accuracy on the synthetic test set: a small space-time ViT trained on the procedural motion set,
then tested (``tubelet test``'s multi-view pipeline) in eager fp32, ONNX Runtime fp32, torchao int8 and
ONNX Runtime int8, with each artifact's size on disk. One run; a few minutes on two cores.

    PYTHONPATH=src python benchmarks/deploy_int8_accuracy.py
    PYTHONPATH=src python benchmarks/deploy_int8_accuracy.py --steps 20      # smoke run
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
import yaml

RECIPE = {
    "model": {"name": "vit_tiny", "num_frames": 8, "img_size": 32, "num_classes": 4,
              "overrides": {"patch_size": 8, "depth": 4, "embed_dim": 128, "num_heads": 4}},
    "data": {"kind": "synthetic", "num_frames": 8, "crop_size": 32, "batch_size": 16, "test_clips": 1,
             "test_crops": 1, "synthetic": {"num_videos": 512, "num_classes": 4, "size": 32, "frames": 16}},
    "method": {"name": "supervised"},
    "optim": {"lr": 1.0e-3, "warmup_steps": 20},
    "trainer": {"max_steps": 300, "num_threads": 2, "enable_progress_bar": False, "val_check_interval": 1000},
}


def main() -> None:
    from tubelet.cli.main import main as cli
    from tubelet.config import load_recipe
    from tubelet.engine.evaluate import evaluate, load_method_weights
    from tubelet.engine.predict import RuntimeClassifier
    from tubelet.export import example_inputs, export_model, load_runtime, quantize_int8
    from tubelet.methods import build_method

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=RECIPE["trainer"]["max_steps"], help="training steps")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="deploy_int8_"))
    recipe = {**RECIPE, "run_dir": str(tmp / "run"), "trainer": {**RECIPE["trainer"], "max_steps": args.steps}}
    (tmp / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert cli(["fit", "--config", str(tmp / "r.yaml")]) == 0
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
    rows = []
    for name, (scorer, size) in scorers.items():
        with torch.inference_mode():
            out = evaluate(rec, None, method=scorer, report_dir=tmp / name.replace(" ", "_"))
        rows.append((name, out["top1"], [p["pred"] for p in out["predictions"]], size))
    base = rows[0]
    print(f"\nvit_tiny (depth 4, 128 wide, 8x32x32) trained {args.steps} steps on the synthetic set; test: "
          f"{len(base[2])} videos, 1 view")
    print("| runtime | top-1 | change | agreement with eager fp32 | size on disk (MB) |")
    print("|---|--:|--:|--:|--:|")
    for name, top1, preds, size in rows:
        agree = sum(a == b for a, b in zip(preds, base[2])) / len(preds)
        print(f"| {name} | {top1:.4f} | {top1 - base[1]:+.4f} | {agree:.4f} | {size} |")


if __name__ == "__main__":
    main()
