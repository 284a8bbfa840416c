"""gc() of the file driver on a large directory: it must not stall the event loop.

Stated as structure, not as a time bound (the machine is shared): the loop runs other
tasks between every batch of GC_BATCH entries. ``python -m benchmarks.gc`` measures the
worst loop lag itself.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from aiosessmgr.drivers.file import GC_BATCH, FileDriver

EXPIRED = 100_000
LIVE = 100
TTL = 600


def populate(store: Path) -> list[str]:
    """Create EXPIRED old session files and LIVE fresh ones, fast (plain os calls)."""
    old = time.time() - TTL - 60
    live = []
    for i in range(EXPIRED + LIVE):
        sid = secrets.token_urlsafe(32)
        path = os.path.join(store, f"sess_{sid}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"v" * 8 + b"record")
        os.close(fd)
        if i < EXPIRED:
            os.utime(path, (old, old))
        else:
            live.append(sid)
    return live


async def probe(stop: asyncio.Event, turns: list[int]) -> None:
    """Count the loop turns this task gets: each is a moment the loop was free."""
    while not stop.is_set():
        await asyncio.sleep(0)
        turns[0] += 1


@pytest.mark.slow
async def test_gc_of_100k_files_keeps_the_loop_responsive(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    driver = FileDriver(tmp_path / "sessions", ttl=TTL)
    live = await asyncio.to_thread(populate, tmp_path / "sessions")
    loop_thread, on_loop = threading.get_ident(), []
    for name in ("unlink", "lstat", "open", "fstat", "read", "close"):
        real = getattr(os, name)

        def watched(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            if threading.get_ident() == loop_thread:
                on_loop.append(_name)
            return _real(*args, **kw)

        monkeypatch.setattr(os, name, watched)
    stop, turns = asyncio.Event(), [0]
    prober = asyncio.create_task(probe(stop, turns))
    await asyncio.sleep(0)  # the probe is running before gc starts
    turns[0] = 0
    try:
        removed = await driver.gc(TTL)
    finally:
        stop.set()
        await prober
    assert removed == EXPIRED
    remaining = await asyncio.to_thread(os.listdir, tmp_path / "sessions")
    assert sorted(n for n in remaining if n.startswith("sess_")) == sorted(
        f"sess_{sid}" for sid in live)
    monkeypatch.undo()
    # no file system call of gc ran on the event loop's thread, and the loop was free
    # between every batch, not only before and after the whole run
    assert on_loop == []
    assert turns[0] >= EXPIRED // GC_BATCH, turns[0]


async def test_cancelled_gc_stops_between_batches(tmp_path: Path) -> None:
    """Cancelling (manager.close does) waits for the running batch, then stops cleanly."""
    store = tmp_path / "sessions"
    driver = FileDriver(store, ttl=TTL)
    old = time.time() - TTL - 60
    await asyncio.to_thread(populate_small, store, 20_000, old)
    task = asyncio.create_task(driver.gc(TTL))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    left = await asyncio.to_thread(count_sessions, store)
    assert 0 < left < 20_000  # it stopped part way
    # the interrupted run left nothing broken: the next one finishes the job
    assert await driver.gc(TTL) == left
    assert await asyncio.to_thread(count_sessions, store) == 0


def populate_small(store: Path, count: int, mtime: float) -> None:
    for _ in range(count):
        path = os.path.join(store, f"sess_{secrets.token_urlsafe(32)}")
        with open(path, "wb") as f:
            f.write(b"v" * 8)
        os.utime(path, (mtime, mtime))


def count_sessions(store: Path) -> int:
    return sum(n.startswith("sess_") for n in os.listdir(store))


async def test_a_gc_run_cancelled_while_the_directory_opens_leaks_no_scan(
        tmp_path: Path) -> None:
    # manager.close() cancels a running GC: the scandir may be opened by the pool thread
    # after the await is gone, and must still be closed (ResourceWarning is an error here)
    import gc as collector

    driver = FileDriver(tmp_path / "sessions", ttl=60)
    try:
        await driver.index_user_session("ann", "h" * 22, "i" * 43, 60)  # users/ exists
        for delay in (0, 0, 0.0001, 0.0005, 0.001, 0.002):
            task = asyncio.ensure_future(driver.gc(60))
            await asyncio.sleep(delay)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        collector.collect()
    finally:
        await driver.close()
    collector.collect()
