"""The Redis driver's user index and read_many on real servers: one node, Sentinel, Cluster.

What the contract suite (aiosessmgr.testing) cannot see from outside: the key's shape and
slot, expiry in PTTL, hostile user ids, keys of another type, a restarted server (the
NOSCRIPT path), round trips of read_many, and replies no Redis would give.
"""

from __future__ import annotations

import asyncio
import logging
import string
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis, RedisCluster

from aiosessmgr import DriverError, new_session_id
from aiosessmgr.drivers.base import SupportsReadMany, SupportsUserIndex
from aiosessmgr.drivers.redis import INDEX_SHA, READ_SHA, UNINDEX_SHA, RedisDriver
from aiosessmgr.drivers.redis.index import user_id_of, user_tag
from aiosessmgr.ids import new_handle

from ..redis_server import ClusterServers, RedisServer, SentinelServers
from .conftest import redis_driver
from .test_redis_replies import Match, RespProxy, named, texts_of

pytestmark = pytest.mark.redis

TTL = 1000
HOSTILE_USERS = [
    "{", "}", "}{", "{}", "{a}", "%", "%7B", "%7b", "%25", "%%", "a%", "user:{x}",
    "ann", "Ann", " ", "a b", "'\"", "…", "ünïcødé ✓ 用户", "🙂", "\t\n", "*?[]\\",
    "x" * 256, "é" * 256, "}" * 256, "",
]


def sid_like_user() -> str:
    """A user id of 43 URL-safe characters: the shape of a session id."""
    return new_session_id()


# -- the key: escaping, shape, slot ------------------------------------------------------------


def test_the_escape_is_bijective_on_hostile_ids() -> None:
    users = [*HOSTILE_USERS, sid_like_user(), "\ud800"]  # a lone surrogate too
    tags = [user_tag(user) for user in users]
    assert len(set(tags)) == len(users)
    for user, tag in zip(users, tags, strict=True):
        assert tag and not set(tag) & set("{} '\"\t\n…")
        assert user_id_of(tag) == user


@given(st.text(max_size=300), st.text(max_size=300))
def test_the_escape_is_bijective(first: str, second: str) -> None:
    assert user_tag(first)
    assert not {"{", "}"} & set(user_tag(first))
    assert user_id_of(user_tag(first)) == first
    assert (user_tag(first) == user_tag(second)) == (first == second)


@pytest.mark.parametrize("prefix", ["session:", "", "a:b:", "user:"])
def test_an_index_key_is_never_a_session_or_lock_key(prefix: str) -> None:
    driver = RedisDriver(Redis(), prefix=prefix)
    sid = new_session_id()
    users = [*HOSTILE_USERS, sid, f"{sid}}}:lock", f"{sid}}}", f"{{{sid}}}", "lock"]
    sessions = [sid, *(new_session_id() for _ in range(20))]
    ours = {driver.key(s) for s in sessions} | {driver.lock_key(s) for s in sessions}
    index_keys = [driver.user_key(user) for user in users]
    assert len(set(index_keys)) == len(users)
    assert not ours & set(index_keys)
    for key in index_keys:
        # one brace pair, ``user:`` right after the prefix: a session's key has "{" there
        rest = key.removeprefix(prefix)
        assert rest.startswith("user:{") and rest.endswith("}")
        assert rest.count("{") == 1 and rest.count("}") == 1


async def test_index_and_session_of_one_name_live_apart(driver: RedisDriver,
                                                        inspector: Redis) -> None:
    name = new_session_id()  # a user whose id is some session's id
    handle, other = new_handle(), new_session_id()
    await driver.write(name, b"v1------", 60)
    token = await driver.acquire_lock(name, 10, 1)
    assert token is not None
    await driver.index_user_session(name, handle, other, TTL)
    assert await driver.read(name) == b"v1------"
    assert await driver.user_session_index(name) == {handle: other}
    assert await inspector.type(driver.user_key(name)) == b"hash"
    await driver.release_lock(name, token)


