"""RedisDriver: session records in Redis through redis-py's public API.

See the package docstring (``aiosessmgr.drivers.redis``) for the key layout, expiry,
locks, failures and auto-pipelining.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import suppress
from typing import Any, ClassVar, Final, NamedTuple, TypeVar, cast

from redis.asyncio import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import LockNotOwnedError, NoScriptError, ResponseError

from ...errors import ConfigError, DriverError
from ..base import VERSION_SIZE, DriverSpec, SessionDriver, check_options
from . import replies
from .batching import AutoPipeline, Command, execute
from .client import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SOCKET_TIMEOUT,
    OPTIONS,
    RedisClient,
    build_client,
    check_client,
    protocol_of,
)
from .index import UserIndex
from .lock import (
    LOCK_POLL_MAX,
    LOCK_POLL_MIN,
    LOCK_YIELD,
    RELEASE_SCRIPT,
    RELEASE_SHA,
    SessionLock,
    Turns,
    is_wrongtype,
)
from .replies import failure, out_of_step

__all__ = ["CAS_SCRIPT", "CAS_SHA", "DEFAULT_PREFIX", "LOCK_POLL_MAX", "LOCK_POLL_MIN",
           "MGET_CHUNK",
           "RELEASE_SCRIPT", "RELEASE_SHA", "RedisDriver"]

logger = logging.getLogger("aiosessmgr")

DEFAULT_PREFIX: Final = "session:"
#: keys per MGET of read_many (single node): one reply of at most this many records
MGET_CHUNK: Final = 1000
_T = TypeVar("_T")

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



class RedisDriver(SessionDriver):
    """Stores session records in Redis (single node, Sentinel or Cluster).

    Usage::

        driver = RedisDriver(redis.asyncio.Redis.from_url("redis://127.0.0.1:6379/0"),
                             owns_client=True)
        await driver.write(session_id, record, ttl=7200)
        await driver.close()

    Usually built from the config dict by ``SessionManager`` (see :meth:`from_config`).
    *timeout* (seconds) bounds every call, whatever the client's own socket settings.
    Raises ConfigError for a client that is not a redis.asyncio one returning bytes. A
    client should speak RESP2 (``protocol=2``; redis-py 8 defaults to 3): on RESP3
    redis-py's pool does not check a pooled connection for unread data before handing
    it out, so a WARNING is logged. After any reply that shows a connection out of step
    with its commands (a wrong type, one redis-py cannot parse), every connection of
    the client is dropped (see :meth:`_drop_connections`).
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
        if protocol_of(client) == 3:
            logger.warning(
                "redis client speaks RESP3: redis-py then hands out pooled connections "
                "without checking them for unread data, so a stray reply (a faulty proxy) "
                "can leave one out of step until the driver notices; protocol=2 is safer")
        self.client = client
        self.prefix = prefix
        self.timeout = float(timeout)
        self._owns_client = owns_client
        self._sentinel = sentinel
        self._pipeline = AutoPipeline(client, self.timeout) if pipelining else None
        self._users = UserIndex(prefix, self._send, self._failure, self.timeout)
        self._closed = False
        # redis-py's RedisCluster discovers the topology on first use; commands racing
        # that discovery can hit connections it is replacing, so the first use waits for it
        self._ready = not isinstance(client, RedisCluster)
        self._ready_lock = asyncio.Lock()
        # this process's callers waiting for each id's lock: one at a time polls Redis
        self._turns = Turns()
        # token -> the lock it holds, while this process holds it
        self._held: dict[str, _Held] = {}
        # releases of locks whose acquiring caller was cancelled mid-SET (see _attempt),
        # and turns ended by a lock's expiry
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

    def user_key(self, user_id: str) -> str:
        """The Redis key of a user's index: ``prefix + "user:{" + escaped id + "}"``, one
        Cluster slot per user, never a session's or a lock's key (see ``index``)."""
        return self._users.key(user_id)

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

    async def _failure(self, operation: str, exc: BaseException,
                       session_id: replies.Ids) -> DriverError:
        """The DriverError for *exc*; first, if *exc* shows a connection out of step, every
        pooled connection is dropped (see :meth:`_drop_connections`)."""
        if out_of_step(exc):
            await self._drop_connections()
        return failure(operation, exc, session_id, self.timeout)

    async def _drop_connections(self) -> None:
        """Disconnect every connection of the client, idle or in use: each reconnects on
        its next command.

        A reply of the wrong type or one redis-py cannot parse may be another command's
        (a stray extra reply puts every later reply of its connection one behind), and
        by the time the driver sees it, redis-py has put the connection back in its
        pool, where another command may already have taken it. So all of them go (the
        pool's ``disconnect()``, each Cluster node's ``disconnect()``): commands in
        flight on them fail with a connection error, which redis-py retries once on a
        fresh connection as for any lost connection. Failures of the disconnect itself
        are ignored (the connection is unusable either way).
        """
        logger.info("redis: a reply out of step with its command; dropping every "
                    "pooled connection")
        client = self.client
        with suppress(Exception):
            async with asyncio.timeout(self.timeout):
                if isinstance(client, RedisCluster):
                    await asyncio.gather(*(node.disconnect() for node in client.get_nodes()),
                                         return_exceptions=True)
                else:
                    await client.connection_pool.disconnect(inuse_connections=True)

    async def _call(self, command: Command, session_id: str,
                    check: Callable[[str, Any], _T]) -> _T:
        """Run *command* on *session_id*'s keys; its reply as *check* accepts it.

        Whatever goes wrong - redis-py's errors, a reply of the wrong type, a reply
        redis-py itself cannot parse (its parser raises ValueError for ``:abc`` or a line
        over 64 KiB) - is a DriverError, with the id abbreviated in all its text.
        """
        operation = str(command[0])
        try:
            return check(operation, await self._send(command))
        except DriverError:
            raise
        except Exception as exc:
            error = exc
        raise await self._failure(operation, error, session_id)

    async def _get(self, command: Command, session_id: str) -> tuple[bytes | None, bool]:
        """Run a GET-like *command*: its value, and True if the key holds another type.

        WRONGTYPE is one bad key, not an outage, so it is no DriverError; every other
        failure is, a reply other than a string or nil too (see :meth:`_call`).
        """
        operation = str(command[0])
        try:
            return replies.record(operation, await self._send(command)), False
        except ResponseError as exc:
            if is_wrongtype(exc):
                return None, True
            error: Exception = exc
        except DriverError:
            raise
        except Exception as exc:
            error = exc
        raise await self._failure(operation, error, session_id)

    def _foreign(self, session_id: str, suffix: str = "") -> None:
        # the id is abbreviated: it is the session's credential
        logger.warning("redis key %s{%s…}%s holds a value of another type (a hash, a list...), "
                       "not one of our records: treated as absent and left as it is",
                       self.prefix, session_id[:6], suffix)

    async def read(self, session_id: str) -> bytes | None:
        """GET the record; None if absent, or (logged) if the key holds another type.

        DriverError if Redis fails, does not answer in time, or answers anything but a
        string or nil.
        """
        record, foreign = await self._get(("GET", self.key(session_id)), session_id)
        if foreign:
            self._foreign(session_id)
        return record

    async def read_touch(self, session_id: str, ttl: int) -> bytes | None:
        """GETEX the record, moving its expiry to *ttl* seconds from now (one round trip).

        None if absent, or (logged, expiry left alone) if the key holds another type;
        DriverError as for :meth:`read`.
        """
        record, foreign = await self._get(("GETEX", self.key(session_id), "EX", int(ttl)),
                                          session_id)
        if foreign:
            self._foreign(session_id)
        return record

    async def read_many(self, session_ids: Sequence[str]) -> list[bytes | None]:
        """Each record, in the order given, as :meth:`read` would (one round trip).

        On a single node (or Sentinel's master): ``MGET`` of up to MGET_CHUNK keys per
        command, the commands as one pipeline (3x faster than a pipeline of ``GET``s for
        1,000 records: redis-py parses one reply, not 1,000); a key of another type reads
        as None, as ``MGET`` answers nil for it. On a Cluster, where one ``MGET`` may not
        span slots: a pipeline of ``GET``s, sent by redis-py as one pipeline per node. Both
        with or without auto-pipelining, bounded by the driver's timeout. DriverError as
        for :meth:`read`.
        """
        ids = tuple(session_ids)
        if not ids:
            return []
        cluster = isinstance(self.client, RedisCluster)
        try:
            await self._usable()
            if cluster:
                commands: list[Command] = [("GET", self.key(sid)) for sid in ids]
            else:
                commands = [("MGET", *(self.key(sid) for sid in ids[i:i + MGET_CHUNK]))
                            for i in range(0, len(ids), MGET_CHUNK)]
            async with asyncio.timeout(self.timeout):
                answers = await execute(self.client, commands)
            if not cluster:
                answers = [item for n, chunk in enumerate(answers) for item in replies.values(
                    "MGET", chunk, len(commands[n]) - 1)]
            records: list[bytes | None] = []
            for sid, answer in zip(ids, answers, strict=True):
                if isinstance(answer, ResponseError) and is_wrongtype(answer):
                    self._foreign(sid)
                    answer = None
                elif isinstance(answer, BaseException):
                    raise answer
                records.append(replies.record("GET", answer))
            return records
        except DriverError:
            raise
        except Exception as exc:
            error = exc
        raise await self._failure("GET", error, ids)

    async def write(self, session_id: str, payload: bytes, ttl: int) -> None:
        """SET the record with EX *ttl* seconds (atomic replace); DriverError unless OK."""
        await self._call(("SET", self.key(session_id), payload, "EX", int(ttl)), session_id,
                         replies.ok)

    async def compare_and_set(
        self, session_id: str, payload: bytes, ttl: int, expected: bytes | None
    ) -> bool:
        """Write only if the stored version is *expected* (None: only if absent); atomic in Redis.

        One EVALSHA round trip; if the node does not know the script (restart, SCRIPT
        FLUSH, failover) it is sent again with EVAL, which loads it for next time. Both
        together are bounded by the driver's timeout (seconds), retries included.
        (redis-py's ``Script`` would cost a SCRIPT EXISTS per pipeline, and cannot
        recover from NOSCRIPT inside a cluster pipeline.) DriverError if Redis fails,
        does not answer in time, or answers anything but 0 or 1.
        """
        args: Command = (
            "EVALSHA", CAS_SHA, 1, self.key(session_id), payload, int(ttl),
            "0" if expected is None else "1", b"" if expected is None else expected,
        )
        try:
            # one deadline for the whole operation, the NOSCRIPT retry included
            async with asyncio.timeout(self.timeout):
                try:
                    reply = await self._send(args)
                except NoScriptError:
                    reply = await self._send(("EVAL", CAS_SCRIPT, *args[2:]))
            return replies.flag("compare-and-set", reply)
        except DriverError:
            raise
        except Exception as exc:
            error = exc
        raise await self._failure("compare-and-set", error, session_id)

    def _session_lock(self, session_id: str, ttl: float = 0.0) -> SessionLock:
        lock = cast(SessionLock, self.client.lock(
            self.lock_key(session_id), timeout=max(ttl, 0.001), sleep=LOCK_POLL_MIN,
            lock_class=SessionLock, thread_local=False,
        ))
        lock.call_timeout = self.timeout
        return lock

    async def acquire_lock(self, session_id: str, ttl: float, wait: float) -> str | None:
        """Take the session's lock within *wait* seconds; a release token, or None.

        Callers of this process queue per id (first come, first served) and only the
        first polls Redis: ``SET lock token NX PX ttl``, then sleeps of LOCK_POLL_MIN
        doubling to LOCK_POLL_MAX seconds (jittered) until *wait* runs out, when a last
        attempt is made unless the id was tried too recently; the schedule is the id's,
        continued by the next caller when one gives up (see ``lock.Turns``). One attempt
        (SET NX, then GET) is bounded by the driver's timeout, and none starts after
        *wait*: the call returns within *wait* plus that timeout (seconds). Redis
        expires the lock *ttl* seconds after it was taken,
        whether or not its holder is done, and the next caller of this process gets its
        turn then too. A lock key holding another type of value is never taken (logged
        once per call). Raises DriverError if Redis fails, does not answer within the
        timeout, or answers what SET or GET cannot.
        """
        await self._usable_for("SET", session_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(wait, 0.0)
        turn = await self._turns.wait(session_id, max(wait, 0.0))
        if turn is None:
            return None
        try:
            token = await self._poll(session_id, ttl, deadline)
        except BaseException:
            await self._turns.end(session_id, turn)
            raise
        if token is None:
            await self._turns.end(session_id, turn)
            return None
        # the turn is this process's hold on the lock: if the holder never releases, it
        # ends when Redis expires the lock
        timer = loop.call_later(max(ttl, 0.0), self._expired, token)
        self._held[token] = _Held(session_id, turn, timer)
        return token

    async def _usable_for(self, operation: str, session_id: str) -> None:
        """:meth:`_usable`, with any failure (a Cluster's discovery) as a DriverError."""
        try:
            await self._usable()
            return
        except DriverError:
            raise
        except Exception as exc:
            error = exc
        raise await self._failure(operation, error, session_id)

    async def _poll(self, session_id: str, ttl: float, deadline: float) -> str | None:
        """Attempts at the lock, with backoff, until *deadline*: the token, or None."""
        loop = asyncio.get_running_loop()
        token = secrets.token_hex(16)  # the only token that counts as "ours" (see SessionLock)
        lock = self._session_lock(session_id, ttl)
        if self._turns.should_yield(session_id, loop.time()):
            await asyncio.sleep(max(min(LOCK_YIELD, deadline - loop.time()), 0.0))
        try:
            while True:
                # the id's schedule, continued from the callers before this one
                at = self._turns.next_attempt(session_id, deadline, loop.time())
                if at is None:
                    return None
                if at > loop.time():
                    await asyncio.sleep(at - loop.time())
                if await self._attempt(lock, session_id, token):
                    self._turns.taken(session_id, loop.time())
                    return token
                self._turns.missed(session_id, loop.time())
        finally:
            if lock.foreign:
                self._foreign(session_id, ":lock")

    async def _attempt(self, lock: SessionLock, session_id: str, token: str) -> bool:
        """One SET NX (and GET); a caller cancelled meanwhile leaves nothing locked."""
        attempt = asyncio.ensure_future(lock.do_acquire(token.encode()))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            # the SET may be on the wire and may succeed: do not leave the session locked
            # for a whole ttl by a caller that is gone
            self._abandon(attempt, session_id, token)
            raise
        except Exception as exc:
            error = exc
        raise await self._failure("SET", error, session_id)

    def _expired(self, token: str) -> None:
        """The lock of *token* expired in Redis: the next caller of this process goes on."""
        held = self._held.pop(token, None)
        if held is not None:
            self._background(self._turns.end(held.session_id, held.turn))

    async def release_lock(self, session_id: str, token: str) -> None:
        """Delete the session's lock if *token* still holds it (one script round trip).

        A lock key holding another type of value is left alone. The next caller of this
        process waiting for the lock goes on once the release is done. Raises
        DriverError if Redis fails, does not answer within the timeout, or answers the
        script with anything but 0 or 1.
        """
        held = self._held.get(token)
        if held is not None and held.session_id == session_id:
            del self._held[token]
            held.timer.cancel()
        else:
            held = None
        error: Exception | None = None
        try:
            await self._usable()
            async with asyncio.timeout(self.timeout):
                await self._session_lock(session_id).do_release(token.encode())
        except LockNotOwnedError:
            pass  # expired, or taken by another holder since
        except ResponseError as exc:
            if not is_wrongtype(exc):
                error = exc
        except DriverError:
            raise
        except Exception as exc:
            error = exc
        finally:
            if held is not None:
                await self._turns.end(session_id, held.turn)
        if error is not None:
            raise await self._failure("lock release", error, session_id)

    def _abandon(self, attempt: asyncio.Future[bool], session_id: str, token: str) -> None:
        """Wait for the SET of a caller that is gone; if it won the lock, release it."""

        async def release() -> None:
            # waiting for the SET's reply first: a release sent on another connection
            # could otherwise overtake it and leave the lock set for a whole ttl
            await asyncio.wait([attempt])
            if attempt.cancelled() or attempt.exception() is not None or not attempt.result():
                return
            with suppress(DriverError):  # the lock expires after its ttl anyway
                await self.release_lock(session_id, token)

        self._background(release())

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def destroy(self, session_id: str) -> None:
        """DEL the record; DriverError if Redis fails or answers anything but 0 or 1."""
        await self._call(("DEL", self.key(session_id)), session_id, replies.flag)

    async def index_user_session(self, user_id: str, handle: str, session_id: str,
                                 ttl: int, expected: str | None = None) -> bool:
        """HSET *handle* to *session_id* in the user's index if it names nothing, that id
        or *expected* (else False, nothing written); the index is then kept at least *ttl*
        seconds from now (never shortened): one atomic script (see ``index``). A key of
        another type there is logged and left alone (True). DriverError if Redis fails,
        does not answer within the timeout, or answers anything but 0 or 1.
        """
        return await self._users.add(user_id, handle, session_id, ttl, expected)

    async def user_session_index(self, user_id: str) -> dict[str, str]:
        """The user's index, ``{handle: session id}`` (its HGETALL, in a script); ``{}`` if
        none, or (logged) if the key holds another type. DriverError if Redis fails, does
        not answer within the timeout, or answers anything but pairs of strings.
        """
        return await self._users.entries(user_id)

    async def unindex_user_sessions(self, user_id: str, entries: Mapping[str, str]) -> int:
        """Delete each handle of *entries* that still names its id (one atomic script);
        how many were. A key of another type is logged and left alone (0). DriverError if
        Redis fails, does not answer within the timeout, or answers another count."""
        return await self._users.remove(user_id, entries)

    expires_itself: ClassVar[bool] = True

    async def gc(self, max_lifetime: int) -> int:
        """Return 0 after a PING: Redis expires records (``EX``) and user indexes itself (a
        listing prunes stale entries), and the PING makes a ``gc`` run from cron fail,
        DriverError, when Redis is down or does not answer within the driver's timeout."""
        await self._call(("PING",), "", replies.ok)
        return 0

    async def close(self) -> None:
        """Finish batches in flight, then close the connections this driver opened.

        A client passed in by the application is left open: its owner closes it.
        """
        if self._closed:
            return
        for held in self._held.values():
            held.timer.cancel()
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


class _Held(NamedTuple):
    """A lock this process holds: its id, its caller's turn, and the turn's expiry timer."""

    session_id: str
    turn: str
    timer: asyncio.TimerHandle


def _check_prefix(prefix: Any) -> None:
    if not isinstance(prefix, str):
        raise ConfigError(f"prefix must be a string, got {type(prefix).__name__}")
    if "{" in prefix or "}" in prefix:
        # the first {...} of a key is its Cluster hash tag: a brace in the prefix
        # would put every session in one slot
        raise ConfigError(f"prefix must not contain '{{' or '}}', got {prefix!r}")
