"""Opt-in session locking: serialized read-modify-write, and a clear timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from aiosessmgr import (
    MemoryDriver,
    SessionLockTimeout,
    SessionManager,
    get_session,
    session_lock,
    setup,
)
from aiosessmgr.drivers.memory import LocalLocks

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]


class GatedLocks(MemoryDriver):
    """A memory driver that tells the test when *expected* lock requests have arrived.

    Lets a lock holder wait until every other request is queued on the lock, so the
    contention a test claims is certain rather than a matter of timing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.expected = 0
        self.attempts = 0
        self.all_asked = asyncio.Event()
        self.all_asked.set()  # not armed: nobody waits

    def arm(self, expected: int) -> None:
        self.attempts, self.expected = 0, expected
        self.all_asked.clear()

    async def acquire_lock(self, session_id: str, ttl: float, wait: float) -> str | None:
        self.attempts += 1
        if self.attempts >= self.expected:
            self.all_asked.set()
        return await super().acquire_lock(session_id, ttl, wait)


def gated_manager(driver: MemoryDriver) -> SessionManager:
    manager = SessionManager({"default": "g", "drivers": {"g": {"driver": "gated"}},
                              "lottery": (0, 1)})
    manager.extend("gated", lambda spec: driver)
    return manager


HOLDING = web.AppKey("holding", asyncio.Event)
RELEASE = web.AppKey("release", asyncio.Event)


def locking_app(manager: SessionManager, wait_seconds: float = 10.0) -> web.Application:
    @session_lock(lock_seconds=10, wait_seconds=wait_seconds)
    async def bump(request: web.Request) -> web.Response:
        session = await get_session(request)
        session["count"] = session.get("count", 0) + 1
        return web.Response(text=str(session["count"]))

    async def hold(request: web.Request) -> web.Response:
        session = await get_session(request)
        async with session.lock():
            request.app[HOLDING].set()
            async with asyncio.timeout(10):
                await request.app[RELEASE].wait()
        return web.Response(text="held")

    async def peek(request: web.Request) -> web.Response:
        key = request.query.get("key", "count")
        return web.Response(text=str((await get_session(request)).get(key)))

    @session_lock()
    async def go_away(request: web.Request) -> web.Response:
        session = await get_session(request)
        session["redirected"] = True
        raise web.HTTPFound("/peek?key=redirected")

    app = web.Application()
    app[HOLDING], app[RELEASE] = asyncio.Event(), asyncio.Event()
    app.router.add_get("/bump", bump)
    app.router.add_get("/hold", hold)
    app.router.add_get("/peek", peek)
    app.router.add_get("/go_away", go_away)
    setup(app, manager)
    return app


async def test_locked_read_modify_write_counts_exactly(aiohttp_client: ClientFactory) -> None:
    """50 requests queued on one session's lock: one at a time, no update lost."""
    driver = GatedLocks()
    app = locking_app(gated_manager(driver))
    inside = most_inside = 0

    @session_lock(lock_seconds=10, wait_seconds=10)
    async def slow_bump(request: web.Request) -> web.Response:
        nonlocal inside, most_inside
        session = await get_session(request)
        inside += 1
        most_inside = max(most_inside, inside)
        current = session.get("count", 0)  # read...
        async with asyncio.timeout(10):
            await driver.all_asked.wait()  # ...until every other request asked for the lock...
        await asyncio.sleep(0)
        session["count"] = current + 1  # ...write: only correct under the lock
        inside -= 1
        return web.Response(text=str(session["count"]))

    app.router.add_get("/slow_bump", slow_bump)
    client = await aiohttp_client(app)
    await client.get("/slow_bump")
    driver.arm(50)
    responses = await asyncio.gather(*(client.get("/slow_bump") for _ in range(50)))
    assert [r.status for r in responses] == [200] * 50
    assert driver.attempts == 50
    assert most_inside == 1
    assert await (await client.get("/peek")).text() == "51"


async def test_without_the_lock_the_same_handler_loses_updates(
        aiohttp_client: ClientFactory) -> None:
    """The control experiment: proves the test above can fail."""
    read = 0
    all_read = asyncio.Event()

    async def unlocked(request: web.Request) -> web.Response:
        nonlocal read
        session = await get_session(request)
        current = session.get("count", 0)
        read += 1
        if read == 51:  # the first request and the 50 concurrent ones
            all_read.set()
        if read > 1:  # each concurrent request writes only once all of them have read
            async with asyncio.timeout(10):
                await all_read.wait()
        session["count"] = current + 1
        return web.Response(text="ok")

    app = locking_app(SessionManager({"lottery": (0, 1)}))
    app.router.add_get("/unlocked", unlocked)
    client = await aiohttp_client(app)
    await client.get("/unlocked")
    await asyncio.gather(*(client.get("/unlocked") for _ in range(50)))
    # every request read 1 before any wrote: 49 of the 50 updates are lost
    assert await (await client.get("/peek")).text() == "2"


