"""The tests' own layout: helpers shared by several test modules live in tests/helpers/; no module under tests/
imports a test module (``tests.test_*``) or anything from conftest.py (pytest injects fixtures by name), and
tests/helpers/ holds plain functions, no fixtures. Imports inside functions count."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parent
HELPERS = TESTS / "helpers"


def _files() -> list[Path]:
    return sorted([*TESTS.glob("*.py"), *HELPERS.glob("*.py")])


def _module_name(path: Path) -> str:
    parts = path.relative_to(TESTS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(node: ast.Import | ast.ImportFrom, path: Path) -> Iterator[str]:
    """The dotted names an import statement may load: the module and, for ``from``, each name in it."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    base = node.module or ""
    if node.level:
        package = _module_name(path).split(".")
        if path.name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    if base:
        yield base
    for alias in node.names:
        yield f"{base}.{alias.name}" if base else alias.name


def _is_test_module_or_conftest(name: str) -> bool:
    parts = name.split(".")
    if parts[0] == "tests":
        parts = parts[1:]
    elif not (TESTS / f"{parts[0]}.py").exists():
        return False  # a library, not a module of tests/ imported by its bare name
    return bool(parts) and (parts[0] == "conftest" or parts[0].startswith("test_"))


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    own = _module_name(path)
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        hits = {t for t in _targets(node, path) if _is_test_module_or_conftest(t) and t != own}
        bad = sorted(t for t in hits if not any(t.startswith(h + ".") for h in hits))
        if bad:
            out.append(f"{path.relative_to(TESTS.parent)}:{node.lineno} imports {', '.join(bad)}")
    return out


def test_no_test_module_imports_another_test_module_or_conftest() -> None:
    found = [v for path in _files() for v in _violations(path)]
    assert not found, "move the shared helper to tests/helpers/ and import it from there:\n" + "\n".join(
        found
    )


def _is_fixture(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Attribute) and target.attr == "fixture") or (
        isinstance(target, ast.Name) and target.id == "fixture"
    )


def test_helpers_define_no_fixtures() -> None:
    found = [
        f"{path.relative_to(TESTS.parent)}:{node.lineno} {node.name}"
        for path in sorted(HELPERS.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(map(_is_fixture, node.decorator_list))
    ]
    assert not found, "fixtures belong in tests/conftest.py:\n" + "\n".join(found)


def test_the_check_sees_every_kind_of_import() -> None:
    """The detector itself, on source text: relative, absolute, bare and nested imports are caught;
    imports of helpers and of libraries whose names start with test_ are not."""
    cases = {
        "from .test_report import x": True,
        "from . import test_report": True,
        "from tests.test_report import x": True,
        "import tests.test_report": True,
        "from tests import conftest": True,
        "from .conftest import make_blobs": True,
        "def f():\n    from tests.conftest import make_blobs": True,
        "from tests.helpers.models import make_blobs": False,
        "from .helpers import evidence": False,
        "import test_some_library": False,
    }
    for source, bad in cases.items():
        path = TESTS / "test_probe.py"
        tree = ast.parse(source)
        hits = [
            t
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for t in _targets(node, path)
            if _is_test_module_or_conftest(t)
        ]
        assert bool(hits) == bad, (source, hits)
