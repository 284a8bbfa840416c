"""The memory driver beyond the contract (tests/drivers/test_contract.py): passive expiry,
GC counts and chunking, the user index (entries going with their records, gc's cost)."""

from __future__ import annotations

import asyncio
import random

import pytest

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


# -- the user index (beyond the contract): entries go with their records, gc's cost -------

TTL = 60


def handle(n: int) -> str:
    """A handle-shaped name (22 URL-safe characters) for test entry *n*."""
    return f"h{n:021d}"


@pytest.mark.parametrize("user", [
    pytest.param("../x", id="dotdot"), pytest.param("\x00", id="nul"),
    pytest.param("\ud800", id="lone-surrogate"), pytest.param("{}", id="braces"),
    pytest.param("ü🙂" * 64, id="unicode-256"), pytest.param("a\nb", id="newline"),
])
async def test_any_user_id_is_a_key_of_its_own(clock: FakeClock, user: str) -> None:
    driver = MemoryDriver(clock=clock)
    await driver.index_user_session(user, handle(1), "s1", TTL)
    await driver.index_user_session(user + "x", handle(1), "s2", TTL)
    assert await driver.user_session_index(user) == {handle(1): "s1"}
    assert await driver.user_session_index(user + "x") == {handle(1): "s2"}


async def test_the_index_returned_is_a_copy(clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    await driver.index_user_session("u", handle(1), "s1", TTL)
    entries = await driver.user_session_index("u")
    entries.clear()
    assert await driver.user_session_index("u") == {handle(1): "s1"}


async def test_entries_go_when_their_record_is_destroyed(clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    for n in range(3):
        await driver.write(f"s{n}", V1, TTL)
        await driver.index_user_session("u", handle(n), f"s{n}", TTL)
    await driver.index_user_session("other", handle(0), "s0", TTL)  # s0 in two indexes
    await driver.destroy("s0")
    assert await driver.user_session_index("u") == {handle(1): "s1", handle(2): "s2"}
    assert await driver.user_session_index("other") == {}


async def test_entries_go_when_their_record_expires(clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    await driver.write("short", V1, 10)
    await driver.write("long", V1, 1000)
    await driver.index_user_session("u", handle(1), "short", 5000)
    await driver.index_user_session("u", handle(2), "long", 5000)
    clock.advance(11)
    assert await driver.user_session_index("u") == {handle(1): "short", handle(2): "long"}
    assert await driver.read("short") is None  # passive expiry: the entry goes with it
    assert await driver.user_session_index("u") == {handle(2): "long"}
    clock.advance(1000)
    assert await driver.gc(TTL) == 1  # gc's removal takes its entry too
    assert await driver.user_session_index("u") == {}


async def test_an_entry_that_moved_on_stays_when_its_old_record_goes(clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    await driver.write("old", V1, TTL)
    await driver.index_user_session("u", handle(1), "old", TTL)
    await driver.write("new", V1, TTL)
    assert await driver.index_user_session("u", handle(1), "new", TTL, "old")  # regenerated
    await driver.destroy("old")
    assert await driver.user_session_index("u") == {handle(1): "new"}
    # and once unindexed, destroying the record it named touches nothing
    assert await driver.unindex_user_sessions("u", {handle(1): "new"}) == 1
    await driver.index_user_session("u", handle(2), "new2", TTL)
    await driver.destroy("new")
    assert await driver.user_session_index("u") == {handle(2): "new2"}


async def test_an_index_lives_until_its_latest_deadline(clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    await driver.index_user_session("u", handle(1), "s1", 100)
    await driver.index_user_session("u", handle(2), "s2", 10)  # shortens nothing
    clock.advance(99)
    assert len(await driver.user_session_index("u")) == 2
    await driver.index_user_session("u", handle(3), "s3", 50)  # now the latest: at 149
    clock.advance(49)
    assert len(await driver.user_session_index("u")) == 3
    clock.advance(1)
    assert await driver.user_session_index("u") == {}
    # an index past its deadline is gone whole: a new entry starts a fresh one
    await driver.index_user_session("u", handle(4), "s4", 10)
    assert await driver.user_session_index("u") == {handle(4): "s4"}


async def test_gc_drops_expired_indexes_looking_at_no_live_one(clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    for n in range(1_000):
        await driver.index_user_session(f"old{n}", handle(n), f"s{n}", 10)
    clock.advance(5)
    for n in range(20_000):  # same ttl, indexed later: behind the old ones
        await driver.index_user_session(f"live{n}", handle(n), f"t{n}", 10)
    for n in range(1_000):  # another ttl, another bucket
        await driver.index_user_session(f"long{n}", handle(n), f"l{n}", 1000)
    await driver.index_user_session("old0", handle(1), "s", 1)  # a refresh that adds no time
    clock.advance(6)
    before = driver.gc_examined
    assert await driver.gc(TTL) == 0  # indexes are not sessions: not counted
    # the 1,000 dropped plus at most the first live index of each of the two buckets
    assert driver.gc_examined - before <= 1_002
    assert await driver.user_session_index("old7") == {}
    assert await driver.user_session_index("live7") == {handle(7): "t7"}
    before = driver.gc_examined
    await driver.gc(TTL)
    assert driver.gc_examined - before <= 2


async def test_concurrent_index_calls_of_one_user_keep_every_entry(clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    for n in range(100):
        await driver.write(f"s{n}", V1, TTL)
    await asyncio.gather(
        *(driver.index_user_session("u", handle(n), f"s{n}", TTL) for n in range(100)),
        *(driver.unindex_user_sessions("u", {handle(n): f"s{n}"}) for n in range(0, 100, 2)),
        *(driver.destroy(f"s{n}") for n in range(1, 100, 4)))
    # each kind of call ran whole: what remains is exactly the odd entries not destroyed
    assert await driver.user_session_index("u") == {
        handle(n): f"s{n}" for n in range(1, 100, 2) if n % 4 != 1}


async def test_the_index_agrees_with_a_model_under_random_operations(clock: FakeClock) -> None:
    """Random writes, destroys, reads, index and unindex calls, clock moves and gc runs,
    against a plain model of the contract: the reverse map never drops a live entry nor
    keeps one whose record went."""
    rng = random.Random(1234)
    driver = MemoryDriver(clock=clock)
    records: dict[str, float] = {}  # id -> expiry
    indexes: dict[str, tuple[float, dict[str, str]]] = {}  # user -> (deadline, entries)
    users, sids = [f"u{n}" for n in range(4)], [f"s{n}" for n in range(12)]

    def forget_record(sid: str) -> None:
        del records[sid]
        for user, (_, entries) in list(indexes.items()):
            for h in [h for h, named in entries.items() if named == sid]:
                del entries[h]
            if not entries:
                del indexes[user]

    def live_index(user: str) -> dict[str, str]:
        found = indexes.get(user)
        if found is None or found[0] <= clock():
            indexes.pop(user, None)
            return {}
        return found[1]

    for _ in range(3_000):
        op, sid, user, h = (rng.randrange(8), rng.choice(sids), rng.choice(users),
                            handle(rng.randrange(5)))
        ttl = rng.choice((5, 20))
        if op == 0:
            await driver.write(sid, V1, ttl)
            records[sid] = clock() + ttl
        elif op == 1:
            await driver.destroy(sid)
            if sid in records:
                forget_record(sid)
        elif op == 2:
            found = await driver.read(sid)
            if sid in records and records[sid] <= clock():
                forget_record(sid)
            assert (found is not None) == (sid in records)
        elif op == 3:  # a compare-and-set: from no id, this one, or the one moved from
            moved_from = rng.choice([None, *sids])
            written = await driver.index_user_session(user, h, sid, ttl, moved_from)
            entries = live_index(user)
            assert written is (entries.get(h, sid) in (sid, moved_from))
            if written:
                deadline = max(indexes[user][0] if entries else 0.0, clock() + ttl)
                indexes[user] = (deadline, {**entries, h: sid})
        elif op == 4:
            entries = live_index(user)
            expected = sum(entries.get(h2) == sid for h2 in {h, handle(0)})
            assert await driver.unindex_user_sessions(user, {h: sid, handle(0): sid}) \
                == expected
            for h2 in {h, handle(0)}:
                if entries.get(h2) == sid:
                    del entries[h2]
            if user in indexes and not entries:
                del indexes[user]
        elif op == 5:
            clock.advance(rng.choice((1, 3, 7)))
        elif op == 6:
            now = clock()
            removed = [s for s, expiry in records.items() if expiry <= now]
            assert await driver.gc(TTL) == len(removed)
            for s in removed:
                forget_record(s)
        for name in users:
            assert await driver.user_session_index(name) == live_index(name), name


async def test_read_many_reads_each_in_order(clock: FakeClock) -> None:
    driver = MemoryDriver(clock=clock)
    await driver.write("a", V1, 10)
    await driver.write("b", b"v2------", 100)
    clock.advance(11)
    assert await driver.read_many(["b", "a", "x", "b"]) == [b"v2------", None, None,
                                                             b"v2------"]
    assert len(driver) == 1  # the expired one was removed on sight, as by read()
