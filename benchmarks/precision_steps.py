"""bf16 autocast against fp32 for the MViTv2-S and MAE-ST training steps, with this machine's matmul ratio.

``vit_step.py`` answers "does bf16 pay" for the ViT-B step; this script asks the same of the two other
steps issue 26 names, on the same terms: one training step (forward, loss, backward, fused AdamW over
training's parameter groups, ``zero_grad(set_to_none=True)``) in fp32 and under ``torch.autocast("cpu",
bfloat16)`` (what ``trainer.precision: bf16-mixed`` runs: weights, gradients and optimizer state stay
fp32), alternated round by round so that each round gives one bf16/fp32 ratio, and the same run's square
matmul rates in both dtypes (``vit_step.matmul_ceiling``, before and after the steps, best kept).

- MViTv2-S (arXiv 2112.01526), supervised: 16x224x224 clips, cross-entropy over 400 classes.
- MAE-ST (arXiv 2205.09113) on ViT-B at 90% masking: 16x224x224 clips, each with its own mask, decoder
  512 x 4 with 8 heads, the loss on the removed tokens (``mae_speedup.make_step``).

Target (issue 26): where the bf16/fp32 matmul ratio exceeds 1.5, the bf16 step at least 0.5x that ratio
faster than the fp32 step; elsewhere bf16 at least as fast as fp32, or fp32 stays the choice (what
``trainer.precision: auto`` does below a 1.2x matmul ratio).

    python benchmarks/precision_steps.py            # quiet machine, 2 threads, a few minutes
    python benchmarks/precision_steps.py --quick    # tiny models, seconds (checks the script)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import contextlib
import statistics
from pathlib import Path
import sys

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mae_speedup import make_step as mae_step  # noqa: E402  (this folder)
from vit_step import Config, alternate, loadavg, make_step, matmul_ceiling, round_ratio, tune_malloc  # noqa: E402

from tubelet.config.schema import ModelConfig, OptimConfig, Recipe  # noqa: E402
from tubelet.engine.optim import build_optimizer  # noqa: E402
from tubelet.methods import build_method  # noqa: E402
from tubelet.methods.mae_st import MAESTConfig  # noqa: E402
from tubelet.models import create_model  # noqa: E402
from tubelet.models.layers.depthwise import DepthwiseConv3d  # noqa: E402


Steps = dict[bool, Callable[[], None]]  # bf16 autocast on/off -> one training step


def supervised(name: str, frames: int, size: int, batch: int, overrides: dict) -> tuple[str, Steps]:
    """A classifier's training step (``vit_step.make_step``), its optimizer as ``tubelet fit`` builds it."""
    torch.manual_seed(0)
    model = create_model(name, num_frames=frames, img_size=size, num_classes=400, **overrides).train()
    opt = build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.05), lr=1e-4)
    x = torch.randn(batch, 3, frames, size, size)
    y = torch.randint(0, 400, (batch,))
    return f"{name} supervised, {batch}x3x{frames}x{size}^2", {b: make_step(model, opt, x, y, b) for b in (False, True)}


@contextlib.contextmanager
def depthwise_as_autocast_casts():
    """``DepthwiseConv3d`` as plain ``nn.Conv3d`` (bf16 under autocast), to time what keeping it fp32 saves."""
    keep = DepthwiseConv3d.forward
    DepthwiseConv3d.forward = nn.Conv3d.forward
    try:
        yield
    finally:
        DepthwiseConv3d.forward = keep


