"""aiosessmgr.testing.DriverContract run against every driver we ship, and the suite itself.

Time is moved without sleeping: the memory driver's injected clock; the file driver's
record mtimes moved back with ``os.utime``; on Redis every key of the test's prefix gets
its ``PTTL`` minus the time (Redis has no clock to inject). The PostgreSQL example runs
the suite in tests/test_postgres_driver.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis, RedisCluster

from aiosessmgr import MemoryDriver, SessionDriver
from aiosessmgr.drivers.file import FileDriver
from aiosessmgr.drivers.redis import RedisDriver
from aiosessmgr.testing import CAPABILITIES, Advance, DriverContract
from examples.postgres_driver import PostgresDriver

from .. import test_postgres_driver
from ..conftest import FakeClock
from ..redis_server import ClusterServers, RedisServer, SentinelServers
from .conftest import redis_driver

ROOT = Path(__file__).resolve().parents[2]
EVERY_CAPABILITY = frozenset(CAPABILITIES)


def redis_advance(client: Redis | RedisCluster, prefix: str) -> Advance:
    """Make *seconds* pass for every key under *prefix*: its PTTL minus the time."""

    async def advance(seconds: float) -> None:
        elapsed = round(seconds * 1000)
        async for key in client.scan_iter(match=f"{prefix}*"):
            left = await client.pttl(key)
            if left < 0:
                continue  # -1: no expiry (not ours to age), -2: gone meanwhile
            if left <= elapsed:
                await client.delete(key)
            else:
                await client.pexpire(key, left - elapsed)

    return advance


class TestMemoryDriver(DriverContract):
    capabilities = EVERY_CAPABILITY

    @pytest.fixture
    def driver(self, clock: FakeClock) -> MemoryDriver:
        return MemoryDriver(clock=clock)

    @pytest.fixture
    def advance(self, clock: FakeClock) -> Advance:
        async def advance(seconds: float) -> None:
            clock.advance(seconds)

        return advance


class TestFileDriver(DriverContract):
    capabilities = EVERY_CAPABILITY

    @pytest.fixture
    async def driver(self, tmp_path: Path) -> AsyncIterator[FileDriver]:
        # the file driver expires by the lifetime it was built with, the suite's ttl
        drv = FileDriver(tmp_path / "sessions", ttl=self.ttl)
        yield drv
        await drv.close()

    @pytest.fixture
    def advance(self, tmp_path: Path) -> Advance:
        def age(seconds: float) -> None:
            # records and user indexes (in users/) are the files not starting with a dot
            # (temps and locks do); an index's deadline follows its file's mtime
            store = tmp_path / "sessions"
            for entry in [*os.scandir(store), *(os.scandir(store / "users")
                                                if (store / "users").is_dir() else ())]:
                if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    os.utime(entry.path, (st.st_atime - seconds, st.st_mtime - seconds),
                             follow_symlinks=False)

        async def advance(seconds: float) -> None:
            await asyncio.to_thread(age, seconds)

        return advance


@pytest.mark.redis
class TestRedisDriver(DriverContract):
    capabilities = EVERY_CAPABILITY

    @pytest.fixture
    async def driver(self, redis_server: RedisServer, prefix: str,
                     pipelining: bool) -> AsyncIterator[RedisDriver]:
        drv = redis_driver(url=redis_server.url, prefix=prefix, pipelining=pipelining)
        yield drv
        await drv.close()

    @pytest.fixture
    def advance(self, inspector: Redis, prefix: str) -> Advance:
        return redis_advance(inspector, prefix)


@pytest.fixture(scope="module")
def sentinel() -> Iterator[SentinelServers]:
    """One master and one sentinel monitoring it as 'mymaster'."""
    servers = SentinelServers("mymaster").start()
    yield servers
    servers.cleanup()


@pytest.mark.redis
class TestRedisSentinel(DriverContract):
    capabilities = EVERY_CAPABILITY

    @pytest.fixture
    async def driver(self, sentinel: SentinelServers, prefix: str) -> AsyncIterator[RedisDriver]:
        drv = redis_driver(prefix=prefix, sentinel={
            "hosts": [f"127.0.0.1:{sentinel.sentinel_port}"],
            "service_name": sentinel.service_name})
        yield drv
        await drv.close()

    @pytest.fixture
    async def advance(self, sentinel: SentinelServers, prefix: str) -> AsyncIterator[Advance]:
        client = Redis.from_url(sentinel.master.url)
        yield redis_advance(client, prefix)
        await client.aclose()


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterServers]:
    """Three masters on free ports, ``cluster_state:ok`` on each (takes a few seconds)."""
    servers = ClusterServers(masters=3).start()
    yield servers
    servers.cleanup()


@pytest.mark.redis
@pytest.mark.slow
class TestRedisCluster(DriverContract):
    capabilities = EVERY_CAPABILITY

    @pytest.fixture
    async def driver(self, cluster: ClusterServers, prefix: str,
                     pipelining: bool) -> AsyncIterator[RedisDriver]:
        drv = redis_driver(url=cluster.url, cluster=True, prefix=prefix, pipelining=pipelining)
        yield drv
        await drv.close()

    @pytest.fixture
    async def advance(self, cluster: ClusterServers, prefix: str) -> AsyncIterator[Advance]:
        client = RedisCluster.from_url(cluster.url)
        yield redis_advance(client, prefix)
        await client.aclose()


# -- the suite itself ------------------------------------------------------------------------


@pytest.mark.parametrize(("runner", "driver_class"), [
    pytest.param(TestMemoryDriver, MemoryDriver, id="memory"),
    pytest.param(TestFileDriver, FileDriver, id="file"),
    pytest.param(TestRedisDriver, RedisDriver, id="redis"),
    pytest.param(TestRedisSentinel, RedisDriver, id="sentinel"),
    pytest.param(TestRedisCluster, RedisDriver, id="cluster"),
    pytest.param(test_postgres_driver.TestPostgresDriverContract,
                 PostgresDriver, id="postgres"),
])
def test_runners_skip_nothing_their_driver_supports(runner: type[DriverContract],
                                                    driver_class: type[SessionDriver]) -> None:
    """Every capability the driver class has is declared (so its tests fail rather than
    skip if it goes undetected), and each runner moves time (so expiry tests run)."""
    has = frozenset(cap for cap in CAPABILITIES if issubclass(driver_class, cap))
    assert runner.capabilities == has
    assert "driver" in vars(runner) and "advance" in vars(runner)


#: a test module with a driver of the required methods only and no expiry: what the suite
#: must skip by name, not pass
BARE = """\
import pytest

