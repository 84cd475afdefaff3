"""Pre-training speed of the rho-SSL frameworks (SimCLR, MoCo, BYOL, SwAV) on one backbone, side by side.

Each framework runs full training steps (forward of the source and target branches, loss, backward,
LARS/SGD step, momentum update, queue) on the same random clips, after warm-up steps, in one process.
Prints steps/s, clips/s and the ratio to rho-SimCLR (the framework without a second encoder).

    python benchmarks/ssl_frameworks.py --quick          # tiny backbone, seconds (checks that it runs)
    python benchmarks/ssl_frameworks.py                  # Slow R-50, 8x112^2, 4 videos x rho=2 per step
"""

from __future__ import annotations

import argparse
import time

import torch

from tubelet.config.loader import from_dict
from tubelet.engine.optim import build_optimizer
from tubelet.methods import build_method

FRAMEWORKS = ("simclr", "moco", "byol", "swav")


def make(fw: str, args: argparse.Namespace):
    overrides = {"depths": [1, 1, 1, 1], "width": 8} if args.quick else {}
    method = {"name": "contrastive", "framework": fw, "steps_per_epoch": 1, "freeze_prototypes_steps": 0}
    if args.quick:
        method.update(proj_hidden=128, pred_hidden=128, queue_size=1024, num_prototypes=64)
    r = from_dict({
        "model": {"name": args.model, "num_frames": args.frames, "img_size": args.size, "overrides": overrides},
        "data": {"rho": {"clips": args.rho}, "batch_size": args.batch},
        "method": method,
        "optim": {"name": "sgd" if fw == "moco" else "lars", "lr": 0.1, "weight_decay": 1e-6},
        "trainer": {"max_steps": 1000},
    })
    m = build_method(r)
    return m, build_optimizer(m, r.optim, 0.1)


def bench(fw: str, args: argparse.Namespace, video: torch.Tensor) -> float:
    torch.manual_seed(0)
    m, opt = make(fw, args)
    m.train()

    def step():
        out = m({"video": video})
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    return args.steps / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny backbone and heads, 2 steps")
    p.add_argument("--model", default="slow_r50")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch", type=int, default=4, help="videos per step")
    p.add_argument("--rho", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.quick:
        args.size, args.frames, args.batch, args.steps, args.warmup = 32, 4, 4, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.quick:
        torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    video = torch.randn(args.batch, max(args.rho, 2), 3, args.frames, args.size, args.size, generator=g)
    clips = video.shape[0] * video.shape[1]
    rates = {fw: bench(fw, args, video) for fw in FRAMEWORKS}
    print(f"{args.model} {args.frames}x{args.size}^2, {args.batch} videos x {video.shape[1]} clips per step, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| framework | steps/s | clips/s | vs SimCLR |")
    print("|---|---|---|---|")
    for fw, r in rates.items():
        print(f"| rho-{fw} | {r:.3f} | {r * clips:.1f} | {r / rates['simclr']:.2f}x |")


if __name__ == "__main__":
    main()
