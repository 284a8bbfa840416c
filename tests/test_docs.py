"""Every example in the README and in public docstrings runs; CI runs the README's command."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

import aiosessmgr

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


async def run_source(source: str, namespace: dict[str, Any]) -> None:
    """Run *source*, allowing top-level await as in an async REPL."""
    code = compile(source, "<example>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if inspect.iscoroutine(result):
        await result


@pytest.mark.parametrize("block", readme_blocks("python"),
                         ids=lambda b: b.strip().splitlines()[0][:40])
def test_readme_python_blocks_run(block: str) -> None:
    # blocks that call asyncio.run() run as scripts, so no loop may be running here
    code = compile(block, "<README>", "exec")
    exec(code, {"__name__": "__readme__"})


def test_readme_has_python_blocks() -> None:
    assert len(readme_blocks("python")) >= 4


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = "python -m pip install -e '.[test]' && python -m pytest"
    assert command in README
    assert command in ci
    assert "python -m aiosessmgr demo" in README


def docstring_examples() -> list[Any]:
    cases = []
    objects: list[Any] = [aiosessmgr, *(module for name, module in vars(aiosessmgr).items()
                                        if inspect.ismodule(module) and not name.startswith("_"))]
    for name in aiosessmgr.__all__:
        obj = getattr(aiosessmgr, name)
        objects.append(obj)
        if inspect.isclass(obj):
            objects += [member for attr, member in vars(obj).items()
                        if not attr.startswith("_") and callable(member)]
    seen: set[int] = set()
    for obj in objects:
        doc = inspect.getdoc(obj) or ""
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        for match in re.finditer(r"::\n\n((?:(?:    .*)?\n)+)", doc + "\n"):
            block = textwrap.dedent(match.group(1))
            if "python -m" in block or block.lstrip().startswith("$"):
                continue  # shell commands
            name = getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj)))
            cases.append(pytest.param(block, id=name))
    return cases


@pytest.mark.parametrize("block", docstring_examples())
async def test_docstring_examples_run(block: str) -> None:
    manager = aiosessmgr.SessionManager()
    namespace: dict[str, Any] = {name: getattr(aiosessmgr, name) for name in aiosessmgr.__all__}
    session = await manager.driver()
    namespace.update(aiosessmgr=aiosessmgr, manager=manager, session=session)
    exec("from aiohttp import web\napp = web.Application()", namespace)
    try:
        await run_source(block, namespace)
    finally:
        await manager.close()


def test_docstring_examples_were_found() -> None:
    assert len(docstring_examples()) >= 3
