"""The Redis driver on redis-py's public API: same replies on every path, redis-py's recovery.

Pins the class of fault where the driver talked to connections below redis-py's public
API: replies that skipped redis-py's response callbacks (one command, two reply types),
pooled connections that redis-py's checks and retries never saw, and calls that exist
only in some redis-py versions (``pool.get_connection()`` without arguments).
"""

from __future__ import annotations

import ast
import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis, RedisCluster

import aiosessmgr.drivers.redis as redis_package
from aiosessmgr.drivers.redis import CAS_SCRIPT, CAS_SHA

from ..redis_server import RedisServer, single_node_cluster
from .conftest import ClientFactory, redis_driver, redis_manager, session_app

pytestmark = pytest.mark.redis

V1, V2, V3 = b"v1------", b"v2------", b"v3------"
Command = tuple[str | bytes | int, ...]


def every_command(key: str, lock: str, missing: str) -> list[Command]:
    """Each command the driver sends, in an order that meets each kind of reply."""
    return [
        ("SET", key, V1 + b"x", "EX", 60),             # OK
        ("GET", key),                                  # a value
        ("GET", missing),                              # nil
        ("GETEX", key, "EX", 60),                      # a value
        ("GETEX", missing, "EX", 60),                  # nil
        ("EVAL", CAS_SCRIPT, 1, key, V2, 60, "1", V1),  # 1, and the script is loaded
        ("EVALSHA", CAS_SHA, 1, key, V3, 60, "1", V1),  # 0
        ("EVALSHA", CAS_SHA, 1, key, V3, 60, "1", V2),  # 1
        ("SET", lock, "token", "NX", "PX", 10_000),    # OK
        ("SET", lock, "token", "NX", "PX", 10_000),    # nil: taken
        ("DEL", key),                                  # 1
        ("DEL", key),                                  # 0
    ]


async def replies_by_path(client: Redis | RedisCluster, url: str, prefix: str,
                          **options: Any) -> dict[str, list[tuple[type, Any]]]:
    """Every command's reply (type and value) via redis-py itself and each driver path."""
    pipelined = redis_driver(url=url, prefix=prefix, **options)
    plain = redis_driver(url=url, prefix=prefix, pipelining=False, **options)
    try:
        paths: dict[str, Any] = {
            # what redis-py documents: the client's own execute_command
            "redis-py": client.execute_command,
            "plain": lambda *command: plain._send(command),
            # a batch of one, sent on its own
            "pipelined-alone": lambda *command: pipelined._send(command),
        }

        async def in_a_batch(*command: Any) -> Any:
            # sent together with another command: a redis-py pipeline of two
            reply, _ = await asyncio.gather(pipelined._send(command),
                                            pipelined._send(("GET", f"{prefix}{{other}}")))
            return reply

        paths["pipelined-batch"] = in_a_batch
        results = {}
        for name, send in paths.items():
            # one session id per path (one hash tag: one slot on a cluster), same state
            tag = f"{{{name}}}"
            commands = every_command(f"{prefix}{tag}", f"{prefix}{tag}:lock",
                                     f"{prefix}{tag}:missing")
            results[name] = [(type(reply), reply) for reply in
                             [await send(*command) for command in commands]]
        return results
    finally:
        await pipelined.close()
        await plain.close()


async def test_every_path_answers_as_redis_py_does(redis_server: RedisServer, prefix: str,
                                                    inspector: Redis) -> None:
    results = await replies_by_path(inspector, redis_server.url, prefix)
    expected = results["redis-py"]
    # redis-py's response callbacks ran: SET answers True, not the raw b"OK"
    assert expected[0] == (bool, True) and expected[9] == (type(None), None)
    assert expected[3] == (bytes, V1 + b"x") and expected[6] == (int, 0)
    for name, replies in results.items():
        assert replies == expected, name


@pytest.fixture(scope="module")
def cluster_node() -> Iterator[RedisServer]:
    """A Redis Cluster of one node holding every slot."""
    node = single_node_cluster()
    yield node
    node.cleanup()


@pytest.fixture
async def cluster_client(cluster_node: RedisServer) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(cluster_node.url)
    yield client
    await client.aclose()


