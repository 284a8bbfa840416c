"""The memory driver beyond the contract (tests/drivers/test_contract.py): passive expiry,
GC counts and chunking."""

from __future__ import annotations

import asyncio

from aiosessmgr import MemoryDriver
from aiosessmgr.drivers import memory

from ..conftest import FakeClock

V1 = b"v1------"


async def test_passive_expiry_on_read(clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    await driver.write("a", V1, 60)
    clock.advance(59)
    assert await driver.read("a") == V1
    clock.advance(1)
    assert await driver.read("a") is None
    assert len(driver) == 0  # removed the moment it was seen expired


async def test_gc_removes_only_expired(clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    for i in range(10):
        await driver.write(f"short{i}", V1, 10)
        await driver.write(f"long{i}", V1, 1000)
    clock.advance(11)
    assert await driver.gc(10) == 10
    assert len(driver) == 10
    assert await driver.read("long3") == V1


async def test_gc_yields_to_the_loop_between_chunks(clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    count = memory.GC_CHUNK * 20
    for i in range(count):
        await driver.write(f"id{i}", V1, 10)
    clock.advance(11)
    ticks = 0
    stop = False

    async def probe() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(probe())
    await asyncio.sleep(0)
    started = ticks
    assert await driver.gc(60) == count
    stop = True
    await task
    assert ticks - started >= 19  # the probe ran between chunks
