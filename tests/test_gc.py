"""GC that costs what it removes (issue 14): the memory driver's expiry-ordered collection,
and the minimum interval between two lottery runs of a driver.

Cost is asserted by a count, never by time: ``MemoryDriver.gc_examined`` counts the entries
gc() looked at. Time is moved by the driver's injected clock; the lottery interval runs on
the event loop's clock, so those tests use an interval far longer than the test (nothing
may start) or far shorter than a sleep that follows (something must start).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from aiosessmgr import MemoryDriver, SessionManager, get_session, setup
from aiosessmgr.drivers import memory

from .conftest import FakeClock, eventually

V1 = b"v1------"
V2 = b"v2------"

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]


async def stored(driver: MemoryDriver, ids: list[str]) -> set[str]:
    """The ids among *ids* that read back (a read of an expired one drops it)."""
    return {sid for sid in ids if await driver.read(sid) is not None}


# -- the memory driver: exactly the expired entries go ----------------------------------


async def test_gc_removes_exactly_the_expired_with_mixed_ttls(clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    ttls = {f"s{i}": (10, 20, 30)[i % 3] for i in range(30)}
    for sid, ttl in ttls.items():  # interleaved: three buckets filled side by side
        await driver.write(sid, V1, ttl)
        clock.advance(0.01)
    clock.advance(15)
    assert await driver.gc(60) == 10
    assert len(driver) == 20
    clock.advance(10)  # 25.3 s after the first write: the 20 s ones are gone too
    assert await driver.gc(60) == 10
    assert await stored(driver, list(ttls)) == {sid for sid, t in ttls.items() if t == 30}
    clock.advance(10)
    assert await driver.gc(60) == 10
    assert len(driver) == 0
    assert await driver.gc(60) == 0


async def test_touch_and_rewrite_move_expiry(clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    for sid in ("touched", "rewritten", "untouched", "longer", "cas"):
        await driver.write(sid, V1, 10)
    clock.advance(5)
    assert await driver.read_touch("touched", 10) == V1  # now expires at 15
    await driver.write("rewritten", V2, 10)
    await driver.write("longer", V2, 100)  # another ttl: moves to that bucket
    assert await driver.compare_and_set("cas", V2, 10, V1)
    clock.advance(6)  # 11: only the untouched one expired
    assert await driver.gc(60) == 1
    assert await stored(driver, ["touched", "rewritten", "longer", "cas"]) == {
        "touched", "rewritten", "longer", "cas"}
    clock.advance(5)  # 16
    assert await driver.gc(60) == 3
    assert len(driver) == 1 and await driver.read("longer") == V2
    clock.advance(100)
    assert await driver.gc(60) == 1


async def test_destroyed_and_rewritten_entries_count_once(clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    for sid in ("a", "b", "c"):
        await driver.write(sid, V1, 10)
    await driver.destroy("a")
    await driver.destroy("b")
    await driver.write("b", V2, 10)  # destroyed, then stored again under the same id
    await driver.destroy("never-stored")
    clock.advance(11)
    assert await driver.gc(60) == 2  # b and c; a is not counted
    assert len(driver) == 0


async def test_passive_expiry_before_gc_is_not_counted(clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    await driver.write("a", V1, 10)
    await driver.write("b", V1, 10)
    clock.advance(11)
    assert await driver.read("a") is None  # dropped the moment it was seen
    assert await driver.read_touch("b", 10) is None
    assert await driver.gc(60) == 0


async def test_a_clock_that_goes_back_removes_no_live_entry_and_collects_late(
        clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    await driver.write("early", V1, 10)  # expires at now + 10
    clock.advance(-100)
    await driver.write("behind", V1, 10)  # expires 90 s earlier, yet it is queued second
    clock.advance(11)
    assert await driver.gc(60) == 0  # stuck behind the live one in front of it...
    assert await driver.read("early") == V1  # ...which stays
    assert len(driver) == 2
    clock.advance(100)  # once the one in front has expired, both go
    assert await driver.gc(60) == 2
    assert len(driver) == 0


async def test_two_gc_runs_at_once_both_finish_and_remove_each_entry_once(
        clock: FakeClock) -> None:
    # an explicit manager.gc() beside a lottery run: their steps interleave at each yield
    driver = MemoryDriver(clock=clock)
    for ttl in (10, 20):
        for i in range(memory.GC_CHUNK * 2 + 17):
            await driver.write(f"{ttl}-{i}", V1, ttl)
    clock.advance(25)
    results = await asyncio.gather(driver.gc(60), driver.gc(60), driver.gc(60))
    assert sum(results) == 2 * (memory.GC_CHUNK * 2 + 17)
    assert len(driver) == 0


async def test_a_cancelled_gc_run_leaves_the_rest_to_the_next(clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    count = memory.GC_CHUNK * 3
    for i in range(count):
        await driver.write(f"id{i}", V1, 10)
    clock.advance(11)
    run = asyncio.ensure_future(driver.gc(60))
    await asyncio.sleep(0)  # the first chunk is gone, the run waits at its first yield
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    remaining = len(driver)
    assert 0 < remaining < count
    assert await driver.gc(60) == remaining  # nothing was orphaned by the cancelled run
    assert len(driver) == 0


async def test_gc_examines_only_what_it_removes() -> None:
    clock = FakeClock()
    driver = MemoryDriver(clock=clock)
    for i in range(1_000):
        await driver.write(f"old{i}", V1, 10)
    clock.advance(5)
    for i in range(200_000):  # same ttl, written later: behind the old ones
        await driver.write(f"live{i}", V1, 10)
    for i in range(1_000):  # another ttl, and another bucket
        await driver.write(f"long{i}", V1, 1000)
    clock.advance(6)
    before = driver.gc_examined
    assert await driver.gc(60) == 1_000
    # the 1,000 removed plus at most the first live entry of each of the two buckets
    assert driver.gc_examined - before <= 1_002
    assert len(driver) == 201_000
    before = driver.gc_examined
    assert await driver.gc(60) == 0
    assert driver.gc_examined - before <= 2


async def test_gc_with_mixed_ttls_examines_only_what_it_removes(clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    for i in range(200_000):
        await driver.write(f"live{i}", V1, 1000)
        if i % 200 == 0:
            await driver.write(f"short{i}", V1, 10)  # 1,000 of them, spread among the live
    clock.advance(11)
    before = driver.gc_examined
    assert await driver.gc(60) == 1_000
    assert driver.gc_examined - before <= 1_001
    assert len(driver) == 200_000


@pytest.mark.parametrize("live", [0, 1], ids=["all-expired", "some-live"])
async def test_writes_during_a_gc_run_are_kept(clock: FakeClock, live: int) -> None:
    driver = MemoryDriver(clock=clock)
    count = memory.GC_CHUNK * 4
    ids = [f"id{i}" for i in range(count)]
    for sid in ids:
        await driver.write(sid, V1, 10)
    for i in range(live):
        clock.advance(5)
        await driver.write(f"live{i}", V1, 10)
    clock.advance(11 - 5 * live)
    revived = ids[-50:]  # gc reaches these last, after yielding to the writer below

    async def writer() -> None:
        await asyncio.sleep(0)  # gc has started and yielded
        for sid in revived:
            await driver.write(sid, V2, 10)
        await driver.write("newcomer", V2, 10)

    task = asyncio.create_task(writer())
    removed = await driver.gc(60)
    await task
    assert removed == count - len(revived)
    assert await stored(driver, [*revived, "newcomer"]) == {*revived, "newcomer"}
    clock.advance(11)  # the rewritten ones are queued again, and collected in their turn
    assert await driver.gc(60) == len(revived) + 1 + live
    assert len(driver) == 0


# -- the lottery's minimum interval ------------------------------------------------------


class CountingGC(MemoryDriver):
    """The memory driver, counting GC runs."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.runs = 0
        self.fail = fail

    async def gc(self, max_lifetime: int) -> int:
        self.runs += 1
        if self.fail:
            raise OSError("disk on fire")
        return await super().gc(max_lifetime)


