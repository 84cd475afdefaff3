"""Does bf16-mixed train as well as fp32, and how much faster is it here? One recipe, both precisions.

Trains ``--recipe`` (default ``quickstart``, the demo's video stage) at ``32-true`` and at ``bf16-mixed`` with the
same seed and threads, one after the other, and prints per precision: the training loss averaged over
successive windows of logged steps, the validation top-1 at each validation, the median clips/s, and
bf16's clips/s over fp32's, beside this machine's bf16/fp32 matmul ratio (measured in the same run). The
loss curves go to ``--out/loss.png``. ``trainer.precision=auto`` picks bf16-mixed when that ratio is at
least ``BF16_MIN_SPEEDUP`` (``tubelet/engine/device.py``).

    PYTHONPATH=src python benchmarks/precision_curves.py --out runs/precision --threads 1
    PYTHONPATH=src python benchmarks/precision_curves.py --out runs/precision --no-train   # tables of earlier runs
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
from pathlib import Path

PRECISIONS = ("32-true", "bf16-mixed")


def read_log(run: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]], list[float]]:
    rows = list(csv.DictReader(open(run / "logs" / "csv" / "metrics.csv")))
    loss = [(int(float(r["step"])), float(r["train/loss"])) for r in rows if r.get("train/loss")]
    val = [(int(float(r["step"])), float(r["val/top1"])) for r in rows if r.get("val/top1")]
    cps = [float(r["clips_per_s"]) for r in rows if r.get("clips_per_s")]
    return loss, val, cps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="quickstart")
    ap.add_argument("--out", default="runs/precision")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--window", type=int, default=6, help="logged steps per loss average (default 6)")
    ap.add_argument("--no-train", action="store_true", help="read the runs already under --out")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE recipe overrides for both runs")
    args = ap.parse_args()
    import torch

    from tubelet.engine.device import bf16_matmul_speedup

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if not args.no_train:
        for p in PRECISIONS:
            cmd = [sys.executable, "-m", "tubelet.cli.main", "fit", args.recipe, f"run_dir={out / p}",
                   f"trainer.precision={p}", f"trainer.num_threads={args.threads}", "trainer.enable_progress_bar=false",
                   *args.overrides, "--overwrite"]
            subprocess.run(cmd, check=True)
    ratio = bf16_matmul_speedup()
    logs = {p: read_log(out / p) for p in PRECISIONS}
    w = args.window
    print(f"recipe {args.recipe}, {args.threads} thread(s); bf16/fp32 matmul ratio here: {ratio:.2f}x")
    print("\n| precision | train loss, mean of each {w} logged steps | val top-1 (step) | clips/s (median) | vs fp32 |".format(w=w))
    print("|---|---|---|--:|--:|")
    base = statistics.median(logs["32-true"][2])
    for p, (loss, val, cps) in logs.items():
        means = [statistics.mean(v for _, v in loss[i:i + w]) for i in range(0, len(loss), w)]
        c = statistics.median(cps)
        print(f"| {p} | {' '.join(f'{m:.3f}' for m in means)} | "
              f"{', '.join(f'{v:.3f} ({s + 1})' for s, v in val)} | {c:.1f} | {c / base:.2f}x |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for p, (loss, _, _) in logs.items():
        steps = [s for s, _ in loss]
        vals = [v for _, v in loss]
        smooth = [statistics.mean(vals[max(0, i - w + 1):i + 1]) for i in range(len(vals))]
        ax.plot(steps, smooth, label=p)
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (running mean of {w} logs)")
    ax.set_title(f"{args.recipe}: fp32 against bf16-mixed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    print(f"\nloss curves: {out / 'loss.png'}")


if __name__ == "__main__":
    main()
