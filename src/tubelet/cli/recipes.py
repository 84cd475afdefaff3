"""``tubelet recipes [NAME] [--full]``: the shipped recipes, or one recipe resolved.

Without NAME: one line per shipped recipe (``src/tubelet/recipes/*.yaml``) with the first sentence of
its leading comment, which says what the recipe is for. With NAME (a shipped name or a file): the recipe's
YAML with its ``_base_`` chain merged, so what a child changes is visible without opening its bases;
``--full`` prints every key with the schema's defaults filled in (what ``fit`` writes to config.yaml).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipes", help="list the shipped recipes, or print one with its _base_ merged")
    p.add_argument("name", nargs="?", default=None, help="shipped recipe name or recipe file")
    p.add_argument("--full", action="store_true", help="print every key, defaults included (the effective config)")
    p.set_defaults(run=run)


# a sentence ends at a full stop followed by a capital ("Sec. 4" and "et al., arXiv" go on)
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]`'\"])\.\s+(?=[A-Z])")


def description(path: Path, limit: int = 110) -> str:
    """The first sentence of the comment paragraph at the top of a recipe file, joined across its lines
    and cut at a word (with "...") past ``limit`` characters; '' when the file starts with no comment."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text.startswith("#"):
            if text or words:
                break
            continue
        text = text.lstrip("#").strip()
        if not text:  # an empty comment line ends the paragraph
            break
        words += text.split()
    paragraph = " ".join(words)
    end = _SENTENCE_END.search(paragraph)
    sentence = (paragraph[: end.start() + 1] if end else paragraph).rstrip(":")
    if len(sentence) > limit:
        sentence = sentence[: limit - 3].rsplit(" ", 1)[0].rstrip(",;:(.") + "..."
    return sentence


def run(args: argparse.Namespace) -> int:
    import yaml

    from tubelet.config import list_recipes, load_recipe, read_recipe_tree, resolve_recipe, to_dict
    from tubelet.errors import ConfigError

    if args.name is None:
        if args.full:
            raise ConfigError("--full needs a recipe NAME (tubelet recipes NAME --full)")
        names = list_recipes()
        width = max(len(n) for n in names)
        for name in names:
            print(f"{name:<{width}}  {description(resolve_recipe(name))}".rstrip())
        return 0
    tree = to_dict(load_recipe(args.name)) if args.full else read_recipe_tree(args.name)
    print(f"# {resolve_recipe(args.name)}" + (" (effective config)" if args.full else " (_base_ merged)"))
    print(yaml.safe_dump(tree, sort_keys=False), end="")
    return 0
