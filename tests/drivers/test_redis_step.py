"""The Redis driver when replies come out of step, late, or from many waiters at once.

Through the RESP proxy of ``test_redis_replies``: a stray extra reply never lets one
session's record reach another request (the connection is dropped, not reused); one
driver operation - a compare-and-set with its NOSCRIPT retry, one lock attempt - is
bounded by one timeout, not one per command; and a steady stream of lock waiters costs
no more attempts per second than the backoff allows one waiter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import ClientSession
from redis.asyncio import Redis, RedisCluster

from aiosessmgr import ConfigError, DriverError, new_session_id
from aiosessmgr.drivers.redis import CAS_SHA, LOCK_POLL_MAX, RedisDriver

from ..redis_server import RedisServer, single_node_cluster
from .conftest import ClientFactory, redis_driver, redis_manager, session_app
from .test_redis_replies import RespProxy, named

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def upstream() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def cluster_node() -> Iterator[RedisServer]:
    node = single_node_cluster()
    yield node
    node.cleanup()


async def proxy_for(server: RedisServer, cluster: bool) -> RespProxy:
    """A proxy in front of *server*; for a cluster, it names the proxy as the node."""
    resp = await RespProxy(server.port).start()
    if cluster:
        real, mine = b":%d\r\n" % server.port, b":%d\r\n" % resp.port
        resp.rewrite(lambda c: [arg.upper() for arg in c[:2]] == [b"CLUSTER", b"SLOTS"],
                     lambda reply: reply.replace(real, mine))
    return resp


# -- F1: a stray extra reply ------------------------------------------------------------------


def once_then_extra(delay: float) -> Any:
    """An act: the real reply, then an extra ``:7``, once. With a *delay* (seconds), the
    extra comes that late, and the next reply later still: redis-py's check for unread
    data, when the pool hands out a connection (RESP2 only), finds nothing either time."""
    calls = 0

    async def act(reply: bytes) -> list[bytes | float]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return [reply, delay, b":7\r\n"] if delay else [reply + b":7\r\n"]
        if calls == 2 and delay:
            return [6 * delay, reply]
        return [reply]

    return act


@pytest.mark.parametrize(("cluster", "query"), [
    pytest.param(False, "", id="default"),
    pytest.param(False, "?protocol=2", id="resp2"),
    pytest.param(False, "?protocol=3", id="resp3"),
    pytest.param(True, "", id="cluster"),
    pytest.param(True, "?protocol=3", id="cluster-resp3"),
])
@pytest.mark.parametrize("delay", [pytest.param(0.0, id="together"),
                                   pytest.param(0.05, id="late")])
@pytest.mark.parametrize("pipelining", [pytest.param(True, id="pipelined"),
                                        pytest.param(False, id="plain")])
async def test_a_stray_reply_never_serves_one_session_to_another(
        aiohttp_client: ClientFactory, cookieless_http: ClientSession,
        request: pytest.FixtureRequest, prefix: str, cluster: bool, query: str,
        delay: float, pipelining: bool) -> None:
    proxy = await proxy_for(request.getfixturevalue("cluster_node" if cluster
                                                    else "upstream"), cluster)
    try:
        seen = await stray_reply_run(aiohttp_client, cookieless_http, proxy, prefix,
                                     url=proxy.url + query, cluster=cluster,
                                     pipelining=pipelining, delay=delay)
    finally:
        await proxy.close()
    # its own record, or 503: never another's, never an empty session in its place
    wrong = [(who, status, body) for who, status, body in seen
             if not (status == 503 or (status == 200 and body == {"x": who}))]
    assert wrong == []
    assert [status for _, status, _ in seen][-4:] == [200] * 4  # in step again


async def stray_reply_run(aiohttp_client: ClientFactory, http: ClientSession,
                          proxy: RespProxy, prefix: str, delay: float,
                          **options: Any) -> list[tuple[str, int, Any]]:
    """Sessions A and B, one stray reply after a GETEX, then reads of A and B in turn:
    (who, HTTP status, session) of each read."""
    manager = redis_manager(prefix=prefix, socket_timeout=1, connect_timeout=1, **options)
    server = await aiohttp_client(session_app(manager))
    name = manager.config.cookie.name
    cookies = {}
    for who in ("A", "B"):
        async with http.post(server.make_url("/put/x"), data=who) as response:
            assert response.status == 200
            cookies[who] = {"Cookie": f"{name}={response.cookies[name].value}"}
    proxy.act(named(b"GETEX"), once_then_extra(delay))
    seen = []
    for who in "AABBABAB":
        async with http.get(server.make_url("/read"), headers=cookies[who]) as response:
            body = await response.json() if response.status == 200 else None
            seen.append((who, response.status, body))
    return seen


# -- F2: one deadline per operation -----------------------------------------------------------


def slow(*steps: str, seconds: float) -> Any:
    """An act: for each matching command in turn, *seconds* late, then "pass" (the real
    reply), "reset" (hang up: redis-py retries on a new connection) or "noscript" (a
    NOSCRIPT error instead); then as is."""
    left = list(steps)

    async def act(reply: bytes) -> list[bytes | float]:
        if not left:
            return [reply]
        step = left.pop(0)
        await asyncio.sleep(seconds)
        if step == "reset":
            raise ConnectionResetError
        if step == "noscript":
            return [b"-NOSCRIPT No matching script. Please use EVAL.\r\n"]
        return [reply]

    return act


#: the driver's timeout in these tests: connect 0.5 + socket 1.5 seconds. Each command
#: below is answered within it (and each read within the socket timeout), but not the
#: commands of one operation together
TIMEOUT = 2.0
#: what an operation may take at most: a generous margin over TIMEOUT (the operations
#: below take 3.2 s or 2.4 s when each command has its own timeout)
BOUND = 2.6


def bounded_driver(proxy: RespProxy, prefix: str, pipelining: bool) -> RedisDriver:
    driver = redis_driver(url=proxy.url, prefix=prefix, pipelining=pipelining,
                          socket_timeout=1.5, connect_timeout=0.5)
    assert driver.timeout == pytest.approx(TIMEOUT)
    return driver


@pytest.mark.parametrize("pipelining", [pytest.param(True, id="pipelined"),
                                        pytest.param(False, id="plain")])
async def test_a_compare_and_set_and_its_retry_share_one_timeout(
        upstream: RedisServer, prefix: str, pipelining: bool) -> None:
    proxy = await proxy_for(upstream, False)
    driver = bounded_driver(proxy, prefix, pipelining)
    sid = new_session_id()
    try:
        await driver.write(sid, b"v1------data", 60)
        # EVALSHA: lost, retried, NOSCRIPT; EVAL: lost, retried, done - 0.8 s each
        proxy.act(named(b"EVALSHA", sha=CAS_SHA), slow("reset", "noscript", seconds=0.8))
        proxy.act(named(b"EVAL"), slow("reset", "pass", seconds=0.8))
        started = time.monotonic()
        result = (await asyncio.gather(
            driver.compare_and_set(sid, b"v2------data", 60, b"v1------"),
            return_exceptions=True))[0]
        elapsed = time.monotonic() - started
    finally:
        await driver.close()
        await proxy.close()
    assert isinstance(result, DriverError), result
    assert elapsed < BOUND, elapsed


@pytest.mark.parametrize(("steps", "seconds"), [
    pytest.param(("pass",), 1.2, id="slow"),
    pytest.param(("reset", "pass"), 0.8, id="retried"),
])
@pytest.mark.parametrize("pipelining", [pytest.param(True, id="pipelined"),
                                        pytest.param(False, id="plain")])
async def test_one_lock_attempt_is_bounded_by_one_timeout(
        upstream: RedisServer, prefix: str, pipelining: bool, steps: tuple[str, ...],
        seconds: float) -> None:
    proxy = await proxy_for(upstream, False)
    driver = bounded_driver(proxy, prefix, pipelining)
    direct = Redis.from_url(upstream.url)
    sid = new_session_id()
    try:
        await direct.set(driver.lock_key(sid), b"another process", px=20_000)
        proxy.act(named(b"SET", nx=True), slow(*steps, seconds=seconds))
        proxy.act(named(b"GET", lock=True), slow(*steps, seconds=seconds))
        started = time.monotonic()
        result = (await asyncio.gather(driver.acquire_lock(sid, 5, 0.2),
                                       return_exceptions=True))[0]
        elapsed = time.monotonic() - started
    finally:
        await driver.close()
        await proxy.close()
        await direct.aclose()
    # SET NX and GET together run past the timeout: the attempt is cut there, although
    # the wait (0.2 s) ran out long before
    assert isinstance(result, DriverError), result
    assert elapsed < 0.2 + BOUND, elapsed


# -- F3: a steady stream of waiters -----------------------------------------------------------


@pytest.mark.parametrize(("rate", "wait"), [pytest.param(100, 1.0, id="100/s-wait-1s"),
                                            pytest.param(200, 0.3, id="200/s-wait-0.3s")])
async def test_a_stream_of_waiters_costs_what_one_waiter_costs(
        own_redis: RedisServer, rate: int, wait: float) -> None:
    """Waiters arriving steadily, each giving up after *wait*, while another process
    holds the lock: attempts stay within the backoff's bound, whatever the rate."""
    holder, drv = redis_driver(url=own_redis.url), redis_driver(url=own_redis.url)
    sid = new_session_id()
    try:
        theirs = await holder.acquire_lock(sid, 30, 0)
        assert theirs is not None
        before = own_redis.command_calls().get("set", 0)
        started = time.monotonic()
        tasks = []
        for _ in range(int(rate * 2.0)):
            tasks.append(asyncio.create_task(drv.acquire_lock(sid, 10, wait)))
            await asyncio.sleep(1 / rate)
        results = await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
        attempts = own_redis.command_calls().get("set", 0) - before
        await holder.release_lock(sid, theirs)
    finally:
        await holder.close()
        await drv.close()
    assert results == [None] * len(tasks)
    # attempts of one id are at least LOCK_POLL_MAX / 2 apart once the backoff reached
    # it (fewer before): the per-waiter schedules of before sent 2-8 times as many
    most = elapsed / (LOCK_POLL_MAX / 2) + 10
    assert attempts <= most, (attempts, most)


