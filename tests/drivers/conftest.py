"""Redis driver fixtures: drivers on the shared server, own servers, and a session app."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import ClientSession, DummyCookieJar, web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from aiosessmgr import DriverConfig, SessionManager, get_session, setup
from aiosessmgr.drivers.redis import RedisDriver

from ..redis_server import RedisServer

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]


def redis_driver(**options: Any) -> RedisDriver:
    """A RedisDriver built the way the manager builds it, from config options."""
    return RedisDriver.from_config(DriverConfig("redis", options=options))


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test alone, so tests on the shared server never collide."""
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture(params=[pytest.param(True, id="pipelined"), pytest.param(False, id="plain")])
def pipelining(request: pytest.FixtureRequest) -> bool:
    flag: bool = request.param
    return flag


@pytest.fixture
async def driver(redis_server: RedisServer, prefix: str,
                 pipelining: bool) -> AsyncIterator[RedisDriver]:
    """A driver on the shared server, with and without auto-pipelining."""
    drv = redis_driver(url=redis_server.url, prefix=prefix, pipelining=pipelining)
    yield drv
    await drv.close()


@pytest.fixture
async def inspector(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A plain client to look at what the driver stored."""
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def cookieless_http() -> AsyncIterator[ClientSession]:
    """An HTTP client without a cookie jar: each request names its session in a header."""
    async with ClientSession(cookie_jar=DummyCookieJar()) as http:
        yield http


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone (stopped, paused or counted by the test)."""
    server = RedisServer().start()
    yield server
    server.cleanup()


def redis_manager(lifetime: float = 10, **options: Any) -> SessionManager:
    """A SessionManager whose only driver is redis with *options*; no GC lottery."""
    return SessionManager({"drivers": {"redis": {"driver": "redis", "lifetime": lifetime,
                                                 **options}},
                           "lottery": (0, 1)})


def session_app(manager: SessionManager) -> web.Application:
    """Handlers that read, change or ignore the session, through the real middleware.

    ``GET /read`` reads only, ``POST /incr`` increments ``n``, ``POST /put/{key}`` sets
    *key* to the body, ``GET /none`` never touches the session.
    """

    async def read(request: web.Request) -> web.Response:
        session = await get_session(request)
        return web.json_response(session.all())

    async def incr(request: web.Request) -> web.Response:
        session = await get_session(request)
        return web.json_response({"n": session.increment("n")})

    async def put(request: web.Request) -> web.Response:
        session = await get_session(request)
        session.put(request.match_info["key"], await request.text())
        return web.json_response(session.all())

    async def none(request: web.Request) -> web.Response:
        return web.Response(text="no session")

    app = web.Application()
    app.router.add_get("/read", read)
    app.router.add_post("/incr", incr)
    app.router.add_post("/put/{key}", put)
    app.router.add_get("/none", none)
    setup(app, manager)
    return app
