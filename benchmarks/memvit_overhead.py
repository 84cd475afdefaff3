"""MeMViT's cost of memory: GMACs per component and temporal support with 0, 1, 2 and 4 memory clips.

Claim (paper): 30x longer temporal support for 4.5% more compute. Counting from the architecture gives
about +2.1% for MeMViT-16 and +3.3% for MeMViT-24 (METHODS.md section 7); this script counts what the
code runs. Multiply-adds are counted with ``tubelet.flops.count_flops`` on the meta device (no compute,
independent of machine load), on the forward of a clip once the cache is full (steady state), against
the same network without memory (``memory=False``, the pool-first MViTv2 of the same weights).

Components of the extra MACs, each measured, not derived:
- *compression*: the depthwise Conv3d of c_K and c_V (one cached clip compressed per forward and memory
  block in steady state: the entry attended for the first time);
- *memory K/V projection*: W_K and W_V applied to the memory tokens (the cache holds pre-projection tensors);
- *attention over memory*: the extra key columns in Q K^T and A V;
- *memory relative positions*: the query-dependent terms against memory's own tables (measured by counting
  again with that term replaced by zeros).

``--time`` also times the forward on ``--device`` (run it on a quiet machine): every configuration (no
memory, 0, 1, 2 and 4 memory clips, each cache filled to steady state) is built once and warmed up, then
timed round-robin over ``--rounds`` rounds, the order rotated each round; the table gives the median and
the range of the per-round ratios to the memory-free forward of the same round.
``--quick``: a tiny model at 8x64, seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import torch

from tubelet.flops import count_flops
from tubelet.models import create_model
from tubelet.models.memvit import MemoryPoolingAttention


@contextmanager
def no_memory_rel_pos():
    """The memory relative-position terms replaced by zeros of the same shapes (no multiply-adds): only
    the clip's own embeddings enter the product with the queries."""
    original = MemoryPoolingAttention._rel_pos_terms

    def clip_only(self, q, q_grid, k_grid, m_grid, n_entries):
        clip, _ = original(self, q, q_grid, k_grid, None, 0)
        if m_grid is None:
            return clip, (None, None, None)
        B, n, Nq, _ = q[:, :, self.num_prefix:].shape
        return clip, (q.new_zeros(B, n, Nq, n_entries * m_grid[0]) if self.rel_pos_temporal else None,
                      q.new_zeros(B, n, Nq, m_grid[1]) if self.rel_pos_spatial else None,
                      q.new_zeros(B, n, Nq, m_grid[2]) if self.rel_pos_spatial else None)

    MemoryPoolingAttention._rel_pos_terms = clip_only
    try:
        yield
    finally:
        MemoryPoolingAttention._rel_pos_terms = original


def module_macs(count, suffixes: tuple[str, ...]) -> int:
    return sum(v for k, v in count.by_module.items() if k.endswith(suffixes))


def attention_macs(count) -> int:
    """Q K^T, A V and the relative-position einsums: SDPA ops, or the batched matmuls SDPA decomposes into on
    the meta device."""
    return sum(v for k, v in count.by_op.items() if "scaled_dot_product" in k or k == "bmm")


