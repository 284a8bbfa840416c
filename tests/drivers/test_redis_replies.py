"""The Redis driver against a server that answers what Redis never would.

A small RESP proxy sits between the driver and a real redis-server: it forwards every
command and its reply (HELLO, CLIENT SETINFO, SELECT, PING... as the real server answers
them) except the commands a test picks, whose reply it replaces. Whatever the reply - a
wrong type, a value out of range, garbage redis-py's parser chokes on, an absurd length
- the driver raises DriverError (or, for a read, answers as for a bad record) and
allocates nothing the reply asked for; and no DriverError, chained exception or log line
shows a whole session id.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from aiohttp import ClientSession
from redis.asyncio import Redis
from redis.exceptions import RedisClusterException

from aiosessmgr import DriverError, new_session_id
from aiosessmgr.drivers.redis import CAS_SHA, RELEASE_SHA, RedisDriver
from aiosessmgr.drivers.redis.replies import failure

from ..redis_server import RedisServer, SentinelServers, single_node_cluster
from .conftest import ClientFactory, redis_driver, redis_manager, session_app

pytestmark = pytest.mark.redis

Match = Callable[[list[bytes]], bool]
Answer = bytes | Callable[[list[bytes]], bytes]
#: given the server's reply, what to send instead: bytes to write and seconds to sleep,
#: in order; raising ConnectionResetError hangs up
Act = Callable[[bytes], Awaitable[list[bytes | float]]]


# -- the proxy ----------------------------------------------------------------------------


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """One whole RESP2 or RESP3 reply, as the bytes it came in."""
    line = await reader.readuntil(b"\r\n")
    kind, body = line[:1], line[1:-2]
    if kind in (b"$", b"=", b"!"):
        size = int(body)
        return line if size < 0 else line + await reader.readexactly(size + 2)
    if kind in (b"*", b"~", b">", b"%", b"|"):
        items = int(body) * (2 if kind in (b"%", b"|") else 1)
        parts = [line] + [await read_reply(reader) for _ in range(max(items, 0))]
        if kind == b"|":  # an attribute comes before the reply it describes
            parts.append(await read_reply(reader))
        return b"".join(parts)
    return line


async def read_command(reader: asyncio.StreamReader) -> list[bytes]:
    """One command as redis-py sends it: an array of bulk strings."""
    header = await reader.readuntil(b"\r\n")
    assert header[:1] == b"*", header
    args = []
    for _ in range(int(header[1:-2])):
        size = int((await reader.readuntil(b"\r\n"))[1:-2])
        args.append((await reader.readexactly(size + 2))[:-2])
    return args


def encode(command: list[bytes]) -> bytes:
    return b"".join([b"*%d\r\n" % len(command),
                     *(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in command)])


class RespProxy:
    """A RESP proxy in front of a real redis-server that replaces chosen replies.

    :meth:`answer` replies to matching commands itself (they never reach the server);
    :meth:`rewrite` forwards them and changes the server's reply. Each connection of the
    client gets its own connection to the server, and its commands are answered in order.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.answers: list[tuple[Match, Answer]] = []
        self.rewrites: list[tuple[Match, Callable[[bytes], bytes]]] = []
        self.acts: list[tuple[Match, Act]] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> RespProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def answer(self, match: Match, reply: Answer) -> None:
        """Answer commands that *match* with *reply* (or *reply(command)*) instead."""
        self.answers.append((match, reply))

    def rewrite(self, match: Match, change: Callable[[bytes], bytes]) -> None:
        """Forward commands that *match*, and pass their reply through *change*."""
        self.rewrites.append((match, change))

    def act(self, match: Match, act: Act) -> None:
        """Forward commands that *match*, then send what *act* makes of the reply."""
        self.acts.append((match, act))

    def clear(self) -> None:
        """Forget every :meth:`answer` and :meth:`act` (rewrites stay: they make the proxy
        usable)."""
        self.answers.clear()
        self.acts.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            while True:
                command = await read_command(reader)
                reply = await self._reply(command, up_reader, upstream)
                act = next((act for match, act in self.acts if match(command)), None)
                for item in [reply] if act is None else await act(reply):
                    if isinstance(item, bytes):
                        writer.write(item)
                        await writer.drain()
                    else:
                        await asyncio.sleep(item)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client hung up (or the test is over)
        finally:
            self._handlers.discard(task)
            writer.close()
            if upstream is not None:
                upstream.close()

    async def _reply(self, command: list[bytes], up_reader: asyncio.StreamReader,
                     upstream: asyncio.StreamWriter) -> bytes:
        for match, reply in self.answers:
            if match(command):
                return reply if isinstance(reply, bytes) else reply(command)
        upstream.write(encode(command))
        await upstream.drain()
        answer = await read_reply(up_reader)
        for match, change in self.rewrites:
            if match(command):
                return change(answer)
        return answer


