"""No lost updates, per built-in driver, through the real middleware and a real server."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from aiosessmgr import SessionManager

from .concurrency_app import GATES, app_for
from .stores import store_entry

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]
COOKIE = "aiosessmgr_session"


@pytest.fixture(params=["memory", "file", "redis"])
def driver_entry(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """One config entry per built-in driver (redis on the test run's own server)."""
    return store_entry(request.param, request, tmp_path)


@pytest.fixture
async def manager(driver_entry: dict[str, Any]) -> AsyncIterator[SessionManager]:
    mgr = SessionManager({"default": "main", "drivers": {"main": driver_entry},
                          "lottery": (0, 1)})
    yield mgr
    await mgr.close()


async def dump(client: Client) -> dict[str, Any]:
    data: dict[str, Any] = ast.literal_eval(await (await client.get("/dump")).text())
    return data


async def started(aiohttp_client: ClientFactory, manager: SessionManager) -> Client:
    client = await aiohttp_client(app_for(manager))
    assert (await client.get("/set?key=first")).status == 200
    return client


async def all_ok(requests: Sequence[Awaitable[Any]]) -> None:
    responses = await asyncio.gather(*requests)
    assert [r.status for r in responses] == [200] * len(responses)


async def test_100_concurrent_distinct_keys(aiohttp_client: ClientFactory,
                                            manager: SessionManager) -> None:
    client = await started(aiohttp_client, manager)
    # together=100: every request loads the same record before any saves, so all conflict
    await all_ok([client.get(f"/set?key=k{i}&together=100") for i in range(100)])
    data = await dump(client)
    assert len(data) == 101 and all(data[f"k{i}"] for i in range(100))


async def test_100_concurrent_increments(aiohttp_client: ClientFactory,
                                         manager: SessionManager) -> None:
    client = await started(aiohttp_client, manager)
    await all_ok([client.get("/incr?together=100") for _ in range(100)])
    assert (await dump(client))["n"] == 100


async def test_50_concurrent_pushes(aiohttp_client: ClientFactory,
                                    manager: SessionManager) -> None:
    client = await started(aiohttp_client, manager)
    await all_ok([client.get(f"/push?i={i}&together=50") for i in range(50)])
    assert sorted((await dump(client))["items"]) == list(range(50))


async def test_mixed_sets_and_deletes(aiohttp_client: ClientFactory,
                                      manager: SessionManager) -> None:
    client = await started(aiohttp_client, manager)
    await all_ok([client.get(f"/set?key=old{i}&together=20") for i in range(20)])
    requests = [client.get(f"/forget?key=old{i}&together=30") for i in range(0, 20, 2)]
    requests += [client.get(f"/set?key=new{i}&value=v{i}&together=30") for i in range(20)]
    await all_ok(requests)
    expected: dict[str, Any] = {"first": True}
    expected.update({f"old{i}": True for i in range(1, 20, 2)})
    expected.update({f"new{i}": f"v{i}" for i in range(20)})
    assert await dump(client) == expected


async def test_logout_race_does_not_resurrect(aiohttp_client: ClientFactory,
                                              manager: SessionManager) -> None:
    client = await started(aiohttp_client, manager)
    old_id = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value
    assert client.app is not None
    gates = client.app[GATES]
    slow = asyncio.create_task(client.get("/slow_write?gate=a"))  # A loads, is held
    other: Client = await aiohttp_client(app_for(manager))
    try:
        await gates.reached("a")
        logout = await other.get("/logout", cookies={COOKIE: old_id})  # B invalidates
        assert logout.status == 200
    finally:
        gates.open("a")
    assert (await slow).status == 200  # A modified and saved after the logout
    assert await manager.get_driver().read(old_id) is None  # ...but did not recreate it
    replay = await other.get("/dump", cookies={COOKIE: old_id})
    assert await replay.text() == "{}"


async def test_a_hot_session_with_1000_concurrent_requests_loses_nothing(
        aiohttp_client: ClientFactory, manager: SessionManager) -> None:
    # one cookie on every connection at once, as a busy single-page app sends it: the
    # saves of one id queue in this process and are written together (group commit)
    client = await started(aiohttp_client, manager)
    cookies = client.session.cookie_jar.filter_cookies(client.make_url("/"))
    base = str(client.make_url("")).rstrip("/")

    async def one(path: str) -> int:
        async with http.get(base + path) as response:
            return response.status

    # no connection limit: all 1,000 are in flight together
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     cookies=cookies) as http:
        paths = [f"/set?key=k{i}" if i % 4 >= 2 else "/incr" for i in range(1000)]
        statuses = await asyncio.gather(*(one(p) for p in paths))
    assert statuses == [200] * 1000
    data = await dump(client)
    assert data.pop("n") == 500
    assert data == {"first": True, **{f"k{i}": True for i in range(1000) if i % 4 >= 2}}
