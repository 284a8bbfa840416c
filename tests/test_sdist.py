"""The sdist carries what its own tests need, and the wheel carries the licence.

The sdist is built (``python -m build --sdist --no-isolation``, so no network) from a copy of
the checkout, so that building writes no ``*.egg-info`` or ``build/`` into the repository,
then unpacked; a fast subset of the unpacked tests runs there, against the unpacked package,
not the checkout's editable install. The wheel is built from the unpacked sdist, as pip
builds one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about 15 s: two builds and a test run

ROOT = Path(__file__).resolve().parent.parent

#: not copied into the build tree: VCS data, caches, build output and the editable install's
#: metadata (setuptools reads an old SOURCES.txt back into the next sdist)
NOT_COPIED = shutil.ignore_patterns(".git", "*.egg-info", "build", "dist", ".tox", ".venv",
                                    ".mypy_cache", ".ruff_cache", ".pytest_cache",
                                    ".hypothesis")

#: planted in the build tree before the build; the sdist must leave every one out
PLANTED = ("tests/__pycache__/planted.cpython-311.pyc", "aiosessmgr/__pycache__/planted.pyc",
           "benchmarks/results/planted.json", "benchmarks/results/plots/planted.png",
           "docs/_build/html/planted.html")

#: single files the sdist's tests or its readers need
REQUIRED = ("README.md", "LICENSE", "CHANGELOG.md", "setup.cfg", "pyproject.toml", "tox.ini",
            "ruff.toml", "MANIFEST.in", ".ci/minimum.txt", ".ci/run", "aiosessmgr/py.typed",
            "tests/__init__.py", "tests/conftest.py", "tests/drivers/__init__.py",
            "tests/drivers/conftest.py", "tests/drivers/test_contract.py",
            "examples/__init__.py", "benchmarks/__main__.py",
            "benchmarks/results/http.png", "benchmarks/results/serializers.png")

#: whole trees shipped as they are in the checkout (less what PLANTED stands for)
TREES = ("aiosessmgr", "tests", "examples", "benchmarks", "docs", ".ci")

#: the fast subset run in the unpacked tree: memory driver only, no hypothesis marathons,
#: and the docs: the site builds from what the sdist ships
SUBSET = ("tests/test_config.py", "tests/test_session.py", "tests/test_packaging.py",
          "tests/test_examples.py", "tests/drivers/test_contract.py",
          "tests/drivers/test_memory.py",
          "tests/test_benchmarks.py::test_unknown_part_is_a_usage_error",
          "tests/test_docs.py::test_sphinx_builds_without_warnings")
SUBSET_FILTER = "memory or not (redis or file or Interleaved or heavy)"


def _copy_file(src: str, dst: str) -> object:
    # others may delete a file of the checkout while it is copied: it is then not shipped
    try:
        return shutil.copy2(src, dst)
    except FileNotFoundError:
        return dst


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONSAFEPATH", None)  # it would keep the cwd off sys.path
    env.pop("PYTEST_ADDOPTS", None)
    return {**env, **extra}


def _run(command: list[str], cwd: Path, timeout: float,
         **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    return done


def _files(top: Path) -> set[str]:
    return {path.relative_to(top).as_posix() for path in top.rglob("*") if path.is_file()}


def _shipped_as_is(relative: str) -> bool:
    parts = relative.split("/")
    return not ("__pycache__" in parts or relative.endswith((".pyc", ".pyo"))
                or relative.startswith(("docs/_build/", "benchmarks/results/plots/"))
                or (relative.startswith("benchmarks/results/") and relative.endswith(".json")))


@pytest.fixture(scope="module")
def build_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout, with files planted that the sdist must leave out."""
    tree = tmp_path_factory.mktemp("checkout") / "aiosessmgr"
    shutil.copytree(ROOT, tree, ignore=NOT_COPIED, copy_function=_copy_file, symlinks=True)
    for relative in PLANTED:
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        (tree / relative).write_bytes(b"planted by tests/test_sdist.py")
    return tree


