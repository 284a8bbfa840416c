"""``@session_lock`` on the file and Redis drivers: through the middleware, and across
two server processes sharing one store."""

from __future__ import annotations

import ast
import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from aiosessmgr import SessionManager, get_session, session_lock

from .concurrency_app import GATES, app_for
from .stores import store_entry, two_servers

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]
COOKIE = "aiosessmgr_session"
REQUESTS = 50


@pytest.fixture(params=["file", "redis"])
def driver_entry(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """One config entry per driver with a cross-process lock (redis on the run's server)."""
    return store_entry(request.param, request, tmp_path)


@pytest.fixture
async def manager(driver_entry: dict[str, Any]) -> AsyncIterator[SessionManager]:
    mgr = SessionManager({"default": "main", "drivers": {"main": driver_entry},
                          "lottery": (0, 1)})
    yield mgr
    await mgr.close()


def lock_app(manager: SessionManager) -> web.Application:
    """The concurrency app, plus a lock holder (held at ``?gate=``) and a bump that waits
    only 50 ms for the lock."""
    app = app_for(manager)

    async def hold(request: web.Request) -> web.Response:
        session = await get_session(request)
        async with session.lock():
            await request.app[GATES].hold(request)
        return web.Response(text="held")

    @session_lock(lock_seconds=10, wait_seconds=0.05)
    async def impatient(request: web.Request) -> web.Response:
        session = await get_session(request)
        session["count"] = session.get("count", 0) + 1
        return web.Response(text=str(session["count"]))

    app.router.add_get("/hold", hold)
    app.router.add_get("/impatient", impatient)
    return app


async def count(client: Client) -> int:
    return int((await get_json(client))["count"])


async def get_json(client: Client) -> dict[str, Any]:
    text = await (await client.get("/dump")).text()
    data: dict[str, Any] = ast.literal_eval(text)  # the app answers repr() of the data
    return data


async def test_locked_read_modify_write_counts_exactly(aiohttp_client: ClientFactory,
                                                       manager: SessionManager,
                                                       driver_entry: dict[str, Any]) -> None:
    client = await aiohttp_client(lock_app(manager))
    assert await (await client.get("/locked_bump")).text() == "1"
    responses = await asyncio.gather(*(client.get("/locked_bump") for _ in range(REQUESTS)))
    assert [r.status for r in responses] == [200] * REQUESTS
    assert sorted([int(await r.text()) for r in responses]) == list(range(2, REQUESTS + 2))
    assert await count(client) == REQUESTS + 1
    if driver_entry["driver"] == "file":  # every lock file was removed on release
        assert not [n for n in os.listdir(driver_entry["path"]) if "lock-" in n and len(n) > 40]


async def test_without_the_lock_the_same_handler_loses_updates(
        aiohttp_client: ClientFactory, manager: SessionManager) -> None:
    """The control experiment: proves the test above can fail."""
    client = await aiohttp_client(lock_app(manager))
    assert await (await client.get("/bump")).text() == "1"
    responses = await asyncio.gather(*(client.get(f"/bump?together={REQUESTS}")
                                       for _ in range(REQUESTS)))
    assert [r.status for r in responses] == [200] * REQUESTS
    assert await count(client) == 2  # all read 1 before any wrote: every update but one lost


async def test_lock_wait_timeout_is_423(aiohttp_client: ClientFactory,
                                        manager: SessionManager) -> None:
    client = await aiohttp_client(lock_app(manager))
    assert client.app is not None
    gates = client.app[GATES]
    assert (await client.get("/impatient")).status == 200
    holder = asyncio.create_task(client.get("/hold?gate=held"))
    try:
        await gates.reached("held")  # the holder has the lock
        response = await client.get("/impatient")
        assert response.status == 423
        assert response.headers["Retry-After"] == "1"
        assert "locked by another request" in await response.text()
    finally:
        gates.open("held")
        held = await holder
    assert held.status == 200
    assert await (await client.get("/impatient")).text() == "2"  # free again; 423 wrote nothing


# -- two server processes on one store ------------------------------------------------------


@pytest.fixture
def servers(driver_entry: dict[str, Any]) -> Iterator[list[str]]:
    """Two ``tests.concurrency_app`` server processes on one store; their base URLs."""
    with two_servers(driver_entry) as urls:
        yield urls


async def test_two_processes_locked_read_modify_write_counts_exactly(
        servers: list[str], http: aiohttp.ClientSession) -> None:
    async with http.get(f"{servers[0]}/locked_bump") as response:
        assert await response.text() == "1"
        sid = response.cookies[COOKIE].value

    async def bump(i: int) -> tuple[int, str]:
        async with http.get(f"{servers[i % 2]}/locked_bump", cookies={COOKIE: sid}) as r:
            return r.status, await r.text()

    results = await asyncio.gather(*(bump(i) for i in range(REQUESTS)))
    assert [status for status, _ in results] == [200] * REQUESTS
    assert sorted(int(text) for _, text in results) == list(range(2, REQUESTS + 2))
    async with http.get(f"{servers[1]}/dump", cookies={COOKIE: sid}) as response:
        assert ast.literal_eval(await response.text())["count"] == REQUESTS + 1


async def test_two_processes_without_the_lock_lose_updates(
        servers: list[str], http: aiohttp.ClientSession) -> None:
    """The control experiment for the test above."""
    async with http.get(f"{servers[0]}/bump") as response:
        sid = response.cookies[COOKIE].value

    async def bump(i: int) -> int:
        # together: each process's half all read before any of them writes
        path = f"/bump?together={REQUESTS // 2}"
        async with http.get(f"{servers[i % 2]}{path}", cookies={COOKIE: sid}) as r:
            return r.status

    assert await asyncio.gather(*(bump(i) for i in range(REQUESTS))) == [200] * REQUESTS
    async with http.get(f"{servers[1]}/dump", cookies={COOKIE: sid}) as response:
        # each process loses all but one of its updates: 1, then at most two more
        assert ast.literal_eval(await response.text())["count"] in (2, 3)
