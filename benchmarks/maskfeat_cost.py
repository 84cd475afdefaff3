"""MaskFeat cost: the HOG target against a MaskFeat MViTv2-S training step, and that step against a
plain supervised MViTv2-S step, side by side in one run.

Claims: computing the HOG targets (8 frames of 224^2 per clip, Sobel + 9-bin histograms + per-cell L2,
cut into 108 values per token) costs at most 5% of a MaskFeat MViTv2-S training step; the MaskFeat
step costs about as much as a supervised step plus the last stage at the finer 14x14 grid (no query
stride there during pre-training) -- the full sequence always goes through the encoder, so MaskFeat
gets none of MAE's compute savings.

    .venv/bin/python benchmarks/maskfeat_cost.py            # 16x224x224, batch 1, 2 threads (minutes)
    .venv/bin/python benchmarks/maskfeat_cost.py --quick    # 4x64x64, seconds (a smoke run)

Rows (medians over ``--repeats`` runs, the configurations alternating so load on the machine hits all
alike):

* ``hog targets``: ``MaskFeat.targets`` on the batch (under no-grad, as in training).
* ``cube masks``: drawing the batch's unit masks (CPU, a loop over blocks).
* ``maskfeat step``: masks + HOG + forward over all tokens + masked MSE + backward + AdamW step.
* ``supervised step``: the registry's MViTv2-S (last query stride kept, 8x7x7 output), cross entropy,
  backward, AdamW step, drop path and head dropout off for both.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def _median_times(fns: dict, repeats: int) -> dict[str, float]:
    for fn in fns.values():
        fn()  # warm-up: allocator, oneDNN primitives
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4x64x64 input, 1 repeat (a smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()

    from tubelet.config.loader import from_dict
    from tubelet.methods import build_method

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    T, S = (4, 64) if args.quick else (16, 224)
    repeats = args.repeats or (1 if args.quick else 3)
    model = {"name": "mvitv2_s", "num_frames": T, "img_size": S, "num_classes": 400, "drop_path_rate": 0.0,
             "overrides": {"head_dropout": 0.0}}
    mf = build_method(from_dict({"model": model, "method": {"name": "maskfeat"}}))
    sup = build_method(from_dict({"model": model, "method": {"name": "supervised"},
                                  "data": {"synthetic": {"num_classes": 400}}}))
    mf.train()
    sup.train()
    opt_mf = torch.optim.AdamW(mf.parameters(), lr=1e-4)
    opt_sup = torch.optim.AdamW(sup.parameters(), lr=1e-4)
    video = torch.randn(args.batch, 3, T, S, S)
    label = torch.randint(0, 400, (args.batch,))
    _, out_grid = mf.grids(video)

    def hog() -> None:
        mf.targets(video, out_grid)

    def masks() -> None:
        mf.random_mask(video)

    def step_mf() -> None:
        opt_mf.zero_grad(set_to_none=True)
        mf({"video": video})["loss"].backward()
        opt_mf.step()

    def step_sup() -> None:
        opt_sup.zero_grad(set_to_none=True)
        F.cross_entropy(sup.classify(video), label).backward()
        opt_sup.step()

    t = _median_times({"hog targets": hog, "cube masks": masks, "maskfeat step": step_mf,
                       "supervised step": step_sup}, repeats)
    stem, out = mf.grids(video)
    print(f"MaskFeat cost, MViTv2-S, input {args.batch}x3x{T}x{S}x{S}, {args.threads} threads, "
          f"median of {repeats}; stem grid {stem}, MaskFeat output {out}, HOG width {mf.target_dim}")
    print(f"{'row':<18}{'seconds':>10}{'/ maskfeat step':>18}{'/ supervised step':>20}")
    for name, sec in t.items():
        print(f"{name:<18}{sec:>10.4f}{sec / t['maskfeat step']:>18.3f}{sec / t['supervised step']:>20.3f}")
    frac = t["hog targets"] / t["maskfeat step"]
    print(f"HOG target share of a MaskFeat step: {frac:.1%} (claim: <= 5%: {'holds' if frac <= 0.05 else 'fails'})")


if __name__ == "__main__":
    main()
