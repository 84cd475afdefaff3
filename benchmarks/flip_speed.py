"""FLIP's cost of masking: forward+backward time, full step time (AdamW included) and the bytes autograd
saves for backward, at mask ratios 0 / 0.5 / 0.75 (and 0.9 for video), against the FLOP ratio.

Image B/16 at 224 with text_base, and the space-time ViT-B at 16x224 (1568 tubelets) with text_base,
one batch (8 or more: at batch 4 the optimizer's fixed cost hides the gain). Beside tubelet's FLIP, a
*plain* FLIP of the same shapes written here in PyTorch's building blocks (``PlainFLIP``: the same FLOPs,
printed) is timed in the same rounds, so each mask ratio's time ratio can be read against what a plain
implementation gets on this machine, not only against the FLOP ratio. Both step with fused AdamW, as
training does (``engine.optim.build_optimizer``); every round runs one step of each, alternating. Saved bytes are the
activations autograd keeps for backward (``tubelet.flops.saved_for_backward``: each storage once, the
parameters it also saves left out, as they are in memory anyway), with the text tower's share beside
them; they do not depend on machine load. Times do, so run this on a quiet machine.

    python benchmarks/flip_speed.py                      # the table of benchmarks/README.md
    python benchmarks/flip_speed.py --steps 0            # bytes and FLOPs only (no timing)
    python benchmarks/flip_speed.py --tiny --steps 1     # a seconds-long check that it runs
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from vit_step import PlainBlock  # the plain pre-norm SDPA block of the ViT step benchmark (same folder)

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


class PlainFLIP(nn.Module):
    """FLIP (arXiv 2212.00794, Sec. 3) in PyTorch's building blocks, for timing against tubelet's: patches of
    ``patch`` (a Conv3d; image = one frame) plus fixed 2-D/3-D sin-cos positions, a random ``ratio`` of them
    removed by sorting noise and gathering the rest, pre-norm SDPA blocks, final LayerNorm, mean pooling and a
    bias-free projection; the text side embeds byte tokens with learned positions, runs its blocks without a
    padding mask (the benchmark's captions are all one length, so tubelet's trims nothing either), pools
    position 0 after a LayerNorm and projects; symmetric InfoNCE at a learnable scale."""

    def __init__(self, dim: int, depth: int, heads: int, patch: tuple[int, int, int], tokens: int, text_dim: int,
                 text_depth: int, text_heads: int, vocab: int, context: int, embed: int, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio
        self.patch_embed = nn.Conv3d(3, dim, patch, stride=patch)
        self.register_buffer("pos", _sincos(tokens, dim))  # fixed, as FLIP's
        self.blocks = nn.ModuleList(PlainBlock(dim, heads, 4 * dim, 1e-6) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.tok = nn.Embedding(vocab, text_dim)
        self.text_pos = nn.Parameter(torch.zeros(1, context, text_dim))
        self.text_blocks = nn.ModuleList(PlainBlock(text_dim, text_heads, 4 * text_dim, 1e-6)
                                         for _ in range(text_depth))
        self.text_norm = nn.LayerNorm(text_dim, eps=1e-6)
        self.proj_v, self.proj_t = nn.Linear(dim, embed, bias=False), nn.Linear(text_dim, embed, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, video: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(video).flatten(2).transpose(1, 2) + self.pos  # (B, N, D)
        B, N, D = x.shape
        keep = int(N * (1 - self.ratio))
        if keep < N:
            idx = torch.rand(B, N, device=x.device).argsort(dim=1)[:, :keep]  # (B, keep)
            x = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, D))
        for blk in self.blocks:
            x = blk(x)
        zv = F.normalize(self.proj_v(self.norm(x).mean(dim=1)), dim=-1)
        t = self.tok(ids) + self.text_pos[:, : ids.shape[1]]
        for blk in self.text_blocks:
            t = blk(t)
        zt = F.normalize(self.proj_t(self.text_norm(t)[:, 0]), dim=-1)
        logits = self.logit_scale.clamp(0, math.log(100)).exp() * zv @ zt.t()
        labels = torch.arange(B, device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def _sincos(n: int, dim: int) -> torch.Tensor:
    """A 1-D sin-cos table (1, n, dim): its cost is what matters here, not its layout."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    return torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], dim=1)[None]


def plain_like(method: nn.Module, ratio: float, frames: int, size: int) -> PlainFLIP:
    """A PlainFLIP of the shapes of tubelet's FLIP ``method``."""
    vc, tc = method.backbone.cfg, method.text.cfg
    patch = tuple(method.backbone.patch_embed.patch_size)
    tokens = math.prod(method.backbone.patch_embed.grid_size(frames, size, size))
    return PlainFLIP(vc.embed_dim, vc.depth, vc.num_heads, patch, tokens, tc.embed_dim, tc.depth, tc.num_heads,
                     method.tokenizer.vocab_size, tc.context_length, method.proj.vision.out_features, ratio)


