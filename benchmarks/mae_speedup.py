"""MAE-ST training-step speed-up from the sparse encoder (arXiv 2205.09113, Table 1 / Sec. 5.1).

One MAE-ST training step (forward, backward, AdamW step; fp32, batch 1) of ViT-B at 16x224x224
(1568 tokens; decoder 512 x 4 blocks, 16 heads) at mask ratios 0, 0.5, 0.75 and 0.9, measured side by
side in one run (steps interleaved round-robin over the ratios, median reported), against ratio 0.
Also prints the FLOP ratio of the same steps (``tubelet.flops.count_flops``, attention counted,
forward + backward, GMACs) and how much of that bound the measured step-time ratio reaches.

At ratio 0 nothing is removed; that step scores every token in the loss so that it does the work of a
dense MAE (the removed-token loss would be empty). All ratios use the same weights and clip.

Targets (REFERENCE_NUMBERS §C; paper Table 1: ViT-L 7.7x fewer encoder FLOPs, 5.8x compute time):
step time at 0.9 at least 4.4x faster than at 0, and at least 90% of the FLOP-ratio bound.

    python benchmarks/mae_speedup.py            # the real run: quiet machine, 2 threads, minutes
    python benchmarks/mae_speedup.py --quick    # tiny model and clip, seconds (checks the script)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from tubelet.config.schema import MAESTConfig, ModelConfig, Recipe
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
        pred = self.mae.forward_decoder(self.mae.forward_encoder(video, self.mask), self.mask, grid)
        return {"loss": self.mae.forward_loss(video, pred, self.loss_mask)}


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
    ap.add_argument("--model", default=None, help="backbone (default vit_base; quick vit_tiny, depth 2)")
    ap.add_argument("--default-malloc", action="store_true", help="skip the glibc malloc tuning")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tuned = False if args.default_malloc else tune_malloc()
    torch.manual_seed(0)

    if args.quick:
        model = ModelConfig(name=args.model or "vit_tiny", num_frames=8, img_size=64, overrides={"depth": 2})
        method = MAESTConfig(decoder_dim=64, decoder_depth=1, decoder_heads=4)
        steps = args.steps or 3
    else:
        model = ModelConfig(name=args.model or "vit_base", num_frames=16, img_size=224)
        method = MAESTConfig()  # decoder 512 wide, 4 deep, 16 heads; first-frame norm-pixel targets
        steps = args.steps or 5
    mae = build_method(Recipe(model=model, method=method))
    mae.train()
    video = torch.randn(1, 3, model.num_frames, model.img_size, model.img_size)
    # Training's parameter groups (no decay on 1-D params), pre-training betas; fused AdamW (one pass
    # over parameters and states), which matters at 90% where the step itself is short.
    opt = torch.optim.AdamW(param_groups(mae, 0.05), lr=1e-4, betas=(0.9, 0.95), fused=True)

    runs = {r: make_step(mae, video, r, seed=i) for i, r in enumerate(RATIOS)}
    flops = {r: count_flops(s, video, backward=True).macs for r, s in runs.items()}
    enc = {r: count_flops(_Encoder(mae, s.mask), video).macs for r, s in runs.items()}

    def train_step(step: _Step) -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        step(video)["loss"].backward()
        opt.step()
        return time.perf_counter() - t0

    for s in runs.values():  # warm-up: allocator, AdamW state
        train_step(s)
    times: dict[float, list[float]] = {r: [] for r in RATIOS}
    for _ in range(steps):
        for r, s in runs.items():
            times[r].append(train_step(s))

    n = runs[0.0].mask.ids_restore.shape[1]
    base_t, base_f = statistics.median(times[0.0]), flops[0.0]
    print(f"MAE-ST training step, {model.name}, {model.num_frames}x{model.img_size}x{model.img_size} "
          f"({n} tokens), batch 1, fp32, {args.threads} threads, AdamW(fused), malloc tuned: {tuned}; "
          f"median of {steps} steps")
    print(f"{'ratio':>6} {'kept':>6} {'enc GMACs':>10} {'enc x':>6} {'GMACs f+b':>10} {'FLOP x':>7} "
          f"{'step s':>8} {'time x':>7} {'of bound':>9}")
    for r in RATIOS:
        t = statistics.median(times[r])
        fx, tx = base_f / flops[r], base_t / t
        kept = runs[r].mask.keep.shape[1]
        print(f"{r:>6.2f} {kept:>6d} {enc[r] / 1e9:>10.2f} {enc[0.0] / enc[r]:>6.1f} {flops[r] / 1e9:>10.2f} "
              f"{fx:>7.2f} {t:>8.3f} {tx:>7.2f} {tx / fx:>8.0%}")
    fx, tx = base_f / flops[0.9], base_t / statistics.median(times[0.9])
    if not args.quick:
        ok = tx >= 4.4 and tx >= 0.9 * fx
        print(f"target at 0.9: time ratio >= 4.4x and >= 90% of the FLOP ratio ({0.9 * fx:.2f}x): "
              f"{'PASS' if ok else 'FAIL'} ({tx:.2f}x)")


if __name__ == "__main__":
    main()
