"""``tubelet demo``: the main job. Trains on the synthetic motion set and writes a run report.

Stages (each a shipped recipe, trained with the same budget, tested on the same held-out clips):

- ``video``: a small space-time ViT on 8-frame clips (recipe ``demo``);
- ``single_frame``: the same ViT fed one frame repeated over time (recipe ``demo_single_frame``), so no
  motion is visible. The classes differ only in motion, so it should stay near chance: the gap is what
  temporal modelling buys.
- ``mae_pretrain`` + ``mae_finetune``: MAE-ST (arXiv 2205.09113) pre-trains the same ViT without labels on
  the training clips (recipe ``mae_st_synthetic_pretrain``; its reconstructions go into the report), then
  fine-tunes it with the ``video`` stage's recipe and budget (``mae_st_synthetic_finetune``), so the two
  rows compare pre-training against training from scratch.

``tubelet demo --model NAME`` instead trains one model of the zoo (SlowFast, Slow, C2D, I3D, R(2+1)D, CSN,
X3D, MViT) on the same set, with its family's CPU-sized synthetic recipe (``FAMILY_RECIPES``: reduced
depth and width, the family's layout kept) and ``model.name=NAME``.

Prints a results table (model, top-1, top-5, train time) and writes ``<out>/report/index.html`` with
loss/accuracy curves, sample clips with predictions and confusion matrices. Stages are listed in
``STAGES``; a stage may take overrides computed from the output root (e.g. a fine-tuning stage that loads
an earlier stage's ``backbone.safetensors``) and may skip testing (a pre-training stage).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

# Overrides that shrink every stage for ``--quick`` (under 2 minutes in all on 2 cores).
QUICK = [
    "trainer.max_steps=40",
    "trainer.log_every_n_steps=5",
    "trainer.val_check_interval=20",
    "trainer.checkpoint_every_n_steps=20",
    "data.synthetic.num_videos=192",
]


@dataclass
class Stage:
    key: str  # run folder name under --out
    label: str  # row name in the results table
    recipe: str  # shipped recipe name or path
    quick: list[str] = field(default_factory=list)  # extra overrides with --quick
    overrides: Callable[[Path], list[str]] | None = None  # overrides from the output root
    test: bool = True  # evaluated on the test split and shown in the table


STAGES: list[Stage] = [
    Stage("video", "ViT, 8 frames", "demo"),
    Stage("single_frame", "ViT, 1 frame repeated", "demo_single_frame"),
    Stage("mae_pretrain", "MAE-ST pre-training (no labels)", "mae_st_synthetic_pretrain", test=False),
    Stage("mae_finetune", "ViT, 8 frames, MAE-ST pre-trained", "mae_st_synthetic_finetune",
          overrides=lambda out: [f"model.checkpoint={out / 'mae_pretrain' / 'backbone.safetensors'}"]),
]


# Zoo model name prefix -> the family's synthetic recipe (first match wins: slowfast_ before slow_).
FAMILY_RECIPES: list[tuple[str, str]] = [
    ("slowfast_", "slowfast_synthetic"),
    ("slow_", "c2d_synthetic"),  # Slow is C2D's ResNet with temporal kernels in res4/res5
    ("c2d_", "c2d_synthetic"),
    ("i3d_", "i3d_synthetic"),
    ("r2plus1d_", "r2plus1d_synthetic"),
    ("csn_", "csn_synthetic"),
    ("x3d_", "x3d_synthetic"),
    ("efficient_x3d_", "x3d_synthetic"),
    ("mvitv1_", "mvitv2_synthetic"),
    ("mvitv2_", "mvitv2_synthetic"),
]


def model_stage(name: str) -> Stage:
    """The one stage of ``tubelet demo --model NAME``: NAME with its family's synthetic recipe."""
    from tubelet.errors import ConfigError
    from tubelet.models import list_models

    if name not in list_models():
        raise ConfigError(f"demo --model: unknown model '{name}'; see `tubelet models`")
    recipe = next((r for prefix, r in FAMILY_RECIPES if name.startswith(prefix)), None)
    if recipe is None:
        families = ", ".join(sorted({p.rstrip("_") + "*" for p, _ in FAMILY_RECIPES}))
        raise ConfigError(f"demo --model: '{name}' has no synthetic recipe; --model takes the zoo's {families}")
    return Stage(name, f"{name} (reduced, {recipe})", recipe, overrides=lambda _out: [f"model.name={name}"])


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a video ViT and a single-frame baseline (or, with --model, one zoo model) on the synthetic set; write a report")
    p.add_argument("--out", default="runs/demo", help="root folder of the runs and the report (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="tiny budget (under 2 minutes): checks that everything runs")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the recipe's, else all cores)")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="train this zoo model (e.g. slowfast_r50_8x8, x3d_xs, csn_r101) with its family's "
                   "synthetic recipe instead of the ViT stages")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every stage, e.g. --set trainer.max_steps=100 (repeatable)")
    p.set_defaults(run=run)


def _clip_frames(video: Any, mean: list[float], std: list[float]) -> np.ndarray:
    """A normalised ``(C,T,H,W)`` (or first view of ``(V,C,T,H,W)``) tensor back to uint8 ``(T,H,W,3)``."""
    import torch

    if video.dim() == 5:
        video = video[0]
    m = torch.tensor(mean).view(3, 1, 1, 1)
    s = torch.tensor(std).view(3, 1, 1, 1)
    x = (video * s + m).clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).numpy()


