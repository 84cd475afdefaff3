"""``tubelet models``: list registered models, optionally filtered by a glob pattern."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*", help="glob pattern, e.g. 'vit_*'")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tubelet.models.registry import list_models

    for name in list_models(args.pattern):
        print(name)
    return 0
