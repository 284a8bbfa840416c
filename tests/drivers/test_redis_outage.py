"""Redis down, frozen or restarted: 503 within the timeout, then recovery with no failures."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable

import pytest
from aiohttp import ClientResponse, ClientSession, web
from redis.asyncio import Redis

from aiosessmgr import get_session, new_session_id, session_lock
from aiosessmgr.drivers.redis import RedisDriver

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


#: sessions in the kill -9 test; each has its cookie, and the warm-up opens many connections
SESSIONS = 40
#: what each session does there: a read, a change, a change under the session lock, a read
ROUTES = (("GET", "/read"), ("POST", "/incr"), ("POST", "/locked"), ("GET", "/read"))


@pytest.mark.parametrize("pipelining", [pytest.param(True, id="pipelined"),
                                        pytest.param(False, id="plain")])
async def test_redis_killed_and_restarted_fails_no_request_once_it_answers(
        aiohttp_client: ClientFactory, cookieless_http: ClientSession, own_redis: RedisServer,
        pipelining: bool, caplog: pytest.LogCaptureFixture) -> None:
    # many connections open at once (plain: one per request): on a loaded machine a
    # 0.5 s connect can time out, which is not what this test is about. A refused
    # connection (Redis down) fails at once whatever the connect timeout.
    manager = redis_manager(url=own_redis.url, socket_timeout=TIMEOUT,
                            connect_timeout=5 * TIMEOUT, pipelining=pipelining)
    app = session_app(manager)

    @session_lock(lock_seconds=5, wait_seconds=5)
    async def locked(request: web.Request) -> web.Response:
        session = await get_session(request)
        return web.json_response({"n": session.increment("n")})

    app.router.add_post("/locked", locked)
    server = await aiohttp_client(app)
    name = manager.config.cookie.name

    async def status(method: str, path: str, sid: str) -> int:
        async with cookieless_http.request(method, server.make_url(path),
                                           headers={"Cookie": f"{name}={sid}"}) as resp:
            await resp.read()
            return resp.status

    ids = []
    for _ in range(SESSIONS):
        async with cookieless_http.post(server.make_url("/incr")) as response:
            assert response.status == 200
            ids.append(response.cookies[name].value)
    # many requests at once: many pooled connections (one per request, or one per batch)
    warm = await asyncio.gather(*(status(method, path, sid)
                                  for sid in ids for method, path in ROUTES))
    assert warm == [200] * len(warm)
    pooled = int(own_redis.cli("INFO", "clients").split("connected_clients:")[1].split()[0])
    assert pooled > 2  # redis-cli's own connection, and more than one of ours

    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        own_redis.kill()
        for sid in ids[:3]:
            assert await status("GET", "/read", sid) == 503
        await asyncio.to_thread(own_redis.start)  # same port, same arguments
        fresh = Redis.from_url(own_redis.url)
        try:
            assert await fresh.ping()
        finally:
            await fresh.aclose()

        # once Redis answers, no request fails because of a connection that died with it
        # (concurrent, then one at a time: 8 * SESSIONS requests)
        statuses = await asyncio.gather(*(status(method, path, sid)
                                          for sid in ids for method, path in ROUTES))
        for sid in ids:
            for method, path in ROUTES:
                statuses.append(await status(method, path, sid))
    assert statuses.count(200) == len(statuses), Counter(statuses)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors  # the outage, logged once
    recovered = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(recovered) <= 1


async def test_a_lock_set_sent_twice_is_still_ours(driver: RedisDriver, inspector: Redis,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A SET NX PX whose connection failed after it landed is sent once more (redis-py's
    # retry, the pipeline's or the cluster's) and refused by our own lock: the caller
    # must still learn that it holds the lock, or it would wait for itself until ttl.
    token = "f" * 32
    monkeypatch.setattr(secrets, "token_hex", lambda nbytes: token)  # what the driver uses
    sid = new_session_id()
    await inspector.set(driver.lock_key(sid), token, px=10_000)  # the first SET's work
    assert await driver.acquire_lock(sid, 10, 0) == token
    await driver.release_lock(sid, token)
    assert await inspector.exists(driver.lock_key(sid)) == 0
    # a lock held by another token is not ours, whatever our SET answered
    await inspector.set(driver.lock_key(sid), "e" * 32, px=10_000)
    assert await driver.acquire_lock(sid, 10, 0) is None