# -- round trips on one node -------------------------------------------------------------------


async def test_round_trip(driver: RedisDriver, inspector: Redis) -> None:
    assert isinstance(driver, SupportsUserIndex) and isinstance(driver, SupportsReadMany)
    user, (h1, h2) = "alice@example.com", (new_handle(), new_handle())
    s1, s2, s3 = new_session_id(), new_session_id(), new_session_id()
    assert await driver.user_session_index(user) == {}
    await driver.index_user_session(user, h1, s1, TTL)
    await driver.index_user_session(user, h2, s2, TTL)
    assert await driver.user_session_index(user) == {h1: s1, h2: s2}
    assert await driver.index_user_session(user, h1, s3, TTL, s1)  # moved to a new id
    assert not await driver.index_user_session(user, h1, s2, TTL, s1)  # a second move
    assert await driver.user_session_index(user) == {h1: s3, h2: s2}
    assert await driver.user_session_index("bob@example.com") == {}
    assert await inspector.hgetall(driver.user_key(user)) == {h1.encode(): s3.encode(),
                                                              h2.encode(): s2.encode()}


async def test_unindex_removes_only_entries_still_naming_their_id(
        driver: RedisDriver, inspector: Redis) -> None:
    user = "u-1"
    moved, stays, gone = new_handle(), new_handle(), new_handle()
    old, new, kept = new_session_id(), new_session_id(), new_session_id()
    await driver.index_user_session(user, moved, new, TTL)
    await driver.index_user_session(user, stays, kept, TTL)
    # moved names another id by now; gone names nothing; stays is removed
    removed = await driver.unindex_user_sessions(user, {moved: old, gone: old, stays: kept})
    assert removed == 1
    assert await driver.user_session_index(user) == {moved: new}
    assert await driver.unindex_user_sessions(user, {}) == 0
    assert await driver.unindex_user_sessions(user, {moved: new}) == 1
    assert await inspector.exists(driver.user_key(user)) == 0  # gone with its last entry
    assert await driver.unindex_user_sessions(user, {moved: new}) == 0


async def test_expiry_is_extended_and_never_shortened(driver: RedisDriver,
                                                      inspector: Redis) -> None:
    user, key = "u-ttl", driver.user_key("u-ttl")
    await driver.index_user_session(user, new_handle(), new_session_id(), 100)
    assert 0 < await inspector.pttl(key) <= 100_000
    await driver.index_user_session(user, new_handle(), new_session_id(), 5000)
    assert 100_000 < await inspector.pttl(key) <= 5_000_000
    await driver.index_user_session(user, new_handle(), new_session_id(), 10)
    assert await inspector.pttl(key) > 100_000  # not cut to 10 s
    # reading and unindexing leave the deadline alone
    entries = await driver.user_session_index(user)
    await driver.unindex_user_sessions(user, dict(list(entries.items())[:1]))
    assert await inspector.pttl(key) > 100_000
    # an index someone made persistent gets a deadline again: it never lives forever
    await inspector.persist(key)
    await driver.index_user_session(user, new_handle(), new_session_id(), 10)
    assert 0 < await inspector.pttl(key) <= 10_000
    assert len(await driver.user_session_index(user)) == 3  # 4 added, 1 removed


async def test_hostile_user_ids(driver: RedisDriver, inspector: Redis) -> None:
    sids = {user: new_session_id() for user in HOSTILE_USERS}
    handle = new_handle()
    await asyncio.gather(*(driver.index_user_session(user, handle, sid, TTL)
                           for user, sid in sids.items()))
    found = await asyncio.gather(*(driver.user_session_index(u) for u in HOSTILE_USERS))
    assert found == [{handle: sids[user]} for user in HOSTILE_USERS]
    keys = [key async for key in inspector.scan_iter(match=f"{driver.prefix}*")]
    assert len(keys) == len(HOSTILE_USERS)  # one key each, none shared
    removed = await asyncio.gather(*(driver.unindex_user_sessions(user, {handle: sid})
                                     for user, sid in sids.items()))
    assert removed == [1] * len(HOSTILE_USERS)
    assert [key async for key in inspector.scan_iter(match=f"{driver.prefix}*")] == []


