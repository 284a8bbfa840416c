"""The Redis driver on a real 3-master Redis Cluster: routing, pipelines per slot, CAS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import RedisCluster

from aiosessmgr import DriverError, SessionManager
from aiosessmgr.drivers.redis import CAS_SHA, RedisDriver

from ..redis_server import ClusterServers
from .conftest import ClientFactory, redis_driver, redis_manager, session_app

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterServers]:
    """Three masters on free ports, ``cluster_state:ok`` on each (takes a few seconds)."""
    servers = ClusterServers(masters=3).start()
    yield servers
    servers.cleanup()


@pytest.fixture(params=[pytest.param(True, id="pipelined"), pytest.param(False, id="plain")])
async def manager(cluster: ClusterServers, prefix: str,
                  request: pytest.FixtureRequest) -> AsyncIterator[SessionManager]:
    mgr = redis_manager(url=cluster.url, cluster=True, prefix=prefix, pipelining=request.param)
    yield mgr
    await mgr.close()


def keys_per_node(cluster: ClusterServers, prefix: str) -> list[int]:
    return [len([k for k in node.cli("--scan", "--pattern", f"{prefix}*").split() if k])
            for node in cluster.nodes]


async def test_sessions_through_the_middleware(aiohttp_client: ClientFactory,
                                               manager: SessionManager) -> None:
    client = await aiohttp_client(session_app(manager))
    assert await (await client.post("/incr")).json() == {"n": 1}
    assert await (await client.post("/put/user", data="ann")).json() == {"n": 1, "user": "ann"}
    responses = await asyncio.gather(*(client.post("/incr") for _ in range(10)))
    assert all(r.status == 200 for r in responses)
    assert await (await client.get("/read")).json() == {"n": 11, "user": "ann"}


async def test_one_batch_spans_slots_on_every_node(cluster: ClusterServers,
                                                   manager: SessionManager) -> None:
    sessions = [manager.session() for _ in range(60)]
    await asyncio.gather(*(s.start() for s in sessions))
    for i, session in enumerate(sessions):
        session.put("i", i)
    await asyncio.gather(*(s.save() for s in sessions))
    prefix = manager.get_driver().prefix  # type: ignore[attr-defined]
    assert all(count > 0 for count in keys_per_node(cluster, prefix))
    loaded = await asyncio.gather(*(manager.load(s.id) for s in sessions))
    assert [s.get("i") for s in loaded] == list(range(60))


async def test_noscript_recovery_on_every_node(cluster: ClusterServers,
                                               manager: SessionManager) -> None:
    sessions = [await manager.driver() for _ in range(12)]
    for session in sessions:
        session.put("x", 1)
    await asyncio.gather(*(s.save() for s in sessions))
    for node in cluster.nodes:
        node.cli("SCRIPT", "FLUSH")
        assert node.cli("SCRIPT", "EXISTS", CAS_SHA).strip() == "0"
    for session in sessions:
        session.put("x", 2)
    await asyncio.gather(*(s.save() for s in sessions))
    loaded = await asyncio.gather(*(manager.load(s.id) for s in sessions))
    assert [s.get("x") for s in loaded] == [2] * 12


async def test_errors_in_a_cluster_pipeline_reach_only_their_caller(
        cluster: ClusterServers, prefix: str) -> None:
    driver = redis_driver(url=cluster.url, cluster=True, prefix=prefix)
    try:
        assert isinstance(driver.client, RedisCluster)
        await driver.write("good", b"v1------", 60)
        await driver.client.rpush(driver.key("list"), "x")
        results: list[Any] = await asyncio.gather(
            *(driver.read(f"other{i}") for i in range(5)),
            driver.read("good"), driver.read("list"), driver.read_touch("good", 60),
            driver.write("bad", b"v1------", 0),  # "invalid expire time": this caller's alone
            return_exceptions=True,
        )
    finally:
        await driver.close()
    assert results[:5] == [None] * 5
    assert results[5] == b"v1------"
    assert results[6] is None  # a key of another type is no record of ours
    assert results[7] == b"v1------"
    assert isinstance(results[8], DriverError)
    assert "invalid expire time" in str(results[8])


async def test_an_existing_cluster_client_is_left_open(cluster: ClusterServers,
                                                       prefix: str) -> None:
    client = RedisCluster.from_url(cluster.url)
    try:
        driver = RedisDriver(client, prefix=prefix)
        await driver.write("a", b"v1------", 60)
        await driver.close()
        assert await client.get(f"{prefix}{{a}}") == b"v1------"
    finally:
        await client.aclose()


@pytest.mark.parametrize("pipelining", [pytest.param(True, id="pipelined"),
                                        pytest.param(False, id="plain")])
async def test_first_use_by_many_requests_at_once(cluster: ClusterServers, prefix: str,
                                                  pipelining: bool) -> None:
    # redis-py discovers the topology on first use; commands racing it used to fail
    for _ in range(3):
        driver = redis_driver(url=cluster.url, cluster=True, prefix=prefix,
                              pipelining=pipelining)
        try:
            results = await asyncio.gather(*(
                driver.compare_and_set(f"id{i}", b"v1------", 60, None) for i in range(30)
            ))
            assert results == [True] * 30
        finally:
            await driver.close()
        prefix += "x"


async def test_session_locks_on_every_node(cluster: ClusterServers, prefix: str) -> None:
    driver = redis_driver(url=cluster.url, cluster=True, prefix=prefix)
    try:
        sids = [f"id{i}" for i in range(12)]
        tokens = await asyncio.gather(*(driver.acquire_lock(sid, 10, 1) for sid in sids))
        assert all(tokens)
        assert all(count > 0 for count in keys_per_node(cluster, prefix))
        assert await asyncio.gather(*(driver.acquire_lock(sid, 10, 0) for sid in sids)) \
            == [None] * 12
        # redis-py's Lock reloads its release script on whichever node lost it
        for node in cluster.nodes:
            node.cli("SCRIPT", "FLUSH")
        await asyncio.gather(*(driver.release_lock(sid, token)
                               for sid, token in zip(sids, tokens, strict=True) if token))
        assert keys_per_node(cluster, prefix) == [0, 0, 0]
    finally:
        await driver.close()
