"""RedisDriver: session records in Redis through redis-py's public API.

See the package docstring (``aiosessmgr.drivers.redis``) for the key layout, expiry,
locks, failures and auto-pipelining.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
from contextlib import suppress
from typing import Any, Final, cast

from redis.asyncio import RedisCluster
from redis.asyncio.lock import Lock
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import (
    LockNotOwnedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from ...errors import ConfigError, DriverError
from ..base import VERSION_SIZE, DriverSpec, SessionDriver, check_options
from .batching import AutoPipeline, Command
from .client import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SOCKET_TIMEOUT,
    OPTIONS,
    RedisClient,
    build_client,
    check_client,
)
from .lock import SessionLock, is_wrongtype

__all__ = ["CAS_SCRIPT", "CAS_SHA", "DEFAULT_PREFIX", "LOCK_POLL_MAX", "LOCK_POLL_MIN",
           "RELEASE_SCRIPT", "RELEASE_SHA", "RedisDriver"]

logger = logging.getLogger("aiosessmgr")

DEFAULT_PREFIX: Final = "session:"
#: seconds between attempts to take a session lock held by someone else: each acquire
#: polls at its own fixed interval, drawn between these two (waiters do not poll in
#: step) and at most a quarter of its wait
LOCK_POLL_MIN: Final = 0.005
LOCK_POLL_MAX: Final = 0.05

# KEYS[1] the record; ARGV: payload, ttl in seconds, "1" if a version is expected or
# "0" for "only if absent", the expected version. The record is read with redis.pcall:
# a key of another type (a hash, a list...) under our name answers WRONGTYPE, which is
# that key's problem, not the store's, so the script answers "not written" (the session
# re-reads, finds no record of ours and drops its changes) and leaves the key alone.
# Any other error is passed on as the script's error reply.
CAS_SCRIPT: Final = f"""
local current = redis.pcall('GET', KEYS[1])
if type(current) == 'table' and current.err then
  if string.sub(current.err, 1, 9) == 'WRONGTYPE' then return 0 end
  return current
end
if ARGV[3] == '1' then
  if not current or string.sub(current, 1, {VERSION_SIZE}) ~= ARGV[4] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
CAS_SHA: Final = hashlib.sha1(CAS_SCRIPT.encode()).hexdigest()

#: redis-py's Lock release script (deletes the lock only if the token still holds it)
RELEASE_SCRIPT: Final = Lock.LUA_RELEASE_SCRIPT
RELEASE_SHA: Final = hashlib.sha1(RELEASE_SCRIPT.encode()).hexdigest()


