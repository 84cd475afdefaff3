"""Castling-ViT's synthetic experiment (arXiv 2211.10526) from the command line: the quickstart space-time
ViT on the synthetic motion set with softmax attention, with Castling (linear-angular) attention trained
from scratch, and with Castling converted from the softmax model, each trained for the same number of
optimizer steps (``--steps``) with the shipped recipes (``quickstart``, ``castling_synthetic``,
``castling_synthetic_convert``), one after another, one thread each.

Every run goes through the commands a user types: ``tubelet fit RECIPE ...`` and ``tubelet test RECIPE
--checkpoint ...``. For each Castling run the test is made twice:

- **before the switch**: the training checkpoint of the last step (``checkpoints/step=N.ckpt``, saved
  before training ends, so its layers still have the auxiliary softmax branch, at the weight the last
  step trained with);
- **after the switch**: ``method.safetensors``, written once training has ended and the backbone has
  been switched to linear-angular attention only (``switch_to_inference``).

The two tests score the same test clips, and the per-clip predictions are compared (how many change).
``--decay-end`` sets ``method.decay_end``: at the recipes' 0.75 the last quarter of the run trains the
inference form alone, so the switch is exact by construction; at 1.0 the branch still has a small
weight at the last step, which shows what switching a model that never trained without it costs.

Cost per clip: multiply-adds of one clip (``tubelet.flops.count_flops``, the models the run folders
hold, batch 1), before and after the switch. Time per clip is measured once, at the end, at one thread,
on a batch of ``--time-batch`` clips, with the load average printed beside it: on a machine others share
it is a note, not a measurement to compare across machines.

    python benchmarks/castling_synthetic.py --out runs/castling_experiment            # 600 steps each
    python benchmarks/castling_synthetic.py --out runs/castling_late --decay-end 1.0 --arms scratch convert \\
        --softmax-run runs/castling_experiment/softmax
    python benchmarks/castling_synthetic.py --quick --out /tmp/castling_quick        # seconds: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

RECIPES = {"softmax": "quickstart", "scratch": "castling_synthetic", "convert": "castling_synthetic_convert"}
QUICK = ["data.synthetic.num_videos=96", "data.batch_size=8"]


def tubelet(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tubelet.cli.main", *args], check=True)


def test(recipe: str, checkpoint: Path, run: Path, overrides: list[str]) -> dict:
    """``tubelet test`` of ``checkpoint``; its ``test_results.json`` (the next test overwrites the file)."""
    tubelet("test", recipe, "--checkpoint", str(checkpoint), *overrides)
    return json.loads((run / "report" / "test_results.json").read_text())


def last_checkpoint(run: Path, steps: int) -> Path:
    path = run / "checkpoints" / f"step={steps:06d}.ckpt"
    if not path.is_file():
        raise SystemExit(f"{path}: the run's last-step checkpoint is missing (trainer.checkpoint_every_n_steps)")
    return path


def branch_weights(checkpoint: Path) -> list[float]:
    """The branch weight every castling layer of a training checkpoint holds."""
    from tubelet.core.ckpt_format import checkpoint_weights

    return [float(v) for k, v in sorted(checkpoint_weights(checkpoint).items()) if k.endswith(".attn.branch_weight")]


def models(run: Path, checkpoint: Path | None) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The run's backbone (``tubelet.load_model``: the inference form for a switched run) and, given a
    Castling training checkpoint, the training form rebuilt with that checkpoint's weights."""
    import dataclasses

    import tubelet
    from tubelet.core.ckpt_format import checkpoint_weights
    from tubelet.models.registry import create_model
    from tubelet.models.weights import saved_variant

    after = tubelet.load_model(run)
    if checkpoint is None:
        return after, None
    saved = saved_variant(run / "backbone.safetensors")
    before = create_model(saved.name, **{**dataclasses.asdict(saved.config), "castling_branch": True})
    prefix = "method.backbone."
    before.load_state_dict({k[len(prefix):]: v for k, v in checkpoint_weights(checkpoint).items()
                            if k.startswith(prefix)})
    return after, before.eval()


def macs_per_clip(model: torch.nn.Module, clip: torch.Tensor) -> int:
    from tubelet.flops import count_flops

    return count_flops(model, clip[None]).macs


@torch.inference_mode()
def ms_per_clip(model: torch.nn.Module, batch: torch.Tensor, reps: int) -> float:
    model(batch)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model(batch)
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2] / batch.shape[0]


