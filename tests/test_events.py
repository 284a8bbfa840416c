"""Events: every lifecycle event fires, sync and async listeners, errors isolated."""

from __future__ import annotations

import asyncio
import logging

import pytest

from aiosessmgr import SessionEventInfo, SessionEvents, SessionManager, new_session_id


async def test_lifecycle_events(manager: SessionManager) -> None:
    seen: list[tuple[SessionEvents, str, str | None]] = []

    def record(event: SessionEventInfo) -> None:
        seen.append((event.type, event.session_id, event.old_id))

    for event_type in SessionEvents:
        manager.on(event_type, record)
    s = await manager.driver()
    first = s.id
    s.put("a", 1)
    await s.save()
    await s.regenerate()
    second = s.id
    await s.save()
    await s.invalidate()
    third = s.id
    unknown = new_session_id()
    await manager.load(unknown)
    assert (SessionEvents.STARTED, first, None) in seen
    assert (SessionEvents.SAVED, first, None) in seen
    assert (SessionEvents.DESTROYED, first, None) in seen
    assert (SessionEvents.REGENERATED, second, first) in seen
    assert (SessionEvents.DESTROYED, second, None) in seen
    assert (SessionEvents.INVALIDATED, third, second) in seen
    assert (SessionEvents.EXPIRED, unknown, None) in seen


async def test_async_listeners_run_in_the_background(manager: SessionManager) -> None:
    got: list[str] = []
    release = asyncio.Event()

    async def listener(event: SessionEventInfo) -> None:
        await release.wait()  # finishes only when the test says
        got.append(event.session_id)

    manager.on(SessionEvents.STARTED, listener)
    s = await asyncio.wait_for(manager.driver(), 10)  # did not wait for the listener
    assert got == []
    release.set()
    await manager.events.drain()
    assert got == [s.id]


async def test_failing_listeners_are_logged_and_isolated(
        manager: SessionManager, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def broken(event: SessionEventInfo) -> None:
        raise RuntimeError("listener bug")

    async def broken_async(event: SessionEventInfo) -> None:
        raise RuntimeError("async listener bug")

    def fine(event: SessionEventInfo) -> None:
        calls.append("fine")

    manager.on(SessionEvents.STARTED, broken)
    manager.on(SessionEvents.STARTED, broken_async)
    manager.on(SessionEvents.STARTED, fine)
    with caplog.at_level(logging.ERROR, logger="aiosessmgr"):
        session = await manager.driver()
        await manager.events.drain()
    assert session.accessed and calls == ["fine"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "listener" in messages
    assert sum(1 for r in caplog.records if r.exc_info) == 2


async def test_off_removes_listeners(manager: SessionManager) -> None:
    calls: list[str] = []

    def listener(event: SessionEventInfo) -> None:
        calls.append(event.session_id)

    manager.on(SessionEvents.STARTED, listener)
    first = await manager.driver()
    assert calls == [first.id]  # the control: it was listening
    manager.off(SessionEvents.STARTED, listener)
    manager.off(SessionEvents.STARTED, listener)  # removing twice is fine
    await manager.driver()
    manager.on(SessionEvents.STARTED, listener)
    manager.off(SessionEvents.STARTED)
    await manager.driver()
    assert calls == [first.id]