from aiosessmgr import SessionDriver
from aiosessmgr.drivers.base import SupportsLock
from aiosessmgr.testing import DriverContract


class Bare(SessionDriver):
    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}

    async def read(self, session_id: str) -> bytes | None:
        return self.records.get(session_id)

    async def write(self, session_id: str, payload: bytes, ttl: int) -> None:
        self.records[session_id] = payload

    async def destroy(self, session_id: str) -> None:
        self.records.pop(session_id, None)

    async def gc(self, max_lifetime: int) -> int:
        return 0


class TestBare(DriverContract):
    @pytest.fixture
    def driver(self) -> Bare:
        return Bare()
"""


def run_pytest(path: Path) -> subprocess.CompletedProcess[str]:
    """Run pytest on *path* in a fresh process, in strict asyncio mode, warnings as errors."""
    (path.parent / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfsx", "-p", "no:cacheprovider", str(path)],
        capture_output=True, text=True, timeout=300, cwd=path.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_driver_without_capabilities_skips_them_by_name(tmp_path: Path) -> None:
    test_file = tmp_path / "test_bare.py"
    test_file.write_text(BARE)
    done = run_pytest(test_file)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, \d+ skipped in .*", summary), summary
    skipped = done.stdout
    for reason in ["Bare has no read_touch (SupportsTouch)",
                   "Bare has no compare_and_set (SupportsCompareAndSet)",
                   "Bare has no acquire_lock/release_lock (SupportsLock)",
                   "expiry: TestBare defines no `advance` fixture",
                   "capabilities: the class does not declare `capabilities`"]:
        assert reason in skipped, reason


def test_a_declared_capability_that_is_missing_fails(tmp_path: Path) -> None:
    test_file = tmp_path / "test_declared.py"
    test_file.write_text(BARE.replace("class TestBare(DriverContract):\n", (
        "class TestBare(DriverContract):\n    capabilities = frozenset({SupportsLock})\n\n")))
    done = run_pytest(test_file)
    assert done.returncode == 1
    failed = sorted(re.findall(r"FAILED \S+::TestBare::(\w+)", done.stdout))
    assert failed == ["test_capabilities_are_the_declared_ones",
                      "test_lock_excludes_until_released",
                      "test_lock_waiter_gets_the_lock_once_released",
                      "test_release_with_another_token_keeps_the_lock"], done.stdout


def test_the_docs_example_runs_under_pytest(tmp_path: Path) -> None:
    """The contract-suite example of docs/writing-a-driver.md runs under pytest as shown."""
    page = (ROOT / "docs" / "writing-a-driver.md").read_text()
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", page, flags=re.S | re.M)
              if "DriverContract" in b]
    assert len(blocks) == 1
    test_file = tmp_path / "test_docs_driver.py"
    test_file.write_text(blocks[0])
    done = run_pytest(test_file)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, \d+ skipped in .*", summary), done.stdout
    reasons = re.findall(r"^SKIPPED \[\d+\] .*?: (.*)$", done.stdout, flags=re.M)
    assert reasons == [
        "ExpiringDictDriver has no read_touch (SupportsTouch)",
        "ExpiringDictDriver has no acquire_lock/release_lock (SupportsLock)",
        "ExpiringDictDriver has no index_user_session/user_session_index/"
        "unindex_user_sessions (SupportsUserIndex)",
        "ExpiringDictDriver has no read_many (SupportsReadMany)"]


def test_importing_the_package_does_not_import_pytest() -> None:
    code = ("import sys, aiosessmgr, aiosessmgr.drivers.file, aiosessmgr.web\n"
            "assert 'pytest' not in sys.modules and 'aiosessmgr.testing' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=ROOT)

