"""Redis down or frozen: 503 through the real middleware within the timeout, then recovery."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import pytest
from aiohttp import ClientResponse, web

from aiosessmgr import get_session

from ..redis_server import RedisServer
from .conftest import ClientFactory, redis_manager, session_app

pytestmark = pytest.mark.redis

#: seconds; the driver's timeouts in these tests (its overall bound is their sum)
TIMEOUT = 0.5
#: a response must come well within this, timeouts included: "no hang", not a speed test
BOUND = 10.0


async def timed_status(request: Awaitable[ClientResponse]) -> tuple[int, float]:
    """The response's status and how long it took (bounded: a hang fails the test)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await asyncio.wait_for(request, BOUND)
    return response.status, loop.time() - started


@pytest.mark.parametrize("pipelining", [pytest.param(True, id="pipelined"),
                                        pytest.param(False, id="plain")])
async def test_redis_stopped_then_restarted(aiohttp_client: ClientFactory,
                                            own_redis: RedisServer, pipelining: bool,
                                            caplog: pytest.LogCaptureFixture) -> None:
    manager = redis_manager(url=own_redis.url, socket_timeout=TIMEOUT, connect_timeout=TIMEOUT,
                            pipelining=pipelining)
    client = await aiohttp_client(session_app(manager))
    assert (await client.post("/incr")).status == 200
    assert (await client.get("/read")).status == 200  # pooled connections now exist

    own_redis.stop()
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        for request in (client.get("/read"), client.post("/incr"), client.get("/read")):
            status, _ = await timed_status(request)
            assert status == 503
        # a request that never touches the session does not need the store
        assert (await client.get("/none")).status == 200
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1  # logged once per outage, not once per request

        own_redis.start()  # same port, same process, same app
        response = await client.post("/incr")
        assert response.status == 200
        # the data did not survive (no persistence); a fresh session started cleanly
        assert await response.json() == {"n": 1}
        assert (await client.post("/incr")).status == 200
        assert await (await client.get("/read")).json() == {"n": 2}
    assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_redis_frozen_answers_503_within_the_timeout(aiohttp_client: ClientFactory,
                                                          own_redis: RedisServer) -> None:
    manager = redis_manager(url=own_redis.url, socket_timeout=TIMEOUT, connect_timeout=TIMEOUT)
    client = await aiohttp_client(session_app(manager))
    assert (await client.post("/incr")).status == 200
    own_redis.pause()  # accepts connections, never answers: the slow-store case
    try:
        status, elapsed = await timed_status(client.get("/read"))
        assert status == 503
        assert elapsed < 5 * 2 * TIMEOUT  # the driver's bound is 2 * TIMEOUT; generous margin
        status, elapsed = await timed_status(client.post("/incr"))
        assert status == 503
    finally:
        own_redis.resume()
    response = await client.get("/read")
    assert response.status == 200
    # the record outlived the freeze (a write may or may not have landed: whole or not at all)
    assert (await response.json())["n"] in (1, 2)


async def test_failed_save_leaves_the_old_record(aiohttp_client: ClientFactory) -> None:
    # persistence on, so the record outlives the restart and we can look at it
    server = RedisServer("--appendonly", "yes").start()
    try:
        manager = redis_manager(url=server.url, socket_timeout=TIMEOUT, connect_timeout=TIMEOUT)
        app = session_app(manager)

        async def change_then_lose_redis(request: web.Request) -> web.Response:
            session = await get_session(request)
            session.put("user", "mallory")
            await asyncio.to_thread(server.stop)  # Redis goes away before the save
            return web.Response(text="changed")

        app.router.add_post("/change-then-lose-redis", change_then_lose_redis)
        client = await aiohttp_client(app)
        assert (await client.post("/put/user", data="ann")).status == 200
        assert (await client.post("/change-then-lose-redis")).status == 503
        await asyncio.to_thread(server.start)
        response = await client.get("/read")
        assert response.status == 200
        assert await response.json() == {"user": "ann"}
    finally:
        server.cleanup()
