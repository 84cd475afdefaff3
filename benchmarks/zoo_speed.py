"""Model-zoo speed on CPU: inference clips/s and training step time of every zoo model, one run.

So that users can pick a model by speed: each model at its published input, side by side in one run
on the same machine and threads, with its GMACs and parameters.

- inference: eval mode, no grad, batch ``--batch``, at the input of the zoo's per-view cost (ResNets
  and SlowFast: the zoo's frames at 256x256; X3D: its test crop 182/182/256/356; MViTv1: 224x224);
  reported as clips/s (batch / median time);
- training step: train mode, cross-entropy on random labels, backward, SGD with momentum 0.9 (the
  zoo's optimiser), at the training crop (224; X3D 160/160/224/312), in seconds per step;
- GMACs per clip at the inference input (``tubelet.flops.count_flops``: conv/linear/attention
  multiply-adds, no BatchNorm term; see docs/models.md for how they compare with the zoo's table).

Times are medians over ``--steps`` timed runs after one warm-up. Only meaningful on a quiet machine.

    PYTHONPATH=src python benchmarks/zoo_speed.py                               # every zoo model
    PYTHONPATH=src python benchmarks/zoo_speed.py --models x3d_xs,x3d_s --steps 3
    PYTHONPATH=src python benchmarks/zoo_speed.py --models 'slowfast_*' --threads 2
    PYTHONPATH=src python benchmarks/zoo_speed.py --quick                       # x3d_xs, one step: seconds
"""

from __future__ import annotations

import argparse
import fnmatch
import statistics
import time

import torch
import torch.nn.functional as F

# name -> (frames, inference crop, training crop). Frames are what the model takes: SlowFast's is the
# Fast pathway's clip (alpha x the Slow frames), selected into both pathways by the model itself.
ZOO: dict[str, tuple[int, int, int]] = {
    "slow_r50": (8, 256, 224),
    "c2d_r50": (8, 256, 224),
    "i3d_r50": (8, 256, 224),
    "r2plus1d_r50": (16, 256, 224),
    "csn_r101": (32, 256, 224),
    "csn_r152": (32, 256, 224),
    "slowfast_r50_4x16": (32, 256, 224),
    "slowfast_r50_8x8": (32, 256, 224),
    "slowfast_r101_8x8": (32, 256, 224),
    "x3d_xs": (4, 182, 160),
    "x3d_s": (13, 182, 160),
    "x3d_m": (16, 256, 224),
    "x3d_l": (16, 356, 312),
    "efficient_x3d_xs": (4, 182, 160),
    "mvitv1_b_16x4": (16, 224, 224),
    "mvitv1_b_32x3": (32, 224, 224),
}


def _median_time(fn, steps: int) -> float:
    fn()  # warm-up: allocator, oneDNN primitives
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _select(spec: str | None) -> list[str]:
    if not spec:
        return list(ZOO)
    names: list[str] = []
    for pattern in (p.strip() for p in spec.split(",") if p.strip()):
        hits = [n for n in ZOO if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise SystemExit(f"--models: '{pattern}' matches no zoo model; known: {', '.join(ZOO)}")
        names += [n for n in hits if n not in names]
    return names


def measure(name: str, steps: int, batch: int) -> dict:
    from tubelet.flops import count_flops
    from tubelet.models import create_model

    frames, crop, train_crop = ZOO[name]
    with torch.device("meta"):
        meta = create_model(name).eval()
        fc = count_flops(meta, (torch.randn(1, 3, frames, crop, crop),))
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(batch, 3, frames, crop, crop)

    def infer():
        with torch.no_grad():
            model(x)

    model.eval()
    t_inf = _median_time(infer, steps)

    xt = torch.randn(batch, 3, frames, train_crop, train_crop)
    y = torch.randint(0, 400, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xt), y).backward()
        opt.step()

    model.train()
    t_train = _median_time(train_step, steps)
    return {"model": name, "input": f"{frames}x{crop}^2", "gmacs": fc.macs / 1e9, "params_m": fc.params / 1e6,
            "clips_s": batch / t_inf, "train_input": f"{frames}x{train_crop}^2", "step_s": t_train}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=None,
                    help="comma-separated names or globs (default: every zoo model), e.g. 'x3d_*,slow_r50'")
    ap.add_argument("--quick", action="store_true", help="a smoke run: one timed step, x3d_xs unless --models")
    ap.add_argument("--steps", type=int, default=3, help="timed runs per measurement, after one warm-up (default 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    if args.quick:
        args.steps, args.models = 1, args.models or "x3d_xs"
    if args.steps < 1 or args.batch < 1 or args.threads < 1:
        raise SystemExit("--steps, --batch and --threads must be at least 1")
    names = _select(args.models)
    torch.set_num_threads(args.threads)

    rows = []
    for name in names:
        rows.append(measure(name, args.steps, args.batch))
        r = rows[-1]
        print(f"[zoo_speed] {name}: {r['clips_s']:.3f} clips/s, {r['step_s']:.3f} s/step", flush=True)
    fastest = max(r["clips_s"] for r in rows)
    print(f"\nbatch {args.batch}, torch {torch.__version__}, {args.threads} threads, median of {args.steps} "
          f"after one warm-up; 'x fastest' = clips/s over the fastest model's in this run")
    print("| model | input (inference) | GMACs / clip | params (M) | clips/s | x fastest | train input | s / train step |")
    print("|---|---|--:|--:|--:|--:|---|--:|")
    for r in rows:
        print(f"| {r['model']} | {r['input']} | {r['gmacs']:.2f} | {r['params_m']:.2f} | {r['clips_s']:.3f} | "
              f"{r['clips_s'] / fastest:.3f} | {r['train_input']} | {r['step_s']:.3f} |")


if __name__ == "__main__":
    main()
