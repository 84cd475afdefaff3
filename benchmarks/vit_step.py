"""Training-step throughput of a space-time ViT on CPU, as a fraction of the machine's matmul rate.

Measured side by side in one run:
  1. the fp32 (and bf16) matmul ceiling: best GFLOP/s of square matmuls into a preallocated output,
     measured before and again after the timed steps (the better of the two is kept);
  2. the FLOPs of one forward+backward of the model, counted with ``tubelet.flops.count_flops``
     (attention included: CPU flash attention has registered formulas);
  3. the time of a forward, a forward+backward, a full AdamW training step in fp32 (with glibc's
     default allocator settings and with allocator tuning), and a bf16-autocast training step;
  4. the kernel bound: every FLOP-counted kernel of the fp32 step (each linear's forward, input-grad
     and weight-grad GEMM, SDPA forward+backward, the patch-embedding GEMMs, the head) timed alone on
     the step's shapes; their summed time is the fastest step those kernels allow.
Achieved GFLOP/s = counted FLOPs / time; MFU = achieved / ceiling of the same dtype; kernel-bound
MFU = step FLOPs / bound time / fp32 ceiling: unless kernels run faster inside the step than alone,
no change outside them can take the step's MFU above it.
Targets: fp32 training step MFU >= 85%; bf16 step >= 1.5x faster than the fp32 step.

    python benchmarks/vit_step.py            # ViT-B, 16x224x224, batch 1, 2 threads (minutes)
    python benchmarks/vit_step.py --quick    # tiny model and clip (seconds), checks the script runs
    python benchmarks/vit_step.py --no-kernels   # without the kernel bound (4.)

Run it alone on a quiet machine: two threads collapse when anything else uses the CPU.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tubelet.flops import count_flops
from tubelet.models import create_model


def tune_malloc() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the kernel.

    By default glibc serves large blocks with mmap and trims the heap top when >2x the mmap threshold
    is free, so every step's activations and gradients are faulted in afresh (slow: a fresh page
    costs far more than the write into it). A 32 MiB mmap threshold (glibc's maximum) and a 2 GiB
    trim threshold keep the blocks of one step for the next; blocks above 32 MiB (at batch 4, many
    activations) would still be mmapped, so mmap is switched off (M_MMAP_MAX = 0) and every block
    comes from the heap. Returns False where this is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4
    return (
        bool(libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024))
        and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
        and bool(libc.mallopt(m_mmap_max, 0))
    )


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


# ------------------------------------------------------------------------------------- kernel bound
# What MFU could the step reach if every FLOP-counted kernel in it ran exactly as fast as it does
# alone? Each kernel of the step (the four linears' forward, input-grad and weight-grad GEMMs,
# SDPA forward+backward, the patch-embedding GEMMs and the head) is timed in isolation on
# inputs of the step's shapes and memory layouts; the bound time of a step is the sum of their
# times, each multiplied by its number of calls per step (depth for block kernels).


@dataclass
class Kernel:
    """One isolated kernel: ``fn`` runs it once; ``flops`` is its count per call, by torch's counter."""

    name: str
    shape: str
    fn: Callable[[], object]
    calls: int  # calls per training step
    in_bound: bool = True  # False: shown for information, already inside another row
    flops: int = 0
    times: list[float] = field(default_factory=list)


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, by the same counter (and CPU SDPA formulas, registered by importing
    ``tubelet.flops``) that ``count_flops`` uses for the whole step."""
    mode = FlopCounterMode(display=False)
    with mode:
        fn()
    return mode.get_total_flops()


def linear_kernels(name: str, lin: nn.Linear, m: int, calls: int) -> list[Kernel]:
    """The three GEMMs autograd runs for ``nn.Linear`` on ``m`` rows, as it runs them:
    forward ``addmm(b, x, W^T)``, input grad ``g @ W``, weight grad ``g^T @ x`` (torch computes
    the weight grad in W's row-major layout). Outputs are preallocated, as in the ceiling."""
    w = lin.weight.detach()
    b = None if lin.bias is None else lin.bias.detach()
    n, k = w.shape
    x, g = torch.randn(m, k), torch.randn(m, n)
    y, dx, dw = torch.empty(m, n), torch.empty(m, k), torch.empty(n, k)
    def fwd() -> object:
        return torch.mm(x, w.t(), out=y) if b is None else torch.addmm(b, x, w.t(), out=y)

    return [
        Kernel(f"{name} forward ({'mm' if b is None else 'addmm'})", f"{m}x{k} @ {k}x{n}", fwd, calls),
        Kernel(f"{name} input grad", f"{m}x{n} @ {n}x{k}", lambda: torch.mm(g, w, out=dx), calls),
        Kernel(f"{name} weight grad", f"{n}x{m} @ {m}x{k}", lambda: torch.mm(g.t(), x, out=dw), calls),
    ]


def step_kernels(model: nn.Module, x: torch.Tensor) -> list[Kernel]:
    """Every FLOP-counted kernel of one training step of a space-time ViT, dims read from the model."""
    blocks = model.blocks
    blk = blocks[0]
    attn, mlp = blk.attn, blk.mlp
    if not attn.fused_attn:
        raise ValueError("the kernel bound assumes F.scaled_dot_product_attention (fused_attn=True)")
    shapes = {(n, tuple(q.shape)) for b in blocks for n, q in b.named_parameters()}
    if len(shapes) != len(list(blk.parameters())):
        raise ValueError("the kernel bound assumes identical blocks")
    depth, heads, head_dim = len(blocks), attn.num_heads, attn.head_dim
    batch = x.shape[0]
    grid = model.patch_embed.grid_size(*x.shape[-3:])
    tokens = grid[0] * grid[1] * grid[2] + model.num_prefix_tokens
    m = batch * tokens  # nn.Linear folds (B, N, D) into B*N rows

    kernels: list[Kernel] = []
    for name, lin in (("qkv", attn.qkv), ("proj", attn.proj), ("fc1", mlp.fc1), ("fc2", mlp.fc2)):
        kernels += linear_kernels(name, lin, m, depth)

    # q, k, v as the model makes them: strided views of one (B, N, 3, H, d) qkv output; the output
    # gradient arrives from proj as (B, N, H, d), seen as (B, H, N, d).
    qkv = torch.randn(batch, tokens, 3, heads, head_dim, requires_grad=True)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    g_attn = torch.randn(batch, tokens, heads, head_dim).transpose(1, 2)
    sdpa_shape = f"B={batch} H={heads} N={tokens} d={head_dim}"
    kernels.append(
        Kernel("SDPA forward", sdpa_shape, lambda: F.scaled_dot_product_attention(q, k, v), depth, in_bound=False)
    )
    kernels.append(
        Kernel(
            "SDPA forward+backward",
            sdpa_shape,
            lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), g_attn),
            depth,
        )
    )

    # Patch embedding: the model cuts the clip into cubes and multiplies them by the Conv3d's weight
    # (PatchEmbed3d); the clip needs no gradient, so backward is the weight grad only.
    pe = model.patch_embed
    n_cubes = batch * grid[0] * grid[1] * grid[2]
    w = pe.proj.weight.detach().reshape(pe.embed_dim, -1)
    b = None if pe.proj.bias is None else pe.proj.bias.detach()
    cubes = pe.patchify(x).reshape(n_cubes, -1)
    cube_dim = cubes.shape[1]
    g_pe, y_pe, dw_pe = torch.randn(n_cubes, pe.embed_dim), torch.empty(n_cubes, pe.embed_dim), torch.empty_like(w)
    pe_fwd: Callable[[], object] = (
        (lambda: torch.mm(cubes, w.t(), out=y_pe)) if b is None else (lambda: torch.addmm(b, cubes, w.t(), out=y_pe))
    )
    kernels.append(Kernel("patch embed forward", f"{n_cubes}x{cube_dim} @ {cube_dim}x{pe.embed_dim}", pe_fwd, 1))
    kernels.append(
        Kernel(
            "patch embed weight grad",
            f"{pe.embed_dim}x{n_cubes} @ {n_cubes}x{cube_dim}",
            lambda: torch.mm(g_pe.t(), cubes, out=dw_pe),
            1,
        )
    )
    if isinstance(model.head.fc, nn.Linear):  # pooled (B, D) features; they need their gradient
        kernels += linear_kernels("head", model.head.fc, batch, 1)
    return kernels