# -- a key of another type, entries that are not ours -------------------------------------------


async def test_a_key_of_another_type_is_an_empty_index_left_alone(
        driver: RedisDriver, inspector: Redis, caplog: pytest.LogCaptureFixture) -> None:
    user = "personal.name@example.com"
    key = driver.user_key(user)
    await inspector.set(key, b"not an index")
    handle, sid = new_handle(), new_session_id()
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        await driver.index_user_session(user, handle, sid, TTL)
        assert await driver.user_session_index(user) == {}
        assert await driver.unindex_user_sessions(user, {handle: sid}) == 0
    assert await inspector.get(key) == b"not an index"
    assert await inspector.pttl(key) == -1  # no expiry set on someone else's key
    warnings = [r.getMessage() for r in caplog.records if r.name == "aiosessmgr"]
    assert len(warnings) == 3
    assert all("another type" in text and user_tag(user) not in text and user not in text
               for text in warnings)


async def test_entries_that_are_not_ours_are_left_out(
        driver: RedisDriver, inspector: Redis, caplog: pytest.LogCaptureFixture) -> None:
    user, handle, sid = "u-odd", new_handle(), new_session_id()
    await driver.index_user_session(user, handle, sid, TTL)
    await inspector.hset(driver.user_key(user), mapping={
        "not-a-handle": new_session_id(), new_handle(): "not-an-id",
        "é".encode() * 11: sid.encode(), new_handle(): b"\xff" * 43})
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        assert await driver.user_session_index(user) == {handle: sid}
    assert any("4 entries" in r.getMessage() for r in caplog.records)
    assert await inspector.hlen(driver.user_key(user)) == 5  # left as they are


# -- a restarted server: the scripts are gone (NOSCRIPT, then EVAL) -----------------------------


@pytest.mark.parametrize("pipelining", [pytest.param(True, id="pipelined"),
                                        pytest.param(False, id="plain")])
async def test_a_server_restarted_mid_use(own_redis: RedisServer, prefix: str,
                                          pipelining: bool) -> None:
    driver = redis_driver(url=own_redis.url, prefix=prefix, pipelining=pipelining)
    handle, sid = new_handle(), new_session_id()
    try:
        await driver.index_user_session("u", handle, sid, TTL)
        assert await driver.user_session_index("u") == {handle: sid}
        own_redis.kill()
        own_redis.start()  # no persistence: data and scripts are gone
        assert own_redis.cli("SCRIPT", "EXISTS", INDEX_SHA, READ_SHA, UNINDEX_SHA).split() \
            == ["0", "0", "0"]
        await driver.index_user_session("u", handle, sid, TTL)
        assert await driver.user_session_index("u") == {handle: sid}
        assert await driver.unindex_user_sessions("u", {handle: sid}) == 1
        calls = own_redis.command_calls()
        assert calls["evalsha"] == 3 and calls["eval"] == 3  # each refused once, then sent
        own_redis.cli("SCRIPT", "FLUSH")
        await driver.index_user_session("u", handle, sid, TTL)
        assert await driver.user_session_index("u") == {handle: sid}
        assert own_redis.command_calls()["eval"] == 5
    finally:
        await driver.close()


