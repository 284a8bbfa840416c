"""No lost updates across two OS processes sharing one store (file directory, Redis)."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .stores import store_entry, two_servers

COOKIE = "aiosessmgr_session"


@pytest.fixture(params=["file", "redis"])
def servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """Two server processes on one store (a shared directory, or one Redis)."""
    with two_servers(store_entry(request.param, request, tmp_path)) as urls:
        yield urls


async def start_session(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/set?key=first") as response:
        assert response.status == 200
        return response.cookies[COOKIE].value


async def fan_out(http: aiohttp.ClientSession, urls: list[str], sid: str,
                  paths: list[str]) -> None:
    async def one(i: int, path: str) -> int:
        async with http.get(f"{urls[i % 2]}{path}", cookies={COOKIE: sid}) as response:
            return response.status

    statuses = await asyncio.gather(*(one(i, p) for i, p in enumerate(paths)))
    assert statuses == [200] * len(paths)


async def dump(http: aiohttp.ClientSession, url: str, sid: str) -> dict[str, Any]:
    async with http.get(f"{url}/dump", cookies={COOKIE: sid}) as response:
        data: dict[str, Any] = ast.literal_eval(await response.text())
        return data


async def test_two_processes_lose_nothing(servers: list[str],
                                          http: aiohttp.ClientSession) -> None:
    sid = await start_session(http, servers[0])
    # each process gets half; together=N: its N requests all load before any of them saves
    await fan_out(http, servers, sid, [f"/set?key=k{i}&together=50" for i in range(100)])
    await fan_out(http, servers, sid, ["/incr?together=50"] * 100)
    await fan_out(http, servers, sid, [f"/push?i={i}&together=25" for i in range(50)])
    data = await dump(http, servers[1], sid)
    assert all(data[f"k{i}"] for i in range(100))
    assert data["n"] == 100
    assert sorted(data["items"]) == list(range(50))
    assert len(data) == 103  # first, k0..k99, n, items


async def test_a_hot_session_with_1000_concurrent_requests_across_two_processes(
        servers: list[str]) -> None:
    # one cookie, 1,000 requests in flight at once, half on each process: saves of one
    # id group in each process and the two processes' batches conflict and replay
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sid = await start_session(http, servers[0])
        paths = [f"/set?key=k{i}" if i % 4 >= 2 else "/incr" for i in range(1000)]
        await fan_out(http, servers, sid, paths)
        data = await dump(http, servers[1], sid)
    assert data.pop("n") == 500
    assert data == {"first": True, **{f"k{i}": True for i in range(1000) if i % 4 >= 2}}
