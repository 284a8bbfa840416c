"""The declared minimums are the tested ones: .ci/minimum.txt pins setup.cfg's lower bounds.

CI installs '.[test]' a second time with ``-c .ci/minimum.txt`` and runs the suite on it
(.ci/run), so these tests keep that file and setup.cfg from drifting apart: every runtime
dependency (install_requires and the "fast" extra) has a ``>=`` lower bound, the file pins
exactly that version of each and nothing else, and an extra that repeats a runtime
dependency repeats its bound.
"""

from __future__ import annotations

import configparser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / ".ci" / "minimum.txt"
#: extras that are runtime dependencies of an installed aiosessmgr (not test or bench tools)
RUNTIME_EXTRAS = ("fast",)


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def _requirements(text: str) -> list[Requirement]:
    return [Requirement(line) for line in (raw.strip() for raw in text.splitlines()) if line]


def _runtime() -> list[Requirement]:
    cfg = _setup_cfg()
    found = _requirements(cfg["options"]["install_requires"])
    for extra in RUNTIME_EXTRAS:
        found += _requirements(cfg["options.extras_require"][extra])
    return found


def _lower_bound(req: Requirement) -> Version:
    bounds = [spec for spec in req.specifier if spec.operator == ">="]
    assert len(bounds) == 1, f"{req}: a runtime dependency needs exactly one '>=' bound"
    return Version(bounds[0].version)


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{line}: pin with '==' only"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{req.name} pinned twice"
        pins[name] = Version(specs[0].version)
    return pins


def test_constraints_pin_exactly_the_runtime_dependencies() -> None:
    runtime = {canonicalize_name(req.name) for req in _runtime()}
    assert set(_pins()) == runtime


def test_each_pin_is_the_lowest_version_setup_cfg_allows() -> None:
    pins = _pins()
    for req in _runtime():
        pinned = pins[canonicalize_name(req.name)]
        assert pinned == _lower_bound(req), (
            f"setup.cfg says {req}, .ci/minimum.txt pins {pinned}: change both together")
        assert req.specifier.contains(pinned, prereleases=True), f"{pinned} outside {req}"


def test_extras_repeat_a_runtime_dependency_with_its_bound() -> None:
    bounds = {canonicalize_name(req.name): _lower_bound(req) for req in _runtime()}
    for extra, text in _setup_cfg()["options.extras_require"].items():
        for req in _requirements(text):
            name = canonicalize_name(req.name)
            if name in bounds:
                assert _lower_bound(req) == bounds[name], (
                    f"extra {extra!r} says {req}; the runtime bound is >={bounds[name]}")


def test_ci_runs_the_suite_on_the_constraints() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "python -m pip install -e '.[test]' && python -m pytest" in script  # README's
    assert "-c .ci/minimum.txt" in script