def changed_predictions(a: dict, b: dict) -> int:
    pa = {p["index"]: p["pred"] for p in a["predictions"]}
    return sum(pa[p["index"]] != p["pred"] for p in b["predictions"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/castling_experiment")
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps of every run (the recipes' 600)")
    ap.add_argument("--arms", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    ap.add_argument("--softmax-run", default=None,
                    help="the softmax run the converted arm starts from (default: this experiment's own softmax arm)")
    ap.add_argument("--decay-end", type=float, default=None, help="method.decay_end of the Castling runs "
                    "(default: the recipes' 0.75)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-batch", type=int, default=32, help="clips per batch of the timing (0: no timing)")
    ap.add_argument("--time-reps", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="96 clips, batch 8, a few steps: checks that it runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    steps = 4 if args.quick else args.steps
    softmax_run = Path(args.softmax_run) if args.softmax_run else out / "softmax"
    if "convert" in args.arms and "softmax" not in args.arms and not (softmax_run / "backbone.safetensors").is_file():
        raise SystemExit(f"--arms convert without softmax needs {softmax_run / 'backbone.safetensors'} (--softmax-run)")
    shared = [*(QUICK if args.quick else []), f"trainer.num_threads={args.threads}"]
    fit_only = [f"trainer.max_steps={steps}", f"trainer.checkpoint_every_n_steps={steps}",
                "trainer.enable_progress_bar=false", *(["trainer.val_check_interval=2"] if args.quick else [])]
    results = {}
    for arm in args.arms:
        recipe, run = RECIPES[arm], out / arm
        overrides = [*shared, f"run_dir={run}"]
        if arm != "softmax" and args.decay_end is not None:
            overrides.append(f"method.decay_end={args.decay_end}")
        if arm == "convert":
            overrides.append(f"model.checkpoint={softmax_run / 'backbone.safetensors'}")
        t0 = time.perf_counter()
        load0 = os.getloadavg()[0]
        tubelet("fit", recipe, *overrides, *fit_only, "--overwrite")
        row: dict = {"recipe": recipe, "steps": steps, "fit_s": time.perf_counter() - t0,
                     "fit_load": (load0, os.getloadavg()[0]), "overrides": overrides}
        after = test(recipe, run / "method.safetensors", run, overrides)
        row["top1_after"] = after["top1"]
        row["test_videos"], row["views"] = after["num_videos"], after["num_views"]
        if arm != "softmax":
            ckpt = last_checkpoint(run, steps)
            row["branch_weight_last_step"] = max(branch_weights(ckpt))
            before = test(recipe, ckpt, run, overrides)
            row["top1_before"] = before["top1"]
            row["changed_predictions"] = changed_predictions(before, after)
        results[arm] = row
        print(f"{arm}: top-1 {row.get('top1_before', row['top1_after']):.4f} before the switch, "
              f"{row['top1_after']:.4f} after", flush=True)

    from tubelet.config.loader import load_recipe

    data = load_recipe("quickstart", shared).data
    clip = torch.randn(3, data.num_frames, data.crop_size, data.crop_size)
    batch = torch.randn(args.time_batch, *clip.shape)
    for arm, row in results.items():
        run = out / arm
        after, before = models(run, None if arm == "softmax" else last_checkpoint(run, steps))
        row["castling_branch_after"] = any(getattr(m, "branch", False) for m in after.modules())
        row["macs_after"] = macs_per_clip(after, clip)
        row["macs_before"] = macs_per_clip(before, clip) if before is not None else row["macs_after"]
        if before is not None:  # the two forms on the same clips, outside the CLI
            with torch.inference_mode():
                row["max_logit_change"] = float((before(batch) - after(batch)).abs().max())
    if args.time_batch:
        for arm, row in results.items():
            model, _ = models(out / arm, None)
            load = os.getloadavg()
            row["ms_per_clip"] = ms_per_clip(model, batch, args.time_reps)
            row["time_load"] = (load[0], os.getloadavg()[0])
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    print(f"\n{steps} optimizer steps per run (batch {data.batch_size}); the converted arm starts from "
          f"{softmax_run}; {args.threads} thread(s)")
    print("| arm | steps | branch weight at the last step | top-1 before switch | after switch | difference | "
          "changed predictions | MACs/clip before | MACs/clip after |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for arm, row in results.items():
        b, a = row.get("top1_before"), row["top1_after"]
        before = f"{100 * b:.2f}" if b is not None else "-"
        diff = f"{100 * (a - b):+.2f}" if b is not None else "-"
        weight = f"{row['branch_weight_last_step']:.3g}" if "branch_weight_last_step" in row else "-"
        changed = f"{row['changed_predictions']} / {row['test_videos']}" if "changed_predictions" in row else "-"
        print(f"| {arm} | {row['steps']} | {weight} | {before} | {100 * a:.2f} | {diff} | {changed} | "
              f"{row['macs_before'] / 1e6:.3f} M | {row['macs_after'] / 1e6:.3f} M |")
    if args.time_batch:
        print(f"\ntime per clip, batch {args.time_batch}, median of {args.time_reps}, {args.threads} thread(s), "
              "measured once (load average before / after):")
        for arm, row in results.items():
            print(f"  {arm:<8} {row['ms_per_clip']:.3f} ms/clip  (load {row['time_load'][0]:.2f} / "
                  f"{row['time_load'][1]:.2f})")
    for arm, row in results.items():
        if "max_logit_change" in row:
            print(f"  {arm}: largest logit change from the switch on {args.time_batch} random clips: "
                  f"{row['max_logit_change']:.3g}")


if __name__ == "__main__":
    main()
