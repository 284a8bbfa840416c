"""Redis driver session locks: redis-py's Lock (SET NX PX with a token, Lua release)."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from redis.asyncio import Redis

from aiosessmgr import DriverError
from aiosessmgr.drivers.redis import LOCK_POLL_MAX, RELEASE_SHA, RedisDriver

from ..redis_server import RedisServer, calls_delta
from .conftest import redis_driver

pytestmark = pytest.mark.redis


def new_id() -> str:
    return secrets.token_urlsafe(32)


async def test_acquire_and_release(driver: RedisDriver, inspector: Redis) -> None:
    sid = new_id()
    token = await driver.acquire_lock(sid, 10, 1)
    assert token is not None and len(token) == 32
    key = driver.lock_key(sid)
    assert key == f"{driver.prefix}{{{sid}}}:lock"  # the record's hash tag: one slot
    assert await inspector.get(key) == token.encode()
    assert 9_000 < await inspector.pttl(key) <= 10_000
    await driver.release_lock(sid, token)
    assert await inspector.exists(key) == 0
    again = await driver.acquire_lock(sid, 10, 0)
    assert again is not None and again != token
    await driver.release_lock(sid, again)


async def test_second_acquire_times_out_within_wait(driver: RedisDriver) -> None:
    sid = new_id()
    token = await driver.acquire_lock(sid, 10, 1)
    assert token is not None
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await driver.acquire_lock(sid, 10, 0.2) is None
    # redis-py's Lock stops when its next try would come after the wait
    assert 0.2 - LOCK_POLL_MAX <= loop.time() - started < 0.6
    assert await driver.acquire_lock(sid, 10, 0) is None  # wait 0: one attempt
    await driver.release_lock(sid, token)


async def test_a_waiter_gets_the_lock_when_it_is_released(driver: RedisDriver) -> None:
    sid = new_id()
    token = await driver.acquire_lock(sid, 10, 1)
    assert token is not None
    waiter = asyncio.create_task(driver.acquire_lock(sid, 10, 5))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    await driver.release_lock(sid, token)
    theirs = await asyncio.wait_for(waiter, 1)
    assert theirs is not None
    await driver.release_lock(sid, theirs)


async def test_wrong_token_does_not_release(driver: RedisDriver, inspector: Redis) -> None:
    sid = new_id()
    token = await driver.acquire_lock(sid, 10, 1)
    assert token is not None
    await driver.release_lock(sid, secrets.token_hex(16))
    await driver.release_lock(new_id(), token)  # right token, other session
    assert await inspector.get(driver.lock_key(sid)) == token.encode()
    assert await driver.acquire_lock(sid, 10, 0) is None
    await driver.release_lock(sid, token)


async def test_lock_expires_after_ttl(driver: RedisDriver, inspector: Redis) -> None:
    """A holder that died frees the lock after ttl; its late release frees nobody else's."""
    sid = new_id()
    dead = await driver.acquire_lock(sid, 0.2, 1)
    assert dead is not None
    assert 0 < await inspector.pttl(driver.lock_key(sid)) <= 200
    assert await driver.acquire_lock(sid, 10, 0) is None
    token = await driver.acquire_lock(sid, 10, 2)  # waits out the 0.2 s
    assert token is not None
    await driver.release_lock(sid, dead)  # stale token: the new holder keeps the lock
    assert await inspector.get(driver.lock_key(sid)) == token.encode()
    await driver.release_lock(sid, token)


async def test_mutual_exclusion_across_drivers(redis_server: RedisServer, prefix: str) -> None:
    sid = new_id()
    drivers = [redis_driver(url=redis_server.url, prefix=prefix, pipelining=flag)
               for flag in (True, False, True)]
    inside = 0
    entered = 0

    async def worker(drv: RedisDriver) -> None:
        nonlocal inside, entered
        for _ in range(5):
            token = await drv.acquire_lock(sid, 10, 10)
            assert token is not None
            inside += 1
            entered += 1
            assert inside == 1
            await asyncio.sleep(0.001)
            inside -= 1
            await drv.release_lock(sid, token)

    try:
        await asyncio.gather(*(worker(drv) for drv in drivers for _ in range(4)))
    finally:
        for drv in drivers:
            await drv.close()
    assert entered == 60


