"""The file driver's threads: its own bounded pool, and lock waits that hold no thread.

The fault these pin: saves waiting for a stripe lock held by another process did
blocking ``flock`` calls in the loop's default executor, so ``loop.getaddrinfo`` (what
aiohttp's client resolver uses) waited until the other process let go.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from aiosessmgr import DriverError
from aiosessmgr.drivers.file import LOCK_STRIPES, FileDriver

TTL = 600
#: more concurrent saves than any default executor has threads (at most 32)
SAVES = 40
#: seconds; only a guard against a hang, never what a test measures
HANG = 60

# Holds one lock file with a real flock until a line arrives on stdin (or stdin closes).
HOLDER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
"""


def record(body: bytes = b"payload") -> bytes:
    return os.urandom(8) + body


def stripe(session_id: str) -> int:
    return zlib.crc32(session_id.encode("ascii")) % LOCK_STRIPES


def ids_on_stripe(number: int, count: int) -> list[str]:
    """*count* fresh session ids whose writers all take stripe lock *number*."""
    found: list[str] = []
    while len(found) < count:
        sid = secrets.token_urlsafe(32)
        if stripe(sid) == number:
            found.append(sid)
    return found


def stripe_file(store: Path, number: int) -> Path:
    return store / f".sess_lock-{number:02d}"


class Holder:
    """Another process holding one lock file's flock until :meth:`release`."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, path: Path) -> Holder:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLDER, str(path), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), HANG) == b"locked\n"
        return cls(process)

    @property
    def holding(self) -> bool:
        return self.process.returncode is None

    async def release(self) -> None:
        if self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.write(b"go\n")
            await self.process.stdin.drain()
        assert await asyncio.wait_for(self.process.wait(), HANG) == 0


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "sessions"


@pytest.fixture
async def holders() -> AsyncIterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        if holder.process.returncode is None:
            holder.process.kill()
            await holder.process.wait()


def pool_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads of a file driver's pool started since *before* was taken."""
    return [t for t in threading.enumerate()
            if t not in before and t.name.startswith("aiosessmgr-file")]


async def test_a_held_stripe_lock_holds_up_no_thread(store: Path,
                                                     holders: list[Holder]) -> None:
    """While saves wait for another process's lock, the loop's executor stays free."""
    driver = FileDriver(store, ttl=TTL, lock_timeout=HANG)
    number = 7
    ids = ids_on_stripe(number, SAVES)
    other = next(sid for sid in iter(lambda: secrets.token_urlsafe(32), "")
                 if stripe(sid) != number)
    await driver.write(other, b"version0other", TTL)
    holders.append(holder := await Holder.start(stripe_file(store, number)))
    records = {sid: record(sid.encode()) for sid in ids}
    saves = [asyncio.create_task(driver.write(sid, rec, TTL) if n % 2
                                 else driver.compare_and_set(sid, rec, TTL, None))
             for n, (sid, rec) in enumerate(records.items())]
    await asyncio.sleep(0.2)  # let every save meet the lock (not what is asserted)
    assert not any(save.done() for save in saves)

    loop = asyncio.get_running_loop()
    # what the fault held up: the resolver and anyone's default-executor work
    assert await asyncio.wait_for(loop.getaddrinfo("localhost", 80), HANG)
    done = await asyncio.wait_for(asyncio.gather(
        *(loop.run_in_executor(None, threading.get_ident) for _ in range(SAVES))), HANG)
    assert len(done) == SAVES
    # and the driver's own pool: reads and writes of other stripes go on
    assert await asyncio.wait_for(driver.read(other), HANG) == b"version0other"
    await asyncio.wait_for(driver.write(other, b"version1other", TTL), HANG)
    # all of that finished while the lock was still held and every save still waited
    assert holder.holding
    assert not any(save.done() for save in saves)

    await holder.release()
    results = await asyncio.wait_for(asyncio.gather(*saves), HANG)
    assert results == [None if n % 2 else True for n in range(SAVES)]
    for sid, rec in records.items():
        assert await driver.read(sid) == rec
    await driver.close()


async def test_a_lock_held_forever_is_a_driver_error(store: Path,
                                                     holders: list[Holder]) -> None:
    driver = FileDriver(store, ttl=TTL, lock_timeout=0.2)
    number = 11
    sid, expired = ids_on_stripe(number, 2)
    await driver.write(sid, record(), TTL)
    await driver.write(expired, record(), TTL)
    then = time.time() - TTL - 60
    os.utime(store / f"sess_{expired}", (then, then))
    holders.append(holder := await Holder.start(stripe_file(store, number)))

    for operation in (driver.write(sid, record(), TTL),
                      driver.compare_and_set(sid, record(), TTL, None),
                      driver.destroy(sid)):
        with pytest.raises(DriverError, match=r"timed out after 0\.2 s waiting for lock "
                                              rf"file '\.sess_lock-{number:02d}'"):
            await asyncio.wait_for(operation, HANG)
    # tasks of this process queue behind each other within the same deadline
    queued = await asyncio.wait_for(asyncio.gather(
        *(driver.write(sid, record(), TTL) for _ in range(5)), return_exceptions=True), HANG)
    assert all(isinstance(result, DriverError) for result in queued), queued
    # gc defers the expired session of the held stripe, and gives up at the deadline
    with pytest.raises(DriverError, match=r"timed out after 0\.2 s .* 1 expired sessions"):
        await asyncio.wait_for(driver.gc(TTL), HANG)
    # an expired read removes nothing under a held stripe, and still answers "absent"
    assert await driver.read(expired) is None
    assert (store / f"sess_{expired}").exists()
    assert holder.holding

    await holder.release()
    assert await driver.gc(TTL) == 1
    rec = record()
    await driver.write(sid, rec, TTL)
    assert await driver.read(sid) == rec
    await driver.close()