def counted(driver: CountingGC, **config: object) -> SessionManager:
    manager = SessionManager({"default": "c", "drivers": {"c": {"driver": "counting"}},
                              "lottery": (0, 1), **config})
    manager.extend("counting", lambda cfg: driver)
    return manager


async def test_lottery_hits_inside_the_interval_start_one_run() -> None:
    driver = CountingGC()
    manager = counted(driver, lottery_interval=3600)
    assert manager.lottery_gc()
    assert not manager.lottery_gc()  # one run at a time
    await manager.wait_gc()
    assert not manager.lottery_gc()  # the run ended less than an hour ago
    assert driver.runs == 1
    # neither periodic (schedule_gc) nor explicit runs wait for the interval
    assert manager.schedule_gc()
    await manager.wait_gc()
    assert (await manager.gc()) == {"c": 0}
    assert driver.runs == 3
    assert not manager.lottery_gc()
    await manager.close()


async def test_a_lottery_hit_after_the_interval_starts_another_run() -> None:
    driver = CountingGC()
    manager = counted(driver, lottery_interval=0.02)
    assert manager.lottery_gc()
    await manager.wait_gc()
    await asyncio.sleep(0.1)  # five intervals on the loop's clock
    assert manager.lottery_gc()
    await manager.wait_gc()
    assert driver.runs == 2
    await manager.close()


async def test_no_minimum_with_zero_and_a_lifetime_hundredth_by_default() -> None:
    driver = CountingGC()
    manager = counted(driver, lottery_interval=0)
    for _ in range(3):
        assert manager.lottery_gc()
        await manager.wait_gc()
    assert driver.runs == 3
    await manager.close()
    default = CountingGC()
    manager = counted(default)  # 120 minutes: 72 s
    assert manager.lottery_gc()
    await manager.wait_gc()
    assert not manager.lottery_gc()
    assert default.runs == 1
    await manager.close()


async def test_a_failed_run_starts_the_interval_too() -> None:
    driver = CountingGC(fail=True)
    manager = counted(driver, lottery_interval=3600)
    assert manager.lottery_gc()
    await manager.wait_gc()  # logged, not raised
    assert not manager.lottery_gc()
    assert driver.runs == 1
    await manager.close()


async def counter(request: web.Request) -> web.Response:
    session = await get_session(request)
    return web.Response(text=str(session.increment("n")))


def counter_app(manager: SessionManager) -> web.Application:
    app = web.Application()
    app.router.add_get("/count", counter)
    setup(app, manager)
    return app


async def test_every_request_draws_yet_one_run_starts(aiohttp_client: ClientFactory) -> None:
    driver = CountingGC()
    manager = counted(driver, lottery=(1, 1), lottery_interval=3600)
    client = await aiohttp_client(counter_app(manager))
    for i in range(1, 6):
        assert await (await client.get("/count")).text() == str(i)
        await eventually(lambda: driver.runs == 1, "the first hit's GC run started")
        await manager.wait_gc()
    await asyncio.sleep(0.01)  # time for a late lottery callback to start a run
    assert driver.runs == 1


async def test_periodic_gc_ignores_the_lottery_interval(aiohttp_client: ClientFactory) -> None:
    driver = CountingGC()
    manager = counted(driver, lottery=(1, 1), lottery_interval=3600, gc_interval=0.01)
    client = await aiohttp_client(counter_app(manager))
    await client.get("/count")
    await eventually(lambda: driver.runs >= 4, "periodic runs after the lottery's")
