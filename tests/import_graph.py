"""The import graph of the `core` package, read from the source with `ast` (nothing is imported).

Every import counts, also one inside a function: a lazy import hides a circle from Python, not
from the reader. `from core.x import y` is an edge to core.x.y when y is a module, else to core.x;
importing a submodule does not count as importing its package's `__init__` (that is Python's
loading order, not a dependency someone wrote).

    python tests/import_graph.py [ROOT]     prints the circles (strongly connected components), one a line
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def modules(root: Path, package: str = "core") -> dict[str, Path]:
    """Dotted module name -> its file, for every .py file of the package."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _resolve(name: str, current: str, is_package: bool, level: int) -> str:
    if not level:
        return name
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph(root, package: str = "core") -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    root = Path(root)
    known = modules(root, package)
    graph = {}
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                origin = _resolve(node.module or "", name, is_package, node.level)
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in known and t != name)
        graph[name] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


if __name__ == "__main__":
    found = circles(import_graph(sys.argv[1] if len(sys.argv) > 1 else "."))
    print(f"{len(found)} import circles")
    for component in found:
        print("  " + " <-> ".join(component))
