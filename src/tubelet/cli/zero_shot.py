"""``tubelet zero-shot VIDEO... --checkpoint W --classes a,b,c``: top-k classes of real files from class-name
prompts, with a video-text method (FLIP) and no classifier trained.

The recipe is ``--config`` or the ``config.yaml`` of the run folder that holds the checkpoint. Each file is
read as ``tubelet predict`` reads it (the recipe's test views); its mean view embedding is scored against
the prompts ``template.format(class)`` of the recipe's ``method.templates`` (FLIP's 7 by default) or
``--template`` given once or more.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zero-shot", help="top-k classes of video files from class-name prompts (FLIP)")
    p.add_argument("paths", nargs="+", metavar="VIDEO")
    p.add_argument("--checkpoint", required=True, help="method.safetensors (or a training checkpoint) of a FLIP run")
    p.add_argument("--classes", required=True, help="comma-separated class names, e.g. 'dog,cat,playing guitar'")
    p.add_argument("--config", "-c", default=None, help="the recipe (default: config.yaml beside the checkpoint)")
    p.add_argument("--template", action="append", default=None,
                   help="a prompt template with one '{}' (repeatable; default: the recipe's method.templates)")
    p.add_argument("--topk", type=int, default=5, help="classes per file (capped at the number of classes)")
    p.add_argument("--json", action="store_true", help="one JSON object per file on stdout")
    p.set_defaults(run=run)


def _recipe_path(args: argparse.Namespace) -> Path:
    from tubelet.errors import ConfigError

    if args.config is not None:
        return Path(args.config)
    ckpt = Path(args.checkpoint)
    for folder in (ckpt.parent, ckpt.parent.parent):  # method.safetensors, or checkpoints/step=N.ckpt
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise ConfigError(f"{ckpt}: no config.yaml beside it; give the recipe it was trained with (--config RECIPE)")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from tubelet.cli.predict import format_prediction
    from tubelet.config import load_recipe
    from tubelet.engine.device import resolve_device
    from tubelet.engine.evaluate import is_video_text, load_method_weights
    from tubelet.engine.predict import Predictor
    from tubelet.errors import CheckpointError, ConfigError
    from tubelet.eval.zero_shot import ZeroShotClassifier
    from tubelet.methods import build_method

    names = [c.strip() for c in args.classes.split(",") if c.strip()]
    if len(names) < 2:
        raise ConfigError(f"--classes needs at least two comma-separated names, got '{args.classes}'")
    if len(set(names)) != len(names):
        raise ConfigError(f"--classes names a class twice: '{args.classes}'")
    if not Path(args.checkpoint).exists():
        raise CheckpointError(f"{args.checkpoint}: checkpoint not found")
    recipe = load_recipe(_recipe_path(args))
    # the file's weights replace whatever the recipe started from; classes are the command line's
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, checkpoint=None, num_classes=len(names)))
    method = build_method(dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, num_classes=0)))
    if not is_video_text(method):
        raise ConfigError(f"method '{recipe.method.name}' has no text tower; zero-shot needs a video-text method "
                          "(flip); use tubelet predict for a classifier")
    load_method_weights(method, args.checkpoint)
    device = resolve_device(recipe.trainer.accelerator)
    method.eval().to(device)
    # class texts of the recipe belong to its own label map; here the names are the prompts' words
    classifier = ZeroShotClassifier(method, names, args.template, class_texts={})
    predictor = Predictor(recipe, classifier, device, names, str(args.checkpoint), "--classes")
    width = max(len(n) for n in names)
    failed = 0
    for pred in predictor.predict(args.paths, topk=args.topk):
        if pred.error is not None:
            failed += 1
            print(f"tubelet zero-shot: {pred.path}: {pred.error}", file=sys.stderr)
            if not args.json:
                continue
        print(json.dumps(pred.as_dict()) if args.json else format_prediction(pred, width))
    return 1 if failed else 0
