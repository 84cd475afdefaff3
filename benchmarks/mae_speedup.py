"""MAE-ST training-step speed-up from the sparse encoder (arXiv 2205.09113, Table 1 / Sec. 5.1).

One MAE-ST training step (forward, backward, AdamW step; fp32) of ViT-B at 16x224x224
(1568 tokens; decoder 512 x 4 blocks, 8 heads and 16 heads) at mask ratios 0, 0.5, 0.75 and 0.9, measured side by
side in one run (steps interleaved round-robin over the ratios, median reported), against ratio 0.
Also prints the FLOP ratio of the same steps (``tubelet.flops.count_flops``, attention counted,
forward + backward, GMACs) and how much of that bound the measured step-time ratio reaches.

The default batch is 4 clips, each with its own mask: one video at the paper's repeated sampling
(r = 4 clips per decoded video), the smallest step of its recipe (a batch of 512 videos on 128 GPUs
is 4 videos, 16 clips, per device). ``--batch 1`` measures a single clip, which no MAE-ST recipe trains
on; there the sparse encoder's matmuls have only 157 rows and run below the matmul rate.

At ratio 0 nothing is removed; that step scores every token in the loss so that it does the work of a
dense MAE (the removed-token loss would be empty). All ratios use the same weights and clip.

``--decoder-heads 8,16`` (the default) measures both decoder head counts the references use (mae_st 16,
SlowFast 8; same FLOPs, different attention kernel shapes) side by side. A second table splits the steps
at ratios 0 and 0.9 into encoder (forward + backward), decoder with targets and loss (forward +
backward), and the AdamW step, each timed alone in the same round-robin, to show which part of the
step keeps the time ratio below the FLOP ratio.

Targets (REFERENCE_NUMBERS §C; paper Table 1: ViT-L 7.7x fewer encoder FLOPs, 5.8x compute time):
step time at 0.9 at least 4.4x faster than at 0, and at least 90% of the FLOP-ratio bound.

    python benchmarks/mae_speedup.py            # the real run: quiet machine, 2 threads, minutes
    python benchmarks/mae_speedup.py --quick    # tiny model and clip, seconds (checks the script)
"""

from __future__ import annotations

import argparse
from pathlib import Path
import resource
import statistics
import time

import torch
from torch import nn

from tubelet.config.schema import ModelConfig, Recipe
from tubelet.methods.mae_st import MAESTConfig
from tubelet.data.masking import TokenMask
from tubelet.engine.optim import param_groups
from tubelet.flops import count_flops
from tubelet.methods import build_method
from vit_step import tune_malloc  # same allocator setting as the ViT step benchmark (this folder)

RATIOS = (0.0, 0.5, 0.75, 0.9)


class _Encoder(nn.Module):
    """The sparse encoder alone (forward), for the paper's encoder-FLOP comparison."""

    def __init__(self, mae: nn.Module, mask: TokenMask) -> None:
        super().__init__()
        self.mae, self.mask = mae, mask

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.mae.forward_encoder(video, self.mask)


class _Step(nn.Module):
    """The loss of one MAE-ST step with a fixed mask (for FLOP counting and timing)."""

    def __init__(self, mae: nn.Module, mask: TokenMask, loss_mask: TokenMask) -> None:
        super().__init__()
        self.mae, self.mask, self.loss_mask = mae, mask, loss_mask

    def forward(self, video: torch.Tensor) -> dict:
        grid = self.mae.grid_of(video)
        latent = self.mae.forward_encoder(video, self.mask)
        pred = self.mae.forward_decoder(latent, self.mask, grid, positions=self.loss_mask.masked)
        return {"loss": self.mae.forward_loss(video, pred, self.loss_mask)}


