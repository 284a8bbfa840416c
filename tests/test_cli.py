"""The command line, run as real subprocesses: ``gc`` (the cron alternative) and ``demo``."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest

from aiosessmgr.drivers.file import FileDriver

from .redis_server import RedisServer

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
    # it names the flag that opts out, not only the driver option
    assert refused.stderr.rstrip().endswith("(on the command line: --no-check-permissions)")
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
                     "--config and --path do not go together", id="config-and-path"),
        # with --config every driver flag is refused, not silently ignored
        pytest.param(["--config", "notmanager:manager", "--driver", "redis"],
                     "--config and --driver do not go together", id="config-and-driver"),
        pytest.param(["--config", "notmanager:manager", "--url", "redis://127.0.0.1:1/0"],
                     "--config and --url do not go together", id="config-and-url"),
        pytest.param(["--config", "notmanager:manager", "--lifetime", "5"],
                     "--config and --lifetime do not go together", id="config-and-lifetime"),
        pytest.param(["--config", "notmanager:manager", "--no-check-permissions"],
                     "--config and --no-check-permissions do not go together",
                     id="config-and-no-check-permissions"),
        pytest.param(["--path", "{tmp}", "--url", "redis://127.0.0.1:1/0"],
                     "--url is only for --driver redis", id="url-not-for-file"),
        pytest.param(["--driver", "redis", "--path", "{tmp}"],
                     "--path is only for --driver file", id="path-not-for-redis"),
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
            files = [n for n in os.listdir(directory) if n.startswith("sess_")]
            async with client.get(url + "reset") as resp:  # ends the session, back to /
                after_reset = await resp.text()
        assert first.startswith("Visits: 1\n") and "Session driver: file" in first
        assert second.startswith("Visits: 2\n")
        assert len(files) == 1
        assert after_reset.startswith("Visits: 1\n")
        assert files[0] not in os.listdir(directory)
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
    assert proc.returncode in (0, -15), err.decode()
    assert b"Traceback" not in err


# --- gc on every driver: the exit codes of GC_EXIT_CODES, and what each one prints ---------

def test_gc_help_lists_the_exit_codes() -> None:
    from aiosessmgr.__main__ import GC_EXIT_CODES

    done = run("gc", "--help")
    assert done.returncode == 0
    assert GC_EXIT_CODES in done.stdout  # line breaks kept
    for code in ("0  done", "1  a store failed", "2  bad arguments"):
        assert code in done.stdout
    page = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    assert GC_EXIT_CODES in page  # the docs show exactly what --help prints
    import aiosessmgr.__main__ as cli

    listed = GC_EXIT_CODES.splitlines()[1:]
    assert cli.__doc__ is not None
    assert all(line.strip() in cli.__doc__ for line in listed)  # and so does the docstring


def test_gc_memory_has_nothing_to_collect() -> None:
    done = run("gc", "--driver", "memory")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("memory: nothing to collect: its sessions live in the memory of the "
                           "process that serves them (whose lottery collects them); this "
                           "process has an empty store\n")
    assert "removed" not in done.stdout


@pytest.mark.redis
def test_gc_redis_up_has_nothing_to_collect(redis_server: RedisServer) -> None:
    done = run("gc", "--driver", "redis", "--url", redis_server.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "redis: nothing to collect: the store expires sessions by itself\n"


def test_gc_redis_unreachable_exits_1() -> None:
    with socket.socket() as closed:  # a port nobody listens on: bound, never listening
        closed.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{closed.getsockname()[1]}/0"
        done = run("gc", "--driver", "redis", "--url", url)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.startswith("python -m aiosessmgr gc: redis: store error: redis PING")
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


def test_gc_redis_that_never_answers_exits_1_within_the_timeout() -> None:
    """A listener that accepts and never replies: the driver's timeout ends the run."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0?socket_timeout=1"
        started = time.monotonic()
        done = run("gc", "--driver", "redis", "--url", url)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "store error" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 60


