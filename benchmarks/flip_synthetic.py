"""FLIP's claim on the synthetic set, from the command line: video-text pre-training at mask ratios
0 / 0.5 / 0.75 / 0.9 **at the same wall-clock budget**, then zero-shot top-1 on the held-out test clips
from class-name prompts (chance 1/8), before and after unmasked tuning (flip_synthetic_video_unmasked).

Equal time, on a machine others share: a wall-clock budget measured run by run would give each ratio
whatever the other users left it. So the time of one training step of each ratio is measured side by
side, in one process, interleaved (ratio 0, 0.5, 0.75, 0.9, then 0.5, 0.75, 0.9, 0: each round starts one ratio
later, ``--reps`` rounds after a warm-up round), and the median of each ratio is its step time: whatever load there is falls on every
ratio alike. A step here is what training repeats: the next batch from the recipe's own training
loader (clips rendered beforehand, as they are after the first epoch), forward, backward, gradient
clipping and the AdamW step. The budget (``--minutes`` of that step time, or by default the time of
``--budget-steps`` steps at the first ratio, which does not shrink when the machine is busy) becomes a
step count per ratio, and every run trains by steps (``tubelet fit ... trainer.max_steps=N``), so a
busy moment during one run changes its wall-clock time, not what it learns. The wall-clock time each run took is printed too, as a check.

    python benchmarks/flip_synthetic.py --budget-steps 300 --out runs/flip_synthetic   # the time of 300 unmasked steps
    python benchmarks/flip_synthetic.py --minutes 5 --out runs/flip_synthetic
    python benchmarks/flip_synthetic.py --quick      # a seconds-long check that it runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RECIPE, TUNING = "flip_synthetic_video", "flip_synthetic_video_unmasked"
QUICK = ["data.synthetic.num_videos=96", "data.batch_size=8", "method.probe_steps=0",
         "method.text_overrides={embed_dim: 32, depth: 1, num_heads: 2}", "model.overrides.depth=1"]


def tubelet(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tubelet.cli.main", *args], check=True)


def calibrate(ratios: list[float], reps: int, overrides: list[str]) -> dict[float, list[float]]:
    """Seconds of each ratio's training steps, measured interleaved in this process."""
    from tubelet.config.loader import load_recipe
    from tubelet.data.builder import build_dataset
    from tubelet.engine.datamodule import TubeletDataModule
    from tubelet.engine.optim import build_optimizer
    from tubelet.methods import build_method

    recipe = load_recipe(RECIPE, overrides)
    torch.set_num_threads(recipe.trainer.num_threads or torch.get_num_threads())
    train = build_dataset(recipe.data, "train", seed=recipe.seed)
    loader = TubeletDataModule(train, batch_size=recipe.data.batch_size, seed=recipe.seed).train_dataloader()
    for _ in loader:  # renders every training clip once: later steps only read and transform them
        pass
    batches = iter(())

    def next_batch() -> dict:
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:
            batches = iter(loader)
            return next(batches)

    runs = {}
    for ratio in ratios:
        torch.manual_seed(recipe.seed)
        method = build_method(load_recipe(RECIPE, [*overrides, f"method.mask_ratio={ratio}"])).train()
        runs[ratio] = (method, build_optimizer(method, recipe.optim, recipe.optim.lr))
    times: dict[float, list[float]] = {r: [] for r in ratios}
    order = list(runs)
    for rep in range(reps + 1):  # round 0 warms every ratio up and is not counted
        # each round starts one ratio later, so no ratio is always the first of a round (the step after
        # the previous round's last, with its caches) and position effects fall on every ratio alike
        for ratio in order[rep % len(order):] + order[:rep % len(order)]:
            method, opt = runs[ratio]
            t0 = time.perf_counter()
            batch = next_batch()
            loss = method(batch)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(method.parameters(), recipe.optim.clip_grad or float("inf"))
            opt.step()
            if rep:
                times[ratio].append(time.perf_counter() - t0)
    return times


def zero_shot(recipe: str, run: Path, extra: list[str]) -> dict:
    tubelet("test", recipe, "--checkpoint", str(run / "method.safetensors"), f"run_dir={run}", *extra)
    res = json.loads((run / "report" / "test_results.json").read_text())
    return {"top1": res["top1"], "t2v_r1": res["retrieval"]["t2v_r1"], "probe": res.get("linear_probe_top1")}


