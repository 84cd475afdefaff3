"""``tubelet fit [--config] RECIPE [section.key=value ...] [--resume auto|PATH]``: train a recipe."""

from __future__ import annotations

import argparse

from tubelet.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="train a recipe (Lightning); checkpoints and logs go to run_dir")
    p.add_argument("--config", "-c", default=None,
                   help="recipe file or shipped recipe name (or give it as the first positional argument)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="dotted overrides, e.g. optim.lr=1e-3")
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="'auto': newest complete checkpoint in run_dir/checkpoints (fresh start if none); or a path")
    p.set_defaults(run=run)


def recipe_and_overrides(args: argparse.Namespace) -> tuple[str, list[str]]:
    """``--config R`` or a first positional ``R`` (without '='), then the dotted overrides."""
    items = list(args.overrides)
    if args.config is not None:
        return args.config, items
    if items and "=" not in items[0]:
        return items[0], items[1:]
    raise ConfigError("no recipe given: use --config RECIPE (a file or a shipped recipe name)")


def run(args: argparse.Namespace) -> int:
    from tubelet.config import load_recipe
    from tubelet.engine import fit

    from tubelet.report_mae import ReconstructionCallback

    recipe = load_recipe(*recipe_and_overrides(args))
    # Methods with ``reconstruct`` (MAE-ST) leave run_dir/report/reconstructions.png; a no-op otherwise.
    callbacks = [ReconstructionCallback.for_recipe(recipe)]
    from tubelet.report_maskfeat import HOGReportCallback

    callbacks.append(HOGReportCallback.for_recipe(recipe))  # MaskFeat (HOG target): report/hog.png
    from tubelet.eval.knn import monitor_from_recipe

    knn = monitor_from_recipe(recipe)  # kNN accuracy during SSL pre-training (method.knn_every_n_steps)
    if knn is not None:
        callbacks.append(knn)
    result = fit(recipe, resume=args.resume, callbacks=callbacks)
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:
        return 0  # with several processes, rank 0 reports
    print(f"run folder: {result.run_dir}")
    for key in sorted(result.metrics):
        print(f"  {key:<20} {result.metrics[key]:.6g}")
    for name, path in sorted(result.paths.items()):
        print(f"  {name:<20} {path}")
    return 0
