"""Training-step throughput of a space-time ViT on CPU, as a fraction of the machine's matmul rate.

Measured side by side in one run:
  1. the fp32 (and bf16) matmul ceiling: best GFLOP/s of square matmuls into a preallocated output,
     measured before and again after the timed steps (the better of the two is kept);
  2. the FLOPs of one forward+backward of the model, counted with ``tubelet.flops.count_flops``
     (attention included: CPU flash attention has registered formulas);
  3. a full training step (forward, cross-entropy, backward, optimizer step, zero_grad) of tubelet's
     model with the library's optimizer and of a plain reference ViT of the same shape written below
     (holding the same weights: the logits are checked equal), in fp32 and in bf16 autocast, and of
     tubelet's model with bf16 weights and fp32 master copies (``MasterWeightStep``), the five
     alternated round by round (glibc malloc tuned unless ``--default-malloc``): every row has its
     ratio to the plain step of the same precision and round, and the bf16 rows their speed-up over
     fp32; SDPA alone in fp32 and bf16; ``--profile``: per-op-category profile of each step and the ops
     autocast leaves in fp32;
     a sixth, fp32 only: the plain step with its LayerNorms, GELUs and optimizer step taken out, which
     leaves only the FLOP-counted kernels and the residual adds: what overhead removal could reach;
  4. the kernel bound: every FLOP-counted kernel of the fp32 step (each linear's forward, input-grad
     and weight-grad GEMM, SDPA forward+backward, the patch-embedding GEMMs, the head) timed alone on
     the step's shapes; their summed time is the fastest step those kernels allow.
Achieved GFLOP/s = counted FLOPs / time; MFU = achieved / ceiling of the same dtype; kernel-bound
MFU = step FLOPs / bound time / fp32 ceiling: unless kernels run faster inside the step than alone,
no change outside them can take the step's MFU above it.
Targets (issue 26): tubelet's fp32 step <= 0.95x the plain one; where the run's bf16/fp32 matmul ratio
exceeds 1.5, the bf16 step at least half that ratio faster than fp32 (else bf16 not slower, or fp32
stays the default). The 1-minute load average is printed: above ~0.5 the machine was shared.

    python benchmarks/vit_step.py            # ViT-B, 16x224x224, batch 1, 2 threads (minutes)
    python benchmarks/vit_step.py --quick    # tiny model and clip (seconds), checks the script runs
    python benchmarks/vit_step.py --no-kernels   # without the kernel bound (4.)
    python benchmarks/vit_step.py --frames 4 --threads 1 --profile   # ViT-B on 393 tokens, per-op shares

Run it alone on a quiet machine: two threads collapse when anything else uses the CPU.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import math
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tubelet.config.schema import OptimConfig
from tubelet.engine.optim import build_optimizer
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


# ---------------------------------------------------------------------------------- plain reference
# A minimal space-time ViT of the same shape as the model under test, as anyone would write it from the
# ViT paper with PyTorch's building blocks: Conv3d tubelet embedding, one learned joint position table,
# CLS token, pre-norm blocks with F.scaled_dot_product_attention, mean-pooled head. Loaded with the
# tubelet model's weights it computes the same logits (checked in the run), so the two steps do the
# same arithmetic and their time ratio is the cost of the library's code around it.


class PlainBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, eps: float, bare: bool = False) -> None:
        super().__init__()
        self.heads = heads
        norm = nn.Identity if bare else functools.partial(nn.LayerNorm, dim, eps=eps)
        self.norm1, self.norm2 = norm(), norm()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.act = nn.Identity() if bare else nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class PlainViT(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, hidden: int, classes: int, patch: tuple[int, int, int],
                 tokens: int, eps: float = 1e-6, bare: bool = False) -> None:
        super().__init__()
        self.patch_embed = nn.Conv3d(3, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(PlainBlock(dim, heads, hidden, eps, bare) for _ in range(depth))
        self.norm = nn.Identity() if bare else nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos  # (B, N, D)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 1:].mean(dim=1))


def plain_like(model: nn.Module, x: torch.Tensor, bare: bool = False) -> PlainViT:
    """A PlainViT of ``model``'s shape (a tubelet ``VisionTransformer`` with a CLS token, mean pooling, no
    fc_norm) holding its weights, so both compute the same logits on ``x``. ``bare``: its LayerNorms and
    GELUs replaced by identities (other logits: a timing bound, not a model)."""
    cfg = model.cfg
    if not (cfg.class_token and cfg.global_pool == "avg" and not cfg.fc_norm and cfg.attention == "softmax"):
        raise ValueError("the plain reference is a CLS-token, mean-pooled, softmax ViT without fc_norm")
    grid = model.patch_embed.grid_size(*x.shape[-3:])
    blk = model.blocks[0]
    plain = PlainViT(cfg.embed_dim, cfg.depth, cfg.num_heads, blk.mlp.fc1.out_features, cfg.num_classes,
                     model.patch_embed.patch_size, grid[0] * grid[1] * grid[2], cfg.norm_eps, bare)
    with torch.no_grad():
        plain.patch_embed.load_state_dict(model.patch_embed.proj.state_dict())
        plain.pos.copy_(model.pos_embed.table(grid))
        plain.cls.copy_(model.cls_token)
        for p_blk, t_blk in zip(plain.blocks, model.blocks):
            for name in () if bare else ("norm1", "norm2"):
                getattr(p_blk, name).load_state_dict(getattr(t_blk, name).state_dict())
            for name, src in (("qkv", t_blk.attn.qkv), ("proj", t_blk.attn.proj), ("fc1", t_blk.mlp.fc1),
                              ("fc2", t_blk.mlp.fc2)):
                getattr(p_blk, name).load_state_dict(src.state_dict())
        if not bare:
            plain.norm.load_state_dict(model.norm.state_dict())
        plain.head.load_state_dict(model.head.fc.state_dict())
    return plain.train(model.training)
# ------------------------------------------------------------------------------------ side by side


def loadavg() -> str:
    """The 1-minute load average: above ~0.5 something else ran beside the benchmark and its absolute
    times (not the alternated ratios) mean little."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