def main() -> None:
    ap = argparse.ArgumentParser()
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, help="training time of each pre-training run, "
                        "in the calibrated step time")
    budget.add_argument("--budget-steps", type=int, default=300, help="the budget is the calibrated time of this "
                        "many steps at the first ratio (default; the same on a busy or a quiet machine)")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.5, 0.75, 0.9])
    ap.add_argument("--reps", type=int, default=15, help="interleaved rounds of the calibration")
    ap.add_argument("--out", default="runs/flip_synthetic")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the calibration and of every run")
    ap.add_argument("--seed", type=int, default=0, help="the recipes' seed (clips, masks, initialisation) in every "
                    "run and in the calibration")
    ap.add_argument("--quick", action="store_true", help="tiny set and towers, a few steps: checks that it runs")
    args = ap.parse_args()
    out = Path(args.out)
    # the same thread count everywhere: the calibrated step times are those of the runs
    extra = [*(QUICK if args.quick else []), f"trainer.num_threads={args.threads}", f"seed={args.seed}"]
    common = [*extra, "trainer.enable_progress_bar=false"]

    reps = 2 if args.quick else args.reps
    times = calibrate(args.ratios, reps, extra)
    step_s = {r: statistics.median(t) for r, t in times.items()}
    first = args.ratios[0]
    budget = 60 * args.minutes if args.minutes else args.budget_steps * step_s[first]
    told = f"{args.minutes:g} min" if args.minutes else f"the time of {args.budget_steps} steps at mask {first}"
    print(f"\ncalibration: {reps} interleaved rounds, median seconds per training step "
          f"(range); budget {told} = {budget:.0f} s per ratio")
    for r in args.ratios:
        print(f"  mask {r:<5} {step_s[r]:.3f} s  ({min(times[r]):.3f} - {max(times[r]):.3f})  "
              f"{step_s[r] / step_s[args.ratios[0]]:.3f}x of mask {args.ratios[0]}")
    rows = []
    for ratio in args.ratios:
        steps = 4 if args.quick else max(10, int(budget / step_s[ratio]))
        run = out / f"mask_{ratio}"
        t0 = time.perf_counter()
        tubelet("fit", "--config", RECIPE, f"method.mask_ratio={ratio}", f"trainer.max_steps={steps}",
                f"trainer.checkpoint_every_n_steps={steps}", f"run_dir={run}", *common)
        took = time.perf_counter() - t0
        before = zero_shot(RECIPE, run, [*extra, "method.probe_steps=0"])
        tuned = out / f"mask_{ratio}_unmasked"
        tubelet("fit", "--config", TUNING, f"model.checkpoint={run / 'method.safetensors'}", f"run_dir={tuned}",
                *common, *(["trainer.max_steps=2", "trainer.checkpoint_every_n_steps=2"] if args.quick else []))
        after = zero_shot(TUNING, tuned, [*extra, f"model.checkpoint={run / 'method.safetensors'}"])
        rows.append((ratio, steps, took, before, after))
        print(f"mask {ratio}: {steps} steps ({took / 60:.1f} min of wall clock); zero-shot {before['top1']:.3f} -> "
              f"{after['top1']:.3f} after unmasked tuning", flush=True)
    from tubelet.config.loader import load_recipe

    batch = load_recipe(RECIPE, extra).data.batch_size
    print(f"\n| mask | s / step (calibrated) | steps in {budget:.0f} s | pairs seen | wall-clock min | "
          "zero-shot top-1 | after unmasked tuning | t2v R@1 (tuned) | linear probe (tuned) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ratio, steps, took, b, a in rows:
        probe = f"{a['probe']:.3f}" if a["probe"] is not None else "-"
        print(f"| {ratio} | {step_s[ratio]:.3f} | {steps} | {steps * batch} | {took / 60:.1f} | {b['top1']:.3f} | "
              f"{a['top1']:.3f} | {a['t2v_r1']:.3f} | {probe} |")


if __name__ == "__main__":
    main()