def time_kernels(kernels: list[Kernel], reps: int) -> None:
    """Count each kernel's FLOPs, then time ``reps`` calls of each, interleaved round-robin so that
    drifting machine load hits all kernels alike (after one untimed warm-up round)."""
    for kern in kernels:
        kern.flops = counted_flops(kern.fn)
        kern.fn()
    for _ in range(reps):
        for kern in kernels:
            t0 = time.perf_counter()
            kern.fn()
            kern.times.append(time.perf_counter() - t0)


def print_kernel_bound(
    model: nn.Module, x: torch.Tensor, reps: int, step_flops: int, step_s: float, ceiling: float, step_mfu: float
) -> None:
    """Time the step's kernels alone and print them with the MFU their times allow."""
    kernels = step_kernels(model, x)
    time_kernels(kernels, reps)
    bound = [k for k in kernels if k.in_bound]
    bound_s = sum(k.calls * statistics.median(k.times) for k in bound)
    best_s = sum(k.calls * min(k.times) for k in bound)
    covered = sum(k.calls * k.flops for k in bound)
    print(
        f"\nKernel bound: each FLOP-counted kernel of one fp32 step timed alone on the step's shapes "
        f"(median of {reps} interleaved calls; GEMMs into preallocated outputs). Bound time = sum of "
        f"calls/step x time. Not in it: work the FLOP count leaves out (LayerNorm, GELU, residual adds, "
        f"bias grads, copies, loss, optimizer).\n"
    )
    print(
        "| kernel | shape | calls / step | GFLOP / step | isolated GFLOP/s | % of fp32 ceiling | share of bound time |"
    )
    print("|---|---|---|---|---|---|---|")
    for k in kernels:
        sec = statistics.median(k.times)
        rate = k.flops / sec / 1e9
        share = f"{100 * k.calls * sec / bound_s:.1f}%" if k.in_bound else "- (in the next row)"
        print(
            f"| {k.name} | {k.shape} | {k.calls} | {k.calls * k.flops / 1e9:.2f} | {rate:.1f} | "
            f"{100 * rate / ceiling:.1f}% | {share} |"
        )
    kernel_mfu = step_flops / bound_s / 1e9 / ceiling
    print()
    print("| kernel bound | value |")
    print("|---|---|")
    print(f"| bound time / step (median kernel times) | {bound_s:.3f} s (measured step: {step_s:.3f} s) |")
    print(
        f"| kernel-bound MFU = step FLOPs / bound time / fp32 ceiling | {100 * kernel_mfu:.1f}% "
        f"(best-of kernel times: {100 * step_flops / best_s / 1e9 / ceiling:.1f}%) |"
    )
    print(f"| measured fp32 step MFU, tuned malloc | {100 * step_mfu:.1f}% |")
    print(f"| step efficiency vs its kernels = bound time / step time | {100 * bound_s / step_s:.1f}% |")
    verdict = (
        "below the bound: reachable in principle" if kernel_mfu >= 0.85 else "above the bound: needs faster kernels"
    )
    print(f"| 85% MFU target vs the kernel bound | {verdict} |")
    print(
        f"| FLOPs in the bound's kernels / counted step FLOPs | {covered / 1e9:.1f} / {step_flops / 1e9:.1f} GFLOP "
        f"({100 * covered / step_flops:.1f}%) |"
    )


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
    p.add_argument("--kernel-reps", type=int, default=7, help="timed calls per isolated kernel (median reported)")
    p.add_argument("--no-kernels", action="store_true", help="skip the isolated-kernel bound")
    args = p.parse_args(argv)

    overrides: dict = {}
    mm_sizes, mm_reps = [2048, 4096], 3
    if args.quick:
        args.model, args.frames, args.size, args.steps, args.warmup = "vit_tiny", 4, 64, 2, 1
        overrides = {"depth": 2}
        mm_sizes, mm_reps = [256, 512], 3
        args.kernel_reps = 3
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

    rows = []  # (label, seconds, faults, flops, dtype of the ceiling)
    rows.append(("forward, no grad (fp32)", *timed(forward, args.warmup, args.steps), fwd_flops, "fp32"))
    rows.append(("train step fp32, default malloc", *timed(step, args.warmup, args.steps), step_flops, "fp32"))
    tuned = tune_malloc()
    tag = "tuned malloc" if tuned else "malloc not tunable"
    rows.append((f"forward+backward fp32, {tag}", *timed(fwd_bwd, args.warmup, args.steps), step_flops, "fp32"))
    fp32_step = timed(step, args.warmup, args.steps)
    rows.append((f"train step fp32, {tag}", *fp32_step, step_flops, "fp32"))
    bf16_step = timed(step_bf16, args.warmup, args.steps)
    rows.append((f"train step bf16 autocast, {tag}", *bf16_step, step_flops, "bf16"))
    # The ceiling is a maximum: measure it again after the steps and keep the better of the two, so a
    # slow moment of the machine during the first measurement does not inflate every MFU.
    fp32_ceiling = max(fp32_ceiling, matmul_ceiling(mm_sizes, torch.float32, mm_reps))
    bf16_ceiling = max(bf16_ceiling, matmul_ceiling(mm_sizes, torch.bfloat16, mm_reps))
    ceilings = {"fp32": fp32_ceiling, "bf16": bf16_ceiling}

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
    for label, sec, faults, flops, dtype in rows:
        ceiling = ceilings[dtype]
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
    if not args.no_kernels:
        print_kernel_bound(model, x, args.kernel_reps, step_flops, fp32_step[0], fp32_ceiling, mfu)
    if args.quick:
        print("\n(--quick: tiny sizes check that the script runs; the numbers mean nothing)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