async def test_a_frozen_server_is_a_driver_error(own_redis: RedisServer, prefix: str) -> None:
    driver = redis_driver(url=own_redis.url, prefix=prefix, socket_timeout=0.3,
                          connect_timeout=0.3)
    sid = new_session_id()
    try:
        await driver.write(sid, b"v1------", 60)
        own_redis.pause()
        try:
            for call in (lambda: driver.index_user_session("u", new_handle(), sid, TTL),
                         lambda: driver.user_session_index("u"),
                         lambda: driver.unindex_user_sessions("u", {new_handle(): sid}),
                         lambda: driver.read_many([sid, new_session_id()])):
                with pytest.raises(DriverError):
                    await asyncio.wait_for(call(), 10)
        finally:
            own_redis.resume()
        assert await driver.read_many([sid]) == [b"v1------"]
    finally:
        await driver.close()


# -- read_many ----------------------------------------------------------------------------------


async def test_read_many_reads_as_read_does(driver: RedisDriver, inspector: Redis,
                                            caplog: pytest.LogCaptureFixture) -> None:
    sids = [new_session_id() for _ in range(5)]
    for i, sid in enumerate(sids[:3]):
        await driver.write(sid, b"v%d------" % i, 60)
    await inspector.pexpire(driver.key(sids[0]), 30_000)
    await inspector.rpush(driver.key(sids[3]), b"x")  # a key of another type
    ask = [sids[2], sids[4], sids[0], sids[3], sids[1], sids[0]]
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        records = await driver.read_many(ask)
    assert records == [await driver.read(sid) for sid in ask]
    assert records == [b"v2------", None, b"v0------", None, b"v1------", b"v0------"]
    assert [r for r in caplog.records if "another type" in r.getMessage()]
    assert await driver.read_many([]) == []
    assert await driver.read_many([sids[1]]) == [b"v1------"]
    assert await driver.read_many(tuple(sids[:2])) == [b"v0------", b"v1------"]
    assert await inspector.pttl(driver.key(sids[0])) <= 30_000  # read, not touched


def reads(server: RedisServer) -> int:
    """Read events the server has handled: a pipeline arrives in one, N commands in N."""
    stats = dict(line.split(":", 1) for line in server.cli("INFO", "stats").split()
                 if ":" in line)
    return int(stats["total_reads_processed"])


@pytest.mark.parametrize("pipelining", [pytest.param(True, id="pipelined"),
                                        pytest.param(False, id="plain")])
async def test_read_many_is_one_round_trip(own_redis: RedisServer, prefix: str,
                                           pipelining: bool) -> None:
    driver = redis_driver(url=own_redis.url, prefix=prefix, pipelining=pipelining)
    sids = [new_session_id() for _ in range(30)]
    try:
        await driver.write(sids[0], b"v1------", 60)  # the connection is made and handshaken
        before = reads(own_redis)
        records = await driver.read_many(sids)
        after = reads(own_redis)
    finally:
        await driver.close()
    assert records == [b"v1------"] + [None] * 29
    assert own_redis.command_calls()["mget"] == 1  # a single node: one MGET, one reply
    # one read event for the pipeline, one for the INFO that counted it (30 without)
    assert after - before <= 3


async def test_read_many_chunks_its_mget_at_1000_keys(own_redis: RedisServer,
                                                     prefix: str) -> None:
    """docs/redis-driver.md: MGETs of up to 1,000 keys, in order across the chunks."""
    driver = redis_driver(url=own_redis.url, prefix=prefix)
    sids = [new_session_id() for _ in range(2001)]
    try:
        for sid in (sids[0], sids[999], sids[1000], sids[2000]):
            await driver.write(sid, sid.encode()[:8], 60)
        before = own_redis.command_calls().get("mget", 0)
        records = await driver.read_many(sids)
    finally:
        await driver.close()
    assert own_redis.command_calls()["mget"] - before == 3
    expected = [sid.encode()[:8] if i in (0, 999, 1000, 2000) else None
                for i, sid in enumerate(sids)]
    assert records == expected


