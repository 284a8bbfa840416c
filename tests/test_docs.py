"""Every example in the README and in public docstrings runs; CI runs the README's command."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
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


def test_readme_shell_blocks_are_all_known() -> None:
    """Every shell block is run by one of the tests below, or by CI itself."""
    blocks = readme_blocks("sh")
    assert len(blocks) == 6
    assert any("aiosessmgr demo" in b for b in blocks)
    assert any("curl" in b for b in blocks)
    assert any("token_bytes(32)" in b for b in blocks)


def test_readme_install_blocks_name_real_extras() -> None:
    # the pip lines themselves are what .ci/run executes (see test_ci_runs_...)
    setup_cfg = (ROOT / "setup.cfg").read_text()
    extras = [extra for block in readme_blocks("sh")
              for extra in re.findall(r"\.\[(\w+)\]", block)]
    assert "test" in extras  # not vacuous: the README does name extras
    for extra in extras:
        assert re.search(rf"^{extra} =$", setup_cfg, re.M), extra


def test_readme_key_command_makes_a_valid_key() -> None:
    block = next(b for b in readme_blocks("sh") if "token_bytes(32)" in b)
    command = block.strip().replace("python ", f"{sys.executable} ", 1)
    key = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                         check=True, timeout=30).stdout.strip()
    config = aiosessmgr.EncryptionConfig.from_dict({"enabled": True, "key": key})
    assert config.key is not None and len(config.key.reveal()) == 32


def test_readme_demo_and_curl_blocks(tmp_path: Path) -> None:
    """Start the demo as the README says, then run the README's curl lines against it."""
    from .redis_server import free_port
    from .stores import wait_for_port

    demo = next(b for b in readme_blocks("sh") if "aiosessmgr demo" in b)
    command = demo.strip().split("&&")[-1].strip()
    assert command == "python -m aiosessmgr demo"
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "aiosessmgr", "demo", "--port", str(port), "--path",
         str(tmp_path / "sessions")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, server)
        curl = next(b for b in readme_blocks("sh") if "curl" in b)
        outputs = []
        for line in curl.strip().splitlines():
            cmd, _, expected = line.partition("#")
            cmd = cmd.replace("8080", str(port)).replace("jar.txt", str(tmp_path / "jar"))
            out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True,
                                 check=True, timeout=30).stdout
            outputs.append((out.splitlines()[0], expected.strip()))
        assert outputs == [("Visits: 1", "Visits: 1"), ("Visits: 2", "Visits: 2")]
    finally:
        server.terminate()
        server.wait(10)
        for pipe in (server.stdout, server.stderr):
            if pipe:
                pipe.close()


def test_readme_benchmark_command_runs() -> None:
    """The README's one-part benchmark line, cut short (speed is never asserted here)."""
    block = next(b for b in readme_blocks("sh") if "benchmarks.http" in b)
    line = next(x for x in block.splitlines() if "benchmarks.http" in x).split("#")[0].split()
    assert line[:3] == ["python", "-m", "benchmarks.http"]
    result = subprocess.run(
        [sys.executable, *line[1:], "--duration", "1", "--warmup", "0.2", "--sessions", "8",
         "--no-json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| aiosessmgr-memory |" in result.stdout


def test_readme_threat_model_names_tests_that_exist() -> None:
    """Each test the security section cites as evidence exists (a claim is a test)."""
    section = README[README.index("#### Threat model"):README.index("Not defended:")]
    cited = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`|`::(\w+)`", section)
    assert len(cited) >= 10
    module = None
    for path, name, more in cited:
        if path:
            module = ROOT / path
            assert module.is_file(), path
        name = name or more
        if name:
            assert module is not None
            assert re.search(rf"^(async )?def {name}\(", module.read_text(), re.M), \
                f"{module.name} has no test {name}"