async def test_release_script_reloads_after_script_flush(own_redis: RedisServer) -> None:
    drv = redis_driver(url=own_redis.url)
    try:
        sid = new_id()
        token = await drv.acquire_lock(sid, 10, 1)
        assert token is not None
        own_redis.cli("SCRIPT", "FLUSH")
        before = own_redis.command_calls()
        await drv.release_lock(sid, token)  # redis-py's Script: NOSCRIPT, LOAD, EVALSHA
        delta = calls_delta(before, own_redis.command_calls())
        assert delta.get("evalsha") == 2 and delta.get("script|load") == 1
        assert delta.get("del") == 1  # the lock was ours: released
        assert own_redis.cli("SCRIPT", "EXISTS", RELEASE_SHA).strip() == "1"
        assert await drv.acquire_lock(sid, 10, 0) is not None
    finally:
        await drv.close()


async def test_cancelled_acquire_does_not_leave_the_session_locked(
        own_redis: RedisServer) -> None:
    drv = redis_driver(url=own_redis.url)
    try:
        sid = new_id()
        acquiring = asyncio.create_task(drv.acquire_lock(sid, 10, 1))
        await asyncio.sleep(0)  # the SET is queued or on the wire
        acquiring.cancel()
        with pytest.raises(asyncio.CancelledError):
            await acquiring
        token = await drv.acquire_lock(sid, 10, 2)  # released in the background
        assert token is not None
        await drv.release_lock(sid, token)
    finally:
        await drv.close()


@pytest.mark.parametrize("pipelining", [pytest.param(True, id="pipelined"),
                                        pytest.param(False, id="plain")])
async def test_redis_down_is_a_driver_error(own_redis: RedisServer, pipelining: bool) -> None:
    drv = redis_driver(url=own_redis.url, pipelining=pipelining, socket_timeout=0.5,
                       connect_timeout=0.5)
    try:
        sid = new_id()
        token = await drv.acquire_lock(sid, 10, 1)
        assert token is not None
        own_redis.stop()
        with pytest.raises(DriverError, match=r"redis SET failed") as info:
            await asyncio.wait_for(drv.acquire_lock(new_id(), 10, 1), 5)
        assert info.value.__cause__ is not None
        with pytest.raises(DriverError, match=r"redis lock release failed"):
            await asyncio.wait_for(drv.release_lock(sid, token), 5)
    finally:
        await drv.close()


async def test_frozen_redis_is_a_driver_error_within_the_timeout(
        own_redis: RedisServer) -> None:
    drv = redis_driver(url=own_redis.url, socket_timeout=0.3, connect_timeout=0.3)
    own_redis.pause()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DriverError, match="redis SET"):
            await asyncio.wait_for(drv.acquire_lock(new_id(), 10, 10), 5)
        assert loop.time() - started < 2
    finally:
        own_redis.resume()
        await drv.close()


async def test_an_uncontended_lock_costs_one_set_and_one_script(own_redis: RedisServer) -> None:
    drv = redis_driver(url=own_redis.url)
    try:
        # the connection is open and the release script loaded (redis-py loads it on NOSCRIPT)
        warm = await drv.acquire_lock("warm", 10, 1)
        assert warm is not None
        await drv.release_lock("warm", warm)
        sid = new_id()
        before = own_redis.command_calls()
        token = await drv.acquire_lock(sid, 10, 1)
        assert token is not None
        await drv.release_lock(sid, token)
        # SET NX PX, then redis-py's release script (its GET and DEL run inside it)
        assert calls_delta(before, own_redis.command_calls()) == {"set": 1, "evalsha": 1,
                                                                  "get": 1, "del": 1}
    finally:
        await drv.close()
