"""``tubelet models [PATTERN]``: list registered models.

A bare word is a substring (``vit`` finds every ``vit_*`` and ``mvitv2_*``); a pattern with glob
characters (``*?[``) is matched as a glob. No match is an error that suggests the closest names.
"""

from __future__ import annotations

import argparse
import difflib

GLOB_CHARS = "*?["


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*",
                   help="substring (e.g. 'vit') or glob pattern (e.g. 'vit_*'); default: all")
    p.set_defaults(run=run)


def matching_models(pattern: str) -> list[str]:
    """Registered names matching ``pattern``: a glob when it has glob characters, else a substring."""
    from tubelet.models.registry import list_models

    glob = pattern if any(c in pattern for c in GLOB_CHARS) else f"*{pattern}*"
    return list_models(glob)


def run(args: argparse.Namespace) -> int:
    from tubelet.errors import ConfigError
    from tubelet.models.registry import list_models

    names = matching_models(args.pattern)
    if not names:
        word = args.pattern.strip(GLOB_CHARS) or args.pattern
        close = difflib.get_close_matches(word, list_models(), n=3, cutoff=0.4)
        hint = f"; closest: {', '.join(close)}" if close else "; `tubelet models` lists them all"
        raise ConfigError(f"no registered model matches '{args.pattern}'{hint}")
    for name in names:
        print(name)
    return 0
