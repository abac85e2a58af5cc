"""No import cycles among atflrec's modules, nor among its parts (subpackages and top-level modules).

Every import statement counts, those inside functions and ``if TYPE_CHECKING:`` included: a cycle
hidden in a function is still two modules that each need the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "atflrec"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported(tree: ast.AST) -> set[str]:
    """Every name an import statement of ``tree`` imports (``from a import b`` gives ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports are not used in atflrec"
            names.add(node.module or "")
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the atflrec modules it imports."""
    modules = _modules()
    return {name: {imported for imported in _imported(ast.parse(path.read_text())) if imported in modules} - {name}
            for name, path in modules.items()}


def part_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between atflrec's parts: ``atflrec.data.format`` belongs to ``atflrec.data``."""
    def part(module: str) -> str:
        return ".".join(module.split(".")[:2])

    parts: dict[str, set[str]] = {part(m): set() for m in graph}
    for module, imported in graph.items():
        parts[part(module)].update(part(i) for i in imported if part(i) != part(module))
    return parts


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path that ends where it starts, or None (depth-first search)."""
    done: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        stack.append(node)
        for successor in sorted(graph[node]):
            if cycle := visit(successor):
                return cycle
        stack.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start):
            return cycle
    return None


def test_the_graph_sees_function_level_imports() -> None:
    graph = import_graph()
    assert "atflrec.tuning.search" in graph["atflrec.cli"]  # imported inside a handler
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("level", ["modules", "parts"])
def test_no_import_cycles(level: str) -> None:
    graph = import_graph()
    cycle = find_cycle(graph if level == "modules" else part_graph(graph))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