def measure(video: bool, ratio: float, batch_size: int, steps: int, tiny: bool, text_ckpt: bool) -> dict:
    torch.manual_seed(0)
    r = from_dict(recipe(video, ratio, tiny, text_ckpt))
    method = build_method(r).train()
    frames, size = r.model.num_frames, r.model.img_size
    batch = {"video": torch.randn(batch_size, 3, frames, size, size),
             "caption": [f"a photo of thing number {i}" for i in range(batch_size)],
             "sample_seed": torch.arange(batch_size)}
    plain = plain_like(method, ratio, frames, size).train()
    ids = method.tokenize(batch["caption"])
    ids = ids[:, : int((ids != method.tokenizer.pad_id).sum(1).max())]  # the columns tubelet's tower keeps
    runs = {"tubelet": (method, lambda: method(batch)["loss"]), "plain": (plain, lambda: plain(batch["video"], ids))}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for k, (m, _) in runs.items()}
    times: dict = {k: {"fb": [], "step": []} for k in runs}
    for i in range(steps + 1 if steps else 0):  # the first round is a warm-up; --steps 0: no timing
        for k in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
            loss_fn, opt = runs[k][1], opts[k]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            if i:
                times[k]["fb"].append(t1 - t0)
                times[k]["step"].append(t2 - t0)
    for opt in opts.values():
        opt.zero_grad(set_to_none=True)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:  # one forward+backward gives both counts
        saved = saved_for_backward(method, batch, {"text": method.text})  # the vision tower is the rest
    with FlopCounterMode(display=False) as fc_plain:
        plain(batch["video"], ids).backward()
    out = {"bytes": saved.activations, "text_bytes": saved.by_part.get("text", 0), "param_bytes": saved.parameters,
           "flops": fc.get_total_flops(), "plain_flops": fc_plain.get_total_flops()}
    for k in runs:
        for part in ("fb", "step"):
            ts = times[k][part]
            out[f"{k}_{part}_s"] = statistics.median(ts) if ts else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after a warm-up one; 0: no timing")
    ap.add_argument("--tiny", action="store_true", help="small towers and inputs: checks the script runs")
    ap.add_argument("--only", choices=["image", "video"], default=None)
    ap.add_argument("--default-malloc", action="store_true",
                    help="keep glibc's default allocator policy (training's data pipeline changes it)")
    ap.add_argument("--text-checkpointing", action="store_true",
                    help="recompute the text tower in backward (text_overrides.grad_checkpointing)")
    args = ap.parse_args()
    if not args.default_malloc:
        from tubelet.data.transforms.base import retain_freed_memory

        # the policy every training run has (its transform pipeline sets it): freed activation-sized blocks
        # stay in the heap instead of returning to the kernel and faulting in afresh the next step
        print(f"allocator: freed blocks retained ({'in effect' if retain_freed_memory() else 'not available'})")
    print(f"{'tower':<6} {'mask':>5} {'fwd+bwd s':>10} {'ratio':>6} {'step s':>8} {'ratio':>6} "
          f"{'plain f+b':>9} {'ratio':>6} {'plain step':>10} {'ratio':>6} "
          f"{'act. MB':>8} {'ratio':>6} {'text MB':>8} {'FLOP ratio':>10} {'plain FLOPs':>11}")
    for video in (False, True):
        if args.only and args.only != ("video" if video else "image"):
            continue
        base = None
        for ratio in ((0.0, 0.5, 0.75, 0.9) if video else (0.0, 0.5, 0.75)):
            m = measure(video, ratio, args.batch, args.steps, args.tiny, args.text_checkpointing)
            base = base or m
            cols = [f"{m[k]:>{w}.3f} {m[k] / base[k]:>6.3f}" for k, w in
                    (("tubelet_fb_s", 10), ("tubelet_step_s", 8), ("plain_fb_s", 9), ("plain_step_s", 10))]
            print(f"{'video' if video else 'image':<6} {ratio:>5.2f} {' '.join(cols)} {m['bytes'] / 2**20:>8.1f} "
                  f"{m['bytes'] / base['bytes']:>6.3f} {m['text_bytes'] / 2**20:>8.1f} {m['flops'] / base['flops']:>10.3f} "
                  f"{m['plain_flops'] / m['flops']:>10.3f}x", flush=True)
        print(f"(parameters saved for backward, not counted above: {m['param_bytes'] / 2**20:.1f} MB; plain FLOPs: "
              "the plain FLIP's forward+backward FLOPs over tubelet's at the same ratio)")


if __name__ == "__main__":
    main()