async def test_read_many_under_concurrent_use(driver: RedisDriver) -> None:
    sids = [new_session_id() for _ in range(40)]
    await asyncio.gather(*(driver.write(sid, sid.encode()[:8], 60) for sid in sids[::2]))
    batches = await asyncio.gather(*(driver.read_many(sids[i:] + sids[:i]) for i in range(8)),
                                   *(driver.read(sid) for sid in sids))
    expected = [sid.encode()[:8] if i % 2 == 0 else None for i, sid in enumerate(sids)]
    for i, batch in enumerate(batches[:8]):
        assert batch == expected[i:] + expected[:i]
    assert list(batches[8:]) == expected


# -- Sentinel -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinel() -> Iterator[SentinelServers]:
    servers = SentinelServers("mymaster").start()
    yield servers
    servers.cleanup()


async def test_through_sentinel(sentinel: SentinelServers, prefix: str) -> None:
    driver = redis_driver(prefix=prefix, sentinel={
        "hosts": [f"127.0.0.1:{sentinel.sentinel_port}"], "service_name": "mymaster"})
    handle, sid = new_handle(), new_session_id()
    try:
        await driver.write(sid, b"v1------", 60)
        await driver.index_user_session("}{", handle, sid, TTL)
        assert await driver.user_session_index("}{") == {handle: sid}
        assert await driver.read_many([sid, new_session_id()]) == [b"v1------", None]
        assert await driver.unindex_user_sessions("}{", {handle: sid}) == 1
        await driver.index_user_session("}{", handle, sid, TTL)
    finally:
        await driver.close()
    # on the master the sentinel names
    assert sentinel.master.cli("HGET", driver.user_key("}{"), handle).strip() == sid


# -- Cluster ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterServers]:
    servers = ClusterServers(masters=3).start()
    yield servers
    servers.cleanup()


@pytest.fixture
async def cluster_driver(cluster: ClusterServers, prefix: str,
                         pipelining: bool) -> AsyncIterator[RedisDriver]:
    drv = redis_driver(url=cluster.url, cluster=True, prefix=prefix, pipelining=pipelining)
    yield drv
    await drv.close()


def keyslot(cluster: ClusterServers, key: str) -> int:
    return int(cluster.nodes[0].cli("CLUSTER", "KEYSLOT", key))


@pytest.mark.slow
def test_a_users_index_is_in_the_slot_of_its_tag(cluster: ClusterServers) -> None:
    """The braces are the hash tag: the slot is the tag's, whatever the prefix."""
    users = [*HOSTILE_USERS, sid_like_user()]
    drivers = [RedisDriver(Redis(), prefix=prefix) for prefix in ("session:", "other:", "")]
    for user in users:
        slots = {keyslot(cluster, driver.user_key(user)) for driver in drivers}
        assert slots == {keyslot(cluster, user_tag(user))}, user
    # and different users spread over the slots (the tag is no constant)
    assert len({keyslot(cluster, drivers[0].user_key(f"user{i}")) for i in range(50)}) > 40


@pytest.mark.slow
async def test_cluster_index_without_cross_slot_errors(cluster_driver: RedisDriver,
                                                       cluster: ClusterServers) -> None:
    users = [*HOSTILE_USERS, *(f"user-{i}" for i in range(30))]
    handles = [new_handle() for _ in range(3)]
    sids = {user: [new_session_id() for _ in handles] for user in users}
    # every call of every user at once: batched together, spread over the three nodes
    await asyncio.gather(*(cluster_driver.index_user_session(user, handle, sid, TTL)
                           for user in users
                           for handle, sid in zip(handles, sids[user], strict=True)))
    indexes = await asyncio.gather(*(cluster_driver.user_session_index(u) for u in users))
    assert indexes == [dict(zip(handles, sids[user], strict=True)) for user in users]
    removed = await asyncio.gather(*(cluster_driver.unindex_user_sessions(
        user, {handles[0]: sids[user][0], handles[1]: new_session_id()}) for user in users))
    assert removed == [1] * len(users)
    per_node = [len(node.cli("--scan", "--pattern", f"{cluster_driver.prefix}user:*").split())
                for node in cluster.nodes]
    assert sum(per_node) == len(users) and all(per_node)
    for node in cluster.nodes:  # the scripts were loaded where their keys live
        node.cli("SCRIPT", "FLUSH")
    assert await asyncio.gather(*(cluster_driver.user_session_index(u) for u in users)) == [
        {handles[1]: sids[user][1], handles[2]: sids[user][2]} for user in users]


