"""The benchmark suite runs (short runs; speed itself is never asserted in tests)."""

from __future__ import annotations

import json

import pytest

from benchmarks import __main__ as suite
from benchmarks._common import RESULTS


def test_quick_suite_runs_and_writes_results(capsys: pytest.CaptureFixture[str]) -> None:
    assert suite.main(["--quick", "--only", "serializers,gc,memory,fileio"]) == 0
    out = capsys.readouterr().out
    for heading in ("## Serializers", "## Garbage collection", "## Memory per idle session",
                    "## File reads"):
        assert heading in out
    assert out.count("Setup: ") == 4
    gc = json.loads((RESULTS / "gc.json").read_text())
    assert {row["case"] for row in gc["rows"]} == {"memory", "file"}
    assert all(row["removed"] == row["sessions"] for row in gc["rows"])
    assert "cpus" in json.loads((RESULTS / "memory.json").read_text())["machine"]


def test_unknown_part_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        suite.main(["--only", "nope"])
    assert info.value.code == 2
