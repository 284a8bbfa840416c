"""The Redis driver against real redis-server processes: storage, expiry, CAS, pipelining."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from aiohttp import ClientSession, web
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from aiosessmgr import (
    ConfigError,
    DriverError,
    SessionManager,
    get_session,
    is_valid_session_id,
    new_session_id,
)
from aiosessmgr.drivers.redis import CAS_SHA, RedisDriver

from ..redis_server import RedisServer, calls_delta, free_port, single_node_cluster
from .conftest import ClientFactory, redis_driver, redis_manager, session_app

pytestmark = pytest.mark.redis

V1, V2 = b"v1------", b"v2------"


async def test_expiry_is_set_and_rolled_by_read_touch(driver: RedisDriver,
                                                      inspector: Redis) -> None:
    key = driver.key("a")
    await driver.write("a", V1, 100)
    assert 90 < await inspector.ttl(key) <= 100
    assert await driver.read("a") == V1  # a plain read leaves expiry alone
    assert await inspector.ttl(key) <= 100
    assert await driver.read_touch("a", 5000) == V1
    assert 4990 < await inspector.ttl(key) <= 5000
    assert await driver.compare_and_set("a", V2, 300, V1)
    assert 290 < await inspector.ttl(key) <= 300
    # Redis itself expires the record; the driver then reports it absent
    await inspector.pexpireat(key, 1)  # a deadline in the past: expired now, no sleeping
    assert await driver.read_touch("a", 100) is None


async def test_key_layout_and_prefix(redis_server: RedisServer, inspector: Redis) -> None:
    driver = redis_driver(url=redis_server.url, prefix="myapp:sess:")
    try:
        await driver.write("abc", V1, 60)
        assert driver.key("abc") == "myapp:sess:{abc}"
        assert await inspector.get("myapp:sess:{abc}") == V1
    finally:
        await driver.destroy("abc")
        await driver.close()
    default = redis_driver(url=redis_server.url)
    assert default.key("abc") == "session:{abc}"
    await default.close()


async def test_gc_returns_zero_and_leaves_records(driver: RedisDriver) -> None:
    await driver.write("a", V1, 60)
    assert await driver.gc(0) == 0
    assert await driver.read("a") == V1


async def test_noscript_recovery(driver: RedisDriver, inspector: Redis) -> None:
    assert await driver.compare_and_set("a", V1, 60, None)
    await inspector.script_flush()
    assert await inspector.script_exists(CAS_SHA) == [False]
    assert await driver.compare_and_set("a", V2, 60, V1)
    assert await driver.read("a") == V2
    assert await inspector.script_exists(CAS_SHA) == [True]  # loaded again by EVAL
    # many callers hit NOSCRIPT inside one pipeline: each one is retried and answered
    await inspector.script_flush()
    results = await asyncio.gather(*(
        driver.compare_and_set(f"n{i}", V1, 60, None) for i in range(10)
    ))
    assert results == [True] * 10


async def test_errors_in_a_pipeline_reach_only_their_caller(
    redis_server: RedisServer, prefix: str, inspector: Redis
) -> None:
    driver = redis_driver(url=redis_server.url, prefix=prefix)
    try:
        await inspector.set(driver.key("good"), V1)
        await inspector.rpush(driver.key("list"), "x")  # GET on a list: WRONGTYPE
        before = int((await inspector.info("stats"))["total_connections_received"])
        results: list[Any] = [*await asyncio.gather(
            driver.read("good"), driver.write("bad", V1, 0), driver.read("missing"),
            driver.compare_and_set("list", V2, 60, None), driver.read_touch("good", 60),
            driver.compare_and_set("fresh", V2, 60, None), driver.read("list"),
            return_exceptions=True,
        )]
        after = int((await inspector.info("stats"))["total_connections_received"])
    finally:
        await driver.close()
    assert after - before == 1  # all seven went out on one connection, as one pipeline
    assert results[0] == V1
    assert isinstance(results[1], DriverError)  # EX 0: an error reply for this caller
    assert isinstance(results[1].__cause__, ResponseError)
    assert "invalid expire time" in str(results[1])
    assert results[2] is None
    assert results[3] is False  # a key of another type is not ours: "not written"
    assert results[4] == V1
    assert results[5] is True
    assert results[6] is None


async def test_pipelining_batches_one_turn_only(redis_server: RedisServer, prefix: str,
                                                inspector: Redis) -> None:
    driver = redis_driver(url=redis_server.url, prefix=prefix)
    try:
        await driver.write("a", V1, 60)
        # sequential awaits are separate turns: each one goes out alone, still correct
        for _ in range(3):
            assert await driver.read("a") == V1
        reads = await asyncio.gather(*(driver.read("a") for _ in range(200)))
        assert reads == [V1] * 200
        clients = (await inspector.info("clients"))["connected_clients"]
    finally:
        await driver.close()
    assert clients <= 3  # the inspector plus at most one or two driver connections


async def test_passing_an_existing_client(redis_server: RedisServer, prefix: str) -> None:
    client = Redis.from_url(redis_server.url)
    try:
        manager = redis_manager(client=client, prefix=prefix)
        session = await manager.driver()
        session.put("user", "ann")
        await session.save()
        assert (await manager.load(session.id)).get("user") == "ann"
        assert await client.exists(f"{prefix}{{{session.id}}}") == 1
        await manager.close()
        # the driver did not close the application's client
        assert await client.ping()
    finally:
        await client.aclose()


@pytest.mark.parametrize("form", ["url-db", "connection", "unix"])
async def test_connection_forms(form: str, prefix: str) -> None:
    server = RedisServer("--unixsocket", "redis.sock", "--unixsocketperm", "700").start()
    try:
        forms: dict[str, dict[str, Any]] = {
            "url-db": {"url": f"redis://127.0.0.1:{server.port}/3"},
            "connection": {"connection": {"host": "127.0.0.1", "port": server.port, "db": 3}},
            "unix": {"url": f"unix://{server.dir / 'redis.sock'}?db=3"},
        }
        options = forms[form]
        driver = redis_driver(prefix=prefix, **options)
        try:
            await driver.write("a", V1, 60)
            assert await driver.read("a") == V1
        finally:
            await driver.close()
        # it landed in database 3 of this server
        assert server.cli("-n", "3", "EXISTS", f"{prefix}{{a}}").strip() == "1"
        assert server.cli("-n", "0", "DBSIZE").strip() == "0"
    finally:
        server.cleanup()


@pytest.mark.parametrize("options, message", [
    pytest.param({"uri": "redis://x"}, "did you mean 'url'", id="typo"),
    pytest.param({"socketTimeout": 1}, "socket_timeout", id="camel-case"),
    pytest.param({"url": "redis://x", "connection": {}}, "one of", id="url-and-connection"),
    pytest.param({"url": "redis://x", "sentinel": {"hosts": ["h:1"], "service_name": "m"}},
                 "one of", id="url-and-sentinel"),
    pytest.param({"url": "http://x"}, "invalid redis connection", id="bad-scheme"),
    pytest.param({"url": 7}, "url must be a string", id="url-type"),
    pytest.param({"connection": {"hots": "x"}}, "did you mean 'host'", id="connection-typo"),
    pytest.param({"connection": {"port": "6379"}}, "port must be an integer", id="port-type"),
    pytest.param({"prefix": "s{x}:"}, "must not contain", id="brace-prefix"),
    pytest.param({"prefix": 3}, "prefix must be a string", id="prefix-type"),
    pytest.param({"socket_timeout": 0}, "positive", id="zero-timeout"),
    pytest.param({"connect_timeout": "1"}, "positive", id="timeout-type"),
    pytest.param({"pipelining": "yes"}, "pipelining", id="pipelining-type"),
    pytest.param({"cluster": 1}, "cluster must be", id="cluster-type"),
    pytest.param({"cluster": True, "url": "unix:///tmp/x.sock"}, "invalid redis connection",
                 id="cluster-unix"),
    pytest.param({"cluster": True, "connection": {"db": 2}}, "db must be 0", id="cluster-db"),
    pytest.param({"cluster": True, "sentinel": {"hosts": ["h:1"], "service_name": "m"}},
                 "cannot be combined", id="cluster-sentinel"),
    pytest.param({"sentinel": {"hosts": ["h:1"]}}, "service_name", id="sentinel-no-service"),
    pytest.param({"sentinel": {"hosts": "h:1", "service_name": "m"}}, "list", id="hosts-str"),
    pytest.param({"sentinel": {"hosts": ["h"], "service_name": "m"}}, "host:port",
                 id="hosts-no-port"),
    pytest.param({"sentinel": {"hosts": ["h:1"], "service_name": "m"},
                  "connection": {"host": "x"}}, "only db", id="sentinel-with-host"),
    pytest.param({"client": "redis://x"}, r"redis\.asyncio\.Redis", id="client-type"),
])
def test_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SessionManager({"drivers": {"r": {"driver": "redis", **options}}})


async def test_client_option_rejections() -> None:
    sync_client = redis.Redis()
    decoding = Redis(decode_responses=True)
    try:
        with pytest.raises(ConfigError, match=r"redis\.asyncio"):
            redis_driver(client=sync_client)
        with pytest.raises(ConfigError, match="decode_responses=False"):
            redis_driver(client=decoding)
        with pytest.raises(ConfigError, match="on the client itself"):
            redis_driver(client=Redis(), socket_timeout=1)
    finally:
        sync_client.close()
        await decoding.aclose()


async def test_overall_bound_per_call() -> None:
    """connect_timeout + socket_timeout per call; twice that plus 0.5 s on a Cluster, which
    retries once after a topology refresh, whether the driver built it or was given it."""
    port = free_port()  # nothing listens: construction does no I/O
    given = RedisCluster(host="127.0.0.1", port=port)
    try:
        for options, bound in (({"url": f"redis://127.0.0.1:{port}"}, 6.0),
                               ({"url": f"redis://127.0.0.1:{port}", "socket_timeout": 1,
                                 "connect_timeout": 2}, 3.0),
                               ({"url": f"redis://127.0.0.1:{port}", "cluster": True}, 12.5),
                               ({"client": Redis(port=port)}, 6.0),
                               ({"client": given}, 12.5)):
            manager = redis_manager(**options)
            driver = manager.get_driver()
            assert isinstance(driver, RedisDriver) and driver.timeout == bound, options
            await manager.close()
    finally:
        await given.aclose()


async def test_construction_does_no_network_io() -> None:
    port = free_port()  # nothing listens here
    for options in ({"url": f"redis://127.0.0.1:{port}"},
                    {"cluster": True, "url": f"redis://127.0.0.1:{port}"},
                    {"sentinel": {"hosts": [f"127.0.0.1:{port}"], "service_name": "m"}}):
        manager = redis_manager(connect_timeout=1, socket_timeout=1, **options)
        driver = manager.get_driver()
        assert isinstance(driver, RedisDriver)
        assert isinstance(driver.client, RedisCluster) == ("cluster" in options)
        # the first use fails cleanly, as a DriverError
        with pytest.raises(DriverError):
            await driver.read("a")
        await manager.close()


async def test_close_releases_connections(redis_server: RedisServer, prefix: str,
                                          inspector: Redis) -> None:
    async def connected() -> int:
        return int((await inspector.info("clients"))["connected_clients"])

    baseline = await connected()
    driver = redis_driver(url=redis_server.url, prefix=prefix, pipelining=False)
    await asyncio.gather(*(driver.read(f"k{i}") for i in range(5)))
    assert await connected() > baseline
    await driver.close()
    assert await connected() == baseline
    with pytest.raises(DriverError, match="closed"):
        await driver.read("a")
    await driver.close()  # twice is fine


# -- error mapping: every failure reaches the caller as DriverError, cause chained -------


async def test_error_mapping_server_down(own_redis: RedisServer) -> None:
    driver = redis_driver(url=own_redis.url)
    try:
        await driver.write("a", V1, 60)
        own_redis.stop()
        for call in (driver.read("a"), driver.read_touch("a", 60), driver.write("a", V1, 60),
                     driver.compare_and_set("a", V1, 60, None), driver.destroy("a")):
            with pytest.raises(DriverError, match="ConnectionError") as info:
                await call
            assert isinstance(info.value.__cause__, redis.ConnectionError)
    finally:
        await driver.close()


@pytest.mark.parametrize("pipelining", [pytest.param(True, id="pipelined"),
                                        pytest.param(False, id="plain")])
async def test_error_mapping_server_hangs(own_redis: RedisServer, pipelining: bool) -> None:
    driver = redis_driver(url=own_redis.url, socket_timeout=0.3, connect_timeout=0.3,
                          pipelining=pipelining)
    try:
        await driver.write("a", V1, 60)
        own_redis.pause()
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(DriverError) as info:
                await driver.read_touch("a", 60)
            # bounded by the configured timeouts (generous margin), never a hang
            assert loop.time() - started < 5
            assert isinstance(info.value.__cause__, (redis.TimeoutError, TimeoutError))
        finally:
            own_redis.resume()
        assert await driver.read("a") == V1  # and it works again once the server answers
    finally:
        await driver.close()


async def test_error_mapping_response_error(driver: RedisDriver) -> None:
    with pytest.raises(DriverError, match="invalid expire time") as info:
        await driver.write("a", V1, 0)  # EX 0: Redis refuses the command
    assert isinstance(info.value.__cause__, ResponseError)
    assert not isinstance(info.value.__cause__, NoScriptError)


# -- through the real middleware ---------------------------------------------------------


async def test_sessions_through_the_middleware(aiohttp_client: ClientFactory,
                                               redis_server: RedisServer, prefix: str,
                                               pipelining: bool) -> None:
    manager = redis_manager(url=redis_server.url, prefix=prefix, pipelining=pipelining)
    client = await aiohttp_client(session_app(manager))
    assert (await (await client.post("/incr")).json()) == {"n": 1}
    assert (await (await client.post("/incr")).json()) == {"n": 2}
    assert (await (await client.get("/read")).json()) == {"n": 2}
    # concurrent requests on one session lose nothing (CAS + merge)
    responses = await asyncio.gather(*(client.post("/incr") for _ in range(20)))
    assert all(r.status == 200 for r in responses)
    assert (await (await client.get("/read")).json()) == {"n": 22}


async def test_command_counts_through_the_middleware(aiohttp_client: ClientFactory,
                                                     own_redis: RedisServer) -> None:
    manager = redis_manager(url=own_redis.url)
    client = await aiohttp_client(session_app(manager))
    # create the session and open the connection first (handshake commands are not ours)
    assert (await client.post("/put/user", data="ann")).status == 200
    assert (await client.get("/read")).status == 200

    before = own_redis.command_calls()
    assert await (await client.get("/read")).json() == {"user": "ann"}
    assert calls_delta(before, own_redis.command_calls()) == {"getex": 1}

    before = own_redis.command_calls()
    assert (await client.get("/none")).status == 200
    assert calls_delta(before, own_redis.command_calls()) == {}

    # a change costs the read and one scripted compare-and-set (its GET and SET run inside)
    before = own_redis.command_calls()
    assert (await client.post("/put/user", data="bob")).status == 200
    assert calls_delta(before, own_redis.command_calls()) == {"getex": 1, "evalsha": 1,
                                                              "get": 1, "set": 1}


# -- a key of another type under a session's name: one bad record, not an outage ----------

#: how to put a value of each non-string type under a key
FOREIGN_TYPES: dict[str, Callable[[Any, str], Awaitable[Any]]] = {
    "hash": lambda client, key: client.hset(key, "f", "v"),
    "list": lambda client, key: client.rpush(key, "x"),
    "set": lambda client, key: client.sadd(key, "x"),
    "zset": lambda client, key: client.zadd(key, {"x": 1.0}),
    "stream": lambda client, key: client.xadd(key, {"f": "v"}),
}


@pytest.fixture(params=list(FOREIGN_TYPES))
def foreign_type(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


async def snapshot(client: Any, key: str) -> tuple[Any, ...]:
    """What a key holds, for "left as it was": its type, serialized value and expiry."""
    return await client.type(key), await client.dump(key), await client.pttl(key)


def warnings_about(caplog: pytest.LogCaptureFixture, sid: str) -> list[str]:
    """The WARNING lines that name session *sid*, checking that none gives its whole id."""
    lines = [r.getMessage() for r in caplog.records
             if r.name == "aiosessmgr" and r.levelno == logging.WARNING]
    assert not any(sid in line for line in lines)  # the id is a credential
    return [line for line in lines if f"{sid[:6]}…" in line]


async def check_foreign_key_is_no_record(driver: RedisDriver, client: Any, kind: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    sid = new_session_id()
    key, lock_key = driver.key(sid), driver.lock_key(sid)
    await FOREIGN_TYPES[kind](client, key)
    await FOREIGN_TYPES[kind](client, lock_key)
    before = await snapshot(client, key), await snapshot(client, lock_key)
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        assert await driver.read(sid) is None
        assert len(warnings_about(caplog, sid)) == 1
        assert await driver.read_touch(sid, 60) is None
        assert len(warnings_about(caplog, sid)) == 2
        # compare-and-set answers "not written", whatever it expected; nothing is written
        assert await driver.compare_and_set(sid, V2, 60, None) is False
        assert await driver.compare_and_set(sid, V2, 60, V1) is False
        # many at once (pipelined: one batch) each get their answer
        assert [*await asyncio.gather(driver.read(sid), driver.read_touch(sid, 60),
                                      driver.compare_and_set(sid, V2, 60, V1),
                                      driver.read("other"))] == [None, None, False, None]
        # the lock: never taken over a foreign key, and its release leaves the key alone
        await driver.release_lock(sid, "a-token")
        assert await driver.acquire_lock(sid, 10, 0) is None
        assert any(lock_key.replace(sid, f"{sid[:6]}…") in line
                   for line in warnings_about(caplog, sid))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert (await snapshot(client, key), await snapshot(client, lock_key)) == before
    # an explicit destroy removes whatever is under the session's key
    await driver.destroy(sid)
    assert await client.exists(key) == 0


async def test_a_foreign_key_is_no_record_and_is_left_alone(
        driver: RedisDriver, inspector: Redis, foreign_type: str,
        caplog: pytest.LogCaptureFixture) -> None:
    await check_foreign_key_is_no_record(driver, inspector, foreign_type, caplog)


@pytest.fixture(scope="module")
def one_node_cluster() -> Iterator[RedisServer]:
    """A Redis Cluster of one node holding every slot."""
    node = single_node_cluster()
    yield node
    node.cleanup()


@pytest.mark.parametrize("kind", [pytest.param("hash", id="hash"),
                                  pytest.param("stream", id="stream")])
async def test_a_foreign_key_on_cluster(one_node_cluster: RedisServer, prefix: str,
                                        pipelining: bool, kind: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    driver = redis_driver(url=one_node_cluster.url, cluster=True, prefix=prefix,
                          pipelining=pipelining)
    try:
        assert isinstance(driver.client, RedisCluster)
        await check_foreign_key_is_no_record(driver, driver.client, kind, caplog)
    finally:
        await driver.close()


async def test_a_foreign_key_through_the_middleware(
        aiohttp_client: ClientFactory, cookieless_http: ClientSession,
        redis_server: RedisServer, prefix: str, pipelining: bool, inspector: Redis,
        foreign_type: str, caplog: pytest.LogCaptureFixture) -> None:
    manager = redis_manager(url=redis_server.url, prefix=prefix, pipelining=pipelining)
    app = session_app(manager)
    driver = manager.get_driver()
    assert isinstance(driver, RedisDriver)

    async def clobbered(request: web.Request) -> web.Response:
        # another writer puts a key of another type under this session's name meanwhile
        session = await get_session(request)
        session.put("x", 1)
        await inspector.delete(driver.key(session.id))
        await FOREIGN_TYPES[foreign_type](inspector, driver.key(session.id))
        return web.json_response(session.all())

    app.router.add_post("/clobbered", clobbered)
    server = await aiohttp_client(app)
    name = manager.config.cookie.name
    sid = new_session_id()
    await FOREIGN_TYPES[foreign_type](inspector, driver.key(sid))
    before = await snapshot(inspector, driver.key(sid))
    cookie = {"Cookie": f"{name}={sid}"}

    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        response = await cookieless_http.post(server.make_url("/incr"), headers=cookie)
        assert response.status == 200
        assert await response.json() == {"n": 1}  # a fresh session...
        fresh = response.cookies[name].value
        assert is_valid_session_id(fresh) and fresh != sid  # ...under a new id
        assert len(warnings_about(caplog, sid)) == 1

        response = await cookieless_http.get(server.make_url("/read"), headers=cookie)
        assert response.status == 200
        assert await response.json() == {}
        assert sid not in " ".join(response.headers.getall("Set-Cookie", []))
        assert len(warnings_about(caplog, sid)) == 2

        # the record turns foreign while a request changes it: its save is "not written",
        # the re-read finds no record of ours, and the changes are dropped, no 500
        response = await cookieless_http.post(server.make_url("/clobbered"),
                                              headers={"Cookie": f"{name}={fresh}"})
        assert response.status == 200
        assert len(warnings_about(caplog, fresh)) == 1
        clobbered_before = await snapshot(inspector, driver.key(fresh))
    # one WARNING per request that met a foreign key, and nothing worse
    assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == \
        [logging.WARNING] * 3
    assert await snapshot(inspector, driver.key(sid)) == before
    assert await snapshot(inspector, driver.key(fresh)) == clobbered_before
    assert await inspector.type(driver.key(fresh)) == foreign_type.encode()
