"""Redis driver: redis.asyncio on one node, Sentinel or Cluster, with auto-pipelining.

Records are plain string keys, ``prefix + "{" + id + "}"``: the braces are a hash tag,
so every key of one session (the record now, a lock key later) lives in one Cluster
hash slot. Redis expires records itself: ``write`` is ``SET key value EX ttl``, a read
is ``GETEX key EX ttl`` (read and extend in one round trip), and ``gc()`` has nothing
to do. ``compare_and_set`` is a Lua script run with ``EVALSHA`` (one round trip; on
``NOSCRIPT`` it is sent once more with ``EVAL``, which also caches it on that node).

Session locks (``acquire_lock`` / ``release_lock``, behind ``session.lock()``) are a key
``prefix + "{" + id + "}:lock"`` in the record's slot, taken with ``SET key token NX PX
ttl`` (retried after short jittered sleeps until ``wait`` runs out) and released by a
Lua script that deletes it only if it still holds the holder's random token. Redis
expires the lock after ``ttl`` whatever happens to its holder: a holder that dies frees
it then, and one that is still working after ``ttl`` no longer excludes anyone.

A key of another type (a hash, a list...) under a record's or a lock's name is one bad
key, not an outage: reads answer "no record" and log a WARNING, the compare-and-set
answers "not written", a lock is never taken over it, and none of them changes it (an
explicit ``destroy`` deletes it). Other failures are a ``DriverError``.

A connection that fails, typically one pooled before Redis restarted (redis-py hands it
out once Redis is back and it fails on first use), is retried once on a fresh
connection; a timeout on a single node is not. Without pipelining this is redis-py's
``Retry`` on the clients the driver builds (a client of the application's own keeps its
settings). Every command the driver sends is safe to run twice (see ``from_config``),
and every call stays within the driver's overall timeout.

Auto-pipelining (``pipelining: true``, the default): every command issued while the
event loop runs one turn - typically the reads of all requests that arrived together -
is written to one connection in one send, and each reply (or error) is handed back to
the caller that issued it. Under load this replaces N round trips and N trips through
redis-py's per-command machinery by one; an idle server sees a single command per batch.

Configuration (the options of a ``"driver": "redis"`` entry)::

    {"driver": "redis", "lifetime": 120, "url": "redis://127.0.0.1:6379/0"}
    {"driver": "redis", "connection": {"host": "10.0.0.5", "port": 6379, "db": 2}}
    {"driver": "redis", "url": "redis://10.0.0.5:7000", "cluster": True}
    {"driver": "redis", "sentinel": {"hosts": ["10.0.0.7:26379"], "service_name": "mymaster"}}
    {"driver": "redis", "client": existing_redis_asyncio_client}   # not closed by us
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import secrets
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any, Final

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ConfigError, DriverError
from ..keys import check_keys
from .base import VERSION_SIZE, DriverSpec, SessionDriver, check_options

__all__ = ["LOCK_POLL_MAX", "LOCK_POLL_MIN", "RedisDriver"]

logger = logging.getLogger("aiosessmgr")

#: seconds to wait for a reply before the command fails
DEFAULT_SOCKET_TIMEOUT: Final = 3.0
#: seconds to wait for a TCP (or TLS, or unix socket) connection to be established
DEFAULT_CONNECT_TIMEOUT: Final = 3.0
DEFAULT_PREFIX: Final = "session:"
#: seconds between attempts to take a session lock held by someone else: the first
#: sleep, and the longest (each sleep is jittered and grows between them)
LOCK_POLL_MIN: Final = 0.005
LOCK_POLL_MAX: Final = 0.05

_OPTIONS: Final = ("client", "cluster", "connect_timeout", "connection", "pipelining", "prefix",
                   "sentinel", "socket_timeout", "url")
_CONNECTION_KEYS: Final = ("db", "host", "password", "port", "ssl", "username")
_SENTINEL_KEYS: Final = ("hosts", "password", "service_name")

# Both scripts read their key with redis.pcall: a key of another type (a hash, a list...)
# under our name answers WRONGTYPE, which is that key's problem, not the store's. The
# compare-and-set then answers "not written" (the session re-reads, finds no record of
# ours and drops its changes) and the release "not ours"; neither touches the key. Any
# other error is passed on as the script's error reply.
_GUARDED_GET: Final = """
local current = redis.pcall('GET', KEYS[1])
if type(current) == 'table' and current.err then
  if string.sub(current.err, 1, 9) == 'WRONGTYPE' then return 0 end
  return current