@pytest.fixture(scope="module")
def upstream() -> Iterator[RedisServer]:
    """The real redis-server behind the proxies of this module."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
async def proxy(upstream: RedisServer) -> AsyncIterator[RespProxy]:
    resp = await RespProxy(upstream.port).start()
    yield resp
    await resp.close()


@pytest.fixture
async def direct(upstream: RedisServer) -> AsyncIterator[Redis]:
    """A client straight to the real server (no proxy), to set things up."""
    client = Redis.from_url(upstream.url)
    yield client
    await client.aclose()


@pytest.fixture(params=[pytest.param(2, id="resp2"), pytest.param(3, id="resp3")])
def protocol(request: pytest.FixtureRequest) -> int:
    version: int = request.param
    return version


# -- matching the driver's commands ---------------------------------------------------------


def named(name: bytes, *, nx: bool | None = None, sha: str | None = None,
          lock: bool | None = None) -> Match:
    """A match for command *name*; *nx*: SET with (True) or without (False) NX; *sha*:
    the EVALSHA script; *lock*: GET of a lock key (True) or of a record (False)."""

    def match(command: list[bytes]) -> bool:
        if command[0].upper() != name:
            return False
        if nx is not None and (b"NX" in (arg.upper() for arg in command)) != nx:
            return False
        if sha is not None and command[1] != sha.encode():
            return False
        return lock is None or command[1].endswith(b":lock") == lock

    return match


def is_key(arg: bytes) -> bool:
    return b"{" in arg and b"}" in arg


#: replies no Redis command of the driver can get, whatever the command
EVERYWHERE: dict[str, bytes] = {
    "array": b"*1\r\n$1\r\nx\r\n",
    "array-of-ints": b"*2\r\n:1\r\n:2\r\n",
    "nested-array": b"*1\r\n*1\r\n:1\r\n",
    "empty-array": b"*0\r\n",
    "error-in-array": b"*1\r\n-ERR inside\r\n",
    "error": b"-ERR boom\r\n",
    "double": b",1.5\r\n",
    "boolean": b"#t\r\n",
    "map": b"%1\r\n+a\r\n+b\r\n",
    "set": b"~1\r\n:1\r\n",
    "big-number": b"(12345678901234567890\r\n",
    "not-a-number": b":abc\r\n",
    "negative-length": b"$-5\r\n",
    "line-over-64k": b"+" + b"x" * 70_000 + b"\r\n",
    "5000-digits": b":" + b"9" * 5000 + b"\r\n",
    "unknown-type": b"?what\r\n",
}
INTEGERS = {"integer-1": b":1\r\n", "integer--1": b":-1\r\n", "integer-2": b":2\r\n"}
#: integers a script answering 0 or 1 cannot give
NOT_A_FLAG = {"integer--1": b":-1\r\n", "integer-2": b":2\r\n"}
STRINGS = {"string-1": b"$1\r\n1\r\n", "simple-string": b"+OK\r\n"}
NIL = {"nil": b"$-1\r\n"}


class Operation:
    """One driver call, the command it sends, and the replies that command cannot get."""

    def __init__(self, match: Match, wrong: dict[str, bytes],
                 call: Callable[[RedisDriver, str], Awaitable[Any]],
                 setup: Callable[[RedisDriver, Redis, str], Awaitable[Any]] | None = None,
                 before: Callable[[RespProxy], None] | None = None) -> None:
        self.match, self.wrong, self.call = match, {**EVERYWHERE, **wrong}, call
        self.setup, self.before = setup, before


async def held_by_another(driver: RedisDriver, direct: Redis, sid: str) -> None:
    await direct.set(driver.lock_key(sid), b"someone-else", px=10_000)


async def acquire_then_release(driver: RedisDriver, sid: str) -> None:
    # the SET is answered by the real server; the release's script by the test's reply
    token = await driver.acquire_lock(sid, 10, 0)
    assert token is not None
    await driver.release_lock(sid, token)


def noscript(sha: str) -> Callable[[RespProxy], None]:
    """Make the proxy answer NOSCRIPT to EVALSHA of *sha* (so the driver sends EVAL)."""

    def before(proxy: RespProxy) -> None:
        proxy.answer(named(b"EVALSHA", sha=sha), b"-NOSCRIPT No matching script.\r\n")

    return before


OPERATIONS: dict[str, Operation] = {
    "read-GET": Operation(named(b"GET", lock=False), {**INTEGERS},
                          lambda drv, sid: drv.read(sid)),
    "read_touch-GETEX": Operation(named(b"GETEX"), {**INTEGERS},
                                  lambda drv, sid: drv.read_touch(sid, 60)),
    "write-SET": Operation(named(b"SET", nx=False),
                           {**INTEGERS, **NIL, "not-ok": b"+NOTOK\r\n", "empty": b"$0\r\n\r\n"},
                           lambda drv, sid: drv.write(sid, b"v1------", 60)),
    "compare_and_set-EVALSHA": Operation(
        named(b"EVALSHA", sha=CAS_SHA), {**NOT_A_FLAG, **STRINGS, **NIL},
        lambda drv, sid: drv.compare_and_set(sid, b"v1------", 60, None)),
    "compare_and_set-EVAL": Operation(
        named(b"EVAL"), {**NOT_A_FLAG, **STRINGS, **NIL},
        lambda drv, sid: drv.compare_and_set(sid, b"v1------", 60, None),
        before=noscript(CAS_SHA)),
    "destroy-DEL": Operation(named(b"DEL"), {**NOT_A_FLAG, **STRINGS, **NIL},
                             lambda drv, sid: drv.destroy(sid)),
    "acquire_lock-SET-NX": Operation(
        named(b"SET", nx=True),
        {**INTEGERS, "zero": b":0\r\n", "not-ok": b"+NOTOK\r\n", "empty": b"$0\r\n\r\n"},
        lambda drv, sid: drv.acquire_lock(sid, 10, 0)),
    "acquire_lock-GET-holder": Operation(
        named(b"GET", lock=True), {**INTEGERS}, lambda drv, sid: drv.acquire_lock(sid, 10, 0),
        setup=held_by_another),
    "release_lock-EVALSHA": Operation(
        named(b"EVALSHA", sha=RELEASE_SHA), {**NOT_A_FLAG, **STRINGS, **NIL},
        acquire_then_release),
    "release_lock-EVAL": Operation(
        named(b"EVAL"), {**NOT_A_FLAG, **STRINGS, **NIL}, acquire_then_release,
        before=noscript(RELEASE_SHA)),
}


def outcome(result: Any) -> str:
    """What a call gave, in a word, for the table of failures."""
    if isinstance(result, DriverError):
        return "DriverError"
    if isinstance(result, BaseException):
        return f"{type(result).__module__}.{type(result).__name__}: {str(result)[:80]}"
    return f"returned {result!r:.40}"


async def run_hostile(proxy: RespProxy, direct: Redis, operation: Operation, reply: bytes,
                      prefix: str, **options: Any) -> tuple[Any, Any]:
    """Call *operation* with its command answered by *reply*, in a batch with a read of
    another session; the results of both (exceptions included)."""
    if "sentinel" not in options:
        options.setdefault("url", proxy.url)
    driver = redis_driver(prefix=prefix, socket_timeout=0.5, connect_timeout=0.5, **options)
    sid, other = new_session_id(), new_session_id()
    try:
        await driver.write(other, b"v0------", 60)
        if operation.setup is not None:
            await operation.setup(driver, direct, sid)
        if operation.before is not None:
            operation.before(proxy)
        proxy.answer(operation.match, reply)
        results = await asyncio.wait_for(asyncio.gather(
            operation.call(driver, sid), driver.read(other), return_exceptions=True), 10)
        proxy.clear()
        if not (options.get("cluster") and redis.VERSION < (7, 2)):
            # the driver works again for the next request: no connection left out of
            # step (it dropped them all; a cluster client before redis-py 7.2 cannot
            # reconnect after that, as after any lost connection: redis-py#2555)
            assert await driver.read(other) == b"v0------"
        return results[0], results[1]
    finally:
        proxy.clear()
        await driver.close()


async def check_every_wrong_reply(proxy: RespProxy, direct: Redis, name: str, prefix: str,
                                  **options: Any) -> None:
    operation = OPERATIONS[name]
    failures = {}
    for reply_name, reply in operation.wrong.items():
        result, other = await run_hostile(proxy, direct, operation, reply, prefix, **options)
        if not isinstance(result, DriverError):
            failures[reply_name] = outcome(result)
        # the read batched with it is answered, or fails as a DriverError: nothing else
        if other != b"v0------" and not isinstance(other, DriverError):
            failures[f"{reply_name} (the other read)"] = outcome(other)
    assert failures == {}


# -- a reply of the wrong type: DriverError, never another exception, never a value --------


@pytest.mark.parametrize("name", list(OPERATIONS))
@pytest.mark.parametrize("pipelining", [pytest.param(True, id="pipelined"),
                                        pytest.param(False, id="plain")])
async def test_a_reply_of_the_wrong_type_is_a_driver_error(
        proxy: RespProxy, direct: Redis, prefix: str, name: str, pipelining: bool,
        protocol: int) -> None:
    await check_every_wrong_reply(proxy, direct, name, prefix, pipelining=pipelining,
                                  url=f"{proxy.url}?protocol={protocol}")


async def test_the_replies_redis_gives_are_still_accepted(proxy: RespProxy, direct: Redis,
                                                          prefix: str) -> None:
    """The control: through the same proxy, with nothing replaced, everything works."""
    driver = redis_driver(url=proxy.url, prefix=prefix)
    sid = new_session_id()
    try:
        assert await driver.read(sid) is None
        assert await driver.compare_and_set(sid, b"v1------", 60, None) is True
        assert await driver.compare_and_set(sid, b"v2------", 60, b"v0------") is False
        await driver.write(sid, b"v2------", 60)
        assert await driver.read_touch(sid, 60) == b"v2------"
        token = await driver.acquire_lock(sid, 10, 0)
        assert token is not None and await driver.acquire_lock(sid, 10, 0) is None
        await driver.release_lock(sid, token)
        await driver.destroy(sid)
        await driver.destroy(sid)
        assert await direct.exists(driver.key(sid), driver.lock_key(sid)) == 0
        # a string where a record belongs is a record (the session layer judges it)
        proxy.answer(named(b"GETEX"), b"+OK\r\n")
        assert await driver.read_touch(sid, 60) == b"OK"
    finally:
        await driver.close()


async def test_one_wrong_reply_does_not_break_later_lock_releases(proxy: RespProxy,
                                                                  prefix: str) -> None:
    """redis-py's Lock.lua_release, a Script shared by the whole process, keeps the SHA a
    SCRIPT LOAD answers: an array there made every later release fail. The driver sends
    the script's own SHA, then EVAL, and keeps nothing a reply said."""
    driver = redis_driver(url=proxy.url, prefix=prefix)
    sid = new_session_id()
    try:
        token = await driver.acquire_lock(sid, 0.5, 0)
        assert token is not None
        noscript(RELEASE_SHA)(proxy)
        proxy.answer(named(b"SCRIPT"), b"*1\r\n$1\r\nx\r\n")
        proxy.answer(named(b"EVAL"), b"*1\r\n$1\r\nx\r\n")
        with pytest.raises(DriverError):
            await driver.release_lock(sid, token)
        proxy.clear()  # an honest server from now on
        await asyncio.sleep(0)
        again = await driver.acquire_lock(sid, 10, 5)  # once the first one expires
        assert again is not None
        await driver.release_lock(sid, again)
        assert await driver.acquire_lock(sid, 10, 0) is not None  # released: free at once
    finally:
        await driver.close()