@pytest.mark.slow
async def test_cluster_read_many(cluster_driver: RedisDriver, cluster: ClusterServers) -> None:
    sids = [new_session_id() for _ in range(60)]
    await asyncio.gather(*(cluster_driver.write(sid, b"v1------", 60) for sid in sids[::2]))
    assert isinstance(cluster_driver.client, RedisCluster)
    await cluster_driver.client.rpush(cluster_driver.key(sids[1]), b"x")
    before = [reads(node) for node in cluster.nodes]
    records = await cluster_driver.read_many(sids)
    after = [reads(node) for node in cluster.nodes]
    assert records == [b"v1------" if i % 2 == 0 else None for i in range(60)]
    # one pipeline per node (plus the INFO that counted it), not one read per key
    assert all(a - b <= 3 for a, b in zip(after, before, strict=True)), (before, after)


# -- replies no Redis would give ----------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
async def proxy(upstream: RedisServer) -> AsyncIterator[RespProxy]:
    resp = await RespProxy(upstream.port).start()
    yield resp
    await resp.close()


USER = "someone.personal@example.com"
HANDLE = new_handle()
WRONG = {
    "array-of-1": b"*1\r\n$1\r\nx\r\n",
    "array-of-ints": b"*2\r\n:1\r\n:2\r\n",
    "nested-array": b"*1\r\n*1\r\n:1\r\n",
    "nil": b"$-1\r\n",
    "string": b"$1\r\n1\r\n",
    "simple-string": b"+OK\r\n",
    "double": b",1.5\r\n",
    "map": b"%1\r\n+a\r\n+b\r\n",
    "not-a-number": b":abc\r\n",
    "line-over-64k": b"+" + b"x" * 70_000 + b"\r\n",
}
COUNTS = {"integer--1": b":-1\r\n", "integer-2": b":2\r\n", "empty-array": b"*0\r\n"}
Call = Callable[[RedisDriver, str], Awaitable[Any]]
#: operation -> (the command whose reply is replaced, the call, replies of its own it
#: cannot get)
HOSTILE: dict[str, tuple[Match, Call, dict[str, bytes]]] = {
    "index": (named(b"EVALSHA", sha=INDEX_SHA),
              lambda drv, sid: drv.index_user_session(USER, HANDLE, sid, TTL), COUNTS),
    "index-EVAL": (named(b"EVAL"),
                   lambda drv, sid: drv.index_user_session(USER, HANDLE, sid, TTL), COUNTS),
    "read": (named(b"EVALSHA", sha=READ_SHA), lambda drv, sid: drv.user_session_index(USER),
             {"integer-0": b":0\r\n", "array-of-3": b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n",
              "empty-string": b"$0\r\n\r\n"}),
    "unindex": (named(b"EVALSHA", sha=UNINDEX_SHA),
                lambda drv, sid: drv.unindex_user_sessions(USER, {HANDLE: sid}), COUNTS),
    "read_many": (named(b"MGET"), lambda drv, sid: drv.read_many([sid, new_session_id()]),
                  {"integer": b":1\r\n", "array-of-3": b"*3\r\n$-1\r\n$-1\r\n$-1\r\n",
                   "array-with-an-int": b"*2\r\n$-1\r\n:1\r\n", "empty-array": b"*0\r\n"}),
}
#: replies each operation's command cannot get (an MGET of two ids: two strings or nils)
WRONG_FOR = {name: {**WRONG, **own} for name, (_, _, own) in HOSTILE.items()}