@dataclass
class Config:
    """One timed training step: which model, which precision, its closure and its timings."""

    model: str  # "tubelet" | "plain"
    precision: str  # "fp32" | "bf16" (autocast) | "bf16-master" (bf16 weights, fp32 masters)
    fn: Callable[[], None]
    times: list[float] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)


def make_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              bf16: bool) -> Callable[[], None]:
    """Forward + cross-entropy + backward + optimizer step + ``zero_grad(set_to_none=True)``; bf16 =
    ``torch.autocast("cpu", bfloat16)`` around forward and loss, as Lightning's ``bf16-mixed`` runs it
    (weights, gradients and optimizer state stay fp32)."""

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def make_bare_step(model: PlainViT, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """The plain fp32 step with everything but the FLOP-counted kernels taken out: a ``bare`` PlainViT (no
    LayerNorm, no GELU) and no optimizer step, only forward, loss, backward and dropping the gradients.
    What is left is the block GEMMs, SDPA, the patch embedding and head, the residual adds and the bias
    gradients: the fastest any implementation built on these kernels can be, measured inside a step (with
    the cache traffic of a real step), where the kernel bound times each kernel alone."""

    def step() -> None:
        F.cross_entropy(model(x), y).backward()
        for q in model.parameters():
            q.grad = None

    return step


class MasterWeightStep:
    """One training step of ``model`` with bf16 weights and fp32 master copies, without autocast.

    The step's model is a bf16 copy (``module.to(bfloat16)``): forward and backward run in bf16 end to
    end, with no per-step casts of weights or activations; the logits are upcast so that log-softmax and
    the loss are fp32. LayerNorm statistics and the attention softmax need no upcast of their own: the
    CPU kernels accumulate bf16 inputs in fp32 (``bf16_kernel_accuracy`` checks it). The optimizer is the
    library's (``build_optimizer``: fused AdamW, training's parameter groups) over an fp32 copy of the
    model, the masters. After backward the bf16 gradients are upcast into the masters' gradients
    (``torch._foreach_copy_``), AdamW updates the masters, and the bf16 weights are refreshed from them
    (the rounding of ``_foreach_copy_``): updates smaller than a bf16 ulp of a weight accumulate in the
    master instead of being lost, which is what pure bf16 training (``bf16-true``) gives up.
    """

    def __init__(self, model: nn.Module, optim_cfg: OptimConfig, x: torch.Tensor, y: torch.Tensor) -> None:
        import copy

        self.master = copy.deepcopy(model)  # fp32, same names: build_optimizer's groups as for fp32
        self.model = copy.deepcopy(model).to(torch.bfloat16)
        self.opt = build_optimizer(self.master, optim_cfg, lr=1e-4)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.masters = [p for p in self.master.parameters() if p.requires_grad]
        for m in self.masters:  # kept allocated: the upcast writes into them each step
            m.grad = torch.zeros_like(m)
        self.x, self.y = x.to(torch.bfloat16), y

    def __call__(self) -> None:
        loss = F.cross_entropy(self.model(self.x).float(), self.y)
        loss.backward()
        torch._foreach_copy_([m.grad for m in self.masters], [p.grad for p in self.params])
        self.opt.step()
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.masters)
        self.model.zero_grad(set_to_none=True)

    def max_weight_gap(self) -> float:
        """Largest |bf16 weight - its master rounded to bf16|: 0 when the refresh ran."""
        return max((p - m.to(torch.bfloat16)).abs().max().item() for p, m in zip(self.params, self.masters))


