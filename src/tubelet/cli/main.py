"""The ``tubelet`` command. Each subcommand lives in its own module with ``add_parser`` and ``run``.

An error the user can cause (a :class:`~tubelet.errors.TubeletError`, or a file system that refuses a
write: disk full, read-only, no permission) is printed as the subcommand's usage line and one line
naming what is wrong, exit status 1; argparse's own usage errors keep status 2.
"""

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
    "recipes": "tubelet.cli.recipes",
    "zero-shot": "tubelet.cli.zero_shot",
    "track": "tubelet.cli.track",
    "export": "tubelet.cli.export",
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


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub-)subparser that parsed ``args`` (``tubelet data check``'s for ``data check``)."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs else None
        if chosen is None or chosen not in subs[0].choices:
            return parser
        parser = subs[0].choices[chosen]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # A recipe command takes overrides anywhere after the recipe (``test R --checkpoint X k=v``): argparse
    # fills a positional list from one run of words only, so the later ones arrive here as extras.
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    command = _command_parser(parser, args)
    if extra:
        if getattr(args, "overrides_anywhere", False):
            overrides = [x for x in extra if "=" in x and not x.startswith("-")]
            args.overrides = list(args.overrides) + overrides
            extra = [x for x in extra if x not in overrides]
        if extra:
            command.error(f"unrecognized arguments: {' '.join(extra)}")  # exits 2
    try:
        return int(args.run(args) or 0)
    except TubeletError as exc:
        command.print_usage(sys.stderr)
        print(f"{command.prog}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A write that a library made past tubelet's own writers (TensorBoard, Lightning's folders):
        # a full disk or a read-only folder is the user's to fix, not a traceback.
        from tubelet.core.io import WRITE_ERRNOS, write_error

        if exc.errno not in WRITE_ERRNOS:
            raise
        error = write_error(exc.filename if exc.filename is not None else "", exc)
        command.print_usage(sys.stderr)
        print(f"{command.prog}: error: {error if exc.filename is not None else error.reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