async def test_lock_wait_timeout_is_423(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(locking_app(SessionManager({"lottery": (0, 1)}),
                                              wait_seconds=0.05))
    app = client.app
    assert app is not None
    await client.get("/bump")
    holder = asyncio.create_task(client.get("/hold"))
    try:
        async with asyncio.timeout(10):
            await app[HOLDING].wait()
        response = await client.get("/bump")
        assert response.status == 423
        assert response.headers["Retry-After"] == "1"
        assert "locked by another request" in await response.text()
    finally:
        app[RELEASE].set()
        held = await holder
    assert held.status == 200
    free = await client.get("/bump")  # free again; the refused request changed nothing
    assert (free.status, await free.text()) == (200, "2")


async def test_redirect_inside_lock_is_saved(aiohttp_client: ClientFactory) -> None:
    """A redirect raised under session_lock saves the session before the lock is released."""
    stored_at_release: list[object] = []

    class Watching(MemoryDriver):
        async def release_lock(self, session_id: str, token: str) -> None:
            stored_at_release.append((await manager.load(session_id)).get("redirected"))
            await super().release_lock(session_id, token)

    manager = gated_manager(Watching())
    client = await aiohttp_client(locking_app(manager))
    response = await client.get("/go_away")
    assert response.status == 200 and str(response.url).endswith("/peek?key=redirected")
    assert [r.status for r in response.history] == [302]
    assert await response.text() == "True"
    assert stored_at_release == [True]


async def test_session_lock_refreshes_and_saves(manager: SessionManager) -> None:
    s = await manager.driver()
    s["count"] = 1
    await s.save()
    stale = await manager.load(s.id)
    other = await manager.load(s.id)
    other["count"] = 5
    await other.save()
    async with stale.lock():
        assert stale["count"] == 5  # refreshed from the store on entry
        stale["count"] += 1
    assert (await manager.load(s.id))["count"] == 6  # saved on exit


async def test_lock_timeout_raises(manager: SessionManager) -> None:
    s = await manager.driver()
    s["x"] = 1
    await s.save()
    async with s.lock():
        other = await manager.load(s.id)
        with pytest.raises(SessionLockTimeout, match=r"gave up after 0\.01 s"):
            async with other.lock(wait_seconds=0.01):
                pass


async def test_local_locks_do_not_leak() -> None:
    locks = LocalLocks()
    token = await locks.acquire_lock("a", 10, 1)
    assert token is not None
    assert await locks.acquire_lock("a", 10, 0.01) is None
    await locks.release_lock("a", token)
    second = await locks.acquire_lock("a", 10, 0.01)
    assert second is not None and second != token
    await locks.release_lock("a", token)  # a late release of the first holder: no effect
    assert await locks.acquire_lock("a", 10, 0.01) is None
    await locks.release_lock("a", second)
    assert not locks._locks


async def test_drivers_without_lock_support_fall_back_to_local_locks() -> None:
    class Plain(MemoryDriver):
        acquire_lock = None  # type: ignore[assignment]
        release_lock = None  # type: ignore[assignment]

    manager = SessionManager({"default": "p", "drivers": {"p": {"driver": "plain"}}})
    manager.extend("plain", lambda cfg: Plain())
    assert isinstance(manager.runtime().locks, LocalLocks)
    s = await manager.driver()
    s["x"] = 0
    await s.save()
    async with s.lock():
        s["x"] = 1
        with pytest.raises(SessionLockTimeout):  # the fallback lock excludes
            async with (await manager.load(s.id)).lock(wait_seconds=0.01):
                pass
    assert (await manager.load(s.id))["x"] == 1
    await manager.close()


async def test_a_failing_release_does_not_hide_the_outcome(
        caplog: pytest.LogCaptureFixture) -> None:
    from aiosessmgr import DriverError

    class FlakyRelease(MemoryDriver):
        async def release_lock(self, session_id: str, token: str) -> None:
            await super().release_lock(session_id, token)
            raise DriverError("store went away")

    manager = SessionManager({"default": "f", "drivers": {"f": {"driver": "flaky"}}})
    manager.extend("flaky", lambda cfg: FlakyRelease())
    s = await manager.driver()
    async with s.lock():
        s["x"] = 1
    assert (await manager.load(s.id))["x"] == 1
    with pytest.raises(ValueError, match="handler bug"):
        async with s.lock():
            raise ValueError("handler bug")
    assert sum("could not release" in r.getMessage() for r in caplog.records) == 2
    await manager.close()