async def test_every_path_answers_as_redis_py_does_on_cluster(
        cluster_node: RedisServer, cluster_client: RedisCluster, prefix: str) -> None:
    results = await replies_by_path(cluster_client, cluster_node.url, prefix, cluster=True)
    expected = results["redis-py"]
    assert expected[0] == (bool, True) and expected[9] == (type(None), None)
    for name, replies in results.items():
        assert replies == expected, name


def connections_received(server: RedisServer) -> int:
    return int(server.cli("INFO", "stats").split("total_connections_received:")[1].split()[0])


@pytest.mark.parametrize("pipelining", [pytest.param(True, id="pipelined"),
                                        pytest.param(False, id="plain")])
async def test_connections_killed_server_side_are_replaced_without_a_503(
        aiohttp_client: ClientFactory, own_redis: RedisServer, pipelining: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    manager = redis_manager(url=own_redis.url, pipelining=pipelining, socket_timeout=1,
                            connect_timeout=1)
    client = await aiohttp_client(session_app(manager))
    assert (await client.post("/incr")).status == 200
    # several pooled connections (plain: one per concurrent request)
    warm = await asyncio.gather(*(client.get("/read") for _ in range(10)))
    assert [r.status for r in warm] == [200] * 10
    before = connections_received(own_redis)
    # the server closes every connection but redis-cli's own: the pool holds dead ones
    assert int(own_redis.cli("CLIENT", "KILL", "TYPE", "normal")) >= 1
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        responses = await asyncio.gather(*(client.post("/incr") for _ in range(10)))
        assert [r.status for r in responses] == [200] * 10
        assert await (await client.get("/read")).json() == {"n": 11}
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert connections_received(own_redis) > before  # redis-py opened fresh ones


@pytest.mark.xfail(
    redis.VERSION < (7, 2), strict=True,
    reason="redis-py before 7.2 drops a cluster's startup node on a connection error and "
           "then cannot re-read the topology: 'Redis Cluster cannot be connected' for good "
           "(redis/redis-py#2555, #3693; 7.1.1 fails, 7.2.0 recovers)")
async def test_connections_killed_server_side_on_cluster(
        cluster_node: RedisServer, prefix: str, pipelining: bool) -> None:
    driver = redis_driver(url=cluster_node.url, cluster=True, prefix=prefix,
                          pipelining=pipelining, socket_timeout=1, connect_timeout=1)
    try:
        await asyncio.gather(*(driver.write(f"s{i}", V1, 60) for i in range(10)))
        assert int(cluster_node.cli("CLIENT", "KILL", "TYPE", "normal")) >= 1
        # a batch (pipelined: one cluster pipeline), then one command on its own
        assert await asyncio.gather(*(driver.read_touch(f"s{i}", 60) for i in range(10))) \
            == [V1] * 10
        assert int(cluster_node.cli("CLIENT", "KILL", "TYPE", "normal")) >= 1
        assert await driver.compare_and_set("s0", V2, 60, V1)
    finally:
        await driver.close()


#: connection-level calls below redis-py's public client API (and what the old
#: auto-pipeliner used): the driver goes through clients, pipelines and Lock only
BELOW_THE_API = {"get_connection", "release", "send_packed_command", "send_command",
                 "pack_command", "pack_commands", "read_response", "parse_response",
                 "can_read_destructive", "connection_pool"}


#: what the driver may use of a client's ``connection_pool``: its public ``disconnect()``
#: (to drop connections out of step) and ``connection_kwargs`` (to read the protocol)
POOL_API = {"disconnect", "connection_kwargs"}


def test_the_driver_uses_only_redis_py_public_api() -> None:
    package = Path(redis_package.__file__).parent
    found = []
    for path in sorted(package.glob("*.py")):
        nodes = list(ast.walk(ast.parse(path.read_text(), str(path))))
        allowed = {id(node.value) for node in nodes
                   if isinstance(node, ast.Attribute) and node.attr in POOL_API
                   and isinstance(node.value, ast.Attribute)
                   and node.value.attr == "connection_pool"}
        for node in nodes:
            if not isinstance(node, ast.Attribute) or id(node) in allowed:
                continue
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            private = (node.attr.startswith("_") and not node.attr.startswith("__")
                       and owner not in ("self", "cls"))
            if node.attr in BELOW_THE_API or private:
                found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert found == []

