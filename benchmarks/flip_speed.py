"""FLIP's cost of masking: forward+backward time, full step time (AdamW included) and the bytes autograd
saves for backward, at mask ratios 0 / 0.5 / 0.75 (and 0.9 for video), against the FLOP ratio.

Image B/16 at 224 with text_base, and the space-time ViT-B at 16x224 (1568 tubelets) with text_base,
one batch (8 or more: at batch 4 the optimizer's fixed cost hides the gain). Saved bytes are the
activations autograd keeps for backward (``tubelet.flops.saved_for_backward``: each storage once, the
parameters it also saves left out, as they are in memory anyway), with the text tower's share beside
them; they do not depend on machine load. Times do, so run this on a quiet machine.

    python benchmarks/flip_speed.py                      # the table of benchmarks/README.md
    python benchmarks/flip_speed.py --steps 0            # bytes and FLOPs only (no timing)
    python benchmarks/flip_speed.py --tiny --steps 1     # a seconds-long check that it runs
"""

from __future__ import annotations

import argparse
import time

import torch

from tubelet.config.loader import from_dict
from tubelet.flops import saved_for_backward
from tubelet.methods import build_method


def recipe(video: bool, ratio: float, tiny: bool, text_ckpt: bool = False) -> dict:
    if video:
        model = {"name": "vit_base", "num_frames": 16, "img_size": 224, "num_classes": 0,
                 "overrides": {"pos_embed": "sincos", "class_token": False}}
    else:
        model = {"name": "vit_base_patch16_image", "num_frames": 1, "img_size": 224, "num_classes": 0}
    method = {"name": "flip", "mask_ratio": ratio}
    if tiny:
        model["overrides"] = {**model.get("overrides", {}), "depth": 2, "embed_dim": 64, "num_heads": 2}
        model["img_size"] = 64
        if video:
            model["num_frames"] = 4
        method["text_overrides"] = {"depth": 1, "embed_dim": 64, "num_heads": 2}
    if text_ckpt:
        method["text_overrides"] = {**method.get("text_overrides", {}), "grad_checkpointing": True}
    return {"model": model, "data": {"captions": True}, "method": method}


def measure(video: bool, ratio: float, batch_size: int, steps: int, tiny: bool, text_ckpt: bool) -> dict:
    torch.manual_seed(0)
    r = from_dict(recipe(video, ratio, tiny, text_ckpt))
    method = build_method(r).train()
    frames, size = r.model.num_frames, r.model.img_size
    batch = {"video": torch.randn(batch_size, 3, frames, size, size),
             "caption": [f"a photo of thing number {i}" for i in range(batch_size)],
             "sample_seed": torch.arange(batch_size)}
    opt = torch.optim.AdamW(method.parameters(), lr=1e-4)
    fb, step = [], []
    for i in range(steps + 1 if steps else 0):  # the first is a warm-up; --steps 0: no timing
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        method(batch)["loss"].backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        if i:
            fb.append(t1 - t0)
            step.append(t2 - t0)
    opt.zero_grad(set_to_none=True)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:  # one forward+backward gives both counts
        saved = saved_for_backward(method, batch, {"text": method.text})  # the vision tower is the rest
    return {"fb_s": sorted(fb)[len(fb) // 2] if fb else float("nan"),
            "step_s": sorted(step)[len(step) // 2] if step else float("nan"),
            "bytes": saved.activations, "text_bytes": saved.by_part.get("text", 0), "param_bytes": saved.parameters,
            "flops": fc.get_total_flops()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after a warm-up one; 0: no timing")
    ap.add_argument("--tiny", action="store_true", help="small towers and inputs: checks the script runs")
    ap.add_argument("--only", choices=["image", "video"], default=None)
    ap.add_argument("--text-checkpointing", action="store_true",
                    help="recompute the text tower in backward (text_overrides.grad_checkpointing)")
    args = ap.parse_args()
    print(f"{'tower':<6} {'mask':>5} {'fwd+bwd s':>10} {'ratio':>6} {'step s':>8} {'ratio':>6} "
          f"{'act. MB':>8} {'ratio':>6} {'text MB':>8} {'FLOP ratio':>10}")
    for video in (False, True):
        if args.only and args.only != ("video" if video else "image"):
            continue
        base = None
        for ratio in ((0.0, 0.5, 0.75, 0.9) if video else (0.0, 0.5, 0.75)):
            m = measure(video, ratio, args.batch, args.steps, args.tiny, args.text_checkpointing)
            base = base or m
            print(f"{'video' if video else 'image':<6} {ratio:>5.2f} {m['fb_s']:>10.3f} {m['fb_s'] / base['fb_s']:>6.3f} "
                  f"{m['step_s']:>8.3f} {m['step_s'] / base['step_s']:>6.3f} {m['bytes'] / 2**20:>8.1f} "
                  f"{m['bytes'] / base['bytes']:>6.3f} {m['text_bytes'] / 2**20:>8.1f} {m['flops'] / base['flops']:>10.3f}",
                  flush=True)
        print(f"(parameters saved for backward, not counted above: {m['param_bytes'] / 2**20:.1f} MB)")


if __name__ == "__main__":
    main()
