"""The import graph of ``lightseg``: every module's imports of other lightseg modules, lazy ones
included, checked for cycles and for arrows that run up the layers.

``python -m lightseg.tools.imports`` prints the layers, each module's lightseg imports and any
problem, and exits 1 when there is one; ``--dot`` prints the graph in Graphviz form instead. The
test suite runs :func:`problems` on the installed package.

An import ``from lightseg.a import b`` is an arrow to ``lightseg.a.b`` when that is a module, else
to ``lightseg.a`` (the package's ``__init__``); an import inside a function counts like one at the
top of the file. Parent packages that Python runs first are not arrows: ``lightseg.models.build``
does not import ``lightseg/__init__`` in this graph.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "lightseg"

# Bottom up; a module may import its own layer (without cycles) and the layers below it, never one
# above. The first matching prefix places a module ("lightseg.data" covers lightseg.data.*).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("facts", ("lightseg._version", "lightseg.errors", "lightseg.meta")),
    (
        "foundations",
        (
            "lightseg.config",
            "lightseg.layers",
            "lightseg.metrics",
            "lightseg.visualize",
            "lightseg.weights",
            "lightseg.checkpoint",
            "lightseg.digest",
            "lightseg.storage",
            "lightseg.fuse",
        ),
    ),
    ("data and models", ("lightseg.data", "lightseg.models", "lightseg.flops")),
    ("inference", ("lightseg.inference",)),
    ("losses and evaluation", ("lightseg.losses", "lightseg.evaluation")),
    ("training", ("lightseg.training",)),
    ("deploy", ("lightseg.deploy",)),
    ("serve", ("lightseg.serve",)),
    ("command line and public face", ("lightseg.cli", "lightseg.engine", "lightseg.tools", "lightseg")),
)
# Layers that sit side by side: neither may import the other.
SIBLINGS = (("training", "deploy"),)


def package_root() -> Path:
    return Path(__file__).resolve().parents[1]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The lightseg module ``name`` denotes, or its nearest enclosing package that is one."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.AST, current: str, is_package: bool, modules: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [t for a in node.names if (t := _resolve(a.name, modules))]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: from the current package upwards
        pkg = current if is_package else current.rpartition(".")[0]
        for _ in range(node.level - 1):
            pkg = pkg.rpartition(".")[0]
        base = f"{pkg}.{base}" if base else pkg
    if base != PACKAGE and not base.startswith(PACKAGE + "."):
        return []
    found = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        found.append(sub if sub in modules else _resolve(base, modules))
    return [t for t in found if t]


def import_graph(root: Path | None = None) -> dict[str, set[str]]:
    """Module -> the lightseg modules it imports (anywhere in the file)."""
    root = root or package_root()
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        targets = {t for node in ast.walk(tree) for t in _targets(node, name, is_package, modules)}
        graph[name] = targets - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest prefix that places ``module``."""
    best, best_len = len(LAYERS) - 1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    names = [name for name, _ in LAYERS]
    side = {frozenset((names.index(a), names.index(b))) for a, b in SIBLINGS}
    out = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            a, b = layer_of(src), layer_of(dst)
            if b > a:
                out.append(f"{src} ({names[a]}) imports {dst} ({names[b]}): an arrow up the layers")
            elif a != b and frozenset((a, b)) in side:
                out.append(f"{src} ({names[a]}) imports {dst} ({names[b]}): side-by-side layers")
    return out


def problems(root: Path | None = None) -> list[str]:
    """Every import cycle and layer violation, as sentences (empty: the house is in order)."""
    graph = import_graph(root)
    found = [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    return found + layer_violations(graph)


def render(graph: dict[str, set[str]]) -> str:
    lines = []
    for i, (name, _) in enumerate(LAYERS):
        members = sorted(m for m in graph if layer_of(m) == i)
        lines.append(f"[{i}] {name}")
        for m in members:
            deps = ", ".join(sorted(graph[m])) or "-"
            lines.append(f"    {m} -> {deps}")
    return "\n".join(lines)


def dot(graph: dict[str, set[str]]) -> str:
    edges = [f'  "{a}" -> "{b}";' for a in sorted(graph) for b in sorted(graph[a])]
    return "digraph lightseg {\n  rankdir=BT;\n" + "\n".join(edges) + "\n}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightseg.tools.imports", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dot", action="store_true", help="print the graph for Graphviz")
    args = parser.parse_args(argv)
    graph = import_graph()
    print(dot(graph) if args.dot else render(graph))
    found = problems()
    for p in found:
        print(p, file=sys.stderr)
    if not args.dot:
        print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports, {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
