"""File driver session locks: flock per session, across tasks, drivers and processes."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

from aiosessmgr import DriverError, SessionManager
from aiosessmgr.drivers.file import FileDriver

# A holder in another process: takes the lock, says so, then waits to be killed.
HOLDER = r"""
import asyncio, sys
from aiosessmgr.drivers.file import FileDriver

async def main() -> None:
    driver = FileDriver(sys.argv[1])
    assert await driver.acquire_lock(sys.argv[2], 10, 5) is not None
    print("locked", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def new_id() -> str:
    return secrets.token_urlsafe(32)


def lock_files(store: Path) -> list[str]:
    return sorted(name for name in os.listdir(store) if "lock-" in name and len(name) > 20)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "sessions"


@pytest.fixture
async def driver(store: Path) -> AsyncIterator[FileDriver]:
    drv = FileDriver(store)
    yield drv
    await drv.close()


@pytest.fixture
async def other(store: Path) -> AsyncIterator[FileDriver]:
    """A second driver on the same directory: its flocks are separate file descriptions."""
    drv = FileDriver(store)
    yield drv
    await drv.close()


async def test_acquire_and_release(driver: FileDriver, store: Path) -> None:
    sid = new_id()
    token = await driver.acquire_lock(sid, 10, 1)
    assert token is not None and len(token) == 32
    assert lock_files(store) == [f".sess_lock-{sid}"]
    await driver.release_lock(sid, token)
    assert lock_files(store) == []  # removed on release: lock files do not pile up
    again = await driver.acquire_lock(sid, 10, 0)
    assert again is not None
    await driver.release_lock(sid, again)


@pytest.mark.parametrize("same_driver", [pytest.param(True, id="same-driver"),
                                         pytest.param(False, id="other-driver")])
async def test_second_acquire_times_out_within_wait(driver: FileDriver, other: FileDriver,
                                                    same_driver: bool) -> None:
    sid = new_id()
    token = await driver.acquire_lock(sid, 10, 1)
    assert token is not None
    second = driver if same_driver else other
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await second.acquire_lock(sid, 10, 0.2) is None
    assert 0.2 <= loop.time() - started < 0.6
    assert await second.acquire_lock(sid, 10, 0) is None  # wait 0: one attempt
    await driver.release_lock(sid, token)
    token = await second.acquire_lock(sid, 10, 0)
    assert token is not None
    await second.release_lock(sid, token)


async def test_other_sessions_are_not_blocked(driver: FileDriver, other: FileDriver) -> None:
    token = await driver.acquire_lock(a := new_id(), 10, 1)
    assert token is not None
    for _ in range(20):  # no false sharing between ids (no stripes)
        sid = new_id()
        theirs = await other.acquire_lock(sid, 10, 0)
        assert theirs is not None
        await other.release_lock(sid, theirs)
    await driver.release_lock(a, token)


async def test_a_waiter_gets_the_lock_when_it_is_released(driver: FileDriver,
                                                          other: FileDriver) -> None:
    sid = new_id()
    token = await driver.acquire_lock(sid, 10, 1)
    assert token is not None
    waiter = asyncio.create_task(other.acquire_lock(sid, 10, 5))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    await driver.release_lock(sid, token)
    theirs = await asyncio.wait_for(waiter, 1)
    assert theirs is not None
    await other.release_lock(sid, theirs)


async def test_wrong_or_stale_token_does_not_release(driver: FileDriver,
                                                     other: FileDriver) -> None:
    sid = new_id()
    token = await driver.acquire_lock(sid, 10, 1)
    assert token is not None
    await driver.release_lock(sid, "0" * 32)
    await driver.release_lock(new_id(), token)  # right token, wrong id
    assert await other.acquire_lock(sid, 10, 0) is None
    await driver.release_lock(sid, token)
    await driver.release_lock(sid, token)  # twice: harmless
    theirs = await other.acquire_lock(sid, 10, 0)
    assert theirs is not None
    await driver.release_lock(sid, token)  # a stale token does not release the new holder
    assert await driver.acquire_lock(sid, 10, 0) is None
    await other.release_lock(sid, theirs)


async def test_ttl_is_not_applied_a_living_holder_keeps_the_lock(driver: FileDriver,
                                                                 other: FileDriver) -> None:
    sid = new_id()
    token = await driver.acquire_lock(sid, 0.05, 1)
    assert token is not None
    await asyncio.sleep(0.15)
    assert await other.acquire_lock(sid, 10, 0) is None
    await driver.release_lock(sid, token)


async def test_mutual_exclusion_under_churn(store: Path) -> None:
    """Many holders across drivers (separate flocks) never overlap, unlinks included."""
    sid = new_id()
    drivers = [FileDriver(store) for _ in range(3)]
    inside = 0
    entered = 0

    async def worker(drv: FileDriver) -> None:
        nonlocal inside, entered
        for _ in range(10):
            token = await drv.acquire_lock(sid, 10, 10)
            assert token is not None
            inside += 1
            entered += 1
            assert inside == 1
            await asyncio.sleep(0.001)
            inside -= 1
            await drv.release_lock(sid, token)

    await asyncio.gather(*(worker(drv) for drv in drivers for _ in range(4)))
    assert entered == 120
    assert lock_files(store) == []


async def test_holding_the_lock_does_not_block_saving_that_session(driver: FileDriver
                                                                   ) -> None:
    """Session.lock() saves while it holds the lock: the lock is not the CAS stripe lock."""
    sid = new_id()
    token = await driver.acquire_lock(sid, 10, 1)
    assert token is not None
    await asyncio.wait_for(driver.write(sid, b"version1record", 60), 2)
    assert await asyncio.wait_for(
        driver.compare_and_set(sid, b"version2record", 60, b"version1"), 2)
    await asyncio.wait_for(driver.destroy(sid), 2)
    await driver.release_lock(sid, token)


async def test_session_lock_through_the_manager(store: Path) -> None:
    manager = SessionManager({"default": "file", "lottery": (0, 1),
                              "drivers": {"file": {"driver": "file", "path": str(store)}}})
    assert manager.runtime().locks is cast(object, manager.get_driver())
    session = await manager.driver()
    session["n"] = 1
    await session.save()
    async with session.lock(wait_seconds=1):
        session["n"] += 1
    assert (await manager.load(session.id))["n"] == 2
    await manager.close()


async def test_cancelled_waiter_leaves_no_lock_behind(driver: FileDriver, other: FileDriver,
                                                      store: Path) -> None:
    sid = new_id()
    token = await driver.acquire_lock(sid, 10, 1)
    assert token is not None
    waiters = [asyncio.create_task(other.acquire_lock(sid, 10, 10)) for _ in range(3)]
    await asyncio.sleep(0.05)
    await driver.release_lock(sid, token)
    for waiter in waiters:  # cancel at different points: in a thread hop, asleep, queued
        await asyncio.sleep(0)
        waiter.cancel()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    for result in results:  # a waiter that won before its cancel took effect let go
        if isinstance(result, str):
            await other.release_lock(sid, result)
    await asyncio.sleep(0.1)  # a lock taken by a cancelled attempt is let go in a thread
    third = FileDriver(store)
    token = await third.acquire_lock(sid, 10, 1)
    assert token is not None
    await third.release_lock(sid, token)


async def test_lock_dies_with_the_holding_process(driver: FileDriver, store: Path) -> None:
    sid = new_id()
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(store), sid,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"locked\n"
        assert await driver.acquire_lock(sid, 10, 0.1) is None
        waiter = asyncio.create_task(driver.acquire_lock(sid, 10, 10))
        holder.send_signal(signal.SIGKILL)
        token = await asyncio.wait_for(waiter, 10)
        assert token is not None
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.communicate()
    assert holder.returncode == -signal.SIGKILL
    await driver.release_lock(sid, token)


async def test_gc_removes_abandoned_lock_files_only(driver: FileDriver, store: Path) -> None:
    held, abandoned = new_id(), new_id()
    token = await driver.acquire_lock(held, 10, 1)
    assert token is not None
    # what a killed holder leaves: the file, with nobody's flock on it
    (store / f".sess_lock-{abandoned}").write_bytes(b"")
    assert await driver.gc(60) == 0  # lock files are not sessions
    assert lock_files(store) == [f".sess_lock-{held}"]
    await driver.release_lock(held, token)
    again = await driver.acquire_lock(abandoned, 10, 0)
    assert again is not None
    await driver.release_lock(abandoned, again)


async def test_invalid_id_is_refused(driver: FileDriver) -> None:
    with pytest.raises(ValueError, match="not a session id"):
        await driver.acquire_lock("../etc/passwd", 10, 1)


async def test_store_gone_is_a_driver_error(driver: FileDriver, store: Path) -> None:
    shutil.rmtree(store)
    with pytest.raises(DriverError, match="cannot lock a session") as info:
        await driver.acquire_lock(new_id(), 10, 1)
    assert isinstance(info.value.__cause__, OSError)