# -- absurd sizes: nothing allocated because a reply said so -----------------------------

ABSURD = {
    "integer-200000000": b":200000000\r\n",
    "bulk-200000000": b"$200000000\r\n",
    "array-200000000": b"*200000000\r\n",
    "map-100000000": b"%100000000\r\n",
}
#: bytes a hostile call may make the process allocate (a real one takes a few hundred KB)
ALLOWED_PEAK = 20_000_000


@pytest.mark.parametrize("name", list(OPERATIONS))
async def test_an_absurd_size_allocates_nothing(proxy: RespProxy, direct: Redis, prefix: str,
                                                name: str) -> None:
    operation = OPERATIONS[name]
    peaks = {}
    failures = {}
    for reply_name, reply in ABSURD.items():
        tracemalloc.start()
        try:
            result, _ = await run_hostile(proxy, direct, operation, reply, prefix)
            peaks[reply_name] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        if not isinstance(result, DriverError):
            failures[reply_name] = outcome(result)
    assert failures == {}
    assert {n: peak for n, peak in peaks.items() if peak > ALLOWED_PEAK} == {}


# -- through the middleware: 503, never 500 ---------------------------------------------------


@pytest.mark.parametrize("reply", [
    pytest.param(b"*1\r\n$1\r\nx\r\n", id="array"),
    pytest.param(b"*2\r\n:1\r\n:2\r\n", id="array-of-ints"),
    pytest.param(b":1\r\n", id="integer"),
    pytest.param(b":200000000\r\n", id="integer-200000000"),
    pytest.param(b":abc\r\n", id="not-a-number"),
])
async def test_a_wrong_reply_is_503_through_the_middleware(
        aiohttp_client: ClientFactory, cookieless_http: ClientSession, proxy: RespProxy,
        prefix: str, reply: bytes, caplog: pytest.LogCaptureFixture) -> None:
    manager = redis_manager(url=proxy.url, prefix=prefix)
    server = await aiohttp_client(session_app(manager))
    sid = new_session_id()
    cookie = {"Cookie": f"{manager.config.cookie.name}={sid}"}
    proxy.answer(named(b"GETEX"), reply)
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
            response = await cookieless_http.get(server.make_url("/read"), headers=cookie)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status == 503
    assert peak < ALLOWED_PEAK
    assert [r.levelname for r in caplog.records if r.name == "aiosessmgr"] == ["ERROR"]
    proxy.clear()
    response = await cookieless_http.get(server.make_url("/read"), headers=cookie)
    assert response.status == 200  # a fresh session: the store answers again


