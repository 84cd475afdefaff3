"""Training steps on one CUDA GPU in bf16: ViT-B, MViTv2-S and MAE-ST, with ``torch.compile`` off and on,
as a fraction of the GPU's dense bf16 matmul rate measured in the same run; and the data pipeline's
clips/s with the batch transforms on the GPU (``data.device_transforms``).

Measured in one run:
  1. the bf16 ceiling: best TFLOP/s of square bf16 matmuls (n = 8192, 16384) into a preallocated
     output, before and after the steps (the better kept);
  2. per model, the FLOPs of one forward+backward (``tubelet.flops.count_flops`` on the CPU copy of
     the model at batch 1, times the batch: the count does not depend on the device);
  3. per model and compile setting: a full step (bf16 autocast forward and loss, backward, fused
     AdamW, ``zero_grad(set_to_none=True)``), median of ``--steps`` after ``--warmup`` (the compiled
     rows' first call, the compilation, is timed separately); MFU = FLOPs / time / ceiling;
  4. the batch: the largest power of two up to ``--max-batch`` whose step fits in memory (tried
     from the top, out-of-memory errors caught), so every model runs at the batch its memory allows;
  5. data: clips/s of ``DeviceTransforms`` (normalise, RandAugment, erasing) on a uint8 batch on the
     GPU, and of the loader's worker part (decode + crop) on the real clips when they are there.

    python benchmarks/gpu_step.py            # on a CUDA machine (minutes)
    python benchmarks/gpu_step.py --quick    # small clips and batches: checks the script

Without CUDA the script stops at once with a one-line error: it measures nothing on the CPU
(``vit_step.py`` and ``mae_speedup.py`` do that).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tubelet.flops import count_flops
from tubelet.models import create_model

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"


def require_cuda() -> torch.device:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_step.py: no CUDA device is visible (torch.cuda.is_available() is False); "
                         "it measures GPU steps only. CPU steps: benchmarks/vit_step.py, mae_speedup.py")
    return torch.device("cuda", torch.cuda.current_device())


def sync_time(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def bf16_ceiling(device: torch.device, sizes: list[int], reps: int) -> float:
    """Best TFLOP/s of ``c = a @ b`` in bf16 (2 n^3 FLOPs), preallocated ``c``."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        c = torch.empty(n, n, device=device, dtype=torch.bfloat16)
        torch.mm(a, b, out=c)
        for _ in range(reps):
            best = max(best, 2 * n**3 / sync_time(lambda a=a, b=b, c=c: torch.mm(a, b, out=c)) / 1e12)
        del a, b, c
    return best


@dataclasses.dataclass
class Workload:
    """One model's training step: ``build()`` gives a fresh module (CPU, fp32), ``inputs(batch, device)``
    its input, ``loss(module, inputs)`` the scalar to minimise."""

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int, torch.device], tuple]
    loss: Callable[[nn.Module, tuple], torch.Tensor]


def classifier(name: str, frames: int, size: int, classes: int = 400) -> Workload:
    def inputs(batch: int, device: torch.device) -> tuple:
        return (torch.randn(batch, 3, frames, size, size, device=device),
                torch.randint(0, classes, (batch,), device=device))

    return Workload(name, lambda: create_model(name, num_frames=frames, img_size=size, num_classes=classes),
                    inputs, lambda m, xy: F.cross_entropy(m(xy[0]), xy[1]))


def mae_st(frames: int, size: int) -> Workload:
    from tubelet.config.schema import ModelConfig, Recipe
    from tubelet.methods import build_method
    from tubelet.methods.mae_st import MAESTConfig

    def build() -> nn.Module:
        return build_method(Recipe(model=ModelConfig(name="vit_base", num_frames=frames, img_size=size),
                                   method=MAESTConfig(mask_ratio=0.9)))

    def inputs(batch: int, device: torch.device) -> tuple:
        return (torch.randn(batch, 3, frames, size, size, device=device),)

    def loss(m: nn.Module, x: tuple) -> torch.Tensor:
        video = x[0]
        mask = m.random_mask(video)
        grid = m.grid_of(video)
        pred = m.forward_decoder(m.forward_encoder(video, mask), mask, grid, positions=mask.masked)
        return m.forward_loss(video, pred, mask)

    return Workload("mae_st vit_base 0.9", build, inputs, loss)


class _Loss(nn.Module):
    """The workload's loss as a module, for the FLOP counter."""

    def __init__(self, w: Workload, m: nn.Module) -> None:
        super().__init__()
        self.w, self.m = w, m

    def forward(self, *x: torch.Tensor) -> torch.Tensor:
        return self.w.loss(self.m, x)