class _Parts:
    """The three parts of one step, each timed alone: encoder forward+backward (a fixed output
    gradient), decoder+targets+loss forward+backward (from a detached latent), the optimizer step."""

    def __init__(self, step: _Step, video: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        self.step, self.video, self.opt = step, video, opt
        with torch.no_grad():
            latent = step.mae.forward_encoder(video, step.mask)
        self.latent = latent.detach()
        self.grad = torch.randn_like(latent) * 1e-3
        self.grid = step.mae.grid_of(video)

    def encoder(self) -> None:
        # Fresh gradients, as in a training step: the encoder part touches only encoder parameters and
        # the decoder part (from a detached latent) only decoder ones, so neither accumulates, and the
        # optimizer part then finds every gradient set.
        self.opt.zero_grad(set_to_none=True)
        self.step.mae.forward_encoder(self.video, self.step.mask).backward(self.grad)

    def decoder(self) -> None:
        mae, latent = self.step.mae, self.latent.requires_grad_(True)
        pred = mae.forward_decoder(latent, self.step.mask, self.grid, positions=self.step.loss_mask.masked)
        mae.forward_loss(self.video, pred, self.step.loss_mask).backward()

    def optimizer(self) -> None:
        self.opt.step()


def make_step(mae: nn.Module, video: torch.Tensor, ratio: float, seed: int) -> _Step:
    mae.mask_ratio = ratio
    mask = mae.random_mask(video, torch.Generator().manual_seed(seed))
    loss_mask = mask
    if mask.masked.shape[1] == 0:  # ratio 0: score every token, as a dense autoencoder would
        loss_mask = TokenMask(mask.keep[:, :0], mask.keep, mask.ids_restore)
    return _Step(mae, mask, loss_mask)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model and clip: checks the script in seconds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per ratio (default 5, quick 3)")
    ap.add_argument("--batch", default="4,2",
                    help="clips per step, each with its own mask; several comma-separated batches are measured "
                         "in the same run (default 4,2: one video at the paper's repeated sampling r=4, and 2)")
    ap.add_argument("--ratios", default=None, help="comma-separated mask ratios (default 0,0.5,0.75,0.9; 0 and 0.9 "
                                                   "must be among them)")
    ap.add_argument("--model", default=None, help="backbone (default vit_base; quick vit_tiny, depth 2)")
    ap.add_argument("--default-malloc", action="store_true", help="skip the glibc malloc tuning")
    ap.add_argument("--decoder-heads", default=None,
                    help="comma-separated decoder head counts, each measured (default 8,16; quick 4,2)")
    ap.add_argument("--no-parts", action="store_true", help="skip the encoder/decoder/optimizer split")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tuned = False if args.default_malloc else tune_malloc()

    if args.quick:
        model = ModelConfig(name=args.model or "vit_tiny", num_frames=8, img_size=64, overrides={"depth": 2})
        method = dict(decoder_dim=64, decoder_depth=1)
        heads_list = [int(h) for h in (args.decoder_heads or "4,2").split(",")]
        steps = args.steps or 3
    else:
        model = ModelConfig(name=args.model or "vit_base", num_frames=16, img_size=224)
        method = {}  # decoder 512 wide, 4 deep; first-frame norm-pixel targets
        heads_list = [int(h) for h in (args.decoder_heads or "8,16").split(",")]
        steps = args.steps or 5
    batches = [int(b) for b in str(args.batch).split(",")]
    ratios = tuple(float(r) for r in args.ratios.split(",")) if args.ratios else RATIOS
    if 0.0 not in ratios or 0.9 not in ratios:
        raise SystemExit(f"--ratios must include 0 and 0.9, got {args.ratios}")
    clips = torch.randn(max(batches), 3, model.num_frames, model.img_size, model.img_size)
    videos = {b: clips[:b].contiguous() for b in batches}  # the same clips, the first b of them

    # One method per head count (same seed, so the encoders are identical); each with its own fused
    # AdamW over training's parameter groups (no decay on 1-D params) and pre-training betas.
    runs: dict[tuple[int, int, float], _Step] = {}
    opts: dict[int, torch.optim.Optimizer] = {}
    for h in heads_list:
        torch.manual_seed(0)
        mae = build_method(Recipe(model=model, method=MAESTConfig(decoder_heads=h, **method)))
        mae.train()
        opts[h] = torch.optim.AdamW(param_groups(mae, 0.05), lr=1e-4, betas=(0.9, 0.95), fused=True)
        for b in batches:
            for i, r in enumerate(ratios):
                runs[(b, h, r)] = make_step(mae, videos[b], r, seed=i)
    # FLOPs do not depend on the head count: count them on the first method.
    h0 = heads_list[0]
    flops = {(b, r): count_flops(runs[(b, h0, r)], videos[b], backward=True).macs for b in batches for r in ratios}
    enc = {(b, r): count_flops(_Encoder(runs[(b, h0, r)].mae, runs[(b, h0, r)].mask), videos[b]).macs
           for b in batches for r in ratios}

    faults: dict[tuple[int, int, float], list[int]] = {k: [] for k in runs}

    def train_step(key: tuple[int, int, float]) -> float:
        opt = opts[key[1]]
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        runs[key](videos[key[0]])["loss"].backward()
        opt.step()
        t = time.perf_counter() - t0
        faults[key].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        return t

    # Warm-up, twice per step: the first creates the AdamW state, which takes over memory the step's
    # activations had just freed, so the second still faults in fresh pages.
    for _ in range(2):
        for key in runs:
            train_step(key)
    for key in runs:
        faults[key].clear()
    parts = {}
    if not args.no_parts:
        b0 = batches[0]
        for r in (0.0, 0.9):  # the split, on the first batch and head count; grads stay set for the optimizer part
            parts[r] = _Parts(runs[(b0, h0, r)], videos[b0], opts[h0])
    part_times: dict[tuple[float, str], list[float]] = {(r, n): [] for r in parts for n in ("encoder", "decoder", "optimizer")}
    times: dict[tuple[int, int, float], list[float]] = {k: [] for k in runs}
    for _ in range(steps):
        for key in runs:
            times[key].append(train_step(key))
        for r, pt in parts.items():
            for name in ("encoder", "decoder", "optimizer"):
                t0 = time.perf_counter()
                getattr(pt, name)()
                part_times[(r, name)].append(time.perf_counter() - t0)

    n = runs[(batches[0], h0, 0.0)].mask.ids_restore.shape[1]
    load = open("/proc/loadavg").read().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(f"MAE-ST training step, {model.name}, {model.num_frames}x{model.img_size}x{model.img_size} "
          f"({n} tokens), batches {batches} alternated in one run, fp32, 1-min load at the end {load} "
          f"(above ~0.5 the machine was shared), {args.threads} threads, AdamW(fused), malloc tuned: {tuned}; "
          f"median of {steps} steps; minor page faults per step (median), which slow a step without "
          f"adding work")
    print(f"{'batch':>5} {'heads':>5} {'ratio':>6} {'kept':>6} {'enc GMACs':>10} {'enc x':>6} {'GMACs f+b':>10} {'FLOP x':>7} "
          f"{'step s':>8} {'time x':>7} {'of bound':>9} {'faults':>8}")
    result = {}
    for b in batches:
        for h in heads_list:
            base_t, base_f = statistics.median(times[(b, h, 0.0)]), flops[(b, 0.0)]
            for r in ratios:
                t = statistics.median(times[(b, h, r)])
                fx, tx = base_f / flops[(b, r)], base_t / t
                kept = runs[(b, h, r)].mask.keep.shape[1]
                print(f"{b:>5d} {h:>5d} {r:>6.2f} {kept:>6d} {enc[(b, r)] / 1e9:>10.2f} "
                      f"{enc[(b, 0.0)] / enc[(b, r)]:>6.1f} {flops[(b, r)] / 1e9:>10.2f} {fx:>7.2f} {t:>8.3f} "
                      f"{tx:>7.2f} {tx / fx:>8.0%} {int(statistics.median(faults[(b, h, r)])):>8d}")
            # per-round ratios: both steps of a round ran next to each other
            per_round = [a / c for a, c in zip(times[(b, h, 0.0)], times[(b, h, 0.9)])]
            result[(b, h)] = (base_f / flops[(b, 0.9)], statistics.median(per_round))

    if parts:
        print(f"\nParts of the step (batch {b0}, decoder heads {h0}), each timed alone, median s; share of their sum:")
        print(f"{'ratio':>6} {'encoder f+b':>12} {'decoder+loss f+b':>17} {'AdamW step':>11} {'sum':>7} "
              f"{'full step':>10} {'decoder+AdamW share':>20}")
        for r in parts:
            e, d, o = (statistics.median(part_times[(r, name)]) for name in ("encoder", "decoder", "optimizer"))
            full = statistics.median(times[(b0, h0, r)])
            print(f"{r:>6.2f} {e:>12.3f} {d:>17.3f} {o:>11.3f} {e + d + o:>7.3f} {full:>10.3f} "
                  f"{(d + o) / (e + d + o):>19.0%}")
        e0, e9 = (statistics.median(part_times[(r, "encoder")]) for r in (0.0, 0.9))
        print(f"encoder alone: {e0 / e9:.2f}x faster at 0.9 than at 0 (its forward FLOP ratio: "
              f"{enc[(b0, 0.0)] / enc[(b0, 0.9)]:.2f}x)")

    if not args.quick:
        targets = {4: 4.4, 2: 4.0}  # REFERENCE_NUMBERS §C / issue 26: 4 clips >= 4.4x, 2 clips >= 4.0x
        for (b, h), (fx, tx) in result.items():
            need = targets.get(b)
            verdict = "no target" if need is None else ("PASS" if tx >= need and tx >= 0.9 * fx else "FAIL")
            print(f"batch {b}, decoder heads {h}: at 0.9 the per-round time ratio is {tx:.2f}x (FLOP ratio "
                  f"{fx:.2f}x); target >= {need}x and >= 90% of the FLOP ratio: {verdict}")


if __name__ == "__main__":
    main()