# -- what redis-py sends for the driver: the handshake, the Cluster's topology ---------------

HANDSHAKE_REPLIES = {"array": EVERYWHERE["array"], "integer": b":1\r\n",
                     "not-a-number": EVERYWHERE["not-a-number"],
                     "nested-array": EVERYWHERE["nested-array"], "nil": b"$-1\r\n"}


@pytest.mark.parametrize(("command", "url_query"), [
    pytest.param(b"HELLO", "?protocol=3", id="HELLO"),
    pytest.param(b"SELECT", "", id="SELECT"),
])
async def test_a_wrong_handshake_reply_is_a_driver_error(proxy: RespProxy, prefix: str,
                                                         command: bytes, url_query: str) -> None:
    failures = {}
    for reply_name, reply in HANDSHAKE_REPLIES.items():
        # database 1, so that redis-py sends SELECT when it connects
        driver = redis_driver(url=proxy.url[:-1] + "1" + url_query, prefix=prefix,
                              socket_timeout=0.5, connect_timeout=0.5)
        proxy.answer(named(command), reply)
        try:
            result = (await asyncio.gather(driver.read_touch(new_session_id(), 60),
                                           return_exceptions=True))[0]
        finally:
            proxy.clear()
            await driver.close()
        if not isinstance(result, DriverError):
            failures[reply_name] = outcome(result)
    assert failures == {}


