"""MViTv2-S speed: tubelet's ``mvitv2_s`` against torchvision's ``mvit_v2_s``, side by side in one run.

Claim: tubelet's forward and training step take at most 0.8x torchvision's time on the same input
(16x224x224, batch 1), with identical weights and logits.

torchvision is not a tubelet dependency and does not import beside the CPU torch of ``.venv``, so run
the whole benchmark in the separate torchvision environment, with tubelet importable from ``src``
(both models then run under that environment's torch, 2.14.1):

    python3.11 -m venv /work/tvenv && /work/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 safetensors
    PYTHONPATH=src /work/tvenv/bin/python benchmarks/mvit_speed.py            # full: 16x224x224
    PYTHONPATH=src /work/tvenv/bin/python benchmarks/mvit_speed.py --quick    # tiny input, seconds

Rows: inference forward (eval, no grad) and one training step (train mode: drop path 0.2, head dropout
0.5, cross-entropy, backward, AdamW step). Times are medians over ``--repeats`` runs, the two libraries
alternating so that load on the machine hits both alike. Before timing, torchvision's weights are
converted into tubelet's model and the logits compared.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, oneDNN primitives
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4x64x64 input, 2 repeats (a smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()

    import torchvision
    from torchvision.models.video import mvit as tvm

    from tubelet.models import create_model
    from tubelet.models.convert import convert_state_dict

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    T, S = (4, 64) if args.quick else (16, 224)
    repeats = args.repeats or (2 if args.quick else 3)

    ours = create_model("mvitv2_s", num_frames=T, img_size=S)
    if args.quick:
        # torchvision's mvit_v2_s() fixes 16x224x224; build the same 16 blocks for the small input.
        setting = [
            tvm.MSBlockConfig(s.num_heads, s.dim, s.dim_out, [3, 3, 3], [3, 3, 3], list(s.q_stride), list(s.kv_stride))
            for s in ours.specs
        ]
        tv = tvm.MViT((S, S), T, setting, residual_pool=True, residual_with_cls_embed=False, rel_pos_embed=True,
                      proj_after_attn=True, stochastic_depth_prob=0.2)
    else:
        tv = tvm.mvit_v2_s()
    converted = convert_state_dict(tv.state_dict(), "torchvision", "mvitv2_s", {"num_frames": T, "img_size": S})
    ours.load_state_dict(converted.state)
    x = torch.randn(args.batch, 3, T, S, S)
    y = torch.randint(0, 400, (args.batch,))
    with torch.no_grad():
        diff = (tv.eval()(x) - ours.eval()(x)).abs().max().item()

    def forward(model):
        def run():
            with torch.no_grad():
                model.eval()(x)

        return run

    def train_step(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

        def run():
            model.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        return run

    rows = []
    for label, make in (("forward (eval)", forward), ("train step", train_step)):
        fns = {"torchvision": make(tv), "tubelet": make(ours)}
        for fn in fns.values():
            fn()  # warm-up both before alternating
        samples: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                samples[name].append(_timed(fn, 1))
        tv_t, our_t = statistics.median(samples["torchvision"]), statistics.median(samples["tubelet"])
        rows.append((label, tv_t, our_t, our_t / tv_t))

    params = sum(p.numel() for p in ours.parameters())
    print(f"MViTv2-S, input {args.batch}x3x{T}x{S}x{S}, {params:,} params, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, {args.threads} threads, median of {repeats}")
    print(f"max |logit difference| after conversion: {diff:.2e}")
    print(f"| {'step':<16} | {'torchvision s':>13} | {'tubelet s':>9} | {'ratio':>5} |")
    print("|------------------|--------------:|----------:|------:|")
    for label, a, b, r in rows:
        print(f"| {label:<16} | {a:13.3f} | {b:9.3f} | {r:5.2f} |")


if __name__ == "__main__":
    main()
