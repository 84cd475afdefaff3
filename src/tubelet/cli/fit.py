"""``tubelet fit [--config] RECIPE [section.key=value ...] [--resume auto|PATH | --overwrite]``: train a recipe."""

from __future__ import annotations

import argparse

from tubelet.cli._recipe import add_recipe_arguments, load_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="train a recipe (Lightning); checkpoints and logs go to run_dir")
    add_recipe_arguments(p)
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="'auto': newest complete checkpoint of this run in run_dir/checkpoints (fresh start if none); "
                        "or a path. A resumed run continues the recipe its checkpoint recorded")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in a run_dir that holds another run: remove its checkpoints, logs and "
                        "results first")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from tubelet.engine import fit
    from tubelet.report import write_run_report
    from tubelet.report.figures import figure_callbacks

    recipe = load_from_args(args)
    # the report's figures, each drawn only for a method it fits; the method's own callbacks (monitors)
    # are added by fit
    result = fit(recipe, resume=args.resume, callbacks=figure_callbacks(recipe), overwrite=args.overwrite)
    if getattr(rank_zero_only, "rank", 0) != 0:
        return 0  # with several processes, rank 0 reports
    result.paths["report"] = write_run_report(result.run_dir)
    print(f"run folder: {result.run_dir}")
    for key in sorted(result.metrics):
        print(f"  {key:<20} {result.metrics[key]:.6g}")
    for name, path in sorted(result.paths.items()):
        print(f"  {name:<20} {path}")
    return 0
