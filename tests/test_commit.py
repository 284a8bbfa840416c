"""Group commit: saves of one id in a process written as one compare-and-set, on real stores.

The stores are real (memory, a directory, the run's redis-server); the only additions are
spies that count the store calls the sessions make and, where a test needs a save to be in
flight at a known moment, a gate in front of the real compare-and-set.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest

from aiosessmgr import (
    DriverError,
    SerializationError,
    SessionManager,
    SessionSaveTimeout,
    SessionStore,
    SessionTooLarge,
    commit,
)
from aiosessmgr.commit import CommitQueue

from .stores import store_entry


class Spy:
    """Counts a driver's read and compare_and_set calls; can hold or fail the next writes."""

    def __init__(self, manager: SessionManager) -> None:
        self.driver = manager.get_driver()
        self.calls: Counter[str] = Counter()
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.in_flight = asyncio.Event()
        real_read, real_cas = self.driver.read, self.driver.compare_and_set  # type: ignore[attr-defined]

        async def read(session_id: str) -> bytes | None:
            self.calls["read"] += 1
            return await real_read(session_id)

        async def compare_and_set(session_id: str, payload: bytes, ttl: int,
                                  expected: bytes | None) -> bool:
            self.calls["compare_and_set"] += 1
            self.in_flight.set()
            if self.gate is not None:
                await self.gate.wait()
            if self.fail is not None:
                raise self.fail
            answer: bool = await real_cas(session_id, payload, ttl, expected)
            return answer

        # instance attributes shadow the methods: the runtime calls through them
        self.driver.read = read  # type: ignore[method-assign]
        self.driver.compare_and_set = compare_and_set  # type: ignore[attr-defined]


@pytest.fixture(params=["memory", "file", "redis"])
def entry(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    return store_entry(request.param, request, tmp_path)


@pytest.fixture
async def manager(entry: dict[str, Any]) -> AsyncIterator[SessionManager]:
    mgr = SessionManager({"default": "main", "drivers": {"main": entry}, "lottery": (0, 1),
                          "max_record_size": 4096})
    yield mgr
    await mgr.close()


async def loaded_copies(manager: SessionManager, count: int) -> list[SessionStore]:
    """*count* sessions that all loaded the same stored record (as concurrent requests)."""
    first = await manager.driver()
    first.put("base", True)
    await first.save()
    return list(await asyncio.gather(*(manager.load(first.id) for _ in range(count))))


async def stored(manager: SessionManager, session: SessionStore) -> dict[str, Any]:
    return (await manager.load(session.id)).all()


async def in_line(spy: Spy, saves: list[Awaitable[None]]) -> list[asyncio.Task[None]]:
    """Start the first save and hold its compare-and-set; queue the others behind it."""
    spy.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(saves[0])]
    await spy.in_flight.wait()
    tasks += [asyncio.ensure_future(save) for save in saves[1:]]
    await asyncio.sleep(0)  # every other save is now waiting in line
    return tasks


async def test_saves_in_line_are_one_compare_and_set(manager: SessionManager) -> None:
    sessions = await loaded_copies(manager, 50)
    spy = Spy(manager)
    for i, session in enumerate(sessions):
        session.put(f"k{i}", i)
        session.increment("n")
        session.push("log", i)
    tasks = await in_line(spy, [s.save() for s in sessions])
    assert spy.gate is not None
    spy.gate.set()
    await asyncio.gather(*tasks)
    # the first save, then the 49 that waited behind it, together; and no re-read: the
    # batch is replayed on the record the first one wrote, which this process remembers
    assert spy.calls == {"compare_and_set": 2}
    data = await stored(manager, sessions[0])
    assert data.pop("n") == 50 and sorted(data.pop("log")) == list(range(50))
    assert data == {"base": True, **{f"k{i}": i for i in range(50)}}
    # every session of the batch holds the record it wrote, not only its own changes (a
    # later save of it would otherwise write its stale state over the others')
    assert sessions[0].get("n") == 1
    assert all(session.get("n") == 50 for session in sessions[1:])
    sessions[1].put("later", True)
    await sessions[1].save()
    assert (await stored(manager, sessions[0]))["n"] == 50


