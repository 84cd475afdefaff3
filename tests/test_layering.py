"""The layer order of ARCHITECTURE.md, read from the code's own imports: no module imports a layer above
its own, and no two modules import each other (at module level)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tubelet"

# bottom to top; a module may import its own layer and the ones before it
LAYERS = ["errors", "core", "config", "data", "models", "methods", "eval", "engine", "report", "cli"]
# modules at the package root, placed in the order
ROOT_MODULES = {"errors": "errors", "flops": "models", "export": "engine"}


def layer_of(module: str) -> str | None:
    """``tubelet.engine.fit`` -> ``engine``; None for the package itself (its __init__ may import anything)."""
    parts = module.split(".")
    if parts[0] != "tubelet" or len(parts) == 1:
        return None
    return ROOT_MODULES.get(parts[1], parts[1])


def module_name(path: Path, root: Path = SRC.parent) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, top_level_only: bool = False, root: Path = SRC.parent) -> list[tuple[int, str]]:
    """(line, imported module) of every tubelet import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path, root).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("tubelet")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name.startswith("tubelet"):
                out.append((node.lineno, name))
                # ``from tubelet.data import decoding`` imports the submodule too
                out += [(node.lineno, f"{name}.{a.name}") for a in node.names
                        if (SRC.parent / Path(*f"{name}.{a.name}".split("."))).with_suffix(".py").is_file()
                        or (SRC.parent / Path(*f"{name}.{a.name}".split("."))).is_dir()]
    return out


def upward_imports(files: list[Path], root: Path = SRC.parent) -> list[str]:
    bad = []
    for path in files:
        own = layer_of(module_name(path, root))
        if own is None:
            continue
        for line, target in imports(path, root=root):
            other = layer_of(target)
            if other is not None and LAYERS.index(other) > LAYERS.index(own):
                bad.append(f"{path.relative_to(root)}:{line} ({own}) imports {target} ({other})")
    return bad


def test_no_module_imports_a_higher_layer():
    files = sorted(SRC.rglob("*.py"))
    assert all(layer_of(module_name(p)) in LAYERS + [None] for p in files), "a folder missing from LAYERS"
    assert upward_imports(files) == []


def test_the_check_finds_an_upward_import(tmp_path):
    fake = tmp_path / "tubelet" / "data" / "_layering_probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from tubelet.engine.fit import fit\n\n\ndef f():\n    from tubelet.cli import main\n",
                    encoding="utf-8")
    found = upward_imports([fake], root=tmp_path)
    assert found == [
        "tubelet/data/_layering_probe.py:1 (data) imports tubelet.engine.fit (engine)",
        "tubelet/data/_layering_probe.py:5 (data) imports tubelet.cli (cli)",
        "tubelet/data/_layering_probe.py:5 (data) imports tubelet.cli.main (cli)",
    ]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_modules():
    files = sorted(SRC.rglob("*.py"))
    names = {module_name(p) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        me = module_name(path)
        # a package's __init__ re-exports its modules; an import of the package is an import of it
        graph[me] = {t for _, t in imports(path, top_level_only=True) if t in names and t != me
                     and not me.startswith(t + ".")}
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module, layer", [("tubelet.core.io", "core"), ("tubelet.flops", "models"),
                                           ("tubelet", None), ("tubelet.report.figures.mae_st", "report")])
def test_layer_of(module, layer):
    assert layer_of(module) == layer
