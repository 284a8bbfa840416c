"""The package's shape: dependencies one way (../shared/DESIGN.md), small modules.

Parsed from the source with ``ast``: imports under ``if TYPE_CHECKING:`` do not count
(they never run), every other ``from .x import`` / ``import aiosessmgr.x`` does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "aiosessmgr"
#: the lowest layers: nothing of ours, or only each other and errors
BOTTOM = {"errors": set(), "ids": set(), "log": {"ids"}, "locks": set(), "keys": {"errors"},
          "deprecation": set()}
#: what drivers may import from the rest of the package
DRIVER_ALLOWED = {"errors", "ids", "locks", "keys", "log"}
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    return {".".join(path.relative_to(PACKAGE).with_suffix("").parts): path
            for path in PACKAGE.rglob("*.py")}


def _runtime_imports(name: str, path: Path) -> set[str]:
    """The package modules *name* imports when it runs (dotted, without 'aiosessmgr.')."""
    tree = ast.parse(path.read_text())
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - node.level + 1]
                    target = ".".join([*base, *(node.module or "").split(".")]).strip(".")
                elif (node.module or "").startswith("aiosessmgr"):
                    target = (node.module or "").removeprefix("aiosessmgr").strip(".")
                else:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}".strip(".")
                    found.add(sub if sub in _ALL else target)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("aiosessmgr."):
                        found.add(alias.name.removeprefix("aiosessmgr."))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                   ast.If, ast.Try, ast.With)):
                visit([child for child in ast.iter_child_nodes(node)
                       if isinstance(child, ast.stmt)])

    visit(tree.body)
    found.discard("")
    return {module for module in found if module in _ALL} - {name}


_ALL = set(_modules())


def _graph() -> dict[str, set[str]]:
    return {name: _runtime_imports(name, path) for name, path in _modules().items()}


def test_the_graph_sees_the_imports_it_should() -> None:
    graph = _graph()  # guard against a parser that finds nothing and passes everything
    assert "session" in graph["manager"] and "drivers.base" in graph["record"]
    assert "config" not in graph["codec"]  # config is imported only for type checking


def test_no_runtime_import_cycle() -> None:
    graph = _graph()
    # a package imports its submodules' parents first: an __init__ is not a cycle edge
    edges = {name: {dep for dep in deps if not name.startswith(dep + ".")}
             for name, deps in graph.items()}
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> None:
        if node in path:
            cycle = [*path[path.index(node):], node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for dep in sorted(edges.get(node, ())):
            if dep not in ("__init__", "drivers"):  # package __init__s re-export only
                walk(dep, [*path, node])
        done.add(node)

    for name in sorted(edges):
        if name not in ("__init__", "drivers"):
            walk(name, [])


def test_the_bottom_imports_nothing_above_it() -> None:
    graph = _graph()
    for name, allowed in BOTTOM.items():
        assert graph[name] <= allowed, f"{name} imports {graph[name] - allowed}"


def test_drivers_import_nothing_from_config_session_or_codec() -> None:
    checked = []
    for name, deps in _graph().items():
        if name.startswith("drivers."):
            checked.append(name)
            outside = {dep for dep in deps if not dep.startswith("drivers")}
            assert outside <= DRIVER_ALLOWED, f"{name} imports {outside - DRIVER_ALLOWED}"
    assert {"drivers.base", "drivers.memory"} <= set(checked)  # not vacuous


def test_only_the_manager_builds_drivers() -> None:
    # nothing outside drivers imports a driver for helpers: only the manager's factory
    # (and the package re-export of MemoryDriver) names a concrete driver
    concrete = {name for name in _ALL if name.startswith("drivers.")} - {"drivers.base",
                                                                          "drivers"}
    assert "drivers.memory" in concrete  # not vacuous
    for name, deps in _graph().items():
        if name.startswith("drivers") or name in ("manager", "__init__", "testing"):
            continue
        if name == "clientside":
            # the one driver the middleware knows about (DESIGN.md): its store is the response
            assert deps & concrete == {"drivers.cookie"}
            continue
        assert not deps & concrete, f"{name} imports {deps & concrete}"


def test_modules_are_small_or_say_why() -> None:
    for name, path in _modules().items():
        lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES:
            assert "Longer than" in doc, f"{name} has {lines} lines and no reason"
    session_lines = len((PACKAGE / "session.py").read_text().splitlines())
    assert session_lines <= 500, session_lines
