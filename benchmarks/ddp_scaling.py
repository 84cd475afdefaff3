"""DDP scaling on this machine: training throughput with 1 and 2 processes (gloo on CPU, NCCL on GPUs)
and the share of a step spent in gradient communication.

For each world size W, W processes (1 torch thread each) train a space-time ViT with PyTorch's
DistributedDataParallel (what Lightning's DDPStrategy wraps) at a fixed per-process batch (weak
scaling, like adding GPUs), and time:

* ``step``: forward + backward (with DDP's bucketed all-reduce) + AdamW step;
* ``no_sync``: the same step inside ``ddp.no_sync()`` (no communication);
* ``allreduce``: one all-reduce of a buffer the size of all gradients (what DDP moves per step).

``comm share = (step - no_sync) / step`` is the part of a step that communication adds (what DDP
could not hide behind backward); ``allreduce / step`` is the raw cost if nothing overlapped.
Efficiency is the throughput with W processes over W x the 1-process throughput.

    python benchmarks/ddp_scaling.py --quick          # tiny model, seconds (smoke test)
    python benchmarks/ddp_scaling.py                  # vit_tiny at 8x112x112, batch 4 per process
    python benchmarks/ddp_scaling.py --device cuda --worlds 1 2 4 8   # one process per GPU, NCCL
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _worker(rank: int, world: int, args: argparse.Namespace, init: str, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from tubelet.models.registry import create_model

    torch.set_num_threads(1)
    cuda = args.device == "cuda"
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend, init_method=f"file://{init}", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = create_model(args.model, num_frames=args.frames, img_size=args.size, num_classes=10,
                         **({"depth": args.depth, "embed_dim": args.dim, "num_heads": max(1, args.dim // 64)}
                            if args.depth else {})).to(device)
    ddp = DDP(model, device_ids=[rank] if cuda else None)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buf = torch.zeros(n_params, device=device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()

    def nosync_step() -> None:
        opt.zero_grad(set_to_none=True)
        with ddp.no_sync():
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()

    def allreduce() -> None:
        dist.all_reduce(buf)

    def timed(fn) -> float:
        for _ in range(args.warmup):
            fn()
        times = []
        for _ in range(args.steps):
            dist.barrier()
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    res = {"step": timed(step), "no_sync": timed(nosync_step), "allreduce": timed(allreduce), "params": n_params}
    # every rank's median; report the slowest rank (a step waits for it)
    gathered = [None] * world
    dist.all_gather_object(gathered, res)
    if rank == 0:
        worst = {k: max(r[k] for r in gathered) for k in ("step", "no_sync", "allreduce")}
        worst["params"] = n_params
        Path(out).write_text(json.dumps(worst))
    dist.destroy_process_group()


def run(world: int, args: argparse.Namespace) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        init, out = os.path.join(tmp, "pg"), os.path.join(tmp, "out.json")
        mp.spawn(_worker, args=(world, args, init, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny model and few steps (a smoke test, seconds)")
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch", type=int, default=4, help="clips per process")
    p.add_argument("--depth", type=int, default=0, help="override the model depth (0: the variant's)")
    p.add_argument("--dim", type=int, default=0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.size, args.batch, args.depth, args.dim, args.warmup, args.steps = 4, 32, 2, 2, 64, 2, 5
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for world in args.worlds:
        r = run(world, args)
        r["world"] = world
        r["clips_per_s"] = world * args.batch / r["step"]
        rows.append(r)
    base = rows[0]["clips_per_s"] / rows[0]["world"]
    print(f"model {args.model} (depth {args.depth or 'default'}, {rows[0]['params'] / 1e6:.2f} M params), "
          f"{args.frames}x{args.size}x{args.size}, {args.batch} clips per process, {args.device}, 1 thread per process")
    print(f"{'procs':>5} {'step ms':>9} {'no_sync ms':>10} {'allreduce ms':>12} {'clips/s':>9} {'efficiency':>10} "
          f"{'comm share':>10} {'allreduce/step':>14}")
    for r in rows:
        eff = r["clips_per_s"] / (base * r["world"])
        share = max(0.0, (r["step"] - r["no_sync"]) / r["step"])
        print(f"{r['world']:>5} {1e3 * r['step']:>9.1f} {1e3 * r['no_sync']:>10.1f} {1e3 * r['allreduce']:>12.2f} "
              f"{r['clips_per_s']:>9.1f} {eff:>10.2f} {share:>10.1%} {r['allreduce'] / r['step']:>14.1%}")


if __name__ == "__main__":
    sys.exit(main())
