"""The benchmark suite runs (short runs; speed itself is never asserted in tests)."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarks import __main__ as suite
from benchmarks import gc as gc_bench
from benchmarks import serializers
from benchmarks._common import PLOTS, RESULTS, add_chart_arguments, chart_path, write_json

ROOT = Path(__file__).resolve().parent.parent


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


def test_gc_quick_run_has_the_lottery_case_and_no_verdicts(
        capsys: pytest.CaptureFixture[str]) -> None:
    gc_bench.main(["--quick", "--memory", "2000", "--files", "200", "--live", "5000",
                   "--requests", "500"])
    out = capsys.readouterr().out
    assert "| (2, 100) on |" in out and "| (0, 1) off |" in out
    assert "n/a (quick)" in out
    assert "| yes |" not in out and "| NO |" not in out  # too short to judge a target
    result = json.loads((RESULTS / "gc.json").read_text())
    assert result["quick"] is True
    lottery = result["lottery"]
    assert lottery["live_sessions"] == 5000 and lottery["requests"] == 500
    assert lottery["gc_runs_on"] <= 1  # the default lottery_interval (72 s) holds


def test_unknown_part_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        suite.main(["--only", "nope"])
    assert info.value.code == 2


def test_http_quick_shows_cpu_and_lost_updates_but_no_verdicts(
        capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import http

    assert http.main(["--quick", "--drivers", "aiohttp,aiosessmgr-memory"]) == 0
    out = capsys.readouterr().out
    assert "quick=True" in out and "pinning=" in out
    header = next(line for line in out.splitlines() if line.startswith("| app |"))
    generator = "wrk" if shutil.which("wrk") else "python load"
    for column in ("server CPU", f"{generator} CPU", "redis CPU", "lost"):
        assert f"| {column} |" in header
    assert "| aiosessmgr-memory | hot-write | 1 x 32 |" in out
    assert "quick run: no verdicts" in out
    assert not any(line.startswith("- ") for line in out.splitlines())
    assert " met" not in out and "MISSED" not in out
    saved = json.loads((RESULTS / "http.json").read_text())
    assert saved["targets"] == [] and saved["verdicts"] == "quick run: no verdicts"
    cells = saved["results"]
    assert set(cells["aiosessmgr-memory"]) == {"read", "write", "hot-read", "hot-write"}
    for by_scenario in cells.values():
        for cell in by_scenario.values():
            assert cell["server_cpu_pct"] > 0 and cell["load_cpu_pct"] > 0
            assert isinstance(cell["load_bound"], bool)
    for scenario in ("write", "hot-write"):
        cell = cells["aiosessmgr-memory"][scenario]
        assert cell["settled"] and cell["answered_ok"] > 0
        assert cell["lost"] == 0, cell
        assert cell["wrk_ok"] <= cell["answered_ok"]
    assert "lost" not in cells["aiohttp"]["write"]  # no counter to lose


def test_http_quick_cookie_rows_compare_with_aiohttp_session_cookies(
        capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import http

    assert http.main(["--quick", "--drivers", "aiohttp-session-cookie,aiosessmgr-cookie"]) == 0
    out = capsys.readouterr().out
    assert "quick run: no verdicts" in out
    # the ratio column is against EncryptedCookieStorage, not RedisStorage (not in the run)
    line = next(line for line in out.splitlines()
                if line.startswith("| aiosessmgr-cookie | write | 16 x 64 |"))
    assert line.split(" | ")[4].endswith("x")
    cells = json.loads((RESULTS / "http.json").read_text())["results"]
    for name in ("aiohttp-session-cookie", "aiosessmgr-cookie"):
        assert set(cells[name]) == {"read", "write"}  # no hot scenarios: nothing is shared
        for cell in cells[name].values():
            assert cell["rps"] > 0 and cell["errors"] == 0
            assert cell["server_cpu_pct"] > 0 and cell["load_cpu_pct"] > 0
            assert "lost" not in cell  # the store is the client: nothing to count


def test_http_cookie_targets_are_against_encrypted_cookie_storage() -> None:
    from benchmarks import http

    def cell(rps: float) -> dict[str, object]:
        return {"rps": rps, "cpu_us": 10.0, "load_bound": False, "contended": False,
                "server_idle": False}

    results = {"aiohttp-session-cookie": {"read": cell(1000), "write": cell(1000)},
               "aiosessmgr-cookie": {"read": cell(900), "write": cell(1100)}}
    assert http.verdicts(results) == [
        "aiosessmgr-cookie read >= 1.0x aiohttp-session-cookie read: 0.90x, MISSED by 0.10x; "
        "by server CPU per request 1.00x",
        "aiosessmgr-cookie write >= 1.0x aiohttp-session-cookie write: 1.10x, met; "
        "by server CPU per request 1.00x"]


def test_http_verdicts_name_each_target_and_lost_updates() -> None:
    from benchmarks import http

    def cell(rps: float, **extra: object) -> dict[str, object]:
        return {"rps": rps, "cpu_us": 10.0, "load_bound": False, "contended": False,
                "server_idle": False, **extra}

    results = {
        "aiohttp-session": {"hot-write": cell(1000)},
        "aiosessmgr-redis": {"write": cell(2000, lost=0, settled=True),
                             "hot-write": cell(1200, lost=3, settled=True, load_bound=True)},
    }
    lines = http.verdicts(results)
    assert "aiosessmgr-redis hot-write >= 1.5x aiohttp-session hot-write: 1.20x, " \
           "MISSED by 0.30x" in lines[0]
    assert "not conclusive: aiosessmgr-redis hot-write flagged" in lines[0]
    assert lines[1].startswith("aiosessmgr-redis hot-write >= 0.8x aiosessmgr-redis write: "
                               "0.60x, MISSED by 0.20x")
    assert lines[-1] == ("zero lost updates in all 2 aiosessmgr write cells: "
                         "MISSED: aiosessmgr-redis hot-write lost 3")


def test_hotpath_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import hotpath

    assert hotpath.main(["--requests", "200", "--repeat", "1", "--profile"]) == 0
    out = capsys.readouterr().out
    assert "session middleware over the no-op one:" in out
    assert "### cProfile of session-read" in out and "aiosessmgr/web.py" in out
    saved = json.loads((RESULTS / "hotpath.json").read_text())
    assert set(saved["cases"]) == set(hotpath.CASES)
    assert all(case["us_min"] > 0 for case in saved["cases"].values())
    assert len(saved["profile"]) == hotpath.TOP


def test_users_quick_on_memory(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import users

    assert users.main(["--quick", "--drivers", "memory", "--sizes", "10,100"]) == 0
    out = capsys.readouterr().out
    assert out.count("Setup: ") == 1 and "drivers=memory," in out and "quick=True" in out
    for heading in ("## Sessions of a user", "### login:", "### user_sessions:",
                    "### read-only requests:"):
        assert heading in out
    for case in users.LOGIN_CASES:
        assert f"| memory | {case} |" in out
    assert "| memory | 1,000 |" not in out and "| memory | 100 |" in out
    assert "quick run: no verdicts" in out
    assert " met" not in out and "MISSED" not in out and "skipped" not in out
    saved = json.loads((RESULTS / "users.json").read_text())
    assert saved["setup"]["quick"] is True and saved["skipped"] == {}
    assert saved["targets"] == [] and saved["verdicts"] == "quick run: no verdicts"
    assert [row["case"] for row in saved["login"]] == list(users.LOGIN_CASES)
    assert [row["sessions"] for row in saved["user_sessions"]] == [10, 100]
    for row in saved["login"] + saved["user_sessions"]:
        assert row["n"] == 5 and 0 < row["median_ms"] <= row["p90_ms"]
        assert row["redis"] is None  # counted on Redis only
    requests = saved["requests"]
    assert [(r["case"], r["touch_interval_s"]) for r in requests] == [
        ("anonymous", 60.0), ("logged-in", 60.0), ("anonymous", 0.0), ("logged-in", 0.0)]
    for row in requests:
        assert row["requests_per_s"] > 0 and row["cpu_us_min"] > 0
        assert row["redis_commands_per_request"] is None
        if not row["logged_in"]:
            assert row["vs_anonymous"] == 1.0  # the baseline of its own manager
    assert requests[3]["last_seen_after_login_s"] > 0  # touch_interval=0 rewrote it


@pytest.mark.parametrize("part", ["", *suite.PARTS])
def test_help_is_plain_text(part: str, capsys: pytest.CaptureFixture[str]) -> None:
    main = suite.PARTS[part][0] if part else suite.main
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m benchmarks{'.' + part if part else ''} ")
    for markup in ("``", "::", ":func:", ":class:"):
        assert markup not in out, f"reST {markup!r} in --help of {part or 'the suite'}"


def _tracked_state() -> tuple[dict[str, str], str | None]:
    """Hashes of the tracked charts, and `git status` of benchmarks/ when this is a checkout."""
    charts = {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
              for path in sorted(RESULTS.glob("*.png"))}
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return charts, None  # an unpacked sdist: the hashes alone
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all",
                             "benchmarks/"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    return charts, status


def _canned_http(argv: Sequence[str] | None) -> int:
    """Stands in for benchmarks.http: results to draw from, at once."""
    cell = {"rps": 1000.0}
    write_json("http", {"results": {"aiohttp": {"read": cell, "write": cell},
                                    "aiosessmgr-memory": {"read": cell, "write": cell}}})
    return 0


def test_plot_draws_into_an_untracked_directory_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        # the test extra has no matplotlib (the bench extra does): check where, not how

        def fake(_data: Any, path: Path) -> None:
            path.write_bytes(b"\x89PNG fake")

        monkeypatch.setattr(serializers, "plot", fake)
        monkeypatch.setattr(suite, "plot_http", fake)
    monkeypatch.setitem(suite.PARTS, "http", (_canned_http, [], []))
    http_json = RESULTS / "http.json"
    kept = http_json.read_bytes() if http_json.exists() else None  # a real run's results
    before = _tracked_state()
    try:
        out = tmp_path / "charts"
        assert suite.main(["--quick", "--only", "serializers,http", "--plot",
                           "--out", str(out)]) == 0
        assert sorted(path.name for path in out.iterdir()) == ["http.png", "serializers.png"]
        assert all(path.read_bytes().startswith(b"\x89PNG") for path in out.iterdir())
        printed = capsys.readouterr().out
        assert f"chart: {out / 'http.png'}" in printed
        assert f"chart: {out / 'serializers.png'}" in printed
        assert suite.main(["--quick", "--only", "http", "--plot"]) == 0  # default: PLOTS
        assert (PLOTS / "http.png").read_bytes().startswith(b"\x89PNG")
        assert _tracked_state() == before
    finally:
        if kept is not None:
            http_json.write_bytes(kept)
    if before[1] is not None:  # a checkout: PLOTS is git-ignored
        subprocess.run(["git", "check-ignore", "-q", str(PLOTS / "http.png")], cwd=ROOT,
                       check=True)


def test_only_update_readme_images_names_the_tracked_charts(tmp_path: Path) -> None:
    cli = argparse.ArgumentParser()
    add_chart_arguments(cli)
    assert chart_path("http", cli.parse_args([])) is None
    assert chart_path("http", cli.parse_args(["--plot"])) == PLOTS / "http.png"
    assert chart_path("http", cli.parse_args(["--plot", "--out", str(tmp_path)])) == (
        tmp_path / "http.png")
    assert chart_path("http", cli.parse_args(["--update-readme-images"])) == (
        RESULTS / "http.png")
    with pytest.raises(SystemExit):
        cli.parse_args(["--out", str(tmp_path), "--update-readme-images"])