def bf16_kernel_accuracy(tokens: int, dim: int, heads: int) -> dict[str, float]:
    """How far the CPU bf16 LayerNorm and SDPA kernels are from the same computation in fp32 on the
    same bf16 inputs: max |kernel - fp32| over max |fp32 rounded to bf16 - fp32|, the error of a kernel
    that computed in fp32 and rounded its output once. About 1 means fp32 statistics and softmax inside
    the kernel; a kernel that summed in bf16 could not come close (a running bf16 sum of the 768 values
    near 8 of the LayerNorm input here reaches 6144, where the bf16 step is 32)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(tokens, dim, generator=g) + 8).to(torch.bfloat16)
    w, b = torch.rand(dim, generator=g).to(torch.bfloat16), torch.randn(dim, generator=g).to(torch.bfloat16)
    qkv = torch.randn(3, 1, heads, tokens, dim // heads, generator=g).mul(2).to(torch.bfloat16)

    def ratio(out: torch.Tensor, ref: torch.Tensor) -> float:
        rounding = (ref.to(torch.bfloat16).float() - ref).abs().max()
        return ((out.float() - ref).abs().max() / rounding).item()

    return {
        "LayerNorm": ratio(F.layer_norm(x, (dim,), w, b, 1e-6), F.layer_norm(x.float(), (dim,), w.float(), b.float(), 1e-6)),
        "SDPA": ratio(F.scaled_dot_product_attention(*qkv), F.scaled_dot_product_attention(*qkv.float())),
    }


def alternate(configs: list[Config], warmup: int, rounds: int) -> None:
    """``warmup`` untimed calls of each, then ``rounds`` rounds of one timed call of each in turn, so a
    drifting load hits every configuration alike and each round gives one ratio per pair."""
    for _ in range(warmup):
        for c in configs:
            c.fn()
    for _ in range(rounds):
        for c in configs:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            c.fn()
            c.times.append(time.perf_counter() - t0)
            c.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)


def round_ratio(a: Config, b: Config) -> tuple[float, float, float]:
    """Median, min and max over rounds of ``a``'s time / ``b``'s time in the same round."""
    r = [ta / tb for ta, tb in zip(a.times, b.times)]
    return statistics.median(r), min(r), max(r)


# Op categories of the per-op profile: an aten op name (self time) goes to the first category one of
# whose patterns it contains. GEMMs are split by shape (record_shapes): the patch embedding's have the
# cube size (C*pt*ph*pw) as a dimension, the head's the class count; the rest are the blocks' linears.
CATEGORIES = (
    ("attention (SDPA fwd+bwd)", ("scaled_dot_product", "_flash_attention", "_efficient_attention")),
    ("patch embedding (conv)", ("convolution", "mkldnn_conv", "conv3d")),
    ("norms", ("layer_norm",)),
    ("GELU", ("gelu",)),
    ("optimizer step", ("adamw", "_foreach_", "addcdiv", "addcmul", "lerp", "Optimizer.step")),
    ("casts and copies", ("copy_", "_to_copy", "clone", "contiguous", "cat", "stack")),
    ("bias grads, adds, fills", ("sum", "add", "fill_", "zero_", "mul", "div", "mean")),
    ("loss", ("nll_loss", "log_softmax", "cross_entropy")),
)


def gemm_category(shapes: list, cube: int, classes: int) -> str:
    dims = {d for s in shapes for d in (s or [])}
    if cube in dims:
        return "patch embedding (GEMM)"
    if classes in dims:
        return "head (GEMM)"
    return "block linears (GEMM)"


def profile_step(fn: Callable[[], None], cube: int, classes: int) -> dict[str, float]:
    """Self CPU ms per category for one call of ``fn`` (torch.profiler, record_shapes)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    out: dict[str, float] = {}
    for e in prof.key_averages(group_by_input_shape=True):
        ms = e.self_cpu_time_total / 1e3
        name = e.key
        if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"):
            cat = gemm_category(e.input_shapes, cube, classes)
        else:
            cat = next((c for c, pats in CATEGORIES if any(p in name for p in pats)), "other")
        out[cat] = out.get(cat, 0.0) + ms
    return out