async def test_natural_contention_loses_nothing_and_never_rereads(
        manager: SessionManager) -> None:
    sessions = await loaded_copies(manager, 200)
    spy = Spy(manager)
    for session in sessions:
        session.increment("n")
    await asyncio.gather(*(session.save() for session in sessions))
    assert (await stored(manager, sessions[0]))["n"] == 200
    assert spy.calls["read"] == 0
    assert spy.calls["compare_and_set"] <= 200


async def test_one_bad_value_fails_only_its_own_save(manager: SessionManager) -> None:
    sessions = await loaded_copies(manager, 4)
    spy = Spy(manager)
    sessions[0].put("a", 1)
    sessions[1].put("bad", object())
    sessions[2].put("huge", "x" * 8192)
    sessions[3].put("d", 4)
    tasks = await in_line(spy, [s.save() for s in sessions])
    assert spy.gate is not None
    spy.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] is None and results[3] is None
    assert isinstance(results[1], SerializationError) and results[1].key == "bad"
    assert isinstance(results[2], SessionTooLarge)
    assert await stored(manager, sessions[0]) == {"base": True, "a": 1, "d": 4}


async def test_a_save_cancelled_in_line_is_not_written(manager: SessionManager) -> None:
    sessions = await loaded_copies(manager, 3)
    spy = Spy(manager)
    for i, session in enumerate(sessions):
        session.put(f"k{i}", i)
    tasks = await in_line(spy, [s.save() for s in sessions])
    tasks[1].cancel()
    assert spy.gate is not None
    spy.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    assert await stored(manager, sessions[0]) == {"base": True, "k0": 0, "k2": 2}


async def test_a_store_failure_fails_the_whole_batch_then_recovers(
        manager: SessionManager) -> None:
    sessions = await loaded_copies(manager, 3)
    spy = Spy(manager)
    for i, session in enumerate(sessions):
        session.put(f"k{i}", i)
    tasks = await in_line(spy, [s.save() for s in sessions])
    spy.fail = DriverError("store unreachable")
    assert spy.gate is not None
    spy.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, DriverError) for r in results), results
    spy.fail = None
    # nothing was written; retried saves replay on what is really stored
    await asyncio.gather(*(session.save() for session in sessions))
    assert await stored(manager, sessions[0]) == {"base": True, "k0": 0, "k1": 1, "k2": 2}


async def test_waiting_too_long_in_line_is_a_save_timeout(
        manager: SessionManager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commit, "SAVE_TURN_WAIT", 0.05)
    sessions = await loaded_copies(manager, 2)
    spy = Spy(manager)
    sessions[0].put("first", 1)
    sessions[1].put("second", 2)
    tasks = await in_line(spy, [s.save() for s in sessions])
    with pytest.raises(SessionSaveTimeout, match="in line"):
        await tasks[1]
    assert spy.gate is not None
    spy.gate.set()
    await tasks[0]
    assert await stored(manager, sessions[0]) == {"base": True, "first": 1}


# a memory store lives in one process: there is no other writer
@pytest.mark.parametrize("entry", ["file", "redis"], indirect=True)
async def test_another_process_writing_meanwhile_is_replayed_on(
        manager: SessionManager, entry: dict[str, Any]) -> None:
    # a second manager on the same store writes like another process would
    other = SessionManager({"default": "main", "drivers": {"main": entry}, "lottery": (0, 1)})
    try:
        sessions = await loaded_copies(manager, 3)
        elsewhere = await other.load(sessions[0].id)
        spy = Spy(manager)
        for i, session in enumerate(sessions):
            session.put(f"k{i}", i)
            session.increment("n")
        tasks = await in_line(spy, [s.save() for s in sessions])
        elsewhere.put("elsewhere", True)
        elsewhere.increment("n", 10)
        await elsewhere.save()  # lands while the first save of this process is in flight
        assert spy.gate is not None
        spy.gate.set()
        await asyncio.gather(*tasks)
        assert spy.calls["read"] >= 1  # the conflict was noticed and the record re-read
        assert await stored(other, sessions[0]) == {
            "base": True, "elsewhere": True, "n": 13, "k0": 0, "k1": 1, "k2": 2}
    finally:
        await other.close()


