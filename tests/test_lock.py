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


def locking_app(manager: SessionManager, wait_seconds: float = 10.0) -> web.Application:
    @session_lock(lock_seconds=10, wait_seconds=wait_seconds)
    async def bump(request: web.Request) -> web.Response:
        session = await get_session(request)
        current = session.get("count", 0)  # read...
        await asyncio.sleep(0.002)  # ...let every other request pile up...
        session["count"] = current + 1  # ...write: only correct under the lock
        return web.Response(text=str(session["count"]))

    async def hold(request: web.Request) -> web.Response:
        session = await get_session(request)
        async with session.lock():
            await asyncio.sleep(float(request.query["seconds"]))
        return web.Response(text="held")

    async def peek(request: web.Request) -> web.Response:
        return web.Response(text=str((await get_session(request)).get("count")))

    @session_lock()
    async def go_away(request: web.Request) -> web.Response:
        session = await get_session(request)
        session["redirected"] = True
        raise web.HTTPFound("/peek")

    app = web.Application()
    app.router.add_get("/bump", bump)
    app.router.add_get("/hold", hold)
    app.router.add_get("/peek", peek)
    app.router.add_get("/go_away", go_away)
    setup(app, manager)
    return app


async def test_locked_read_modify_write_counts_exactly(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(locking_app(SessionManager({"lottery": (0, 1)})))
    await client.get("/bump")
    responses = await asyncio.gather(*(client.get("/bump") for _ in range(50)))
    assert all(r.status == 200 for r in responses)
    assert await (await client.get("/peek")).text() == "51"


async def test_without_the_lock_the_same_handler_loses_updates(
        aiohttp_client: ClientFactory) -> None:
    """The control experiment: proves the test above can fail."""

    async def unlocked(request: web.Request) -> web.Response:
        session = await get_session(request)
        current = session.get("count", 0)
        await asyncio.sleep(0.002)
        session["count"] = current + 1
        return web.Response(text="ok")

    app = locking_app(SessionManager({"lottery": (0, 1)}))
    app.router.add_get("/unlocked", unlocked)
    client = await aiohttp_client(app)
    await client.get("/unlocked")
    await asyncio.gather(*(client.get("/unlocked") for _ in range(50)))
    assert int(await (await client.get("/peek")).text()) < 51


async def test_lock_wait_timeout_is_423(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(locking_app(SessionManager({"lottery": (0, 1)}),
                                              wait_seconds=0.05))
    await client.get("/bump")
    holder = asyncio.create_task(client.get("/hold?seconds=0.5"))
    await asyncio.sleep(0.1)
    response = await client.get("/bump")
    assert response.status == 423
    assert response.headers["Retry-After"] == "1"
    assert "locked by another request" in await response.text()
    assert (await holder).status == 200
    assert (await client.get("/bump")).status == 200  # free again


async def test_redirect_inside_lock_is_saved(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(locking_app(SessionManager({"lottery": (0, 1)})))
    response = await client.get("/go_away")
    assert response.status == 200 and str(response.url).endswith("/peek")


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
    assert await locks.acquire_lock("a", 10, 0.01) == "a"
    await locks.release_lock("a", "a")
    assert not locks._locks


async def test_drivers_without_lock_support_fall_back_to_local_locks() -> None:
    class Plain(MemoryDriver):
        acquire_lock = None  # type: ignore[assignment]
        release_lock = None  # type: ignore[assignment]

    manager = SessionManager({"default": "p", "drivers": {"p": {"driver": "plain"}}})
    manager.extend("plain", lambda cfg: Plain())
    assert isinstance(manager.runtime().locks, LocalLocks)
    s = await manager.driver()
    async with s.lock():
        s["x"] = 1
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