def steady(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Fill the cache: enough forwards that the next one attends to every memory entry it can."""
    cfg = model.cfg
    with torch.no_grad():
        for _ in range(cfg.cache_length - 1):
            model(x)


def row(name: str, frames: int, size: int, mems: list[int], quick_kw: dict,
        ratios: dict[int, list[float]] | None) -> list[str]:
    lines = []
    with torch.device("meta"):
        base = create_model(name, memory=False, **quick_kw).eval()
        x = torch.empty(1, 3, frames, size, size)
    c0 = count_flops(base, x)
    clip_s = frames * 4 / 30 if name == "memvit_16" else frames * 3 / 30
    for m in mems:
        with torch.device("meta"):
            model = create_model(name, attn_max_len=m + 1, **quick_kw).eval()
        steady(model, x)
        c = count_flops(model, x)
        steady(model, x)
        with no_memory_rel_pos():
            c_norel = count_flops(model, x)
        comp = module_macs(c, (".compress_k", ".compress_v"))
        proj = module_macs(c, (".attn.k", ".attn.v")) - module_macs(c0, (".attn.k", ".attn.v"))
        rel = c.macs - c_norel.macs
        attn = attention_macs(c) - attention_macs(c0) - rel
        extra = c.macs - c0.macs
        other = extra - comp - proj - attn - rel
        support = model.temporal_support(1.0)
        timing = f" | {_ratio_cell(*ratios[m])}" if ratios is not None else ""
        lines.append(
            f"| {name} | {m} | {c.macs / 1e9:.2f} | +{100 * extra / c0.macs:.2f}% | {comp / 1e6:.1f} | {proj / 1e6:.1f} "
            f"| {attn / 1e6:.1f} | {rel / 1e6:.1f} | {other / 1e6:.1f} | {support:.0f}x ({support * clip_s:.1f} s){timing} |")
    return [f"| {name} (no memory) | - | {c0.macs / 1e9:.2f} | 0 | | | | | | 1x ({clip_s:.1f} s)"
            + (" | 1 | 1 |" if ratios is not None else " |")] + lines


def _ratio_cell(r: list[float], fastest: float) -> str:
    return f"{statistics.median(r):.3f}x [{min(r):.3f}, {max(r):.3f}] | {fastest:.3f}x"


def interleaved_ratios(name: str, frames: int, size: int, mems: list[int], quick_kw: dict, device: str,
                       rounds: int, warmup: int) -> tuple[dict[int, tuple[list[float], float]], dict[str, float]]:
    """Forward time of each memory setting over the memory-free model, timed round-robin.

    Every configuration (no memory, then m memory clips for each m in ``mems``) is built once, its cache
    filled to steady state, and warmed up ``warmup`` rounds, all before any timing, so the allocator and
    caches are warm for every one alike. Round r then runs each configuration once, the order rotated by
    r (no configuration always runs first, after a cold or idle gap), and the ratio to the memory-free
    forward of the same round is kept: drifts in machine load that span a round cancel out. Also the
    ratio of the fastest forward of each configuration to the fastest memory-free one: on a virtual
    machine whose neighbours slow single rounds by up to a third, the least-disturbed forward of a fixed
    amount of work is the steadiest estimate of its cost. Returns per m the per-round ratios and the
    fastest-forward ratio, and the median seconds per configuration.
    """
    configs: list[tuple[str, torch.nn.Module]] = []
    torch.manual_seed(0)
    configs.append(("base", create_model(name, memory=False, **quick_kw).eval().to(device)))
    for m in mems:
        torch.manual_seed(0)
        configs.append((str(m), create_model(name, attn_max_len=m + 1, **quick_kw).eval().to(device)))
    x = torch.randn(1, 3, frames, size, size, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times: dict[str, list[float]] = {key: [] for key, _ in configs}
    with torch.inference_mode():
        for _, model in configs:
            if getattr(model, "uses_memory", False):
                steady(model, x)  # each later forward replaces its oldest entry: the cache stays full
        for r in range(warmup + rounds):
            k = r % len(configs)
            for key, model in configs[k:] + configs[:k]:
                sync()
                t = time.perf_counter()
                model(x)
                sync()
                if r >= warmup:
                    times[key].append(time.perf_counter() - t)
    ratios = {m: ([t / b for t, b in zip(times[str(m)], times["base"])], min(times[str(m)]) / min(times["base"]))
              for m in mems}
    return ratios, {key: statistics.median(v) for key, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--time", action="store_true", help="also time the forward (a quiet machine only)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds (each runs every configuration once)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--models", default="memvit_16,memvit_24")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quick_kw = dict(depth=4, transitions=(1, 3), num_frames=8, img_size=64) if args.quick else {}
    mems = [0, 1, 2, 4]
    print("| model | memory clips | GMACs | extra | compression (M) | memory K/V proj (M) | attention over memory (M) "
          "| memory rel-pos (M) | other (M) | temporal support (clips, s)"
          + (" | forward time / no memory, per round: median [min, max] | fastest / fastest" if args.time else "")
          + " |")
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if args.time else ""))
    medians = []
    for name in args.models.split(","):
        frames = (8 if args.quick else 16) if name == "memvit_16" else (8 if args.quick else 32)
        size = 64 if args.quick else 224
        kw = dict(quick_kw, num_frames=frames) if args.quick else {}
        ratios = None
        if args.time:
            ratios, secs = interleaved_ratios(name, frames, size, mems, kw, args.device, args.rounds, args.warmup)
            medians.append((name, secs))
        for line in row(name, frames, size, mems, kw, ratios):
            print(line, flush=True)
    for name, secs in medians:
        print(f"\n{name}: median forward seconds over {args.rounds} interleaved rounds on {args.device}: "
              + ", ".join(f"{'no memory' if k == 'base' else k + ' clips'} {v:.4f}" for k, v in secs.items()))


if __name__ == "__main__":
    main()
