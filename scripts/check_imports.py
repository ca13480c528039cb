"""Fail on an import cycle between churnwatch modules or an import against the layer order (`make lint`).

Data flows one way through the packages, and so do imports: a module may import from its own layer or one
listed before it, never after. Every import counts, including those inside functions (a lazy import hides
a cycle, it does not remove it).

    python scripts/check_imports.py [src/churnwatch]
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

LAYERS = (
    "churnwatch",  # the package root: the version, and the API's names resolved on first use
    "errors",
    "config",
    "runtime",
    "io",
    "data",
    "features",
    "pipeline",
    "models",
    "explain",
    "monitoring",
    "artifact",
    "runs",
    "scoring",
    "jobs",
    "serving",
    "api",
    "cli",
    "__main__",
)
"""Lowest first: errors ← config ← runtime ← io ← data ← features ← pipeline ← models ← explain ←
monitoring (drift statistics) ← artifact ← runs ← scoring ← jobs ← serving ← the API and the command line."""


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str, known: Iterable[str]) -> set[str]:
    """The churnwatch modules `path` imports (`from a import b` counts as a.b when b is a module)."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            subs = {f"{base}.{a.name}" for a in node.names} & known
            found.update(subs or {base})
    return {m for m in found if m == "churnwatch" or m.startswith("churnwatch.")}


def layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else parts[0]
    if key not in LAYERS:
        raise SystemExit(f"check_imports: {module} is in no layer: add its package to LAYERS in {__file__}")
    return LAYERS.index(key)


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def problems(root: Path) -> list[str]:
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph = {name: imports(path, name, files) & set(files) for name, path in files.items()}
    out = [
        f"{src} imports {dst}: layer {LAYERS[layer(dst)]!r} comes after {LAYERS[layer(src)]!r}"
        for src, targets in sorted(graph.items())
        for dst in sorted(targets)
        if layer(dst) > layer(src)
    ]
    out += [f"import cycle: {' → '.join(c)}" for c in cycles(graph)]
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else Path(__file__).resolve().parents[1] / "src" / "churnwatch")
    found = problems(root)
    for line in found:
        print(f"check_imports: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
