"""Deployment latency on CPU: one clip (batch 1) per model in eager PyTorch, the torch.export program,
ONNX Runtime, and int8 (torchao on the eager model; ONNX Runtime's dynamic quantizer on the ONNX model),
at 1 and 2 intra-op threads, with each runtime's speed-up over eager measured in the same run.

Targets checked at the end (the issue's): the fastest runtime at least 1.5x eager for X3D-S and
MViTv2-S, and X3D-XS at or above 30 clips/s of 4x160x160 on 2 threads (PyTorchVideo's real-time claim).
Weights are random (speed does not depend on them); each export is checked against eager by the tests
(tests/test_export*.py), not here. Times are medians over ``--steps`` runs after one warm-up: only
meaningful on a quiet machine.

    PYTHONPATH=src python benchmarks/deploy_latency.py                          # the default models
    PYTHONPATH=src python benchmarks/deploy_latency.py --models x3d_xs --steps 5
    PYTHONPATH=src python benchmarks/deploy_latency.py --quick                  # vit_tiny at 4x32x32: seconds
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

# name -> (frames, crop): each model's own test input
MODELS: dict[str, tuple[int, int]] = {
    "vit_tiny": (16, 224),
    "x3d_xs": (4, 160),
    "x3d_s": (13, 160),
    "efficient_x3d_xs": (4, 160),
    "mvitv2_s": (16, 224),
}
RUNTIMES = ("eager", "torch-export", "onnxruntime", "int8 torchao", "int8 onnxruntime")


def _median_time(fn, steps: int) -> float:
    fn()  # warm-up: allocator, oneDNN primitives, ORT's first run
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name: str, frames: int, crop: int, threads: list[int], steps: int, overrides: dict) -> list[dict]:
    from tubelet.export import export_model, load_runtime, quantize_int8
    from tubelet.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_frames=frames, img_size=crop, **overrides).eval()
    example = (torch.randn(2, 3, frames, crop, crop),)  # batch 2: the batch stays dynamic
    clip = torch.randn(1, 3, frames, crop, crop)
    tmp = Path(tempfile.mkdtemp(prefix="deploy_latency_"))
    export_model(model, tmp / "m.pt2", "torch-export", example, check=False)
    export_model(model, tmp / "m.onnx", "onnx", example, check=False)
    export_model(model, tmp / "m_int8.onnx", "onnx", example, quantize=True, check=False)
    int8 = quantize_int8(copy.deepcopy(model))
    sizes = {r: (tmp / f).stat().st_size for r, f in
             (("torch-export", "m.pt2"), ("onnxruntime", "m.onnx"), ("int8 onnxruntime", "m_int8.onnx"))}
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        runners = {
            "eager": lambda: model(clip),
            "torch-export": load_runtime(tmp / "m.pt2", "torch-export", threads=t),
            "onnxruntime": load_runtime(tmp / "m.onnx", "onnxruntime", threads=t),
            "int8 torchao": lambda: int8(clip),
            "int8 onnxruntime": load_runtime(tmp / "m_int8.onnx", "onnxruntime", threads=t),
        }
        times = {}
        for runtime in RUNTIMES:
            fn = runners[runtime]
            with torch.inference_mode():
                times[runtime] = _median_time((lambda f=fn: f(clip)) if runtime not in ("eager", "int8 torchao")
                                              else fn, steps)
        for runtime in RUNTIMES:
            rows.append({"model": name, "input": f"{frames}x{crop}^2", "threads": t, "runtime": runtime,
                         "ms": 1e3 * times[runtime], "x_eager": times["eager"] / times[runtime],
                         "clips_s": 1.0 / times[runtime], "size_mb": sizes.get(runtime, float("nan")) / 1e6})
        print(f"[deploy_latency] {name} {t} threads: " + ", ".join(f"{r} {1e3 * times[r]:.1f} ms" for r in RUNTIMES),
              flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of: {', '.join(MODELS)}")
    ap.add_argument("--threads", default="1,2", help="intra-op thread counts (default 1,2)")
    ap.add_argument("--steps", type=int, default=5, help="timed runs per measurement after one warm-up")
    ap.add_argument("--quick", action="store_true", help="smoke run: vit_tiny at 4x32x32, one step")
    args = ap.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; known: {', '.join(MODELS)}")
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    if args.quick:
        rows += measure("vit_tiny", 4, 32, threads, 1, {"depth": 2})
    else:
        for name in names:
            rows += measure(name, *MODELS[name], threads, args.steps, {})
    print(f"\nbatch 1, torch {torch.__version__}, median of {args.steps} after one warm-up; x eager = eager time over "
          "the runtime's, same model and threads, this run; size = the artifact on disk")
    print("| model | input | threads | runtime | ms / clip | clips/s | x eager | size (MB) |")
    print("|---|---|--:|---|--:|--:|--:|--:|")
    for r in rows:
        size = "" if r["size_mb"] != r["size_mb"] else f"{r['size_mb']:.1f}"
        print(f"| {r['model']} | {r['input']} | {r['threads']} | {r['runtime']} | {r['ms']:.1f} | {r['clips_s']:.2f} "
              f"| {r['x_eager']:.2f} | {size} |")
    print()
    for name in ("x3d_s", "mvitv2_s"):
        best = [r for r in rows if r["model"] == name and r["runtime"] != "eager"]
        if best:
            top = max(best, key=lambda r: r["x_eager"])
            print(f"target {name}: fastest runtime {top['runtime']} ({top['threads']} threads) {top['x_eager']:.2f}x "
                  f"eager (target 1.5x): {'met' if top['x_eager'] >= 1.5 else 'missed'}")
    xs = [r for r in rows if r["model"] == "x3d_xs" and r["threads"] == 2]
    if xs:
        top = max(xs, key=lambda r: r["clips_s"])
        print(f"target x3d_xs: {top['clips_s']:.1f} clips/s on 2 threads ({top['runtime']}; target 30): "
              f"{'met' if top['clips_s'] >= 30 else 'missed'}")


if __name__ == "__main__":
    main()
