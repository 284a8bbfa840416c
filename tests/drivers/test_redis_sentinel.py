"""The Redis driver through Sentinel: the master is found by service name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ..redis_server import SentinelServers
from .conftest import ClientFactory, redis_driver, redis_manager, session_app

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def sentinel() -> Iterator[SentinelServers]:
    """One master and one sentinel monitoring it as 'mymaster'."""
    servers = SentinelServers("mymaster").start()
    yield servers
    servers.cleanup()


def sentinel_options(servers: SentinelServers) -> dict[str, Any]:
    return {"sentinel": {"hosts": [f"127.0.0.1:{servers.sentinel_port}"],
                         "service_name": servers.service_name}}


async def test_driver_finds_the_master(sentinel: SentinelServers, prefix: str) -> None:
    driver = redis_driver(prefix=prefix, connection={"db": 2}, **sentinel_options(sentinel))
    try:
        await driver.write("a", b"v1------", 60)
        assert await driver.read_touch("a", 60) == b"v1------"
        assert await driver.compare_and_set("a", b"v2------", 60, b"v1------")
    finally:
        await driver.close()
    # the record is on the master the sentinel named, in the configured database
    assert sentinel.master.cli("-n", "2", "GET", f"{prefix}{{a}}").strip() == "v2------"


async def test_sessions_through_the_middleware(aiohttp_client: ClientFactory,
                                               sentinel: SentinelServers, prefix: str) -> None:
    manager = redis_manager(prefix=prefix, **sentinel_options(sentinel))
    client = await aiohttp_client(session_app(manager))
    assert await (await client.post("/incr")).json() == {"n": 1}
    assert await (await client.post("/incr")).json() == {"n": 2}
    assert await (await client.get("/read")).json() == {"n": 2}
