"""The code base stays `mypy --strict` and `ruff` clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([sys.executable, "-m", "mypy", "--strict", "aiosessmgr", "benchmarks",
                      "examples", "tests"], id="mypy"),
        pytest.param([sys.executable, "-m", "ruff", "check", "aiosessmgr", "tests", "examples",
                      "benchmarks"], id="ruff"),
    ],
)
def test_static_checks_pass(command: list[str]) -> None:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