def fp32_ops_under_autocast(fn: Callable[[], None]) -> dict[str, int]:
    """aten ops that get fp32 floating tensors while ``fn`` (a bf16 step: autocast or bf16 weights with
    fp32 masters) runs: calls per op, forward and backward, optimizer included."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: dict[str, int] = {}

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            flat = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            flat += [t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)]
            if any(t.dtype == torch.float32 and t.numel() > 1 for t in flat):
                name = str(func.overloadpacket.__name__)
                seen[name] = seen.get(name, 0) + 1
            return func(*args, **kwargs)

    with Log():
        fn()
    return seen


def sdpa_precision_row(batch: int, tokens: int, heads: int, head_dim: int, reps: int) -> tuple[float, float]:
    """SDPA forward+backward on the step's shapes, fp32 and bf16, alternated: median seconds of each."""
    base = torch.randn(batch, tokens, 3, heads, head_dim)
    fns = []
    for dt in (torch.float32, torch.bfloat16):
        qkv = base.to(dt).requires_grad_(True)
        g = torch.randn(batch, tokens, heads, head_dim, dtype=dt).transpose(1, 2)

        def fn(qkv: torch.Tensor = qkv, g: torch.Tensor = g) -> None:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), qkv, g)

        fns.append(fn)
    times: list[list[float]] = [[], []]
    for f in fns:
        f()
    for _ in range(reps):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            times[i].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny model and clip: checks the script in seconds")
    p.add_argument("--model", default="vit_base")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--classes", type=int, default=400)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed rounds (one step of each configuration per round)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each configuration first")
    p.add_argument("--no-bf16", action="store_true", help="fp32 rows only")
    p.add_argument("--profile", action="store_true", help="per-op profile of one step of each configuration")
    p.add_argument("--default-malloc", action="store_true", help="keep glibc's default allocator settings")
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
    load_start = loadavg()
    tuned = False if args.default_malloc else tune_malloc()

    fp32_ceiling = matmul_ceiling(mm_sizes, torch.float32, mm_reps)
    bf16_ceiling = matmul_ceiling(mm_sizes, torch.bfloat16, mm_reps)

    model = create_model(
        args.model, num_frames=args.frames, img_size=args.size, num_classes=args.classes, **overrides
    ).train()
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size)
    y = torch.randint(0, args.classes, (args.batch,))
    plain = plain_like(model, x)
    with torch.no_grad():
        logit_diff = (model(x) - plain(x)).abs().max().item()

    # tubelet's step uses the library's optimizer (training's parameter groups and AdamW settings, as
    # `tubelet fit` builds it); the plain one torch's fused AdamW over all parameters.
    optim_cfg = OptimConfig(name="adamw", weight_decay=0.05, betas=[0.9, 0.999])
    opt_t = build_optimizer(model, optim_cfg, lr=1e-4)
    opt_p = torch.optim.AdamW(plain.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    opt_t_kind = "fused" if opt_t.defaults.get("fused") else ("foreach" if opt_t.defaults.get("foreach") else "for-loop")

    fwd_flops = count_flops(model, x).flops
    step_flops = count_flops(model, x, backward=True).flops

    precisions = ["fp32"] if args.no_bf16 else ["fp32", "bf16"]
    configs = [
        Config(name, prec, make_step(m, o, x, y, prec == "bf16"))
        for prec in precisions
        for name, m, o in (("tubelet", model, opt_t), ("plain", plain, opt_p))
    ]
    # The bound row: plain's step without norms, GELU and optimizer, alternated with the others.
    configs.insert(2, Config("plain, kernels only", "fp32", make_bare_step(plain_like(model, x, bare=True), x, y)))
    master_step = None
    if not args.no_bf16:
        master_step = MasterWeightStep(model, optim_cfg, x, y)
        configs.append(Config("tubelet", "bf16-master", master_step))
    alternate(configs, args.warmup, args.steps)
    by = {(c.model, c.precision): c for c in configs}
    fp32_ceiling = max(fp32_ceiling, matmul_ceiling(mm_sizes, torch.float32, mm_reps))
    bf16_ceiling = max(bf16_ceiling, matmul_ceiling(mm_sizes, torch.bfloat16, mm_reps))
    ceilings = {"fp32": fp32_ceiling, "bf16": bf16_ceiling}
    mm_ratio = bf16_ceiling / fp32_ceiling

    blk = model.blocks[0]
    grid = model.patch_embed.grid_size(args.frames, args.size, args.size)
    tokens = grid[0] * grid[1] * grid[2] + model.num_prefix_tokens
    sdpa32, sdpa16 = sdpa_precision_row(args.batch, tokens, blk.attn.num_heads, blk.attn.head_dim, max(args.steps, 3))
    load_end = loadavg()

    n_params = sum(q.numel() for q in model.parameters())
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    print(
        f"\n{args.model}{' (depth 2)' if args.quick else ''}, {n_params / 1e6:.1f}M params, "
        f"{args.batch}x3x{args.frames}x{args.size}x{args.size} ({tokens} tokens), {args.threads} threads, "
        f"malloc tuned: {tuned}; CPU capability {torch.backends.cpu.get_cpu_capability()}, AMX: {amx}"
    )
    print(f"1-min load average at start / end: {load_start} / {load_end} (above ~0.5 the machine was shared: "
          f"absolute times are then noisy, the alternated ratios less so)")
    print(
        f"matmul ceiling: fp32 {fp32_ceiling:.1f} GFLOP/s, bf16 {bf16_ceiling:.1f} GFLOP/s, "
        f"bf16/fp32 = {mm_ratio:.2f}x (n = {', '.join(map(str, mm_sizes))}, best of before and after the steps)"
    )
    print(
        f"counted per step: forward {fwd_flops / 1e9:.1f} GFLOP, forward+backward {step_flops / 1e9:.1f} GFLOP; "
        f"plain reference with tubelet's weights: max |logit difference| = {logit_diff:.2e}"
    )
    print(f"optimizers: tubelet build_optimizer -> AdamW ({opt_t_kind}), plain torch AdamW(fused=True)\n")
    print(f"Training steps, alternated in {args.steps} rounds after {args.warmup} warm-up rounds (median s):\n")
    print("| model | precision | s / step | GFLOP/s | MFU (same-dtype ceiling) | time / plain's, same round "
          "(median [min, max]) | bf16 speed-up over own fp32 | page faults / step |")
    print("|---|---|---|---|---|---|---|---|")
    for c in configs:
        sec = statistics.median(c.times)
        rate = step_flops / sec / 1e9
        ref = by[("plain", "bf16" if c.precision == "bf16-master" else c.precision)]
        ratio = "1 (reference)" if c is ref else "{:.3f} [{:.3f}, {:.3f}]".format(*round_ratio(c, ref))
        speed = "-"
        if c.precision.startswith("bf16"):
            speed = "{:.2f}x".format(1 / round_ratio(c, by[(c.model, "fp32")])[0])
        ceiling = ceilings[c.precision[:4]]
        print(f"| {c.model} | {c.precision} | {sec:.3f} | {rate:.1f} | {100 * rate / ceiling:.1f}% "
              f"| {ratio} | {speed} | {statistics.median(c.faults):.0f} |")
    if master_step is not None:
        acc = bf16_kernel_accuracy(tokens, blk.attn.num_heads * blk.attn.head_dim, blk.attn.num_heads)
        print("\nbf16 weights + fp32 masters (bf16-master) against bf16 autocast, tubelet, same round: time ratio "
              "{:.3f} [{:.3f}, {:.3f}] (below 1: bf16-master faster); ".format(
                  *round_ratio(by[("tubelet", "bf16-master")], by[("tubelet", "bf16")]))
              + f"bf16 weights vs their masters after the steps: max gap {master_step.max_weight_gap():.1e} (0: refreshed)")
        print("bf16 CPU kernels vs fp32 on the same bf16 inputs (max error / error of rounding the fp32 result, "
              "1 = fp32 inside): " + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()))
    print(f"\nSDPA forward+backward alone on the step's shapes, alternated: fp32 {sdpa32 * 1e3:.1f} ms, "
          f"bf16 {sdpa16 * 1e3:.1f} ms (bf16 {sdpa32 / sdpa16:.2f}x faster)")

    fp32_ratio = round_ratio(by[("tubelet", "fp32")], by[("plain", "fp32")])[0]
    print("\n| target | measured | verdict |")
    print("|---|---|---|")
    print(f"| tubelet fp32 step <= 0.95x the plain fp32 step | {fp32_ratio:.3f}x | "
          f"{'met' if fp32_ratio <= 0.95 else 'MISSED'} |")
    bare_ratio = round_ratio(by[("plain, kernels only", "fp32")], by[("plain", "fp32")])
    print("| (bound) plain step without norms, GELU and optimizer / plain step | {:.3f}x [{:.3f}, {:.3f}] | {} |".format(
        *bare_ratio, "0.95x reachable by removing overhead" if bare_ratio[0] <= 0.95
        else "0.95x needs faster GEMM or attention kernels than the plain step's"))
    if not args.no_bf16:
        bf16_speed = 1 / round_ratio(by[("tubelet", "bf16")], by[("tubelet", "fp32")])[0]
        if mm_ratio > 1.5:
            need = 0.5 * mm_ratio
            print(f"| bf16/fp32 matmul {mm_ratio:.2f}x > 1.5: tubelet bf16 step >= {need:.2f}x faster than fp32 | "
                  f"{bf16_speed:.2f}x | {'met' if bf16_speed >= need else 'MISSED'} |")
        else:
            print(f"| bf16/fp32 matmul {mm_ratio:.2f}x <= 1.5: bf16 >= fp32 speed, else keep fp32 default | "
                  f"{bf16_speed:.2f}x | {'bf16 not slower' if bf16_speed >= 1 else 'keep fp32'} |")

    if args.profile:
        cube = model.patch_embed.in_chans * math.prod(model.patch_embed.patch_size)
        print("\nPer-op profile of one step each (torch.profiler self CPU time, ms; share of the step's total):\n")
        profiles = {(c.model, c.precision): profile_step(c.fn, cube, args.classes) for c in configs}
        cats = sorted({k for prof in profiles.values() for k in prof}, key=lambda k: -profiles[configs[0].model,
                      configs[0].precision].get(k, 0.0))
        keys = [(c.model, c.precision) for c in configs]
        print("| category | " + " | ".join(f"{m} {p}" for m, p in keys) + " |")
        print("|---|" + "---|" * len(keys))
        totals = {k: sum(profiles[k].values()) for k in keys}
        for cat in cats:
            cells = [f"{profiles[k].get(cat, 0.0):.0f} ({100 * profiles[k].get(cat, 0.0) / totals[k]:.1f}%)" for k in keys]
            print(f"| {cat} | " + " | ".join(cells) + " |")
        print("| total | " + " | ".join(f"{totals[k]:.0f}" for k in keys) + " |")
        if not args.no_bf16:
            for prec in ("bf16", "bf16-master"):
                ops = fp32_ops_under_autocast(by[("tubelet", prec)].fn)
                print(f"\naten ops that receive fp32 tensors during one tubelet {prec} step (calls): "
                      + ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])))

    if not args.no_kernels:
        fp32_s = statistics.median(by[("tubelet", "fp32")].times)
        mfu = step_flops / fp32_s / 1e9 / fp32_ceiling
        print_kernel_bound(model, x, args.kernel_reps, step_flops, fp32_s, fp32_ceiling, mfu)
    if args.quick:
        print("\n(--quick: tiny sizes check that the script runs; the numbers mean nothing)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
