"""The tree is the architecture: no module past the length limit, and no import cycle between modelyard's
modules (imports inside functions count; imports under ``if TYPE_CHECKING:`` do not)."""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "modelyard"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package is its ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node``, at any depth, except those under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _imports_in(other)
            continue
        yield from _imports_in(child)


def _imports_in(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    yield from _imports(node)


def _nearest(name: str, modules: Collection[str]) -> str | None:
    """``name`` if it is a module, else its nearest enclosing module (None outside modelyard)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _targets(module: str, source: str, modules: Collection[str], *, is_package: bool = False) -> set[str]:
    """The modelyard modules ``module`` (whose code is ``source``) imports: ``from a.b import c`` is module
    ``a.b.c`` when that is a module, else ``a.b``."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in _imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        for name in names:
            target = _nearest(name, modules)
            if target is not None and target != module:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: _targets(name, path.read_text(encoding="utf-8"), modules, is_package=path.name == "__init__.py")
        for name, path in modules.items()
    }


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted, the list sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

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
            out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


WALKED = """
import m.a
from m import b, not_a_module
from m.pkg import c as see
from . import d
from .pkg import e
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from m import hidden
else:
    from m import shown
def f():
    from m.pkg.deep import g
    class K:
        def h(self):
            import m.late.attr
"""


def test_the_walker_resolves_every_kind_of_import() -> None:
    modules = ["m", "m.a", "m.b", "m.d", "m.hidden", "m.shown", "m.pkg", "m.pkg.c", "m.pkg.deep", "m.late"]
    modules.append("m.x")
    assert _targets("m.x", WALKED, modules) == {
        "m",  # from m import not_a_module
        "m.a",
        "m.b",
        "m.d",
        "m.pkg",  # from .pkg import e (e is not a module)
        "m.pkg.c",
        "m.shown",
        "m.pkg.deep",  # inside a function
        "m.late",  # inside a method, an attribute path resolved to its module
    }
    assert _targets("m.pkg", "from . import c\nfrom .. import a", modules, is_package=True) == {
        "m.pkg.c",
        "m.a",
    }


def test_strongly_connected() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert strongly_connected(graph) == [["a", "b", "c"], ["d", "e"], ["f"]]


def test_no_module_is_too_long() -> None:
    lengths = {
        str(path.relative_to(PACKAGE.parent)): len(path.read_text(encoding="utf-8").splitlines())
        for path in _modules().values()
    }
    offenders = {p: n for p, n in sorted(lengths.items()) if n > MAX_LINES}
    assert not offenders, f"modules over {MAX_LINES} lines (split them along a seam): " + ", ".join(
        f"{p} ({n})" for p, n in offenders.items()
    )


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    lines = [
        " <-> ".join(c)
        + "  (edges: "
        + ", ".join(f"{a} -> {b}" for a in c for b in sorted(graph[a]) if b in c)
        + ")"
        for c in cycles
    ]
    assert not cycles, f"{len(cycles)} import cycle(s) between modelyard modules:\n" + "\n".join(lines)