def step_fn(w: Workload, model: nn.Module, opt: torch.optim.Optimizer, x: tuple) -> Callable[[], None]:
    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = w.loss(model, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure(w: Workload, device: torch.device, compiled: bool, batches: list[int], warmup: int, steps: int
            ) -> tuple[int, float, float] | None:
    """(batch, median s / step, first-call s) at the largest batch of ``batches`` that fits, or None."""
    for batch in batches:
        model = w.build().to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
        if compiled:
            model = torch.compile(model)
        x = w.inputs(batch, device)
        step = step_fn(w, model, opt, x)
        try:
            first = sync_time(step)
            for _ in range(warmup):
                step()
            times = [sync_time(step) for _ in range(steps)]
            return batch, statistics.median(times), first
        except torch.cuda.OutOfMemoryError:
            del model, opt, x, step
            torch.cuda.empty_cache()
            continue
        finally:
            torch.cuda.empty_cache()
    return None


def data_rate(device: torch.device, frames: int, size: int, batch: int, reps: int) -> list[tuple[str, float]]:
    """clips/s of the device-side transforms, and of the worker part on the real clips if present."""
    from tubelet.config.schema import DataConfig
    from tubelet.data.transforms.pipeline import build_device_transform

    rows = []
    cfg = DataConfig(num_frames=frames, crop_size=size, device_transforms=True)
    cfg.augment.randaugment = "rand-m7-n4-mstd0.5-inc1"
    cfg.augment.random_erasing = 0.25
    tf = build_device_transform(cfg, seed=0)
    u8 = torch.randint(0, 256, (batch, 3, frames, size, size), dtype=torch.uint8, device=device)
    index = torch.arange(batch)
    tf({"video": u8.clone(), "index": index})
    t = statistics.median(sync_time(lambda: tf({"video": u8.clone(), "index": index})) for _ in range(reps))
    rows.append((f"device transforms (RandAugment, normalise, erasing), batch {batch} on the GPU", batch / t))
    clips = sorted(VIDEOS.glob("*.mp4"))[:4] if VIDEOS.is_dir() else []
    if clips:
        from tubelet.data.datasets import ClipDataset, Sample

        ds = ClipDataset([Sample(str(p), 0) for p in clips], cfg, "train")
        ds[0]
        n = 2 * len(clips)
        t0 = time.perf_counter()
        for i in range(n):
            ds[i % len(clips)]
        rows.append((f"loader worker part (decode + crop, uint8), {len(clips)} real clips, 1 process",
                     n / (time.perf_counter() - t0)))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="8x112 clips, small batches: checks the script")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=64, help="largest batch tried (powers of two downwards)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = p.parse_args(argv)
    device = require_cuda()
    frames, size, sizes = (8, 112, [4096]) if args.quick else (16, 224, [8192, 16384])
    if args.quick:
        args.max_batch, args.steps, args.warmup = min(args.max_batch, 4), 3, 1
    batches = [b for b in (2**i for i in range(10, -1, -1)) if b <= args.max_batch]
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = bf16_ceiling(device, sizes, 5)

    workloads = [classifier("vit_base", frames, size), classifier("mvitv2_s", frames, size), mae_st(frames, size)]
    rows = []
    for w in workloads:
        cpu_model = w.build().train()
        flops1 = count_flops(_Loss(w, cpu_model), *w.inputs(1, torch.device("cpu")), backward=True).flops
        del cpu_model
        for compiled in ([False] if args.no_compile else [False, True]):
            r = measure(w, device, compiled, batches, args.warmup, args.steps)
            rows.append((w.name, compiled, flops1, r))
    peak = max(peak, bf16_ceiling(device, sizes, 5))

    print(f"\n{torch.cuda.get_device_name(device)}, torch {torch.__version__}; clips {frames}x{size}x{size}; "
          f"bf16 autocast, fused AdamW; measured dense bf16 matmul peak {peak:.0f} TFLOP/s")
    print("\n| model | torch.compile | batch | s / step | clips/s | TFLOP/s | MFU | first call s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, compiled, flops1, r in rows:
        if r is None:
            print(f"| {name} | {'on' if compiled else 'off'} | - | out of memory at batch 1 | - | - | - | - |")
            continue
        batch, sec, first = r
        tf = flops1 * batch / sec / 1e12
        print(f"| {name} | {'on' if compiled else 'off'} | {batch} | {sec:.3f} | {batch / sec:.1f} | {tf:.0f} | "
              f"{100 * tf / peak:.1f}% | {first:.1f} |")
    if not args.no_compile:
        print("\n| model | compile speed-up (off / on step time, same batch only) |")
        print("|---|---|")
        for i in range(0, len(rows), 2):
            off, on = rows[i][3], rows[i + 1][3]
            same = off is not None and on is not None and off[0] == on[0]
            print(f"| {rows[i][0]} | {off[1] / on[1]:.2f}x |" if same else f"| {rows[i][0]} | - (batches differ) |")
    print("\n| data pipeline | clips/s |")
    print("|---|---|")
    for label, rate in data_rate(device, frames, size, 8 if args.quick else 32, 5):
        print(f"| {label} | {rate:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