def mae_st(model: ModelConfig, method: dict, batch: int, ratio: float) -> tuple[str, Steps]:
    """An MAE-ST pre-training step at a fixed mask ratio (each clip its own mask)."""
    torch.manual_seed(0)
    mae = build_method(Recipe(model=model, method=MAESTConfig(**method))).train()
    opt = build_optimizer(mae, OptimConfig(name="adamw", weight_decay=0.05, betas=[0.9, 0.95]), lr=1e-4)
    video = torch.randn(batch, 3, model.num_frames, model.img_size, model.img_size)
    loss_of = mae_step(mae, video, ratio, seed=0)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(video)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return (f"MAE-ST {model.name} at {ratio:.0%} masking, {batch}x3x{model.num_frames}x{model.img_size}^2",
            {b: (lambda b=b: step(b)) for b in (False, True)})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models and clips: checks the script in seconds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed rounds (one step of each configuration per round)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--mae-batch", type=int, default=2, help="clips per MAE-ST step (issue 26's smaller case)")
    p.add_argument("--default-malloc", action="store_true", help="keep glibc's default allocator settings")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = loadavg()
    tuned = False if args.default_malloc else tune_malloc()
    if args.quick:
        sizes, reps = [256, 512], 3
        models = [supervised("mvitv2_s", 4, 64, 1, {"depth": 2}),
                  mae_st(ModelConfig(name="vit_tiny", num_frames=4, img_size=64, overrides={"depth": 2}),
                         dict(decoder_dim=64, decoder_depth=1, decoder_heads=2), args.mae_batch, 0.9)]
        args.steps, args.warmup = 2, 1
    else:
        sizes, reps = [2048, 4096], 3
        models = [supervised("mvitv2_s", 16, 224, 1, {}),
                  mae_st(ModelConfig(name="vit_base", num_frames=16, img_size=224), dict(decoder_heads=8),
                         args.mae_batch, 0.9)]
    fp32 = matmul_ceiling(sizes, torch.float32, reps)
    bf16 = matmul_ceiling(sizes, torch.bfloat16, reps)
    configs = [Config(label, prec, steps[prec == "bf16"]) for label, steps in models for prec in ("fp32", "bf16")]

    def bf16_depthwise(step=models[0][1][True]) -> None:
        with depthwise_as_autocast_casts():
            step()

    configs.append(Config(models[0][0], "bf16, depthwise convs in bf16", bf16_depthwise))
    alternate(configs, args.warmup, args.steps)
    fp32 = max(fp32, matmul_ceiling(sizes, torch.float32, reps))
    bf16 = max(bf16, matmul_ceiling(sizes, torch.bfloat16, reps))
    ratio = bf16 / fp32

    print(f"\n{args.threads} threads, malloc tuned: {tuned}, CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"1-min load at start / end: {load_start} / {loadavg()} (above ~0.5 the machine was shared)")
    print(f"matmul: fp32 {fp32:.1f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s, bf16/fp32 = {ratio:.2f}x "
          f"(n = {', '.join(map(str, sizes))}, best of before and after the steps)")
    print(f"training steps alternated in {args.steps} rounds after {args.warmup} warm-up rounds (median s)\n")
    need = 0.5 * ratio if ratio > 1.5 else 1.0
    rule = f"bf16 >= 0.5 x {ratio:.2f} = {need:.2f}x fp32" if ratio > 1.5 else "bf16 at least as fast as fp32, else fp32"
    print("| step | fp32 s | bf16 s | bf16 speed-up (median [min, max] of rounds) | target | verdict |")
    print("|---|--:|--:|--:|---|---|")
    ok = True
    for i in range(0, 2 * len(models), 2):
        c32, c16 = configs[i], configs[i + 1]
        med, lo, hi = round_ratio(c32, c16)
        met = med >= need
        ok &= met or ratio <= 1.5  # below 1.5 fp32 stays the choice: no failure
        verdict = "met" if met else ("MISSED" if ratio > 1.5 else "fp32 stays the choice")
        print(f"| {c32.model} | {statistics.median(c32.times):.3f} | {statistics.median(c16.times):.3f} "
              f"| {med:.2f}x [{lo:.2f}, {hi:.2f}] | {rule} | {verdict} |")
    c32, c16, slow = configs[0], configs[1], configs[-1]
    print(f"\n{c32.model} with its depthwise Conv3d layers in bf16, as plain autocast runs them (DepthwiseConv3d "
          f"keeps them fp32): bf16 step {statistics.median(slow.times):.3f} s, speed-up over fp32 "
          "{:.2f}x [{:.2f}, {:.2f}]; ".format(*round_ratio(c32, slow))
          + "that step takes {:.2f}x [{:.2f}, {:.2f}] the time of the bf16 step above".format(*round_ratio(slow, c16)))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