class RedisDriver(SessionDriver):
    """Stores session records in Redis (single node, Sentinel or Cluster).

    Usage::

        driver = RedisDriver(redis.asyncio.Redis.from_url("redis://127.0.0.1:6379/0"),
                             owns_client=True)
        await driver.write(session_id, record, ttl=7200)
        await driver.close()

    Usually built from the config dict by ``SessionManager`` (see :meth:`from_config`).
    *timeout* (seconds) bounds every call, whatever the client's own socket settings.
    Raises ConfigError for a client that is not a redis.asyncio one returning bytes.
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
        check_client(client)
        _check_prefix(prefix)
        self.client = client
        self.prefix = prefix
        self.timeout = float(timeout)
        self._owns_client = owns_client
        self._sentinel = sentinel
        self._pipeline = AutoPipeline(client, self.timeout) if pipelining else None
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
        """Build from a driver config without any network I/O (connections open lazily).

        Raises ConfigError naming the option that is unknown or malformed.
        """
        check_options(config, OPTIONS)
        opts = config.options
        prefix = opts.get("prefix", DEFAULT_PREFIX)
        _check_prefix(prefix)
        pipelining = opts.get("pipelining", True)
        if not isinstance(pipelining, bool):
            raise ConfigError(f"pipelining must be true or false, got {pipelining!r}")
        built = build_client(opts)
        return cls(built.client, prefix=prefix, pipelining=pipelining, timeout=built.timeout,
                   owns_client=built.owns_client, sentinel=built.sentinel)

    def key(self, session_id: str) -> str:
        """The Redis key of a session: prefix, then the id as a hash tag (one Cluster slot)."""
        return f"{self.prefix}{{{session_id}}}"

    def lock_key(self, session_id: str) -> str:
        """The Redis key of a session's lock: in the same Cluster slot as its record."""
        return f"{self.prefix}{{{session_id}}}:lock"

    async def _usable(self) -> None:
        """Raise if closed; on a Cluster, discover the topology once before first use."""
        if self._closed:
            raise DriverError("the redis driver is closed")
        if not self._ready:
            async with self._ready_lock:
                if not self._ready and isinstance(self.client, RedisCluster):
                    async with asyncio.timeout(self.timeout):
                        await self.client.initialize()
                    self._ready = True

    async def _send(self, command: Command) -> Any:
        """Run one command (pipelined or not); redis errors are left to the caller.

        The reply is redis-py's, response callback applied, on either path.
        """
        await self._usable()
        if self._pipeline is not None:
            return await self._pipeline.submit(command)
        async with asyncio.timeout(self.timeout):
            return await self.client.execute_command(*command)

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
            if is_wrongtype(exc):
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
        (redis-py's ``Script`` would cost a SCRIPT EXISTS per pipeline, and cannot
        recover from NOSCRIPT inside a cluster pipeline.)
        """
        args: Command = (
            "EVALSHA", CAS_SHA, 1, self.key(session_id), payload, int(ttl),
            "0" if expected is None else "1", b"" if expected is None else expected,
        )
        try:
            try:
                reply = await self._send(args)
            except NoScriptError:
                reply = await self._send(("EVAL", CAS_SCRIPT, *args[2:]))
        except (RedisError, RedisClusterException, OSError) as exc:
            raise _driver_error("compare-and-set", exc, self.timeout) from exc
        return bool(reply)

    def _session_lock(self, session_id: str, ttl: float = 0.0, wait: float = 0.0
                      ) -> SessionLock:
        lock = cast(SessionLock, self.client.lock(
            self.lock_key(session_id), timeout=max(ttl, 0.001),
            sleep=min(random.uniform(LOCK_POLL_MIN, LOCK_POLL_MAX),
                      max(wait / 4, LOCK_POLL_MIN)),
            blocking_timeout=max(wait, 0.0), lock_class=SessionLock, thread_local=False,
        ))
        lock.call_timeout = self.timeout
        return lock

    async def acquire_lock(self, session_id: str, ttl: float, wait: float) -> str | None:
        """Take the session's lock within *wait* seconds; a release token, or None.

        redis-py's Lock: ``SET lock token NX PX ttl``, tried again at a fixed interval
        (see LOCK_POLL_MIN) until the next try would come after *wait*. Redis expires
        the lock *ttl* seconds after it was taken, whether or not its holder is done.
        A lock key holding another type of value is never taken (logged once per call).
        Raises DriverError if Redis fails or does not answer within the timeout.
        """
        try:
            await self._usable()
        except (RedisError, RedisClusterException, OSError) as exc:
            raise _driver_error("SET", exc, self.timeout) from exc
        token = secrets.token_hex(16)  # the only token that counts as "ours" (see SessionLock)
        lock = self._session_lock(session_id, ttl, wait)
        attempt = asyncio.get_running_loop().create_task(lock.acquire(token=token))
        try:
            taken = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            # a SET may be on the wire and may succeed: do not leave the session locked
            # for a whole ttl by a caller that is gone
            self._abandon(attempt, lock, session_id, token)
            raise
        except (RedisError, RedisClusterException, OSError) as exc:
            raise _driver_error("SET", exc, self.timeout) from exc
        if lock.foreign:
            self._foreign(session_id, ":lock")
        return token if taken else None

    async def release_lock(self, session_id: str, token: str) -> None:
        """Delete the session's lock if *token* still holds it (one script round trip).

        A lock key holding another type of value is left alone. Raises DriverError if
        Redis fails or does not answer within the timeout.
        """
        lock = self._session_lock(session_id)
        try:
            await self._usable()
            async with asyncio.timeout(self.timeout):
                await lock.do_release(token.encode())
        except LockNotOwnedError:
            return  # expired, or taken by another holder since
        except ResponseError as exc:
            if is_wrongtype(exc):
                return
            raise _driver_error("lock release", exc, self.timeout) from exc
        except (RedisError, RedisClusterException, OSError) as exc:
            raise _driver_error("lock release", exc, self.timeout) from exc

    def _abandon(self, attempt: asyncio.Task[bool], lock: SessionLock, session_id: str,
                 token: str) -> None:
        """End an acquire whose caller is gone; if its SET still wins, release the lock."""
        lock.abandoned = True
        if not lock.in_flight:
            attempt.cancel()  # between attempts: nothing of it is on the wire

        async def release() -> None:
            # waiting for the SET's reply first: a release sent on another connection
            # could otherwise overtake it and leave the lock set for a whole ttl
            await asyncio.wait([attempt])
            if attempt.cancelled() or attempt.exception() is not None or not attempt.result():
                return
            with suppress(DriverError):  # the lock expires after its ttl anyway
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
            # what Sentinel.aclose() does in redis-py 6+ (redis-py 5 has no such method)
            await asyncio.gather(*(client.aclose() for client in self._sentinel.sentinels),
                                 return_exceptions=True)

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