@pytest.mark.parametrize("name", list(HOSTILE))
@pytest.mark.parametrize("pipelining", [pytest.param(True, id="pipelined"),
                                        pytest.param(False, id="plain")])
@pytest.mark.parametrize("protocol", [2, 3])
async def test_a_wrong_reply_is_a_driver_error(proxy: RespProxy, prefix: str, name: str,
                                               pipelining: bool, protocol: int) -> None:
    match, call, _ = HOSTILE[name]
    failures = {}
    for reply_name, reply in WRONG_FOR[name].items():
        driver = redis_driver(url=f"{proxy.url}?protocol={protocol}", prefix=prefix,
                              pipelining=pipelining, socket_timeout=0.5, connect_timeout=0.5)
        sid = new_session_id()
        try:
            await driver.write(sid, b"v0------", 60)
            await driver.index_user_session(USER, HANDLE, sid, TTL)
            if name == "index-EVAL":
                proxy.answer(named(b"EVALSHA"), b"-NOSCRIPT No matching script.\r\n")
            proxy.answer(match, reply)
            result = (await asyncio.wait_for(asyncio.gather(call(driver, sid),
                                                            return_exceptions=True), 10))[0]
            proxy.clear()
            # no connection left out of step: the next calls get their own replies
            assert await driver.read(sid) == b"v0------"
            assert await driver.user_session_index(USER) == {HANDLE: sid}
            await driver.unindex_user_sessions(USER, {HANDLE: sid})  # the next sid's turn
        finally:
            proxy.clear()
            await driver.close()
        if not isinstance(result, DriverError):
            failures[reply_name] = repr(result)[:80]
        elif sid in texts_of(result) or user_tag(USER) in texts_of(result):
            failures[reply_name] = "shows the session id or the user's tag"
    assert failures == {}


def echo_args(command: list[bytes]) -> bytes:
    """An error reply quoting every argument, as some proxies' errors do."""
    return b"-ERR refused: " + b" ".join(command[1:]) + b"\r\n"


@pytest.mark.parametrize("name", ["index", "read", "unindex", "read_many"])
async def test_errors_show_no_whole_id_nor_user(proxy: RespProxy, prefix: str, name: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    match, call, _ = HOSTILE[name]
    driver = redis_driver(url=proxy.url, prefix=prefix)
    sid = new_session_id()
    proxy.answer(match, echo_args)
    try:
        with caplog.at_level(logging.DEBUG, logger="aiosessmgr"):
            with pytest.raises(DriverError) as info:
                await call(driver, sid)
            logging.getLogger("aiosessmgr").warning("failed: %s", info.value,
                                                    exc_info=info.value)
    finally:
        proxy.clear()
        await driver.close()
    text = texts_of(info.value)
    assert "refused" in str(info.value)
    assert sid not in text and user_tag(USER) not in text and USER not in text
    assert all(sid not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("protocol", [2, 3])
async def test_honest_replies_through_the_proxy(proxy: RespProxy, prefix: str,
                                                protocol: int) -> None:
    """The control: through the same proxy, nothing replaced, everything works."""
    driver = redis_driver(url=f"{proxy.url}?protocol={protocol}", prefix=prefix)
    sid = new_session_id()
    try:
        await driver.index_user_session(USER, HANDLE, sid, TTL)
        assert await driver.user_session_index(USER) == {HANDLE: sid}
        assert await driver.read_many([sid]) == [None]
        assert await driver.unindex_user_sessions(USER, {HANDLE: sid}) == 1
    finally:
        await driver.close()


def test_user_tags_are_printable_ascii() -> None:
    allowed = set(string.ascii_letters + string.digits + "_.-~@+%")
    assert all(set(user_tag(user)) <= allowed for user in HOSTILE_USERS)
