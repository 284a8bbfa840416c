"""Redis driver session locks: redis-py's Lock (SET NX PX with a token, Lua release)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

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
        await drv.release_lock(sid, token)  # EVALSHA: NOSCRIPT; then EVAL, which loads it
        delta = calls_delta(before, own_redis.command_calls())
        assert delta.get("evalsha") == 1 and delta.get("eval") == 1
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


# -- waiters of one id in one process: one poller, with backoff ------------------------------


def set_calls(server: RedisServer) -> int:
    return server.command_calls().get("set", 0)


async def waiters_queued(tasks: list[asyncio.Task[Any]]) -> None:
    """Let *tasks* start and reach their wait (none of them can finish yet)."""
    await asyncio.sleep(0.05)
    assert not [task for task in tasks if task.done()]


async def test_waiters_of_one_id_share_one_poller(own_redis: RedisServer) -> None:
    """100 waiters while another process holds the lock: about as many SET NX as one."""
    holder, drv = redis_driver(url=own_redis.url), redis_driver(url=own_redis.url)
    sid = new_id()
    inside = entered = most = 0

    async def waiter() -> None:
        nonlocal inside, entered, most
        token = await drv.acquire_lock(sid, 10, 30)
        assert token is not None
        inside += 1
        entered += 1
        most = max(most, inside)
        await asyncio.sleep(0)
        inside -= 1
        await drv.release_lock(sid, token)

    try:
        theirs = await holder.acquire_lock(sid, 10, 0)
        assert theirs is not None
        tasks = [asyncio.create_task(waiter()) for _ in range(100)]
        await waiters_queued(tasks)
        before = set_calls(own_redis)
        await asyncio.sleep(1.0)
        polled = set_calls(own_redis) - before
        # one poller backing off to LOCK_POLL_MAX (sleeps of at least half of it): at most
        # about 45 SET NX in a second; 100 independent pollers sent thousands
        assert polled < 60, polled
        await holder.release_lock(sid, theirs)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        await holder.close()
        await drv.close()
    assert entered == 100 and most == 1  # each in turn, one at a time


async def test_a_cancelled_waiter_does_not_stall_the_others(driver: RedisDriver) -> None:
    sid = new_id()
    theirs = await driver.acquire_lock(sid, 10, 0)
    assert theirs is not None
    order: list[int] = []

    async def waiter(n: int) -> None:
        token = await driver.acquire_lock(sid, 10, 10)
        assert token is not None
        order.append(n)
        await driver.release_lock(sid, token)

    tasks = [asyncio.create_task(waiter(n)) for n in range(5)]
    await waiters_queued(tasks)
    tasks[0].cancel()  # the one polling Redis
    tasks[2].cancel()  # one queued behind it
    await asyncio.sleep(0.02)
    await driver.release_lock(sid, theirs)
    await asyncio.wait_for(asyncio.gather(*tasks[1::2], tasks[4]), 10)
    assert order == [1, 3, 4]  # first come, first served, the cancelled ones skipped
    assert tasks[0].cancelled() and tasks[2].cancelled()


async def test_each_waiter_keeps_its_own_wait(driver: RedisDriver) -> None:
    sid = new_id()
    theirs = await driver.acquire_lock(sid, 10, 0)
    assert theirs is not None
    # the first in line (polling) gives up first; the one behind it takes over polling
    impatient = asyncio.create_task(driver.acquire_lock(sid, 10, 0.2))
    patient = asyncio.create_task(driver.acquire_lock(sid, 10, 10))
    # and one queued behind a patient poller gives up in its own time, not the poller's
    queued = asyncio.create_task(driver.acquire_lock(sid, 10, 0.3))
    assert await asyncio.wait_for(impatient, 5) is None
    assert await asyncio.wait_for(queued, 5) is None
    assert not patient.done()
    await driver.release_lock(sid, theirs)
    mine = await asyncio.wait_for(patient, 5)
    assert mine is not None
    await driver.release_lock(sid, mine)


async def test_a_holder_past_its_ttl_no_longer_holds_up_its_own_process(
        driver: RedisDriver) -> None:
    sid = new_id()
    forgotten = await driver.acquire_lock(sid, 0.2, 0)  # never released
    assert forgotten is not None
    token = await asyncio.wait_for(driver.acquire_lock(sid, 10, 5), 5)
    assert token is not None
    await driver.release_lock(sid, forgotten)  # late: frees nobody else's lock
    assert await driver.acquire_lock(sid, 10, 0) is None
    await driver.release_lock(sid, token)


async def test_another_process_still_gets_the_lock(redis_server: RedisServer,
                                                    prefix: str) -> None:
    """One process passing the lock between its many waiters does not starve another's.

    Its holders keep the lock 0.3 s each: between one release and the next of its own
    waiters taking it, the lock is free for about a millisecond, which a poller of
    another process (every 25 to 50 ms) seldom meets (without LOCK_YIELD the other
    waited 0.8 to 3 s, or in vain); so after LOCK_RUN seconds the busy process leaves it
    free for LOCK_YIELD seconds, and the other gets it after about 0.6 s."""
    busy, other = (redis_driver(url=redis_server.url, prefix=prefix) for _ in range(2))
    sid = new_id()
    stop = False
    turns = 0

    async def worker() -> None:
        nonlocal turns
        while not stop:
            token = await busy.acquire_lock(sid, 10, 10)
            assert token is not None
            turns += 1
            await asyncio.sleep(0.3)
            await busy.release_lock(sid, token)

    workers = [asyncio.create_task(worker()) for _ in range(4)]
    try:
        await asyncio.sleep(0.1)  # the busy process is passing the lock around
        token = await other.acquire_lock(sid, 10, 2)
        assert token is not None, f"starved while the busy process took {turns} turns"
        await other.release_lock(sid, token)
    finally:
        stop = True
        await asyncio.gather(*workers)
        await busy.close()
        await other.close()