async def test_remembered_record_spares_the_conflict(manager: SessionManager) -> None:
    early, late = await loaded_copies(manager, 2)
    spy = Spy(manager)
    late.put("late", 1)
    await late.save()
    early.put("early", 1)
    await early.save()  # loaded before late's write: replayed on the record late wrote
    assert spy.calls == {"compare_and_set": 2}
    assert await stored(manager, early) == {"base": True, "late": 1, "early": 1}


async def test_a_destroyed_id_is_forgotten_and_not_revived(manager: SessionManager) -> None:
    sessions = await loaded_copies(manager, 2)
    sessions[0].put("a", 1)
    await sessions[0].save()
    await manager.destroy(sessions[0].id)
    sessions[1].put("b", 2)
    await sessions[1].save()
    assert sessions[1].ended
    assert await manager.get_driver().read(sessions[0].id) is None


def test_the_remembered_records_are_bounded() -> None:
    queue = CommitQueue(ids=2, size=10)
    queue.remember("a", b"v" * 8, b"v" * 8 + b"a")
    queue.remember("b", b"w" * 8, b"w" * 8 + b"b")
    queue.remember("c", b"x" * 8, b"x" * 8 + b"c")
    queue.remember("b", b"y" * 8, b"y" * 8 + b"too long")
    probe = commit.Save(b"0" * 8, 0.0, lambda: (b"", b""), lambda raw: None, lambda raw: None)
    assert queue.base("a", probe) == (b"0" * 8, None)  # the oldest went first
    assert queue.base("b", probe) == (b"0" * 8, None)  # too long to remember
    assert queue.base("c", probe) == (b"x" * 8, b"x" * 8 + b"c")



async def test_one_session_saving_twice_at_once_applies_its_changes_once(
        manager: SessionManager) -> None:
    # a handler's early save in a task, then the middleware's save: never in one batch,
    # where the session's delta would be replayed twice
    other, session = await loaded_copies(manager, 2)
    spy = Spy(manager)
    other.put("other", True)
    session.increment("n")
    tasks = await in_line(spy, [other.save(), session.save(), session.save()])
    assert spy.gate is not None
    spy.gate.set()
    await asyncio.gather(*tasks)
    assert await stored(manager, session) == {"base": True, "other": True, "n": 1}


@pytest.mark.parametrize("move", ["regenerate", "invalidate"])
async def test_moving_while_its_own_save_waits_in_line(manager: SessionManager,
                                                       move: str) -> None:
    # the move waits for the save in progress: that save writes the old id's own state
    # (not the new id's), and the move then happens as usual
    other, session = await loaded_copies(manager, 2)
    old_id = session.id
    spy = Spy(manager)
    other.put("other", True)
    session.put("mine", 1)
    tasks = await in_line(spy, [other.save(), session.save()])
    mover = asyncio.ensure_future(getattr(session, move)())
    await asyncio.sleep(0)
    assert spy.gate is not None
    spy.gate.set()
    await asyncio.gather(*tasks, mover)
    session.put("after", 2)
    await session.save()
    assert session.id != old_id and session.stored
    moved = await manager.load(session.id)
    if move == "regenerate":
        assert moved.all() == {"base": True, "other": True, "mine": 1, "after": 2}
    else:  # a logout: only what was set after it
        assert moved.all() == {"after": 2}
    assert await manager.get_driver().read(old_id) is None
