"""Many users at once through the real middleware, and the HTTP benchmark's own checks."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import ClientSession, CookieJar

from benchmarks import http as bench

from ..redis_server import RedisServer, require_binary
from .conftest import ClientFactory, redis_manager, session_app

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("pipelining", [pytest.param(True, id="pipelined"),
                                        pytest.param(False, id="plain")])
async def test_concurrent_users_each_get_their_own_replies(
        aiohttp_client: ClientFactory, redis_server: RedisServer, prefix: str,
        pipelining: bool) -> None:
    # replies of one pipeline must reach the request that asked, never a neighbour
    manager = redis_manager(url=redis_server.url, prefix=prefix, pipelining=pipelining)
    server = await aiohttp_client(session_app(manager))
    # one browser each: its own cookie jar
    users = [ClientSession(cookie_jar=CookieJar(unsafe=True)) for _ in range(30)]

    async def user(n: int) -> list[object]:
        http = users[n]
        seen: list[object] = []
        async with http.post(server.make_url("/put/name"), data=f"user{n}") as response:
            assert response.status == 200
        for _ in range(5):
            async with http.post(server.make_url("/incr")) as response:
                seen.append((await response.json())["n"])
        async with http.get(server.make_url("/read")) as response:
            seen.append(await response.json())
        return seen

    try:
        results = await asyncio.gather(*(user(n) for n in range(30)))
    finally:
        await asyncio.gather(*(http.close() for http in users))
    for n, seen in enumerate(results):
        assert seen == [1, 2, 3, 4, 5, {"name": f"user{n}", "n": 5}]


@pytest.mark.slow
def test_benchmark_runs_and_checks_every_app(capsys: pytest.CaptureFixture[str]) -> None:
    require_binary()  # the benchmark starts its own redis-server
    # a smoke run: the benchmark's apps pass its functional checks (read, then n=1, n=2)
    assert bench.main(["--drivers", "aiohttp,redis-py,aiohttp-session,aiosessmgr-redis",
                       "--duration", "0.3", "--warmup", "0", "--sessions", "4",
                       "--concurrency", "2", "--load-generator", "python",
                       "--no-json"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Setup: concurrency=2")
    for row in ("aiohttp", "redis-py", "aiohttp-session", "aiosessmgr-redis"):
        assert f"| {row} |" in out