# -- Cluster and Sentinel: the same replies through their clients ------------------------------



def few(operation: Operation) -> dict[str, bytes]:
    """Some of *operation*'s wrong replies, for Cluster and Sentinel (the table above tries
    them all): three of every command's and the first of its own."""
    own = next(name for name in operation.wrong if name not in EVERYWHERE)
    return {name: operation.wrong[name]
            for name in ("array", "not-a-number", "nested-array", own)}


@pytest.fixture(scope="module")
def cluster_node() -> Iterator[RedisServer]:
    node = single_node_cluster()
    yield node
    node.cleanup()


@pytest.fixture
async def cluster_proxy(cluster_node: RedisServer) -> AsyncIterator[RespProxy]:
    """A proxy in front of a one-node cluster, which names the proxy as the node."""
    resp = await RespProxy(cluster_node.port).start()
    real, mine = b":%d\r\n" % cluster_node.port, b":%d\r\n" % resp.port
    resp.rewrite(lambda command: [arg.upper() for arg in command[:2]] == [b"CLUSTER", b"SLOTS"],
                 lambda reply: reply.replace(real, mine))
    yield resp
    await resp.close()


@pytest.mark.parametrize("name", list(OPERATIONS))
@pytest.mark.parametrize("pipelining", [pytest.param(True, id="pipelined"),
                                        pytest.param(False, id="plain")])
