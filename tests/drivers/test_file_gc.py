"""gc() of the file driver on a large directory: it must not stall the event loop."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path

import pytest

from aiosessmgr.drivers.file import FileDriver

EXPIRED = 100_000
LIVE = 100
TTL = 600
#: the bound from the issue: no event-loop stall longer than this during gc
MAX_LAG = 0.050


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


async def probe(stop: asyncio.Event, worst: list[float]) -> None:
    """Sleep 5 ms in a loop and record the worst overshoot: how long the loop was stuck."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        await asyncio.sleep(0.005)
        worst[0] = max(worst[0], loop.time() - started - 0.005)


@pytest.mark.slow
async def test_gc_of_100k_files_keeps_the_loop_responsive(tmp_path: Path) -> None:
    driver = FileDriver(tmp_path / "sessions", ttl=TTL)
    live = await asyncio.to_thread(populate, tmp_path / "sessions")
    stop, worst = asyncio.Event(), [0.0]
    prober = asyncio.create_task(probe(stop, worst))
    await asyncio.sleep(0.05)  # the probe is running before gc starts
    try:
        removed = await driver.gc(TTL)
    finally:
        stop.set()
        await prober
    assert removed == EXPIRED
    remaining = await asyncio.to_thread(os.listdir, tmp_path / "sessions")
    assert sorted(n for n in remaining if n.startswith("sess_")) == sorted(
        f"sess_{sid}" for sid in live)
    assert worst[0] < MAX_LAG, f"event loop stalled {worst[0] * 1000:.1f} ms during gc"
    print(f"worst loop lag during gc of {EXPIRED} files: {worst[0] * 1000:.1f} ms")


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
