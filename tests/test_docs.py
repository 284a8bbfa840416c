"""Every example in the README and in public docstrings runs; CI runs the README's command."""

from __future__ import annotations

import ast
import base64
import importlib
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
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
#: the README and every page of the documentation site, by name
PAGES = {"README.md": README,
         **{f"docs/{p.name}": p.read_text() for p in sorted(DOCS.glob("*.md"))}}
#: fence languages a page may use: python runs here, sh is checked line by line below,
#: text is output, the braced ones are Sphinx directives
FENCES = {"python", "sh", "text", "{eval-rst}", "{toctree}", "{include}"}


def blocks(language: str) -> list[tuple[str, str]]:
    """(page, body) of every ```language block of every page."""
    return [(page, body) for page, text in PAGES.items()
            for body in re.findall(rf"^```{re.escape(language)}\n(.*?)^```", text,
                                   flags=re.S | re.M)]


def readme_blocks(language: str) -> list[str]:
    return [body for page, body in blocks(language) if page == "README.md"]


async def run_source(source: str, namespace: dict[str, Any]) -> None:
    """Run *source*, allowing top-level await as in an async REPL."""
    code = compile(source, "<example>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if inspect.iscoroutine(result):
        await result


@pytest.mark.parametrize(("page", "block"), blocks("python"),
                         ids=lambda b: b.strip().splitlines()[0][:40])
def test_python_blocks_run(page: str, block: str) -> None:
    """Every ```python block of the README and of docs/ runs, each on its own."""
    # blocks that call asyncio.run() run as scripts, so no loop may be running here
    code = compile(block, f"<{page}>", "exec")
    exec(code, {"__name__": "__docs__"})


def test_pages_have_python_blocks() -> None:
    assert len(readme_blocks("python")) == 1  # the landing page's one example
    assert len(blocks("python")) >= 15
    assert len(PAGES) >= 18


@pytest.mark.parametrize("page", PAGES)
def test_pages_use_known_fences(page: str) -> None:
    """A block in another language would escape the checks here (```bash, say)."""
    languages = set(re.findall(r"^```(\S+)", PAGES[page], flags=re.M))
    assert languages <= FENCES, page


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


def shell_commands() -> list[tuple[str, str]]:
    """(page, command) for every command of every ```sh block: comments cut, ``&&`` split."""
    found = []
    for page, body in blocks("sh"):
        for line in body.splitlines():
            line = line.split("  #")[0].split("    #")[0].strip()
            if line.startswith("*/"):  # a crontab line: its command is what follows the times
                line = line.split(None, 5)[5]
            found += [(page, part.strip()) for part in line.split("&&") if part.strip()]
    return found


#: commands that a page shows but that are not ours to run here: they change the machine
SYSTEM = re.compile(r"^(sudo )?apt-get install [\w\s.-]+$")
PYTHON_M = re.compile(r"^(?:\w+=\S+ )*python -m ([\w.]+)(?: (.*))?$")


def _check_python_m(module: str, args: str) -> None:
    """``python -m module ...``: the module runs, and ``--help`` names every flag used."""
    words = args.split()
    if module in ("pip", "sphinx", "pytest"):
        return  # pip and pytest lines are CI's own command; sphinx runs in the test below
    command = [sys.executable, "-m", module]
    if module == "aiosessmgr" and words and not words[0].startswith("-"):
        command.append(words[0])  # the subcommand: demo or gc
    help_text = subprocess.run([*command, "--help"], cwd=ROOT, capture_output=True, text=True,
                               timeout=60, check=True).stdout
    for flag in (w.split("=")[0] for w in words if w.startswith("--")):
        assert flag in help_text, f"{' '.join(command)} --help does not name {flag}"


def test_shell_blocks_are_all_checked() -> None:
    """Every command of every ```sh block is run or checked by a test here or by CI."""
    commands = shell_commands()
    assert len(commands) >= 15
    checked = 0
    for page, command in commands:
        if SYSTEM.match(command):
            continue
        if command in ("python3 -m venv .venv", "source .venv/bin/activate"):
            continue  # test_readme_venv_line runs both
        if command.startswith("curl "):
            continue  # test_readme_demo_and_curl_blocks runs them
        if command.startswith('python -c "import secrets'):
            continue  # test_key_command_makes_a_valid_key runs it
        match = PYTHON_M.match(command)
        assert match, f"{page}: no test runs or checks {command!r}"
        _check_python_m(match.group(1), match.group(2) or "")
        checked += 1
    assert checked >= 10


def test_install_lines_name_real_extras_and_files() -> None:
    # the pip lines themselves are what .ci/run executes (see test_ci_runs_...)
    setup_cfg = (ROOT / "setup.cfg").read_text()
    installs = [c for _, c in shell_commands() if c.startswith("python -m pip install")]
    extras = [extra for c in installs for extra in re.findall(r"\.\[(\w+)\]", c)]
    assert "test" in extras  # not vacuous: the pages do name extras
    for extra in extras:
        assert re.search(rf"^{extra} =$", setup_cfg, re.M), extra
    for path in (p for c in installs for p in re.findall(r"-r (\S+)", c)):
        assert (ROOT / path).is_file(), path


def test_readme_venv_line(tmp_path: Path) -> None:
    """The README's first step makes and activates a venv (here without pip: it is quick)."""
    line = next(c for c in readme_blocks("sh") if "venv" in c).strip()
    assert line == "python3 -m venv .venv && source .venv/bin/activate"
    script = line.replace("python3 -m venv", f"{sys.executable} -m venv --without-pip")
    out = subprocess.run(["bash", "-c", f"{script} && python -c 'import sys; print(sys.prefix)'"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    assert Path(out.stdout.strip()) == tmp_path / ".venv"


def test_key_command_makes_a_valid_key() -> None:
    block = next(b for _, b in blocks("sh") if "token_bytes(32)" in b)
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


def test_benchmark_command_runs() -> None:
    """The benchmarks page's one-part line, cut short (speed is never asserted here)."""
    line = next(c for _, c in shell_commands() if c.startswith("python -m benchmarks.http"))
    words = line.split()
    result = subprocess.run(
        [sys.executable, *words[1:], "--duration", "1", "--warmup", "0.2", "--sessions", "8",
         "--no-json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| aiosessmgr-memory |" in result.stdout


def test_threat_model_names_tests_that_exist() -> None:
    """Each test the security page cites as evidence exists (a claim is a test)."""
    security = PAGES["docs/security.md"]
    section = security[security.index("## Threat model"):security.index("Not defended:")]
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


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page: str) -> None:
    """A link from a page to a file of the repository names one that exists."""
    base = ROOT if page == "README.md" else DOCS
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", PAGES[page]):
        if "://" not in target:
            assert (base / target).exists(), f"{page}: {target}"


def _requirements(text: str) -> list[str]:
    """The requirement lines of a requirements file or a setup.cfg list, comments dropped."""
    lines = (line.partition("#")[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def _name(requirement: str) -> str:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return canonicalize_name(Requirement(requirement).name)


# Run in the build's interpreter: every package of the test extra that neither
# docs/requirements.txt nor install_requires asks for cannot be imported, as in a venv that
# has only `pip install -e . -r docs/requirements.txt` (the README's docs command).
ONLY_DOCS_REQUIREMENTS = """
import importlib.metadata, runpy, sys
from packaging.utils import canonicalize_name
absent = set(sys.argv[1].split(","))
blocked = {top for top, dists in importlib.metadata.packages_distributions().items()
           if top != "aiosessmgr" and {canonicalize_name(d) for d in dists} & absent}

class NotInDocsRequirements:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in docs/requirements.txt)")
        return None

sys.meta_path.insert(0, NotInDocsRequirements())
sys.argv = ["sphinx", *sys.argv[2:]]
runpy.run_module("sphinx", run_name="__main__")
"""


def test_sphinx_builds_without_warnings(tmp_path: Path) -> None:
    """The documentation site builds as CI builds it, ``-W``: any warning fails; and it
    builds with only what docs/requirements.txt and the package's own dependencies give,
    the rest of the test extra unimportable (a new user's docs venv)."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    given = {_name(r) for r in _requirements((DOCS / "requirements.txt").read_text())
             + _requirements(cfg["options"]["install_requires"])}
    absent = {_name(r) for r in _requirements(cfg["options.extras_require"]["test"])} - given
    assert {"hypothesis", "aiohttp-session", "pytest-asyncio"} <= absent
    result = subprocess.run(
        [sys.executable, "-c", ONLY_DOCS_REQUIREMENTS, ",".join(sorted(absent)),
         "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    api = (tmp_path / "html" / "api.html").read_text()
    for name in aiosessmgr.__all__:
        if name != "__version__":
            assert f'id="aiosessmgr.{name}"' in api, f"the API reference lacks {name}"
    for name in ("compat.adopt_sessions", "testing.DriverContract"):
        assert f'id="aiosessmgr.{name}"' in api, name
    # a name a page cites by its module (aiosessmgr.log.RedactSessionIds) is on the API page
    cited = {m for text in ALL_PAGES.values() for m in re.findall(
        r"\baiosessmgr\.((?:[a-z_]+\.)+[A-Za-z_]+)\b", text)}
    cited = {name for name in cited if not name.startswith("myapp")}  # an app's module
    assert "log.RedactSessionIds" in cited
    for name in cited:
        module, _, attr = f"aiosessmgr.{name}".rpartition(".")
        value = getattr(importlib.import_module(module), attr)  # a page cites what exists
        if inspect.ismodule(value):  # a module: the names it is cited with are checked
            continue
        assert f'id="aiosessmgr.{name}"' in api, f"the API reference lacks aiosessmgr.{name}"


def test_docs_requirements_are_in_the_test_extra() -> None:
    """CI builds the site with the test extra; docs/requirements.txt asks for the same."""
    import configparser

    from packaging.requirements import Requirement

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    test_extra = {str(Requirement(line)) for line in
                  _requirements(cfg["options.extras_require"]["test"])}
    wanted = {str(Requirement(line)) for line in
              _requirements((DOCS / "requirements.txt").read_text())}
    assert wanted and wanted <= test_extra


#: every page a reader sees: the README, docs/ and the changelog docs/changelog.md includes
ALL_PAGES = {**PAGES, "CHANGELOG.md": (ROOT / "CHANGELOG.md").read_text()}
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")


@pytest.mark.parametrize("page", ALL_PAGES)
def test_no_paragraph_runs_into_a_list(page: str) -> None:
    """A line at column 0 right after a list item continues that item in Markdown (a lazy
    continuation): a paragraph meant to follow the list needs a blank line first."""
    in_list = fence = False
    for number, line in enumerate(ALL_PAGES[page].splitlines(), 1):
        if line.startswith("```"):
            fence, in_list = not fence, False
        elif fence or not line.strip():
            in_list = False
        elif LIST_ITEM.match(line):
            in_list = True
        else:
            assert not in_list or line.startswith((" ", "\t")), f"{page}:{number}: {line}"


def test_changelog_is_in_keep_a_changelog_form() -> None:
    """Keep a Changelog 1.1.0: Unreleased first, then releases newest first with ISO dates,
    each with the standard change types only; the package's version is the newest."""
    text = ALL_PAGES["CHANGELOG.md"]
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings[0] == "Unreleased"
    releases = [re.fullmatch(r"(\d+\.\d+\.\d+) - (\d{4}-\d{2}-\d{2})", h) for h in headings[1:]]
    assert releases and all(releases), headings
    versions = [tuple(map(int, m.group(1).split("."))) for m in releases if m]
    dates = [m.group(2) for m in releases if m]
    assert versions == sorted(versions, reverse=True) and dates == sorted(dates, reverse=True)
    assert releases[0] and releases[0].group(1) == aiosessmgr.__version__
    kinds = set(re.findall(r"^### (.+)$", text, flags=re.M))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, kinds
    # a [bracketed] heading would need a link definition, which renders as brackets without
    assert not re.search(r"^## \[", text, flags=re.M)


def test_no_page_or_help_text_cites_the_issue_tracker() -> None:
    """Users have no access to the project's internal issues: pages, --help texts and
    docstrings say what a target is, not which issue asked for it."""
    sources = {str(p.relative_to(ROOT)): p.read_text() for folder in
               ("aiosessmgr", "benchmarks", "examples") for p in (ROOT / folder).rglob("*.py")}
    for name, text in {**ALL_PAGES, **sources}.items():
        found = re.search(r"\bissues?(?:'s?)? (?:\d+|target)|\bthe issues?\b", text, re.I)
        assert not found, f"{name}: {found.group(0) if found else ''}"


#: where each built-in driver's options are documented, in a table's first column
DRIVER_PAGES = {"file": "docs/file-driver.md", "redis": "docs/redis-driver.md",
                "cookie": "docs/configuration.md", "memory": "docs/configuration.md"}


@pytest.mark.parametrize("driver", DRIVER_PAGES)
def test_every_driver_option_is_documented(driver: str, tmp_path: Path) -> None:
    """The keys a driver accepts (as its ConfigError for an unknown one lists them) each
    have a row on its page, and the configuration reference names them."""
    key = base64.b64encode(bytes(32)).decode()
    with pytest.raises(aiosessmgr.ConfigError) as raised:
        aiosessmgr.SessionManager({"encryption": {"key": key}, "drivers": {"x": {
            "driver": driver, "path": str(tmp_path), "no_such_option": 1}}})
    found = re.search(r"valid keys: (.+)$", str(raised.value))
    assert found, raised.value
    accepted = set(found.group(1).split(", ")) - {"driver"}
    rows = {name for line in PAGES[DRIVER_PAGES[driver]].splitlines() if line.startswith("| `")
            for name in re.findall(r"`(?:drivers\.\*\.)?([a-z_]+)`", line.split("|")[1])}
    assert accepted <= rows, f"{DRIVER_PAGES[driver]} lacks rows for {accepted - rows}"
    reference = PAGES["docs/configuration.md"]
    assert all(f"`{name}`" in reference or f"`drivers.*.{name}`" in reference
               for name in accepted), driver


def test_concurrency_page_numbers_are_the_constants() -> None:
    """docs/concurrency.md's figures are the defaults the code runs with."""
    from aiosessmgr import commit

    page = PAGES["docs/concurrency.md"]
    assert (commit.REMEMBER_IDS, commit.REMEMBER_BYTES) == (256, 64 * 1024)
    assert "the 256\nmost recently written sessions (records up to 64 KiB)" in page
    assert (commit.SAVE_BACKOFF_MIN, commit.SAVE_BACKOFF_MAX) == (0.0005, 0.05)
    assert "0.5 ms growing to 50 ms" in page
    assert commit.SAVE_DEADLINE == 10.0 and "keeps trying for up to 10 s" in page