@pytest.fixture(scope="module")
def unpacked(build_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The sdist of *build_tree*, built without network and unpacked."""
    out = tmp_path_factory.mktemp("sdist")
    _run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out),
          str(build_tree)], cwd=build_tree, timeout=180)
    [archive] = out.glob("aiosessmgr-*.tar.gz")
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(out, filter="data")
        else:  # pragma: no cover - Python before 3.11.4
            tar.extractall(out)
    [top] = [path for path in out.iterdir() if path.is_dir()]
    yield top


def test_sdist_has_what_its_tests_need_and_nothing_built(build_tree: Path,
                                                         unpacked: Path) -> None:
    members = _files(unpacked)
    missing = [name for name in REQUIRED if name not in members]
    assert not missing, f"not in the sdist: {missing}"
    for tree in TREES:
        if not (build_tree / tree).is_dir():
            continue  # docs/ before it exists
        expected = {f"{tree}/{name}" for name in _files(build_tree / tree)}
        left_out = sorted(name for name in expected - members if _shipped_as_is(name))
        assert not left_out, f"{tree}/ files not in the sdist: {left_out}"
    unwanted = sorted(name for name in members if not _shipped_as_is(name))
    assert not unwanted, f"built or generated files in the sdist: {unwanted}"
    assert {name.split("/")[0] for name in members} <= {
        *TREES, "aiosessmgr.egg-info", "PKG-INFO", *REQUIRED}
    assert "License-File: LICENSE" in (unpacked / "PKG-INFO").read_text()


def test_the_unpacked_tests_pass_on_the_unpacked_package(unpacked: Path,
                                                         tmp_path: Path) -> None:
    where = _run([sys.executable, "-c", "import aiosessmgr; print(aiosessmgr.__file__)"],
                 cwd=unpacked, timeout=60).stdout.strip()
    assert Path(where).is_relative_to(unpacked), where
    # and the test run itself: a plugin outside both trees notes which aiosessmgr it imported
    probe = tmp_path / "plugin"
    probe.mkdir()
    (probe / "sdist_probe.py").write_text(
        "import os, sys\n"
        "def pytest_sessionfinish(session, exitstatus):\n"
        "    with open(os.environ['SDIST_PROBE'], 'w') as out:\n"
        "        out.write(sys.modules['aiosessmgr'].__file__)\n")
    seen = tmp_path / "imported.txt"
    # PYTHONPATH comes after the cwd on sys.path: the plugin's directory holds no aiosessmgr
    path = os.pathsep.join(filter(None, [str(probe), os.environ.get("PYTHONPATH", "")]))
    done = _run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                 "-p", "sdist_probe", "--rootdir", str(unpacked), *SUBSET, "-k", SUBSET_FILTER],
                cwd=unpacked, timeout=300, PYTHONPATH=path, SDIST_PROBE=str(seen))
    summary = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, \d+ deselected in .*", summary), done.stdout
    assert int(summary.split()[0]) > 100, summary  # the subset ran, not a stray few tests
    assert Path(seen.read_text()).is_relative_to(unpacked), seen.read_text()


def test_the_wheel_built_from_the_sdist_carries_the_licence(
        unpacked: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(unpacked, tree)  # building writes build/ and egg-info into its tree
    out = tmp_path / "wheel"
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out),
          str(tree)], cwd=tree, timeout=180)
    [wheel] = out.glob("aiosessmgr-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        licences = [name for name in names
                    if re.fullmatch(r"aiosessmgr-[^/]+\.dist-info/(licenses/)?LICENSE", name)]
        assert len(licences) == 1, names
        assert archive.read(licences[0]) == (ROOT / "LICENSE").read_bytes()
        metadata = next(name for name in names if name.endswith(".dist-info/METADATA"))
        assert "License-File: LICENSE" in archive.read(metadata).decode()
    # the tests, examples and benchmarks ship in the sdist only, never as installed packages
    assert {name.split("/")[0] for name in names if not name.startswith("aiosessmgr-")} == {
        "aiosessmgr"}
