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
    ap.add_argument("--batch", type=int, default=4,
                    help="clips per step, each with its own mask (default 4: one video at the paper's repeated sampling r=4)")
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
    video = torch.randn(args.batch, 3, model.num_frames, model.img_size, model.img_size)

    # One method per head count (same seed, so the encoders are identical); each with its own fused
    # AdamW over training's parameter groups (no decay on 1-D params) and pre-training betas.
    runs: dict[tuple[int, float], _Step] = {}
    opts: dict[int, torch.optim.Optimizer] = {}
    for h in heads_list:
        torch.manual_seed(0)
        mae = build_method(Recipe(model=model, method=MAESTConfig(decoder_heads=h, **method)))
        mae.train()
        opts[h] = torch.optim.AdamW(param_groups(mae, 0.05), lr=1e-4, betas=(0.9, 0.95), fused=True)
        for i, r in enumerate(RATIOS):
            runs[(h, r)] = make_step(mae, video, r, seed=i)
    # FLOPs do not depend on the head count: count them on the first method.
    h0 = heads_list[0]
    flops = {r: count_flops(runs[(h0, r)], video, backward=True).macs for r in RATIOS}
    enc = {r: count_flops(_Encoder(runs[(h0, r)].mae, runs[(h0, r)].mask), video).macs for r in RATIOS}

    faults: dict[tuple[int, float], list[int]] = {k: [] for k in runs}

    def train_step(key: tuple[int, float]) -> float:
        opt = opts[key[0]]
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        runs[key](video)["loss"].backward()
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
        for r in (0.0, 0.9):  # the split, on the first head count; grads stay set for the optimizer part
            parts[r] = _Parts(runs[(h0, r)], video, opts[h0])
    part_times: dict[tuple[float, str], list[float]] = {(r, n): [] for r in parts for n in ("encoder", "decoder", "optimizer")}
    times: dict[tuple[int, float], list[float]] = {k: [] for k in runs}
    for _ in range(steps):
        for key in runs:
            times[key].append(train_step(key))
        for r, pt in parts.items():
            for name in ("encoder", "decoder", "optimizer"):
                t0 = time.perf_counter()
                getattr(pt, name)()
                part_times[(r, name)].append(time.perf_counter() - t0)

    n = runs[(h0, 0.0)].mask.ids_restore.shape[1]
    print(f"MAE-ST training step, {model.name}, {model.num_frames}x{model.img_size}x{model.img_size} "
          f"({n} tokens), batch {args.batch}, fp32, {args.threads} threads, AdamW(fused), malloc tuned: {tuned}; "
          f"median of {steps} steps; minor page faults per step (median), which slow a step without "
          f"adding work")
    print(f"{'heads':>5} {'ratio':>6} {'kept':>6} {'enc GMACs':>10} {'enc x':>6} {'GMACs f+b':>10} {'FLOP x':>7} "
          f"{'step s':>8} {'time x':>7} {'of bound':>9} {'faults':>8}")
    result = {}
    for h in heads_list:
        base_t, base_f = statistics.median(times[(h, 0.0)]), flops[0.0]
        for r in RATIOS:
            t = statistics.median(times[(h, r)])
            fx, tx = base_f / flops[r], base_t / t
            kept = runs[(h, r)].mask.keep.shape[1]
            print(f"{h:>5d} {r:>6.2f} {kept:>6d} {enc[r] / 1e9:>10.2f} {enc[0.0] / enc[r]:>6.1f} "
                  f"{flops[r] / 1e9:>10.2f} {fx:>7.2f} {t:>8.3f} {tx:>7.2f} {tx / fx:>8.0%} "
                  f"{int(statistics.median(faults[(h, r)])):>8d}")
        result[h] = (base_f / flops[0.9], base_t / statistics.median(times[(h, 0.9)]))

    if parts:
        print(f"\nParts of the step (decoder heads {h0}), each timed alone, median s; share of their sum:")
        print(f"{'ratio':>6} {'encoder f+b':>12} {'decoder+loss f+b':>17} {'AdamW step':>11} {'sum':>7} "
              f"{'full step':>10} {'decoder+AdamW share':>20}")
        for r in parts:
            e, d, o = (statistics.median(part_times[(r, name)]) for name in ("encoder", "decoder", "optimizer"))
            full = statistics.median(times[(h0, r)])
            print(f"{r:>6.2f} {e:>12.3f} {d:>17.3f} {o:>11.3f} {e + d + o:>7.3f} {full:>10.3f} "
                  f"{(d + o) / (e + d + o):>19.0%}")
        e0, e9 = (statistics.median(part_times[(r, "encoder")]) for r in (0.0, 0.9))
        print(f"encoder alone: {e0 / e9:.2f}x faster at 0.9 than at 0 (its forward FLOP ratio: "
              f"{enc[0.0] / enc[0.9]:.2f}x)")

    if not args.quick:
        for h, (fx, tx) in result.items():
            ok = tx >= 4.4 and tx >= 0.9 * fx
            print(f"decoder heads {h}: target at 0.9: time ratio >= 4.4x and >= 90% of the FLOP ratio "
                  f"({0.9 * fx:.2f}x): {'PASS' if ok else 'FAIL'} ({tx:.2f}x)")


if __name__ == "__main__":
    main()