end
"""

# KEYS[1] the record; ARGV: payload, ttl in seconds, "1" if a version is expected or
# "0" for "only if absent", the expected version.
CAS_SCRIPT: Final = _GUARDED_GET + f"""
if ARGV[3] == '1' then
  if not current or string.sub(current, 1, {VERSION_SIZE}) ~= ARGV[4] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
CAS_SHA: Final = hashlib.sha1(CAS_SCRIPT.encode()).hexdigest()

# KEYS[1] a session's lock; ARGV[1] the holder's token. Deletes the lock only if that
# holder still has it (after its ttl ran out it may belong to someone else).
RELEASE_SCRIPT: Final = _GUARDED_GET + """
if current == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
RELEASE_SHA: Final = hashlib.sha1(RELEASE_SCRIPT.encode()).hexdigest()

Command = tuple[str | bytes | int, ...]
RedisClient = Redis | RedisCluster


class _AutoPipeline:
    """Sends the commands issued during one event-loop turn as one pipeline.

    The first command of a turn starts a task; tasks run on the next turn, by which
    time every coroutine that ran in this turn has queued its command. The task takes
    the queue, sends it in one write on one pooled connection (Cluster: redis-py's
    cluster pipeline, which splits it per node), and resolves each caller's future
    with its own reply or error. A batch whose connection fails before its first reply
    is sent once more on a fresh connection (a pooled connection may have died while
    idle); one that fails after that, or times out, fails every caller still waiting.
    A connection that failed is dropped, never reused half-read.
    """

    def __init__(self, client: RedisClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._queue: list[tuple[Command, asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._submitting = False

    def submit(self, command: Command) -> asyncio.Future[Any]:
        """Queue *command* for this turn's pipeline; the future gets its reply."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((command, future))
        if len(self._queue) == 1:
            self._submitting = True
            try:
                task = loop.create_task(self._flush())
            finally:
                self._submitting = False
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    async def _flush(self) -> None:
        if self._submitting:
            # started eagerly (an eager task factory, Python 3.12+): wait for the turn's end
            await asyncio.sleep(0)
        batch, self._queue = self._queue, []
        commands = [command for command, _ in batch]
        try:
            async with asyncio.timeout(self._timeout):
                if isinstance(self._client, RedisCluster):
                    replies = await self._send_cluster(self._client, commands)
                else:
                    replies = await self._send_node(self._client, commands)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # the caller gave up (cancelled); the command ran anyway
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    @staticmethod
    async def _send_node(client: Redis, commands: list[Command]) -> list[Any]:
        pool = client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            try:
                return await _AutoPipeline._exchange(conn, commands)
            except RedisConnectionError:
                # no reply of the batch came: typically a pooled connection that died
                # while idle (Redis restarted), which ran none of it. Every command we
                # send is safe to run twice (see RedisDriver.from_config), so the batch
                # goes once more on a fresh connection: the send reconnects this one.
                await conn.disconnect(nowait=True)
            return await _AutoPipeline._exchange(conn, commands)
        except BaseException:
            # a half-read stream must never go back to the pool
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)

    @staticmethod
    async def _exchange(conn: AbstractConnection, commands: list[Command]) -> list[Any]:
        """Write *commands* in one send and read one reply (or error) for each.

        Raises if the connection fails or times out before the first reply. If that
        happens after some, the server was answering and failed during this batch (a
        real outage, not a stale connection): the answered commands keep their replies
        and the others get the error, not a retry, since they may or may not have run.
        """
        replies: list[Any] = []
        try:
            await conn.send_packed_command(conn.pack_commands(commands))
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    # an error reply is this caller's alone; the rest of the stream is intact
                    replies.append(exc)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if not replies:
                raise
            await conn.disconnect(nowait=True)
            replies.extend([exc] * (len(commands) - len(replies)))
        return replies

    @staticmethod
    async def _send_cluster(client: RedisCluster, commands: list[Command]) -> list[Any]:
        if len(commands) == 1:
            try:
                return [await client.execute_command(*commands[0])]
            except ResponseError as exc:
                return [exc]
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def drain(self) -> None:
        """Wait until every batch already sent has been answered."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class RedisDriver(SessionDriver):
    """Stores session records in Redis (single node, Sentinel or Cluster).

    Usage::

        driver = RedisDriver(redis.asyncio.Redis.from_url("redis://127.0.0.1:6379/0"),
                             owns_client=True)
        await driver.write(session_id, record, ttl=7200)
        await driver.close()

    Usually built from the config dict by ``SessionManager`` (see :meth:`from_config`).
    *timeout* (seconds) bounds every call, whatever the client's own socket settings.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = DEFAULT_PREFIX,
        pipelining: bool = True,
        timeout: float = DEFAULT_CONNECT_TIMEOUT + DEFAULT_SOCKET_TIMEOUT,
        owns_client: bool = False,
        sentinel: Sentinel | None = None,
    ) -> None:
        if not isinstance(client, (Redis, RedisCluster)):
            raise ConfigError(
                "the redis driver needs a redis.asyncio.Redis or redis.asyncio.RedisCluster "
                f"client, got {type(client).__module__}.{type(client).__name__}"
            )
        if client.get_encoder().decode_responses:
            raise ConfigError(
                "the redis client must be created with decode_responses=False: "
                "session records are binary"
            )
        _check_prefix(prefix)
        self.client = client
        self.prefix = prefix
        self.timeout = float(timeout)
        self._owns_client = owns_client
        self._sentinel = sentinel
        self._pipeline = _AutoPipeline(client, self.timeout) if pipelining else None
        self._closed = False
        # redis-py's RedisCluster discovers the topology on first use; commands racing
        # that discovery can hit connections it is replacing, so the first use waits for it
        self._ready = not isinstance(client, RedisCluster)
        self._ready_lock = asyncio.Lock()
        # releases of locks whose acquiring caller was cancelled mid-SET (see acquire_lock)
        self._releases: set[asyncio.Task[None]] = set()

    @property
    def pipelining(self) -> bool:
        """True if commands of one event-loop turn are sent as one pipeline."""
        return self._pipeline is not None

    @classmethod
    def from_config(cls, config: DriverSpec) -> RedisDriver:
        """Build from a driver config without any network I/O (connections open lazily)."""
        check_options(config, _OPTIONS)
        opts = config.options
        prefix = opts.get("prefix", DEFAULT_PREFIX)
        pipelining = opts.get("pipelining", True)
        if not isinstance(pipelining, bool):
            raise ConfigError(f"pipelining must be true or false, got {pipelining!r}")
        socket_timeout = _seconds("socket_timeout", opts.get("socket_timeout",
                                                             DEFAULT_SOCKET_TIMEOUT))
        connect_timeout = _seconds("connect_timeout", opts.get("connect_timeout",
                                                               DEFAULT_CONNECT_TIMEOUT))
        cluster = opts.get("cluster", False)
        if not isinstance(cluster, bool):
            raise ConfigError(f"cluster must be true or false, got {cluster!r}")
        sources = [key for key in ("client", "url", "sentinel") if key in opts]
        if len(sources) > 1 or ("connection" in opts and ("client" in opts or "url" in opts)):
            given = [key for key in ("client", "url", "connection", "sentinel") if key in opts]
            raise ConfigError(
                f"the redis driver takes one of 'url', 'connection', 'client' or 'sentinel' "
                f"(sentinel may be combined with 'connection' for db/password); got "
                f"{', '.join(given)}"
            )
        # a cluster retries once after re-reading the topology (a failover moves slots);
        # a single node retries once on a fresh connection when its connection failed
        # (one pooled before Redis restarted fails on first use), not after a timeout.
        # Every command the driver sends may run twice: reads, SET EX and DEL are
        # idempotent, a compare-and-set or lock release that ran already answers "no"
        # (the session then finds its own version), and a lock SET NX refused by our
        # own earlier attempt is recognised by its token.
        timeout = connect_timeout + socket_timeout
        if cluster:
            timeout = 2 * timeout + 0.5
        if "client" in opts:
            if any(key in opts for key in ("socket_timeout", "connect_timeout", "cluster")):
                raise ConfigError("with 'client', configure timeouts and cluster mode on the "
                                  "client itself; the driver only adds its overall timeout")
            return cls(opts["client"], prefix=prefix, pipelining=pipelining, timeout=timeout)
        common: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            "retry": (Retry(NoBackoff(), 1) if cluster
                      else Retry(NoBackoff(), 1, (RedisConnectionError,))),
        }
        sentinel = None
        client: RedisClient
        try:
            if "sentinel" in opts:
                if cluster:
                    raise ConfigError("cluster and sentinel cannot be combined")
                sentinel, client = _sentinel_client(opts["sentinel"], opts.get("connection", {}),
                                                    common)
            elif "url" in opts:
                url = opts["url"]
                if not isinstance(url, str):
                    raise ConfigError(f"url must be a string, got {type(url).__name__}")
                client = (RedisCluster.from_url(url, **common) if cluster
                          else Redis.from_url(url, **common))
            else:
                conn = _connection(opts.get("connection", {}))
                if cluster:
                    if conn.pop("db", 0):
                        raise ConfigError("connection.db must be 0 with cluster: true")
                    client = RedisCluster(**conn, **common)
                else:
                    client = Redis(**conn, **common)
        except (ValueError, TypeError, RedisError, RedisClusterException) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"invalid redis connection settings: {exc}") from exc
        return cls(client, prefix=prefix, pipelining=pipelining, timeout=timeout,
                   owns_client=True, sentinel=sentinel)

    def key(self, session_id: str) -> str:
        """The Redis key of a session: prefix, then the id as a hash tag (one Cluster slot)."""
        return f"{self.prefix}{{{session_id}}}"

    def lock_key(self, session_id: str) -> str:
        """The Redis key of a session's lock: in the same Cluster slot as its record."""
        return f"{self.prefix}{{{session_id}}}:lock"

    async def _send(self, command: Command) -> Any:
        """Run one command (pipelined or not); redis errors are left to the caller."""
        if self._closed:
            raise DriverError("the redis driver is closed")
        if not self._ready:
            await self._discover_cluster()
        if self._pipeline is not None:
            return await self._pipeline.submit(command)
        async with asyncio.timeout(self.timeout):
            return await self.client.execute_command(*command)

    async def _discover_cluster(self) -> None:
        async with self._ready_lock:
            if not self._ready and isinstance(self.client, RedisCluster):
                async with asyncio.timeout(self.timeout):
                    await self.client.initialize()
                self._ready = True

    async def _call(self, command: Command) -> Any:
        try:
            return await self._send(command)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise _driver_error(str(command[0]), exc, self.timeout) from exc

    async def _get(self, command: Command) -> tuple[bytes | None, bool]:
        """Run a GET-like *command*: its value, and True if the key holds another type.

        WRONGTYPE is one bad key, not an outage, so it is no DriverError; every other
        failure is.
        """
        try:
            return _as_bytes(await self._send(command)), False
        except ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                return None, True
            raise _driver_error(str(command[0]), exc, self.timeout) from exc
        except (RedisError, RedisClusterException, OSError) as exc:
            raise _driver_error(str(command[0]), exc, self.timeout) from exc

    def _foreign(self, session_id: str, suffix: str = "") -> None:
        # the id is abbreviated: it is the session's credential
        logger.warning("redis key %s{%s…}%s holds a value of another type (a hash, a list...), "
                       "not one of our records: treated as absent and left as it is",
                       self.prefix, session_id[:6], suffix)

    async def read(self, session_id: str) -> bytes | None:
        """GET the record; None if absent, or (logged) if the key holds another type."""
        record, foreign = await self._get(("GET", self.key(session_id)))
        if foreign:
            self._foreign(session_id)
        return record

    async def read_touch(self, session_id: str, ttl: int) -> bytes | None:
        """GETEX the record, moving its expiry to *ttl* seconds from now (one round trip).

        None if absent, or (logged, expiry left alone) if the key holds another type.
        """
        record, foreign = await self._get(("GETEX", self.key(session_id), "EX", int(ttl)))
        if foreign:
            self._foreign(session_id)
        return record

    async def write(self, session_id: str, payload: bytes, ttl: int) -> None:
        """SET the record with EX *ttl* seconds (atomic replace)."""
        await self._call(("SET", self.key(session_id), payload, "EX", int(ttl)))

    async def compare_and_set(
        self, session_id: str, payload: bytes, ttl: int, expected: bytes | None
    ) -> bool:
        """Write only if the stored version is *expected* (None: only if absent); atomic in Redis.

        One EVALSHA round trip; if the node does not know the script (restart, SCRIPT
        FLUSH, failover) it is sent again with EVAL, which loads it for next time.
        """
        args: tuple[str | bytes | int, ...] = (
            self.key(session_id), payload, int(ttl),
            "0" if expected is None else "1", b"" if expected is None else expected,
        )
        return bool(await self._script("compare-and-set", CAS_SCRIPT, CAS_SHA, args))

    async def _script(self, operation: str, script: str, sha: str,
                      args: tuple[str | bytes | int, ...]) -> Any:
        """Run a one-key Lua script: EVALSHA, and EVAL if the node does not know it."""
        try:
            try:
                return await self._send(("EVALSHA", sha, 1, *args))
            except NoScriptError:
                return await self._send(("EVAL", script, 1, *args))
        except (RedisError, RedisClusterException, OSError) as exc:
            raise _driver_error(operation, exc, self.timeout) from exc

    async def acquire_lock(self, session_id: str, ttl: float, wait: float) -> str | None:
        """Take the session's lock within *wait* seconds; a release token, or None.

        ``SET lock token NX PX ttl``, tried again after short jittered sleeps (growing
        from LOCK_POLL_MIN to LOCK_POLL_MAX seconds) until *wait* runs out. Redis expires
        the lock *ttl* seconds after it was taken, whether or not its holder is done.
        A lock key holding another type of value is never taken (logged once per call).
        """
        token = secrets.token_hex(16)
        ttl_ms = max(1, math.ceil(ttl * 1000))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(wait, 0.0)
        delay = LOCK_POLL_MIN
        warned = False
        while True:
            attempt = loop.create_task(self._try_lock(session_id, token, ttl_ms))
            try:
                taken = await asyncio.shield(attempt)
            except asyncio.CancelledError:
                # the SET may have gone out and may succeed: do not leave the session
                # locked for a whole ttl by a caller that is gone
                self._release_if_taken(attempt, session_id, token)
                raise
            if taken:
                return token
            if taken is None and not warned:
                warned = True
                self._foreign(session_id, ":lock")
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(remaining, random.uniform(delay / 2, delay)))
            delay = min(delay * 2, LOCK_POLL_MAX)

    async def _try_lock(self, session_id: str, token: str, ttl_ms: int) -> bool | None:
        """One ``SET NX PX``: True if *token* holds the lock now, False if another does.

        None if the lock key holds another type of value (it is never overwritten).
        """
        key = self.lock_key(session_id)
        if await self._call(("SET", key, token, "NX", "PX", ttl_ms)):
            return True  # b"OK" (pipelined) or True; None when the key exists
        # a SET whose connection failed is sent once more (redis-py's retry, the
        # pipeline's, the cluster's): if the first one landed, the second is refused by
        # our own lock. The token is this call's alone, so the holder's value tells.
        holder, foreign = await self._get(("GET", key))
        return None if foreign else holder == token.encode()

    async def release_lock(self, session_id: str, token: str) -> None:
        """Delete the session's lock if *token* still holds it (one script round trip)."""
        await self._script("lock release", RELEASE_SCRIPT, RELEASE_SHA,
                           (self.lock_key(session_id), token))

    def _release_if_taken(self, attempt: asyncio.Task[bool | None], session_id: str,
                          token: str) -> None:
        """Once *attempt* (a SET NX whose caller is gone) has its answer, undo it if it won."""

        async def release() -> None:
            # waiting for the SET's reply first: a release sent on another connection
            # could otherwise overtake it and leave the lock set for a whole ttl
            with suppress(Exception):  # DriverError: the lock expires after its ttl anyway
                if await attempt:
                    await self.release_lock(session_id, token)

        task = asyncio.get_running_loop().create_task(release())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def destroy(self, session_id: str) -> None:
        """DEL the record."""
        await self._call(("DEL", self.key(session_id)))

    async def gc(self, max_lifetime: int) -> int:
        """Return 0: Redis expires every record itself (each write sets EX ttl)."""
        return 0

    async def close(self) -> None:
        """Finish batches in flight, then close the connections this driver opened.

        A client passed in by the application is left open: its owner closes it.
        """
        if self._closed:
            return
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)
        self._closed = True
        if self._pipeline is not None:
            await self._pipeline.drain()
        if self._owns_client:
            await self.client.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()

    def __repr__(self) -> str:
        kind = type(self.client).__name__
        return (f"<RedisDriver {kind} prefix={self.prefix!r} "
                f"pipelining={self.pipelining} timeout={self.timeout:g}s>")