# -- the protocol of the clients the driver builds, and of a client passed in ------------------


async def test_built_clients_speak_resp2_unless_asked(
        upstream: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    def protocol(driver: RedisDriver) -> Any:
        client = driver.client
        kwargs = (client.get_connection_kwargs() if isinstance(client, RedisCluster)
                  else client.connection_pool.connection_kwargs)
        return int(kwargs.get("protocol") or 0)

    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        drivers = [redis_driver(url=upstream.url),
                   redis_driver(connection={"port": upstream.port}),
                   redis_driver(url=upstream.url, cluster=True)]
    assert [protocol(driver) for driver in drivers] == [2, 2, 2]
    assert caplog.records == []
    asked = [redis_driver(url=upstream.url + "?protocol=3"),
             redis_driver(connection={"port": upstream.port, "protocol": 3})]
    assert [protocol(driver) for driver in asked] == [3, 3]
    with pytest.raises(ConfigError, match=r"connection\.protocol"):
        redis_driver(connection={"protocol": 4})
    # a client of the application's own that speaks RESP3 (redis-py 8's default): a
    # WARNING, as redis-py then reuses pooled connections unchecked
    client = Redis.from_url(upstream.url, protocol=3)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        mine = RedisDriver(client)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "protocol=2" in caplog.records[0].getMessage()
    for driver in [*drivers, *asked, mine]:
        await driver.close()
    await client.aclose()
