"""The house: bcosify's modules import each other without cycles, and data flows one way.

Every import statement of every module counts, those inside functions too (a cycle hidden in a
function is still a cycle). Packages are layered in the order the data flows, data -> model ->
convert -> train -> explain -> evaluate -> report -> demo -> command line, on foundations that
import none of them; a module imports only from its own package, a foundation, or an earlier
layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import bcosify

ROOT = Path(bcosify.__file__).parent

FOUNDATIONS = (
    "_version",
    "_callable",
    "errors",
    "schema",
    "device",
    "serialization",
    "folders",
    "liveness",
)
"""Modules every layer may import; among themselves they import only earlier ones."""
LAYERS = ("nn", "data", "models", "convert", "train", "explain", "evaluate", "report", "demo")
"""The packages in the order data flows through them; ``cli`` and the root sit on top."""
ORDER = {name: i for i, name in enumerate((*FOUNDATIONS, *LAYERS, "cli", "__main__"))}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each bcosify module and the bcosify modules it imports (anywhere in its code)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                for alias in node.names:
                    candidate = f"{target}.{alias.name}"
                    imported.add(candidate if candidate in modules else target)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def layer(module: str) -> str | None:
    """The foundation or package a module belongs to (None for the root package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_no_module_imports_itself_round_a_cycle():
    assert cycles(import_graph()) == []


def test_the_checker_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_data_flows_one_way():
    backwards = []
    for module, imported in import_graph().items():
        own = layer(module)
        if own is None:
            continue  # the root package gathers the public names of every layer
        for other in imported:
            theirs = layer(other)
            if theirs is None:
                backwards.append(f"{module} -> {other} (the root package imports everything)")
            elif theirs != own and ORDER[theirs] > ORDER[own]:
                backwards.append(f"{module} -> {other}")
    assert backwards == []


def test_every_package_has_its_place():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    files = {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
    assert packages | files <= set(ORDER), sorted((packages | files) - set(ORDER))