async def test_wrong_replies_on_cluster(cluster_proxy: RespProxy, cluster_node: RedisServer,
                                        prefix: str, name: str, pipelining: bool) -> None:
    operation = OPERATIONS[name]
    direct = Redis.from_url(cluster_node.url)
    failures = {}
    try:
        for reply_name, reply in few(operation).items():
            result, other = await run_hostile(
                cluster_proxy, direct, operation, reply, prefix, cluster=True,
                pipelining=pipelining)
            if not isinstance(result, DriverError):
                failures[reply_name] = outcome(result)
            if other != b"v0------" and not isinstance(other, DriverError):
                failures[f"{reply_name} (the other read)"] = outcome(other)
        # every command went through the proxy: the client knew no other address
        assert failures == {}
    finally:
        await direct.aclose()


async def test_a_wrong_topology_reply_is_a_driver_error(cluster_proxy: RespProxy,
                                                       prefix: str) -> None:
    failures = {}
    for reply_name, reply in HANDSHAKE_REPLIES.items():
        driver = redis_driver(url=cluster_proxy.url, cluster=True, prefix=prefix,
                              socket_timeout=0.5, connect_timeout=0.5)
        cluster_proxy.answer(
            lambda command: [arg.upper() for arg in command[:2]] == [b"CLUSTER", b"SLOTS"],
            reply)
        try:
            result = (await asyncio.gather(driver.read_touch(new_session_id(), 60),
                                           return_exceptions=True))[0]
        finally:
            cluster_proxy.clear()
            await driver.close()
        if not isinstance(result, DriverError):
            failures[reply_name] = outcome(result)
    assert failures == {}


@pytest.fixture(scope="module")
def sentinel() -> Iterator[SentinelServers]:
    servers = SentinelServers("mymaster").start()
    yield servers
    servers.cleanup()


@pytest.mark.parametrize("name", list(OPERATIONS))
async def test_wrong_replies_through_sentinel(sentinel: SentinelServers, prefix: str,
                                              name: str) -> None:
    """The master the sentinel names is a proxy in front of the real one."""
    master = await RespProxy(sentinel.master.port).start()
    watcher = await RespProxy(sentinel.sentinel_port).start()
    real = b"$4\r\nport\r\n$%d\r\n%d\r\n" % (len(str(sentinel.master.port)), sentinel.master.port)
    mine = b"$4\r\nport\r\n$%d\r\n%d\r\n" % (len(str(master.port)), master.port)
    watcher.rewrite(lambda command: command[0].upper() == b"SENTINEL",
                    lambda reply: reply.replace(real, mine))
    direct = Redis.from_url(sentinel.master.url)
    operation = OPERATIONS[name]
    failures = {}
    try:
        for reply_name, reply in few(operation).items():
            result, other = await run_hostile(
                master, direct, operation, reply, prefix,
                sentinel={"hosts": [f"127.0.0.1:{watcher.port}"], "service_name": "mymaster"})
            if not isinstance(result, DriverError):
                failures[reply_name] = outcome(result)
            if other != b"v0------" and not isinstance(other, DriverError):
                failures[f"{reply_name} (the other read)"] = outcome(other)
        assert failures == {}
    finally:
        await direct.aclose()
        await master.close()
        await watcher.close()


# -- no whole session id in any error text or log line ---------------------------------------


