"""The ``tubelet`` command. Each subcommand lives in its own module with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from tubelet.errors import TubeletError

# subcommand -> module; each module defines add_parser(subparsers) and run(args) -> int
SUBCOMMANDS = {
    "fit": "tubelet.cli.fit",
    "test": "tubelet.cli.test",
    "predict": "tubelet.cli.predict",
    "demo": "tubelet.cli.demo",
    "flops": "tubelet.cli.flops",
    "probe": "tubelet.cli.probe",
    "data": "tubelet.cli.data",
    "convert": "tubelet.cli.convert",
    "models": "tubelet.cli.models",
}


def build_parser() -> argparse.ArgumentParser:
    from tubelet import __version__

    parser = argparse.ArgumentParser(prog="tubelet", description="Video understanding on PyTorch.")
    parser.add_argument("--version", action="version", version=f"tubelet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except TubeletError as exc:
        print(f"tubelet {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
