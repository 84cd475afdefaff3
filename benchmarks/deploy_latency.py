"""Deployment latency on CPU: one clip (batch 1) per model in eager PyTorch, the torch.export program,
ONNX Runtime, AOTInductor (fp32 and bf16), and int8 (torchao on the eager model and, for the transformers,
in AOTInductor; ONNX Runtime's dynamic quantizer on the ONNX model), at 1 and 2 intra-op threads, with each
runtime's speed-up over eager fp32 measured in the same run, beside this machine's bf16/fp32 matmul ratio
(bf16 can only pay where that ratio is above 1). AOTInductor rows need a C++ compiler; without one they
are left out and the script says so.

Targets checked at the end (the issue's): the fastest runtime at least 1.5x eager for X3D-S and
MViTv2-S, and X3D-XS at or above 30 clips/s of 4x160x160 on 2 threads (PyTorchVideo's real-time claim).
Weights are random (speed does not depend on them); each export is checked against eager by the tests
(tests/test_export*.py), not here. Times are medians over ``--steps`` rounds after one warm-up, every round
running each runtime once in a rotated order: only meaningful on a quiet machine.

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
RUNTIMES = ("eager", "torch-export", "onnxruntime", "aoti", "bf16 aoti", "int8 torchao", "int8 onnxruntime",
            "int8 aoti")
INT8_AOTI = ("vit_tiny", "mvitv2_s")  # models whose linear layers carry the work; X3D has one (its head)
# runtime -> (format, file, int8, dtype) of the artifact it runs
ARTIFACTS = {
    "torch-export": ("torch-export", "m.pt2", False, "float32"),
    "onnxruntime": ("onnx", "m.onnx", False, "float32"),
    "int8 onnxruntime": ("onnx", "m_int8.onnx", True, "float32"),
    "aoti": ("aoti", "m.aoti.pt2", False, "float32"),
    "bf16 aoti": ("aoti", "m_bf16.aoti.pt2", False, "bfloat16"),
    "int8 aoti": ("aoti", "m_int8.aoti.pt2", True, "float32"),
}


def _interleaved_medians(fns: dict, steps: int) -> dict:
    """Median seconds of each callable over ``steps`` rounds after one warm-up call each (allocator, oneDNN
    primitives, ONNX Runtime's first run); every round runs each once, the order rotated round by round, so
    a slow spell of the machine falls on all of them alike rather than on whichever ran then."""
    names = list(fns)
    for name in names:
        fns[name]()
    times: dict = {name: [] for name in names}
    for r in range(steps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure(name: str, frames: int, crop: int, threads: list[int], steps: int, overrides: dict,
            compiler: bool) -> list[dict]:
    from tubelet.export import RUNTIME_OF_FORMAT, export_model, load_runtime, quantize_int8
    from tubelet.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_frames=frames, img_size=crop, **overrides).eval()
    example = (torch.randn(2, 3, frames, crop, crop),)  # batch 2: the batch stays dynamic
    clip = torch.randn(1, 3, frames, crop, crop)
    tmp = Path(tempfile.mkdtemp(prefix="deploy_latency_"))
    made = [r for r, (fmt, _, _, _) in ARTIFACTS.items() if compiler or fmt != "aoti"]
    made = [r for r in made if r != "int8 aoti" or name in INT8_AOTI]
    sizes, compile_s = {}, {}
    for runtime in made:
        fmt, file, int8, dtype = ARTIFACTS[runtime]
        report = export_model(model, tmp / file, fmt, example, quantize=int8, dtype=dtype, check=False)
        sizes[runtime], compile_s[runtime] = report.size_bytes, report.seconds
    int8 = quantize_int8(copy.deepcopy(model))
    runtimes = [r for r in RUNTIMES if r in made or r in ("eager", "int8 torchao")]
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        runners = {"eager": lambda: model(clip), "int8 torchao": lambda: int8(clip)}
        for runtime in made:
            fmt, file, _, _ = ARTIFACTS[runtime]
            runner = load_runtime(tmp / file, RUNTIME_OF_FORMAT[fmt], threads=t)
            runners[runtime] = lambda f=runner: f(clip)
        with torch.inference_mode():
            times = _interleaved_medians({r: runners[r] for r in runtimes}, steps)
        for runtime in runtimes:
            rows.append({"model": name, "input": f"{frames}x{crop}^2", "threads": t, "runtime": runtime,
                         "ms": 1e3 * times[runtime], "x_eager": times["eager"] / times[runtime],
                         "clips_s": 1.0 / times[runtime], "size_mb": sizes.get(runtime, float("nan")) / 1e6,
                         "export_s": compile_s.get(runtime, float("nan"))})
        print(f"[deploy_latency] {name} {t} threads: " + ", ".join(f"{r} {1e3 * times[r]:.1f} ms" for r in runtimes),
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
    from tubelet.engine.device import bf16_matmul_speedup
    from tubelet.errors import ConfigError
    from tubelet.export import require_compiler

    try:
        require_compiler()
        compiler = True
    except ConfigError as exc:
        print(f"[deploy_latency] no AOTInductor rows: {exc}")
        compiler = False
    torch.set_num_threads(max(threads))
    ratio_before = bf16_matmul_speedup()
    rows = []
    if args.quick:
        rows += measure("vit_tiny", 4, 32, threads, 1, {"depth": 2}, compiler)
    else:
        for name in names:
            rows += measure(name, *MODELS[name], threads, args.steps, {}, compiler)
    torch.set_num_threads(max(threads))
    ratio_after = bf16_matmul_speedup()
    print(f"\nbatch 1, torch {torch.__version__}, median of {args.steps} after one warm-up; x eager = eager fp32 time "
          "over the runtime's, same model and threads, this run; size = the artifact on disk; export = export "
          "(and AOTInductor build) seconds")
    print(f"bf16/fp32 matmul speed ratio of this machine (512^2, {max(threads)} threads): {ratio_before:.2f}x before, "
          f"{ratio_after:.2f}x after the rows")
    print("| model | input | threads | runtime | ms / clip | clips/s | x eager | size (MB) | export (s) |")
    print("|---|---|--:|---|--:|--:|--:|--:|--:|")
    for r in rows:
        size = "" if r["size_mb"] != r["size_mb"] else f"{r['size_mb']:.1f}"
        comp = "" if r["export_s"] != r["export_s"] or r["threads"] != threads[0] else f"{r['export_s']:.0f}"
        print(f"| {r['model']} | {r['input']} | {r['threads']} | {r['runtime']} | {r['ms']:.1f} | {r['clips_s']:.2f} "
              f"| {r['x_eager']:.2f} | {size} | {comp} |")
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