class RefusingExecutor(ThreadPoolExecutor):
    """A default executor that records and refuses every job."""

    def __init__(self) -> None:
        super().__init__(1)
        self.refused: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.refused.append(repr(fn))
        raise AssertionError(f"the default executor was asked to run {fn!r}")


async def test_every_operation_runs_on_the_drivers_own_pool(store: Path) -> None:
    loop = asyncio.get_running_loop()
    refusing = RefusingExecutor()
    loop.set_default_executor(refusing)
    before = set(threading.enumerate())
    driver = FileDriver(store, ttl=TTL)
    assert pool_threads(before) == []  # threads start with the first operation
    sid, rec = secrets.token_urlsafe(32), record()
    await driver.write(sid, rec, TTL)
    assert await driver.read(sid) == rec
    assert await driver.read_touch(sid, TTL) == rec
    assert await driver.compare_and_set(sid, b"version2rec", TTL, rec[:8])
    token = await driver.acquire_lock(sid, 10, 1)
    assert token is not None
    await driver.release_lock(sid, token)
    held = await driver.acquire_lock(sid, 10, 1)  # left held: close() releases it
    assert held is not None
    await driver.destroy(sid)
    then = time.time() - TTL - 60
    for _ in range(3):
        dead = secrets.token_urlsafe(32)
        await driver.write(dead, record(), TTL)
        os.utime(store / f"sess_{dead}", (then, then))
    assert await driver.gc(TTL) == 3

    threads = pool_threads(before)
    assert threads and all(t.is_alive() for t in threads)
    await driver.close()
    assert refusing.refused == []
    # the pool is shut down: its threads are gone and nothing more is accepted
    assert not any(t.is_alive() for t in threads)
    assert not any(name.startswith(".sess_lock-") and len(name) > 20
                   for name in os.listdir(store))  # the held session lock was released
    with pytest.raises(DriverError, match="closed"):
        await driver.read(sid)
    with pytest.raises(DriverError, match="closed"):
        await driver.write(sid, rec, TTL)
    await driver.close()  # twice: harmless
    assert pool_threads(before) == []
    refusing.shutdown()


async def test_the_pool_is_bounded_by_max_workers(store: Path) -> None:
    before = set(threading.enumerate())
    driver = FileDriver(store, ttl=TTL, max_workers=2)
    ids = [secrets.token_urlsafe(32) for _ in range(8)]
    for sid in ids:
        await driver.write(sid, record(), TTL)
    for _ in range(5):
        results = await asyncio.gather(*(driver.read(sid) for sid in ids * 8))
        assert all(result is not None for result in results)
    assert 1 <= len(pool_threads(before)) <= 2
    await driver.close()


async def test_close_waits_for_running_operations(store: Path) -> None:
    """close() while operations run: each one finishes whole, then the pool stops."""
    before = set(threading.enumerate())
    driver = FileDriver(store, ttl=TTL)
    records = {secrets.token_urlsafe(32): record(os.urandom(64 * 1024)) for _ in range(20)}
    writes = [asyncio.create_task(driver.write(sid, rec, TTL)) for sid, rec in records.items()]
    await asyncio.sleep(0)  # the first hops are on their way to the pool
    await driver.close()
    threads = pool_threads(before)
    assert not any(t.is_alive() for t in threads)
    results = await asyncio.gather(*writes, return_exceptions=True)
    # a write either ran whole before close, or was refused with DriverError
    reader = FileDriver(store, ttl=TTL)
    for (sid, rec), result in zip(records.items(), results, strict=True):
        stored = await reader.read(sid)
        if result is None:
            assert stored == rec
        else:
            assert isinstance(result, DriverError) and stored in (None, rec)
    assert not [name for name in os.listdir(store) if name.endswith(".tmp")]
    await reader.close()


async def test_concurrent_reads_each_get_their_own_answer(store: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    """Reads that go together in one hop: live, absent, expired, unusable, cancelled."""
    driver = FileDriver(store, ttl=TTL)
    live = {secrets.token_urlsafe(32): record(os.urandom(n)) for n in range(50)}
    for sid, rec in live.items():
        await driver.write(sid, rec, TTL)
    expired = secrets.token_urlsafe(32)
    await driver.write(expired, record(), TTL)
    then = time.time() - TTL - 60
    os.utime(store / f"sess_{expired}", (then, then))
    linked = secrets.token_urlsafe(32)
    (tmp_path / "outside").write_bytes(b"not a session")
    (store / f"sess_{linked}").symlink_to(tmp_path / "outside")
    absent = [secrets.token_urlsafe(32) for _ in range(10)]

    for _ in range(3):
        ids = [*live, expired, linked, *absent] * 3
        reads = [asyncio.create_task(driver.read(sid)) for sid in ids]
        cancelled = [asyncio.create_task(driver.read(sid)) for sid in list(live)[:5]]
        await asyncio.sleep(0)
        for task in cancelled:
            task.cancel()
        with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
            answers = await asyncio.wait_for(asyncio.gather(*reads), HANG)
        assert answers == [live.get(sid) for sid in ids]
        assert all(task.cancelled() or task.result() == live[sid]
                   for task, sid in zip(cancelled, live, strict=False))
    assert not (store / f"sess_{expired}").exists()
    assert {r.getMessage().split(" for ")[0] for r in caplog.records} == {
        "unreadable session file"}

    # a broken store: every read of the batch is the DriverError, none is lost
    shutil.rmtree(store)
    results = await asyncio.wait_for(asyncio.gather(
        *(driver.read(sid) for sid in live), return_exceptions=True), HANG)
    assert all(isinstance(r, DriverError) and isinstance(r.__cause__, FileNotFoundError)
               for r in results), results
    await driver.close()