def echo_keys(command: list[bytes]) -> bytes:
    """An error reply that quotes the command's keys, as some proxies' errors do."""
    return b"-ERR refused: " + b" ".join(arg for arg in command if is_key(arg)) + b"\r\n"


def chain(exc: BaseException | None) -> Iterator[BaseException]:
    """*exc* and every exception chained to it (causes and contexts)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo += [item.__cause__, item.__context__]


def texts_of(exc: BaseException) -> str:
    """Everything of *exc* that may reach a log: each message, repr and args of its chain,
    and the formatted traceback."""
    return "\n".join([*(f"{item} {item!r} {item.args!r}" for item in chain(exc)),
                      *traceback.format_exception(exc)])


@pytest.mark.parametrize("name", list(OPERATIONS))
@pytest.mark.parametrize("pipelining", [pytest.param(True, id="pipelined"),
                                        pytest.param(False, id="plain")])
async def test_errors_never_show_a_whole_session_id(
        proxy: RespProxy, direct: Redis, prefix: str, name: str, pipelining: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    operation = OPERATIONS[name]
    driver = redis_driver(url=proxy.url, prefix=prefix, pipelining=pipelining)
    sid = new_session_id()
    try:
        if operation.setup is not None:
            await operation.setup(driver, direct, sid)
        if operation.before is not None:
            operation.before(proxy)
        proxy.answer(operation.match, echo_keys)
        with caplog.at_level(logging.DEBUG, logger="aiosessmgr"):
            with pytest.raises(DriverError) as info:
                await operation.call(driver, sid)
            logging.getLogger("aiosessmgr").warning("failed: %s", info.value,
                                                    exc_info=info.value)
    finally:
        proxy.clear()
        await driver.close()
    error = info.value
    assert "refused" in str(error)  # the reply's text is there...
    assert f"{{{sid[:6]}…}}" in str(error)  # ...with the id abbreviated
    assert sid not in texts_of(error)
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    logged = "\n".join(formatter.format(record) for record in caplog.records)
    assert "refused" in logged and sid not in logged


async def test_a_failure_of_a_whole_batch_shows_no_session_of_the_batch(
        proxy: RespProxy, prefix: str) -> None:
    """A reply redis-py cannot parse fails every command of its pipeline with one error,
    whose text is the reply's: here it quotes the keys of every session of the batch."""
    driver = redis_driver(url=proxy.url, prefix=prefix, socket_timeout=0.5)
    sids = [new_session_id() for _ in range(3)]
    keys = b" ".join(driver.key(sid).encode() for sid in sids)
    proxy.answer(named(b"GETEX"), b"?refused " + keys + b"\r\n")
    try:
        results = await asyncio.gather(*(driver.read_touch(sid, 60) for sid in sids),
                                       return_exceptions=True)
    finally:
        await driver.close()
    errors = [result for result in results if isinstance(result, DriverError)]
    assert len(errors) == len(sids)
    texts = "\n".join(texts_of(error) for error in errors)
    assert "refused" in texts
    assert not [sid for sid in sids if sid in texts]


def test_a_chain_naming_ids_is_copied_with_them_abbreviated() -> None:
    """redis-py's Cluster errors quote the command (and the key): what reaches a log of
    the DriverError, each chained exception with its notes, shows no whole id."""
    sid, other = new_session_id(), new_session_id()
    args = ("GETEX", f"session:{{{sid}}}", "EX", 60)
    cause = RedisClusterException(f"No targets were found to execute {args} command on")
    cause.add_note(f"key session:{{{sid}}}")
    cause.__context__ = ConnectionError(f"lost while sending session:{{{other}}}")
    error = failure("GETEX", cause, sid, 3.0)
    assert error.__cause__ is not cause
    assert isinstance(error.__cause__, RedisClusterException)  # same types, same order
    assert isinstance(error.__cause__.__context__, ConnectionError)
    text = texts_of(error)
    assert sid not in text and other not in text
    assert f"{sid[:6]}…" in text and f"{other[:6]}…" in text
    assert "No targets were found" in text and "lost while sending" in text
    # an exception that names no id is chained as it is
    plain = ValueError("nothing secret")
    assert failure("GET", plain, sid, 3.0).__cause__ is plain
