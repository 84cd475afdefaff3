"""FLIP's claim on the synthetic set, from the command line: video-text pre-training at mask ratios
0 / 0.5 / 0.75 / 0.9 **at the same wall-clock budget**, then zero-shot top-1 on the held-out test clips
from class-name prompts (chance 1/8), before and after unmasked tuning (flip_synthetic_video_unmasked).

Each ratio trains ``flip_synthetic_video`` with ``method.mask_ratio=R`` for as many steps as fit in
``--minutes``: the steps are calibrated from a short run of each ratio (``--calib`` steps, the first few
not counted), then a full run of that length is made (the cosine schedule needs its length up front).
Run it on a quiet machine: the budgets are only equal if nothing else competes for the cores.

    python benchmarks/flip_synthetic.py --minutes 10 --out runs/flip_synthetic
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path


def tubelet(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tubelet.cli.main", *args], check=True)


def seconds_per_step(ratio: float, steps: int, out: Path) -> float:
    run = out / f"calib_{ratio}"
    tubelet("fit", "--config", "flip_synthetic_video", f"method.mask_ratio={ratio}", f"trainer.max_steps={steps}",
            "trainer.enable_progress_bar=false", "method.probe_steps=0", f"run_dir={run}")
    rows = list(csv.DictReader(open(run / "logs" / "csv" / "metrics.csv")))
    speeds = [float(r["clips_per_s"]) for r in rows if r.get("clips_per_s")]
    later = speeds[len(speeds) // 2:] or speeds
    batch = 64
    return batch / (sum(later) / len(later))


def zero_shot(recipe: str, run: Path) -> dict:
    tubelet("test", recipe, "--checkpoint", str(run / "method.safetensors"), f"run_dir={run}")
    res = json.loads((run / "report" / "test_results.json").read_text())
    return {"top1": res["top1"], "t2v_r1": res["retrieval"]["t2v_r1"], "probe": res.get("linear_probe_top1")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of each pre-training run")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.5, 0.75, 0.9])
    ap.add_argument("--calib", type=int, default=30, help="steps of each calibration run")
    ap.add_argument("--out", default="runs/flip_synthetic")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for ratio in args.ratios:
        sps = seconds_per_step(ratio, args.calib, out)
        steps = max(10, int(args.minutes * 60 / sps))
        run = out / f"mask_{ratio}"
        t0 = time.perf_counter()
        tubelet("fit", "--config", "flip_synthetic_video", f"method.mask_ratio={ratio}", f"trainer.max_steps={steps}",
                "trainer.enable_progress_bar=false", f"run_dir={run}")
        took = time.perf_counter() - t0
        before = zero_shot("flip_synthetic_video", run)
        tuned = out / f"mask_{ratio}_unmasked"
        tubelet("fit", "--config", "flip_synthetic_video_unmasked", f"model.checkpoint={run / 'method.safetensors'}",
                "trainer.enable_progress_bar=false", f"run_dir={tuned}")
        after = zero_shot("flip_synthetic_video_unmasked", tuned)
        rows.append((ratio, steps, steps * 64, took, before, after))
        print(f"mask {ratio}: {steps} steps in {took / 60:.1f} min; zero-shot {before['top1']:.3f} -> {after['top1']:.3f}",
              flush=True)
    print("\n| mask | steps | pairs seen | minutes | zero-shot top-1 | after unmasked tuning | t2v R@1 | linear probe |")
    print("|---|---|---|---|---|---|---|---|")
    for ratio, steps, pairs, took, b, a in rows:
        probe = f"{a['probe']:.3f}" if a["probe"] is not None else "-"
        print(f"| {ratio} | {steps} | {pairs} | {took / 60:.1f} | {b['top1']:.3f} | {a['top1']:.3f} | "
              f"{a['t2v_r1']:.3f} | {probe} |")


if __name__ == "__main__":
    main()
