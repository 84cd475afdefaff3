"""Castling-ViT speed: softmax SDPA against linear-angular attention after the switch, by token count.

Claims (issue 19): Castling's fitted latency exponent is at most 1.1; at 3136 tokens the attention
alone takes at most 0.10x of SDPA's time and the whole ViT-B forward at most 0.5x; the crossover is at
or below 784 tokens.

Rows, for each token count N (196, 784, 1568, 3136, 6272, 12544 by default: ViT-B/16 on 224x224 clips
of 2 to 128 frames, 2x16x16 tubelets, so N = 196 * frames / 2):

- *attention alone*: one ViT-B attention layer (768 wide, 12 heads) on ``(1, N + 1, 768)`` tokens
  (CLS included), softmax ``Attention`` (``F.scaled_dot_product_attention``) against
  ``LinearAngularAttention`` switched to inference (no branch; the release's (9, 1) token conv);
- *whole ViT-B*: ``vit_base`` forward on a ``(1, 3, 2N/196, 224, 224)`` clip, softmax against
  ``attention=castling castling_branch=false``.

Each row gives the median forward time (eval mode, no grad, after a warm-up call) of both, their ratio,
and both MACs counts (``tubelet.flops`` on the meta device: multiply-adds, the papers' "GFLOPs"). Below
the table: the fitted scaling exponent of each column (least-squares slope of log time, or log MACs,
against log N) and the crossover token count (where the castling/softmax time ratio crosses 1,
interpolated in log-log between the two measured counts around it; "below N" when castling is faster
at every count).

    python benchmarks/castling_speed.py                    # the full table (slow on a CPU)
    python benchmarks/castling_speed.py --device cuda      # on a GPU
    python benchmarks/castling_speed.py --macs-only        # the MACs columns only (no timing, seconds)
    python benchmarks/castling_speed.py --quick            # tiny sizes: checks that the script runs
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Callable

import torch

DEFAULT_TOKENS = (196, 784, 1568, 3136, 6272, 12544)


def timed(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up: allocator, kernels
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def crossover(tokens: list[int], ratios: list[float]) -> str:
    """Where castling/softmax first drops below 1, interpolated in log-log between measured counts."""
    if ratios[0] < 1:
        return f"below {tokens[0]} (castling faster at every count)"
    for (n0, r0), (n1, r1) in zip(zip(tokens, ratios), zip(tokens[1:], ratios[1:])):
        if r0 >= 1 > r1:
            t = math.log(r0) / (math.log(r0) - math.log(r1))
            return f"{math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))):.0f} tokens"
    return f"above {tokens[-1]} (softmax faster at every count)"


def build(args: argparse.Namespace, tokens: int, device: str) -> dict[str, torch.nn.Module]:
    from tubelet.models import create_model
    from tubelet.models.layers import Attention
    from tubelet.models.layers.angular_attention import LinearAngularAttention

    frames = 2 * tokens // args.tokens_per_frame_pair
    with torch.device(device):
        vit = dict(num_frames=frames, img_size=args.size, **args.model_overrides)
        return {
            "attn_softmax": Attention(args.dim, args.heads, qkv_bias=True),
            "attn_castling": LinearAngularAttention(args.dim, args.heads, qkv_bias=True, branch=False),
            "vit_softmax": create_model(args.model, **vit),
            "vit_castling": create_model(args.model, attention="castling", castling_branch=False, **vit),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=None, help=f"token counts (default {DEFAULT_TOKENS})")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--macs-only", action="store_true", help="count MACs on the meta device, no timing")
    ap.add_argument("--no-vit", action="store_true", help="the attention rows only")
    ap.add_argument("--quick", action="store_true", help="vit_tiny-sized layers at 196..784 tokens, 1 repeat")
    args = ap.parse_args()

    from tubelet.flops import count_flops

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.model, args.dim, args.heads, args.size, args.model_overrides = "vit_base", 768, 12, 224, {}
    if args.quick:
        args.model, args.dim, args.heads = "vit_tiny", 192, 3
        args.repeats = 1
    grid_hw = (args.size // 16) ** 2
    args.tokens_per_frame_pair = grid_hw
    tokens = args.tokens or ([196, 392, 784] if args.quick else list(DEFAULT_TOKENS))
    bad = [n for n in tokens if n % grid_hw]
    if bad:
        raise SystemExit(f"--tokens {bad}: each count must be a multiple of {grid_hw} (one 2-frame slice of 14x14)")
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    names = ["attn", "vit"] if not args.no_vit else ["attn"]
    rows: dict[str, list[tuple[int, float, float, float, float]]] = {n: [] for n in names}
    for n in tokens:
        grid = (2 * n // grid_hw // 2, args.size // 16, args.size // 16)
        for part in names:
            with torch.device("meta"):
                meta = build(args, n, "meta")
                if part == "attn":
                    x_meta = torch.empty(1, n + 1, args.dim)
                    macs = [count_flops(meta[f"attn_{k}"], (x_meta, None, None, grid)).macs for k in ("softmax", "castling")]
                else:
                    x_meta = torch.empty(1, 3, 2 * n // grid_hw, args.size, args.size)
                    macs = [count_flops(meta[f"vit_{k}"].eval(), x_meta).macs for k in ("softmax", "castling")]
            times = [float("nan"), float("nan")]
            if not args.macs_only:
                models = build(args, n, args.device)
                if part == "attn":
                    x = torch.randn(1, n + 1, args.dim, device=args.device)
                    calls = [lambda m=models[f"attn_{k}"].eval(): m(x, grid=grid) for k in ("softmax", "castling")]
                else:
                    x = torch.randn(1, 3, 2 * n // grid_hw, args.size, args.size, device=args.device)
                    calls = [lambda m=models[f"vit_{k}"].eval(): m(x) for k in ("softmax", "castling")]
                with torch.no_grad():
                    times = [timed(c, args.repeats, sync) for c in calls]
                del models
            rows[part].append((n, times[0], times[1], macs[0] / 1e9, macs[1] / 1e9))

    title = {"attn": f"attention alone ({args.dim} wide, {args.heads} heads)", "vit": f"whole {args.model} forward"}
    where = "MACs only (no timing)" if args.macs_only else (
        f"device {args.device}, {args.threads} threads, median of {args.repeats}")
    print(f"{where}; GMACs = multiply-adds\n")
    for part in names:
        print(f"### {title[part]}\n")
        print("| tokens | softmax ms | castling ms | ratio | softmax GMACs | castling GMACs | MACs ratio |")
        print("|---|---|---|---|---|---|---|")
        for n, ts, tc, ms, mc in rows[part]:
            timing = "| - | - | - |" if args.macs_only else f"| {ts * 1e3:.2f} | {tc * 1e3:.2f} | {tc / ts:.3f} |"
            print(f"| {n} {timing} {ms:.3f} | {mc:.3f} | {mc / ms:.3f} |")
        ns = [r[0] for r in rows[part]]
        print()
        if len(ns) > 1:
            print(f"- MACs exponent: softmax {slope(ns, [r[3] for r in rows[part]]):.2f}, "
                  f"castling {slope(ns, [r[4] for r in rows[part]]):.2f}")
            if not args.macs_only:
                print(f"- latency exponent: softmax {slope(ns, [r[1] for r in rows[part]]):.2f}, "
                      f"castling {slope(ns, [r[2] for r in rows[part]]):.2f}")
                print(f"- crossover: {crossover(ns, [r[2] / r[1] for r in rows[part]])}")
            print(f"- MACs crossover: {crossover(ns, [r[4] / r[3] for r in rows[part]])}")
        print()


if __name__ == "__main__":
    main()