def _pick_samples(dataset: Any, predictions: list[dict], names: list[str], per_class: int = 1, limit: int = 8):
    from tubelet.report import SampleClip

    by_index = {p["index"]: p for p in predictions}
    chosen, seen = [], {}
    for index, row in enumerate(dataset.samples):
        if seen.get(row.label, 0) >= per_class or index not in by_index:
            continue
        seen[row.label] = seen.get(row.label, 0) + 1
        sample = dataset[index]
        frames = _clip_frames(sample["video"], dataset.cfg.mean, dataset.cfg.std)
        pred = by_index[index]
        chosen.append(SampleClip(frames, names[pred["label"]], names[pred["pred"]], sample.get("caption", "")))
        if len(chosen) >= limit:
            break
    return chosen


def run(args: argparse.Namespace) -> int:
    from tubelet.config.loader import load_recipe
    from tubelet.data.builder import build_dataset
    from tubelet.engine import evaluate, fit
    from tubelet.methods import build_method
    from tubelet.report import format_table, save_test_figures, write_report
    from tubelet.report.figures import ReconstructionCallback

    out = Path(args.out)
    # every stage at the fastest precision that trains as well here (bf16-mixed where bf16 matmuls are
    # faster, measured once), the same for all stages; --set trainer.precision=... overrides it
    common = ["trainer.precision=auto"] + list(QUICK if args.quick else []) + list(args.overrides)
    if args.threads:
        common.append(f"trainer.num_threads={args.threads}")
    caches: dict[str, dict] = {}  # rendered synthetic clips, shared by stages over the same set
    rows, runs, confusions, samples = [], {}, {}, {}
    names: list[str] = []
    t_all = time.perf_counter()
    stages = [model_stage(args.model)] if getattr(args, "model", None) else STAGES
    for stage in stages:
        overrides = common + (stage.quick if args.quick else []) + (stage.overrides(out) if stage.overrides else [])
        recipe = load_recipe(stage.recipe, overrides)
        recipe.run_dir = str(out / stage.key)
        datasets = {split: _dataset(build_dataset, recipe, split, caches) for split in ("train", "val", "test")}
        t0 = time.perf_counter()
        n = sum(_prerender(ds) for ds in datasets.values())
        if n:
            print(f"[demo] rendered {n} synthetic clips in {time.perf_counter() - t0:.1f} s", flush=True)
        names = list(getattr(datasets["train"], "class_names", names))
        method = build_method(recipe)
        print(f"[demo] {stage.label}: training {recipe.trainer.max_steps} steps -> {recipe.run_dir}", flush=True)
        t0 = time.perf_counter()
        # Methods that reconstruct (MAE-ST) leave report/reconstructions.png in their run folder.
        recon = ReconstructionCallback(datasets["val"], recipe.data.mean, recipe.data.std)
        # the demo owns its stage folders: a second `tubelet demo` replaces the first one's runs
        fit(recipe, method=method, datasets={"train": datasets["train"], "val": datasets["val"]}, callbacks=[recon],
            overwrite=True)
        train_s = time.perf_counter() - t0
        runs[stage.label] = Path(recipe.run_dir)
        if not stage.test:
            rows.append({"model": stage.label, "top1": "-", "top5": "-", "train_s": f"{train_s:.1f}"})
            continue
        result = evaluate(recipe, None, method=method, dataset=datasets["test"],
                          report_dir=Path(recipe.run_dir) / "report")
        rows.append({
            "model": stage.label,
            "top1": round(float(result["top1"]), 4),
            "top5": round(float(result["top5"]), 4),
            "train_s": f"{train_s:.1f}",
            "test_clips": int(result["num_videos"]),
        })
        save_test_figures(result)
        confusions[stage.label] = np.asarray(result["confusion"])
        samples[stage.label] = _pick_samples(datasets["test"], result["predictions"], names)
    chance = 1.0 / max(1, len(names))
    if stages is STAGES:
        notes = (f"{len(names)} motion classes (chance top-1 {chance:.3f}); the class cannot be read from a single "
                 "frame, so the single-frame model shows what is learnable without motion. MAE-ST pre-trains "
                 "the same ViT without labels, then fine-tunes it at the video model's budget.")
    else:
        notes = (f"{len(names)} motion classes (chance top-1 {chance:.3f}); {stages[0].label}: the family's "
                 "layout at reduced depth and width, trained from scratch.")
    index = write_report(
        out / "report", runs, rows, names, confusions, samples,
        title="tubelet demo: motion classes on the synthetic video set",
        notes=notes + (" Quick mode: tiny budget, numbers are not meaningful." if args.quick else ""),
    )
    print()
    print(format_table(rows))
    print(f"\nchance top-1 {chance:.3f}; total {time.perf_counter() - t_all:.0f} s; report: {index}")
    return 0


def _prerender(dataset: Any) -> int:
    """Render a synthetic split up front, so that training time measures the model, not the renderer."""
    from tubelet.data.synthetic import SyntheticSource

    base = getattr(dataset, "base", dataset)  # a rho wrapper holds its clip dataset
    opener = getattr(base, "opener", None)
    return opener.render_all(s.path for s in base.samples) if isinstance(opener, SyntheticSource) else 0


def _dataset(build_dataset: Callable, recipe: Any, split: str, caches: dict[str, dict]) -> Any:
    """The recipe's split; stages over the same synthetic set share its rendered clips."""
    d = recipe.data
    return build_dataset(d, split, seed=recipe.seed, cache=caches.setdefault(repr(d.synthetic), {}))