def test_gc_cookie_driver_has_nothing_to_collect(tmp_path: Path) -> None:
    (tmp_path / "cookieapp.py").write_text(
        "import base64\n"
        "from aiosessmgr import SessionManager\n"
        "manager = SessionManager({'default': 'browser', 'drivers': {'browser': "
        "{'driver': 'cookie'}}, 'encryption': {'enabled': True, "
        "'key': base64.b64encode(bytes(32)).decode()}})\n")
    done = run("gc", "--config", "cookieapp:manager", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "browser: nothing to collect: the store expires sessions by itself\n"


CUSTOM = '''
from aiosessmgr import DriverError, SessionDriver, SessionManager


class Counting(SessionDriver):
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    async def read(self, session_id): return None
    async def write(self, session_id, payload, ttl): pass
    async def destroy(self, session_id): pass

    async def gc(self, max_lifetime):
        if self.fail:
            raise DriverError("the database is down")
        return 0


def make(fail):
    manager = SessionManager({"default": "mine", "drivers": {
        "mine": {"driver": "counting"}, "other": {"driver": "memory"}}})
    manager.extend("counting", lambda config: Counting(fail))
    return manager


good = lambda: make(False)
bad = lambda: make(True)


class SelfExpiring(Counting):
    expires_itself = True


def expiring():
    manager = SessionManager({"default": "ttl", "drivers": {"ttl": {"driver": "expiring"}}})
    manager.extend("expiring", lambda config: SelfExpiring(False))
    return manager
'''


def test_gc_custom_driver_removed_0_and_its_failure(tmp_path: Path) -> None:
    """A custom driver may collect, so 0 is "removed 0"; its DriverError is exit 1, and
    the other drivers of the manager are still collected."""
    (tmp_path / "custom.py").write_text(CUSTOM)
    done = run("gc", "--config", "custom:good", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "mine: removed 0 expired sessions",
        "other: nothing to collect: its sessions live in the memory of the process that "
        "serves them (whose lottery collects them); this process has an empty store"]
    failed = run("gc", "--config", "custom:bad", cwd=tmp_path)
    assert failed.returncode == 1
    assert failed.stderr == "python -m aiosessmgr gc: mine: store error: the database is down\n"
    assert failed.stdout.startswith("other: nothing to collect")
    # a custom driver whose store expires records itself says so (SessionDriver.expires_itself)
    expiring = run("gc", "--config", "custom:expiring", cwd=tmp_path)
    assert expiring.returncode == 0, expiring.stderr
    assert expiring.stdout == "ttl: nothing to collect: the store expires sessions by itself\n"


@pytest.mark.parametrize("args", [["--path", "{tmp}/nope"], ["--driver", "file"],
                                  ["--driver", "memory", "--path", "{tmp}"]],
                         ids=["not-a-directory", "missing", "not-for-memory"])
def test_gc_bad_path_shows_gcs_usage(tmp_path: Path, args: list[str]) -> None:
    done = run("gc", *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert done.returncode == 2
    assert done.stderr.startswith("usage: python -m aiosessmgr gc ")
    assert "{demo,gc}" not in done.stderr  # not the top-level usage


# --- demo: where it listens, a port in use, its temporary directory ------------------------

def _held_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_demo_port_in_use_is_one_line(tmp_path: Path) -> None:
    before = set(Path(tempfile.gettempdir()).glob("aiosessmgr-demo-*"))
    with _held_port() as held:
        port = held.getsockname()[1]
        done = run("demo", "--port", str(port))
    assert done.returncode == 1
    assert done.stderr == (f"python -m aiosessmgr demo: error: 127.0.0.1:{port} is in use "
                           "(another server?); choose another port with --port\n")
    # the temporary directory it made for the file driver is gone again
    assert set(Path(tempfile.gettempdir()).glob("aiosessmgr-demo-*")) <= before


@pytest.mark.parametrize("args", [["--port", "99999"], ["--port", "http"],
                                  ["--driver", "memory", "--path", "{tmp}"],
                                  ["--driver", "memory", "--no-check-permissions"],
                                  ["--driver", "file", "--url", "redis://127.0.0.1:1/0"],
                                  ["--path", "{tmp}/shared"]],
                         ids=["port-out-of-range", "port-not-a-number", "path-not-for-memory",
                              "no-check-permissions-not-for-memory", "url-not-for-file",
                              "shared-directory"])
def test_demo_bad_arguments_exit_2(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "shared").mkdir(mode=0o755)
    (tmp_path / "shared").chmod(0o755)
    done = run("demo", *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("usage: python -m aiosessmgr demo ")
    assert done.stderr.splitlines()[-1].startswith("python -m aiosessmgr demo: error: ")
    assert "Traceback" not in done.stderr


def test_demo_bad_host_is_one_line() -> None:
    done = run("demo", "--host", "192.0.2.1", "--port", str(free_port()))  # TEST-NET-1
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and "check --host and --port" in done.stderr
    assert done.stderr.startswith("python -m aiosessmgr demo: error: cannot listen on "
                                  "192.0.2.1:")


def _serving(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Start the demo; the process and the URL its "Serving on" line names."""
    proc = subprocess.Popen([sys.executable, "-m", "aiosessmgr", "demo", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()  # "aiosessmgr demo on the ... driver"
    line = proc.stdout.readline()
    found = re.fullmatch(r"Serving on (\S+) \(Ctrl\+C to stop\)\n", line)
    if not found:
        proc.kill()
        raise AssertionError((line, proc.communicate()[1]))
    return proc, found.group(1)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


async def _visits(url: str) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client, \
            client.get(url) as response:
        return await response.text()


async def test_demo_port_0_names_the_port_it_got() -> None:
    proc, url = _serving("--driver", "memory", "--port", "0")
    try:
        found = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/", url)
        assert found and int(found.group(1)) != 0, url
        assert (await _visits(url)).startswith("Visits: 1\n")
    finally:
        _stop(proc)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
async def test_demo_ipv6_url_is_in_brackets() -> None:
    proc, url = _serving("--driver", "memory", "--host", "::1", "--port", "0")
    try:
        assert re.fullmatch(r"http://\[::1\]:\d+/", url), url
        assert (await _visits(url)).startswith("Visits: 1\n")
    finally:
        _stop(proc)
    with socket.socket(socket.AF_INET6) as held6:
        held6.bind(("::1", 0))
        held6.listen(1)
        port = held6.getsockname()[1]
        done = run("demo", "--driver", "memory", "--host", "::1", "--port", str(port))
    assert done.returncode == 1
    assert done.stderr == (f"python -m aiosessmgr demo: error: [::1]:{port} is in use "
                           "(another server?); choose another port with --port\n")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_removes_its_temporary_directory(sig: signal.Signals) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "aiosessmgr", "demo", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        found = re.search(r"sessions in (\S+)", banner)
        assert found, banner
        directory = Path(found.group(1))
        assert proc.stdout.readline().startswith("Serving on")
        assert directory.is_dir()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert not directory.exists()
    assert "Traceback" not in err


def test_demo_keeps_the_directory_it_was_given(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "aiosessmgr", "demo", "--port", str(port),
                             "--path", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        assert proc.stdout.readline().startswith("Serving on")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert tmp_path.is_dir()


# --- every example: --host/--port, and a port in use is one line ---------------------------

EXAMPLES = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "examples").glob(
    "*.py") if not p.stem.startswith("_"))


def test_every_example_takes_host_and_port_each_its_own_default() -> None:
    root = Path(__file__).resolve().parent.parent
    defaults = {}
    for name in EXAMPLES:
        done = subprocess.run([sys.executable, "-m", f"examples.{name}", "--help"], cwd=root,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "--host HOST" in done.stdout and "(default 127.0.0.1)" in done.stdout
        found = re.search(r"--port PORT +port \(default (\d+)\)", done.stdout)
        assert found, done.stdout
        defaults[name] = int(found.group(1))
    assert len(set(defaults.values())) == len(EXAMPLES), defaults  # several run at once
    assert defaults["counter"] == 8081 and defaults["multiple_contexts"] == 8085


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_port_in_use_is_one_line(name: str) -> None:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "AIOSESSMGR_KEY": base64.b64encode(bytes(32)).decode(),
           "DATABASE_URL": os.environ.get("DATABASE_URL",
                                          "postgresql://postgres@127.0.0.1:5432/test")}
    with _held_port() as held:
        port = held.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", f"examples.{name}", "--host", "127.0.0.1",
                               "--port", str(port)], cwd=root, env=env, capture_output=True,
                              text=True, timeout=120)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr == (f"python -m examples.{name}: error: 127.0.0.1:{port} is in use "
                           "(another server?); choose another port with --port\n")


@pytest.mark.parametrize(("name", "args", "env", "message"), [
    pytest.param("encryption", [], {"AIOSESSMGR_KEY": "bad"}, "must be 32 bytes", id="bad-key"),
    pytest.param("multiple_contexts", ["{tmp}"], {}, "chmod 700", id="shared-directory"),
])
def test_example_refused_configuration_is_one_line(tmp_path: Path, name: str, args: list[str],
                                                   env: dict[str, str], message: str) -> None:
    """A configuration the example's manager refuses is its usage and one line, exit 2."""
    root = Path(__file__).resolve().parent.parent
    tmp_path.chmod(0o755)
    done = subprocess.run(
        [sys.executable, "-m", f"examples.{name}", "--port", str(free_port()),
         *(a.replace("{tmp}", str(tmp_path)) for a in args)],
        cwd=root, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"python -m examples.{name}: error: ") and message in last