def _as_bytes(reply: Any) -> bytes | None:
    return None if reply is None else bytes(reply)


def _driver_error(operation: str, exc: BaseException, timeout: float) -> DriverError:
    """The DriverError for a redis, OS or timeout failure (the cause stays chained)."""
    if isinstance(exc, TimeoutError):
        return DriverError(f"redis {operation} got no answer within {timeout:g}s")
    detail = str(exc)
    if len(detail) > 300:
        # some redis-py messages embed a whole client repr; the cause keeps all of it
        detail = detail[:300] + "…"
    return DriverError(f"redis {operation} failed: {type(exc).__name__}: {detail}")


def _check_prefix(prefix: Any) -> None:
    if not isinstance(prefix, str):
        raise ConfigError(f"prefix must be a string, got {type(prefix).__name__}")
    if "{" in prefix or "}" in prefix:
        # the first {...} of a key is its Cluster hash tag: a brace in the prefix
        # would put every session in one slot
        raise ConfigError(f"prefix must not contain '{{' or '}}', got {prefix!r}")


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _connection(data: Any) -> dict[str, Any]:
    """Redis() keyword arguments from the ``connection`` mapping (defaults: localhost:6379)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"connection must be a mapping, got {type(data).__name__}")
    check_keys("connection.", data, _CONNECTION_KEYS)
    conn = {"host": "127.0.0.1", "port": 6379, "db": 0, **data}
    if not isinstance(conn["host"], str) or not conn["host"]:
        raise ConfigError(f"connection.host must be a host name, got {conn['host']!r}")
    for name in ("port", "db"):
        if isinstance(conn[name], bool) or not isinstance(conn[name], int) or conn[name] < 0:
            raise ConfigError(f"connection.{name} must be an integer, got {conn[name]!r}")
    if not isinstance(conn.get("ssl", False), bool):
        raise ConfigError(f"connection.ssl must be true or false, got {conn['ssl']!r}")
    return conn


def _sentinel_client(
    data: Any, connection: Any, common: dict[str, Any]
) -> tuple[Sentinel, Redis]:
    """A Sentinel manager and the client of the master it names (found on first connect)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"sentinel must be a mapping, got {type(data).__name__}")
    check_keys("sentinel.", data, _SENTINEL_KEYS)
    service = data.get("service_name")
    if not isinstance(service, str) or not service:
        raise ConfigError("sentinel.service_name must name the monitored master, e.g. 'mymaster'")
    hosts = _hosts(data.get("hosts"))
    conn = _connection(connection)
    if "host" in connection or "port" in connection:
        raise ConfigError("with sentinel, the master's address comes from the sentinels: "
                          "connection may set only db, username, password and ssl")
    del conn["host"], conn["port"]
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": common["socket_timeout"],
        "socket_connect_timeout": common["socket_connect_timeout"],
        # the next sentinel is the retry: no need to hammer one that is down
        "retry": Retry(NoBackoff(), 0),
    }
    if data.get("password") is not None:
        sentinel_kwargs["password"] = data["password"]
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    return sentinel, sentinel.master_for(service, **conn, **common)


def _hosts(value: Any) -> list[tuple[str, int]]:
    """Sentinel addresses from ``["host:port", ...]`` or ``[["host", port], ...]``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ConfigError("sentinel.hosts must be a non-empty list of 'host:port' or "
                          "[host, port]")
    hosts = []
    for item in value:
        if isinstance(item, str):
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(f"sentinel.hosts entry {item!r} is not 'host:port'")
            hosts.append((host, int(port)))
        elif (isinstance(item, Sequence) and len(item) == 2 and isinstance(item[0], str)
              and isinstance(item[1], int) and not isinstance(item[1], bool)):
            hosts.append((item[0], item[1]))
        else:
            raise ConfigError(f"sentinel.hosts entry {item!r} is not 'host:port' or [host, port]")
    return hosts
