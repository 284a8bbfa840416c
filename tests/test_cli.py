"""The command line, run as real subprocesses: ``gc`` (the cron alternative) and ``demo``."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from aiosessmgr.drivers.file import FileDriver

TTL_MINUTES = 10


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aiosessmgr", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def make_sessions(store: Path, live: int, expired: int) -> list[str]:
    """Write sessions through the driver; age *expired* of them past the lifetime."""
    ids = [secrets.token_urlsafe(32) for _ in range(live + expired)]

    async def write() -> None:
        driver = FileDriver(store, ttl=TTL_MINUTES * 60)
        for sid in ids:
            await driver.write(sid, b"v" * 8 + b"record", TTL_MINUTES * 60)

    asyncio.run(write())
    then = time.time() - TTL_MINUTES * 60 - 5
    for sid in ids[live:]:
        os.utime(store / f"sess_{sid}", (then, then))
    return ids[:live]


def remaining(store: Path) -> list[str]:
    return sorted(n.removeprefix("sess_") for n in os.listdir(store) if n.startswith("sess_"))


def test_gc_removes_expired_sessions(tmp_path: Path) -> None:
    store = tmp_path / "sessions"
    live = make_sessions(store, live=4, expired=6)
    done = run("gc", "--driver", "file", "--path", str(store), "--lifetime", str(TTL_MINUTES))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "file: removed 6 expired sessions\n"
    assert remaining(store) == sorted(live)
    # --lifetime decides: the live ones are a minute old, older than half a minute
    then = time.time() - 60
    for sid in live:
        os.utime(store / f"sess_{sid}", (then, then))
    done = run("gc", "--path", str(store), "--lifetime", "0.5")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "file: removed 4 expired sessions\n"
    assert remaining(store) == []


def test_gc_of_a_shared_directory_needs_the_explicit_opt_out(tmp_path: Path) -> None:
    store = tmp_path / "sessions"
    make_sessions(store, live=1, expired=2)
    store.chmod(0o755)  # others may list the ids: refused, saying how to fix it
    refused = run("gc", "--driver", "file", "--path", str(store), "--lifetime", str(TTL_MINUTES))
    assert refused.returncode == 2 and "chmod 700" in refused.stderr
    assert "Traceback" not in refused.stderr
    done = run("gc", "--driver", "file", "--path", str(store), "--lifetime", str(TTL_MINUTES),
               "--no-check-permissions")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "file: removed 2 expired sessions\n"
    assert oct(store.stat().st_mode & 0o777) == "0o755"  # used as it is, not changed
    memory = run("gc", "--driver", "memory", "--no-check-permissions")
    assert memory.returncode == 2 and "only for --driver file" in memory.stderr


def test_gc_with_the_apps_config(tmp_path: Path) -> None:
    store = tmp_path / "sessions"
    live = make_sessions(store, live=2, expired=3)
    (tmp_path / "myapp_sessions.py").write_text(
        "from aiosessmgr import SessionManager\n"
        f"manager = SessionManager({{'default': 'files', 'drivers': {{'files': "
        f"{{'driver': 'file', 'path': {str(store)!r}, 'lifetime': {TTL_MINUTES}}}}}}})\n"
    )
    done = run("gc", "--config", "myapp_sessions:manager", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "files: removed 3 expired sessions\n"
    assert remaining(store) == sorted(live)


def test_gc_store_failure_exits_1(tmp_path: Path) -> None:
    store = tmp_path / "sessions"
    (tmp_path / "vanishing.py").write_text(
        "import shutil\n"
        "from aiosessmgr import SessionManager\n"
        f"manager = SessionManager({{'drivers': {{'f': {{'driver': 'file', "
        f"'path': {str(store)!r}}}}}}})\n"
        f"shutil.rmtree({str(store)!r})\n"
    )
    done = run("gc", "--config", "vanishing:manager", cwd=tmp_path)
    assert done.returncode == 1
    assert "store error" in done.stderr and "Traceback" not in done.stderr


BAD_MODULE = "raise RuntimeError('broken at import')\n"
NOT_A_MANAGER = "manager = 42\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--driver", "file"], "needs --path", id="missing-path"),
        pytest.param(["--path", "{tmp}/nope"], "is not a directory", id="path-does-not-exist"),
        pytest.param(["--path", "{tmp}/plain.txt"], "is not a directory", id="path-is-a-file"),
        pytest.param(["--path", "{tmp}", "--lifetime", "0"], "positive number", id="zero"),
        pytest.param(["--path", "{tmp}", "--lifetime", "-5"], "positive number", id="negative"),
        pytest.param(["--path", "{tmp}", "--lifetime", "abc"], "positive number", id="text"),
        pytest.param(["--path", "{tmp}", "--lifetime", "nan"], "positive number", id="nan"),
        pytest.param(["--config", "nocolon"], "module:attribute", id="config-no-colon"),
        pytest.param(["--config", "no_such_module_xyz:manager"], "cannot load",
                     id="config-no-module"),
        pytest.param(["--config", "notmanager:missing"], "cannot load", id="config-no-attr"),
        pytest.param(["--config", "notmanager:manager"], "is not a SessionManager",
                     id="config-not-a-manager"),
        pytest.param(["--config", "broken:manager"], "broken at import",
                     id="config-raises-on-import"),
        pytest.param(["--config", "notmanager:manager", "--path", "{tmp}"],
                     "do not go together", id="config-and-path"),
        pytest.param(["--driver", "sqlite"], "invalid choice", id="unknown-driver"),
    ],
)
def test_gc_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "broken.py").write_text(BAD_MODULE)
    (tmp_path / "notmanager.py").write_text(NOT_A_MANAGER)
    done = run("gc", *(a.replace("{tmp}", str(tmp_path)) for a in args), cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "nope").exists()  # gc never creates the directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_demo_counts_visits_on_the_file_driver() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiosessmgr", "demo", "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    directory = None
    try:
        banner = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        found = re.search(r"file driver, sessions in (\S+)", banner)
        assert found, banner
        directory = Path(found.group(1))
        # the default is the file driver in a fresh temporary directory
        assert directory.is_dir()
        url = f"http://127.0.0.1:{port}/"
        # the server prints its banner before it listens: wait until it answers
        jar = aiohttp.CookieJar(unsafe=True)  # unsafe: keep cookies of an IP address host
        async with aiohttp.ClientSession(cookie_jar=jar,
                                         timeout=aiohttp.ClientTimeout(total=30)) as client:
            for _ in range(300):
                try:
                    async with client.get(url) as resp:
                        first = await resp.text()
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("demo server did not answer")
            async with client.get(url) as resp:
                second = await resp.text()
        assert first.startswith("Visits: 1\n") and "Session driver: file" in first
        assert second.startswith("Visits: 2\n")
        assert len([n for n in os.listdir(directory) if n.startswith("sess_")]) == 1
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
    assert proc.returncode in (0, -15), err.decode()
    assert b"Traceback" not in err
