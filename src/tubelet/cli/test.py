"""``tubelet test --config RECIPE --checkpoint PATH [section.key=value ...]``: multi-view testing."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("test", help="multi-view test (clips x crops) of a checkpoint; prints top-1/top-5")
    p.add_argument("--config", "-c", required=True, help="recipe file or shipped recipe name")
    p.add_argument("--checkpoint", required=True,
                   help="training checkpoint (*.ckpt), method.safetensors or backbone.safetensors")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="dotted overrides, e.g. data.test_clips=5")
    p.set_defaults(run=run)


def format_table(results: dict) -> str:
    rows = [
        ("checkpoint", str(results["checkpoint"])),
        ("videos", str(results["num_videos"])),
        ("views per video", str(results["num_views"])),
        ("classes", str(results["num_classes"])),
        ("top-1 (%)", f"{100 * results['top1']:.2f}"),
        ("top-5 (%)", f"{100 * results['top5']:.2f}"),
        ("confusion matrix", results["confusion_png"]),
    ]
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join([line] + [f"{k:<{width}}  {v}" for k, v in rows] + [line])


def run(args: argparse.Namespace) -> int:
    from tubelet.config import load_recipe
    from tubelet.eval.multiview import evaluate

    recipe = load_recipe(args.config, args.overrides)
    print(format_table(evaluate(recipe, args.checkpoint)))
    return 0
