"""Training-step throughput of a space-time ViT on CPU, as a fraction of the machine's matmul rate.

Measured side by side in one run:
  1. the fp32 (and bf16) matmul ceiling: best GFLOP/s of square matmuls into a preallocated output;
  2. the FLOPs of one forward+backward of the model, counted with ``tubelet.flops.count_flops``
     (attention included: CPU flash attention has registered formulas);
  3. the time of a forward, a forward+backward, a full AdamW training step in fp32 (with glibc's
     default allocator settings and with allocator tuning), and a bf16-autocast training step.
Achieved GFLOP/s = counted FLOPs / time; MFU = achieved / ceiling of the same dtype.
Targets: fp32 training step MFU >= 85%; bf16 step >= 1.5x faster than the fp32 step.

    python benchmarks/vit_step.py            # ViT-B, 16x224x224, batch 1, 2 threads (minutes)
    python benchmarks/vit_step.py --quick    # tiny model and clip (seconds), checks the script runs

Run it alone on a quiet machine: two threads collapse when anything else uses the CPU.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from tubelet.flops import count_flops
from tubelet.models import create_model


def tune_malloc() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the kernel.

    By default glibc serves large blocks with mmap and trims the heap top when >2x the mmap threshold
    is free, so every step's activations and gradients are faulted in afresh (slow: a fresh page
    costs far more than the write into it). A 32 MiB mmap threshold (glibc's maximum) and a 2 GiB
    trim threshold keep the blocks of one step for the next. Returns False where this is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def matmul_ceiling(sizes: list[int], dtype: torch.dtype, reps: int) -> float:
    """Best GFLOP/s over square matmuls ``c = a @ b`` (2 n^3 FLOPs) into a preallocated ``c``."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        c = torch.empty(n, n, dtype=dtype)
        torch.mm(a, b, out=c)  # warm-up
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def timed(fn: Callable[[], None], warmup: int, steps: int) -> tuple[float, float]:
    """Median seconds per call and minor page faults per call."""
    for _ in range(warmup):
        fn()
    times = []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / steps
    return statistics.median(times), faults


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny model and clip: checks the script in seconds")
    p.add_argument("--model", default="vit_base")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--classes", type=int, default=400)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per row (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args(argv)

    overrides: dict = {}
    mm_sizes, mm_reps = [2048, 4096], 3
    if args.quick:
        args.model, args.frames, args.size, args.steps, args.warmup = "vit_tiny", 4, 64, 2, 1
        overrides = {"depth": 2}
        mm_sizes, mm_reps = [256, 512], 3
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    fp32_ceiling = matmul_ceiling(mm_sizes, torch.float32, mm_reps)
    bf16_ceiling = matmul_ceiling(mm_sizes, torch.bfloat16, mm_reps)

    model = create_model(
        args.model, num_frames=args.frames, img_size=args.size, num_classes=args.classes, **overrides
    ).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size)
    y = torch.randint(0, args.classes, (args.batch,))

    # FLOPs of the exact kernels that are timed below (SDPA counted through the CPU formulas).
    fwd_flops = count_flops(model, x).flops
    step_flops = count_flops(model, x, backward=True).flops

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def fwd_bwd() -> None:
        F.cross_entropy(model(x), y).backward()
        model.zero_grad(set_to_none=True)

    def step() -> None:
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def step_bf16() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rows = []  # (label, seconds, faults, flops, ceiling)
    rows.append(("forward, no grad (fp32)", *timed(forward, args.warmup, args.steps), fwd_flops, fp32_ceiling))
    rows.append(("train step fp32, default malloc", *timed(step, args.warmup, args.steps), step_flops, fp32_ceiling))
    tuned = tune_malloc()
    tag = "tuned malloc" if tuned else "malloc not tunable"
    rows.append((f"forward+backward fp32, {tag}", *timed(fwd_bwd, args.warmup, args.steps), step_flops, fp32_ceiling))
    fp32_step = timed(step, args.warmup, args.steps)
    rows.append((f"train step fp32, {tag}", *fp32_step, step_flops, fp32_ceiling))
    bf16_step = timed(step_bf16, args.warmup, args.steps)
    rows.append((f"train step bf16 autocast, {tag}", *bf16_step, step_flops, bf16_ceiling))

    n_params = sum(q.numel() for q in model.parameters())
    print(
        f"\n{args.model}{' (depth 2)' if args.quick else ''}, {n_params / 1e6:.1f}M params, "
        f"{args.batch}x3x{args.frames}x{args.size}x{args.size}, {args.threads} threads, AdamW(fused), SDPA"
    )
    print(
        f"matmul ceiling: fp32 {fp32_ceiling:.1f} GFLOP/s, bf16 {bf16_ceiling:.1f} GFLOP/s "
        f"(n = {', '.join(map(str, mm_sizes))})"
    )
    print(
        f"counted per step: forward {fwd_flops / 1e9:.1f} GFLOP, forward+backward {step_flops / 1e9:.1f} GFLOP "
        f"(= {step_flops / 2e9:.1f} GMACs; FLOP = torch's count, 2 per multiply-add)\n"
    )
    print("| measurement | s / step | GFLOP/s | MFU (vs same-dtype ceiling) | minor page faults / step |")
    print("|---|---|---|---|---|")
    for label, sec, faults, flops, ceiling in rows:
        rate = flops / sec / 1e9
        print(f"| {label} | {sec:.3f} | {rate:.1f} | {100 * rate / ceiling:.1f}% | {faults:.0f} |")
    mfu = step_flops / fp32_step[0] / 1e9 / fp32_ceiling
    speedup = fp32_step[0] / bf16_step[0]
    default_step = rows[1][1]
    print()
    print("| ratio | value | target |")
    print("|---|---|---|")
    print(f"| fp32 step MFU | {100 * mfu:.1f}% | >= 85% {'met' if mfu >= 0.85 else 'MISSED'} |")
    print(f"| bf16 step speed-up over fp32 step | {speedup:.2f}x | >= 1.5x {'met' if speedup >= 1.5 else 'MISSED'} |")
    print(f"| malloc tuning speed-up (fp32 step) | {default_step / fp32_step[0]:.2f}x | - |")
    if args.quick:
        print("\n(--quick: tiny sizes check that the script runs; the numbers mean nothing)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
