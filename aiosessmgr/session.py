"""Sessions: the data, its change tracking, flash data, the CSRF token, and saving.

``SessionStore`` is the interface the manager and the middleware rely on;
``Session`` is its default implementation. A custom store subclasses ``Session``
(or ``SessionStore``) and is passed as ``SessionManager(config, store_class=...)``.

A session remembers the version of the record it loaded and records its own
changes as a *delta* (keys set, keys deleted, a flush, and ``increment`` /
``decrement`` / ``push`` operations). ``save()`` writes with the driver's
compare-and-set; if another request saved first, it re-reads, replays its delta
on the fresh data and tries again, so concurrent requests lose nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import secrets
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from .codec import Codec, DecodeError
from .drivers.base import (
    VERSION_SIZE,
    SessionDriver,
    SupportsCompareAndSet,
    SupportsLock,
    SupportsTouch,
)
from .errors import (
    DriverError,
    SerializationError,
    SessionError,
    SessionLockTimeout,
    SessionSaveTimeout,
)
from .events import EventRegistry, SessionEvent, SessionEvents
from .ids import is_valid_session_id, new_session_id
from .locks import LocalLocks

__all__ = [
    "Session",
    "SessionStore",
    "StoreContext",
    "Tombstones",
    "is_valid_session_id",
    "new_session_id",
]

logger = logging.getLogger("aiosessmgr")

#: seconds a save keeps re-reading and replaying its delta while other processes keep
#: winning the compare-and-set (saves of one id within a process take turns instead)
SAVE_DEADLINE: Final = 10.0
#: seconds: the first and the longest jittered pause before a re-read after a conflict
SAVE_BACKOFF_MIN: Final = 0.0005
SAVE_BACKOFF_MAX: Final = 0.05
#: seconds a save waits for its turn behind saves of the same id in this process
SAVE_TURN_WAIT: Final = 10.0


class Tombstones:
    """Ids this process destroyed or moved, remembered for one session lifetime.

    A slower request that loaded such an id does not write it back on drivers without
    compare-and-set (whose saves cannot notice that a record is gone), and on every
    driver the middleware neither re-sends the cookie of an id moved away under a
    request nor lets a request that arrived before the move decide the cookie.
    The memory is bounded: at most ``limit`` ids, the oldest forgotten first.
    """

    def __init__(self, ttl: float, limit: int = 100_000) -> None:
        self._ttl = ttl
        self._limit = limit
        self._ids: OrderedDict[str, float] = OrderedDict()

    def add(self, session_id: str, now: float) -> None:
        """Remember *session_id* as destroyed at *now*."""
        self._ids[session_id] = now
        self._ids.move_to_end(session_id)
        while self._ids and (len(self._ids) > self._limit
                             or next(iter(self._ids.values())) < now - self._ttl):
            self._ids.popitem(last=False)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._ids

    def since(self, session_id: str) -> float | None:
        """When *session_id* was recorded here (clock seconds), or None."""
        return self._ids.get(session_id)


@dataclass(frozen=True, slots=True)
class StoreContext:
    """Everything a session needs from its manager, built once per named driver."""

    name: str
    driver: SessionDriver
    codec: Codec
    events: EventRegistry
    #: idle lifetime in seconds
    ttl: int
    #: seconds after creation when a session ends regardless of activity; None: no cap
    absolute_ttl: float | None = None
    #: wall clock in seconds, for the created/last-write timestamps kept in the record
    clock: Callable[[], float] = time.time
    can_touch: bool = field(init=False)
    can_cas: bool = field(init=False)
    #: the driver's cross-process lock, or process-local locks for drivers without one
    locks: SupportsLock = field(init=False)
    #: saves of one id in this process take turns, so they never conflict with each other
    save_turns: LocalLocks = field(init=False, default_factory=LocalLocks)
    #: ids destroyed here, for drivers without compare-and-set (see Tombstones)
    tombstones: Tombstones = field(init=False)
    #: ids a request moved away from (regenerate, invalidate, new_session) or destroyed
    #: here: the middleware leaves their cookie alone in requests that began before
    moved: Tombstones = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "can_touch", isinstance(self.driver, SupportsTouch))
        object.__setattr__(self, "can_cas", isinstance(self.driver, SupportsCompareAndSet))
        driver = self.driver
        object.__setattr__(self, "locks",
                           driver if isinstance(driver, SupportsLock) else LocalLocks())
        object.__setattr__(self, "tombstones", Tombstones(self.ttl))
        object.__setattr__(self, "moved", Tombstones(self.ttl))

    async def destroy(self, session_id: str) -> None:
        """Remove a record and remember its id (see Tombstones)."""
        await self.driver.destroy(session_id)
        now = self.clock()
        self.tombstones.add(session_id, now)
        self.moved.add(session_id, now)


class SessionStore(ABC, MutableMapping[str, Any]):
    """The session interface the manager, the middleware and CSRF protection rely on."""

    __slots__ = ()

    @abstractmethod
    def __init__(self, context: StoreContext, session_id: str | None = None) -> None:
        """Bind to a driver context; *session_id* is the id from the cookie, if any."""

    @property
    @abstractmethod
    def id(self) -> str:
        """The session id (a new one until a stored session is loaded)."""

    @property
    @abstractmethod
    def new(self) -> bool:
        """True if this session was not loaded from the store."""

    @property
    @abstractmethod
    def accessed(self) -> bool:
        """True once the session was started (the response depends on the cookie)."""

    @property
    @abstractmethod
    def modified(self) -> bool:
        """True if there are changes that ``save()`` would write."""

    @property
    @abstractmethod
    def stored(self) -> bool:
        """True if a record for ``id`` exists in the store as far as this session knows."""

    @property
    def ended(self) -> bool:
        """True if another request ended or moved this session while this one used it."""
        return False

    def detach(self) -> None:
        """Another request moved or ended the session after this one began: save nothing."""

    @property
    def moved(self) -> bool:
        """True if this request gave the session a new id or ended the record it loaded."""
        return False

    @property
    def answered_at(self) -> float:
        """``time.monotonic()`` of the store's last answer to this session; 0.0 if none."""
        return 0.0

    @property
    def written(self) -> bool:
        """True if this request wrote the session's record."""
        return False

    @property
    def cookie_sent_at(self) -> float:
        """When a response last sent this session's cookie (epoch seconds); 0.0 if unknown."""
        return 0.0

    def cookie_sent(self, at: float) -> None:
        """Record that this response sends the cookie (written by the next ``save()``)."""

    @property
    @abstractmethod
    def created_at(self) -> float:
        """When the session was first created (seconds since the epoch)."""

    @property
    @abstractmethod
    def token(self) -> str:
        """The per-session CSRF secret (created on first use)."""

    @abstractmethod
    def regenerate_token(self) -> str:
        """Replace the CSRF secret and return the new one."""

    @abstractmethod
    async def start(self) -> None:
        """Load the session from the store, or begin a new one."""

    @abstractmethod
    async def save(self) -> None:
        """Write the changes, if any, to the store."""

    @abstractmethod
    async def regenerate(self, destroy: bool = True) -> None:
        """Give the session a new id, keeping its data."""

    @abstractmethod
    async def invalidate(self) -> None:
        """Clear the data, give the session a new id and destroy the old record."""

    @abstractmethod
    def lock(self, lock_seconds: float = 10.0, wait_seconds: float = 10.0, *,
             save: bool = True) -> AbstractAsyncContextManager[SessionStore]:
        """Serialize read-modify-write work on this session across requests."""

    # the data API handlers use

    @abstractmethod
    def get(self, key: str, default: Any = None) -> Any:
        """The value of *key*, or *default*."""

    @abstractmethod
    def put(self, key: str | Mapping[str, Any], value: Any = None) -> None:
        """Set one key, or every key of a mapping."""

    @abstractmethod
    def pull(self, key: str, default: Any = None) -> Any:
        """Remove *key* and return its value (or *default*)."""

    @abstractmethod
    def has(self, *keys: str) -> bool:
        """True if every key is present and not None."""

    @abstractmethod
    def exists(self, *keys: str) -> bool:
        """True if every key is present, even with a None value."""

    @abstractmethod
    def missing(self, *keys: str) -> bool:
        """True if no key is present."""

    @abstractmethod
    def forget(self, *keys: str) -> None:
        """Remove the keys that are present."""

    @abstractmethod
    def flush(self) -> None:
        """Remove all data."""

    @abstractmethod
    def all(self) -> dict[str, Any]:
        """A shallow copy of all data."""

    @abstractmethod
    def only(self, *keys: str) -> dict[str, Any]:
        """The present keys among *keys*, with their values."""

    @abstractmethod
    def except_(self, *keys: str) -> dict[str, Any]:
        """All data except *keys*."""

    @abstractmethod
    def increment(self, key: str, by: int | float = 1) -> int | float:
        """Add *by* to a number (missing counts as 0) and return the result."""

    @abstractmethod
    def decrement(self, key: str, by: int | float = 1) -> int | float:
        """Subtract *by* from a number and return the result."""

    @abstractmethod
    def push(self, key: str, value: Any) -> None:
        """Append *value* to the list at *key* (created if missing)."""

    @abstractmethod
    def flash(self, key: str, value: Any) -> None:
        """Set *key* until a later request reads it; it is gone after that request."""

    @abstractmethod
    def now(self, key: str, value: Any) -> None:
        """Set *key* for this request only."""

    @abstractmethod
    def reflash(self) -> None:
        """Keep all flash data this request read for a later request."""

    @abstractmethod
    def keep(self, *keys: str) -> None:
        """Keep the named flash keys this request read for a later request."""


# Delta markers: a key's final local value is written as is, or the key is deleted.
_SET: Final = "set"
_DEL: Final = "del"
_Ops = list[tuple[str, Any]]

_MISSING: Final = object()


def _apply(op: str, current: Any, arg: Any) -> Any:
    """Apply a replayable operation to the current value of a key."""
    if op == "incr":
        base = current if isinstance(current, (int, float)) and not isinstance(current, bool) \
            else 0
        return base + arg
    # push: a list gains one item; anything that is not a list starts a new one
    return [*current, arg] if isinstance(current, list) else [arg]


class Session(SessionStore):
    """The default session: a mapping with change tracking, flash data and a CSRF token.

    Usage (normally through ``get_session(request)``)::

        session = await manager.driver()      # a new, started session
        session.put("user_id", 42)
        session.increment("visits")
        session.flash("status", "Saved!")     # kept until a later request reads it
        await session.save()

    Values must be serializable (msgpack: None, bool, int, float, str, bytes, datetime,
    list, tuple, dict and their subclasses; the exact set is in ``aiosessmgr.codec``);
    ``save()`` raises SerializationError for anything else. Mutating a nested value in
    place is not tracked; ``put`` it again, or use ``push``/``increment`` which also merge
    correctly with concurrent requests.
    """

    # one session per request: slots make it cheaper to build and smaller (a subclass
    # without __slots__ of its own gets a __dict__ as usual)
    __slots__ = ("_answered_at", "_carry", "_changes", "_cookie_id", "_ctx", "_data",
                 "_ended", "_fd", "_flushed", "_id", "_meta", "_meta_changed", "_moved", "_new",
                 "_rewrite", "_started", "_stored", "_token_change", "_version", "_whole",
                 "_written")

    def __init__(self, context: StoreContext, session_id: str | None = None) -> None:
        self._ctx = context
        self._cookie_id = session_id if is_valid_session_id(session_id) else None
        self._id = self._cookie_id or ""
        self._data: dict[str, Any] = {}
        # meta: c = created (epoch s), t = last write (epoch s), s = cookie last sent
        # (epoch s), k = CSRF token, f = {flashed key: token of that flash}
        self._meta: dict[str, Any] = {}
        self._version: bytes | None = None
        self._started = False
        self._stored = False
        self._new = True
        self._rewrite = False
        # the record was destroyed or expired under us (or this request arrived with an
        # id moved away just before): never write this id again, never decide the cookie
        self._ended = False
        # this request gave the session a new id or ended the record it was loaded from
        self._moved = False
        # time.monotonic() of the store's last answer to this session
        self._answered_at = 0.0
        # this request wrote the record
        self._written = False
        # regenerate(): the record moved from and the version loaded; save() replays the
        # delta on that record as stored then, writes the new id, then destroys it
        self._carry: tuple[str, bytes | None] | None = None
        self._changes: dict[str, str | _Ops] = {}
        self._flushed = False
        # the record is written whole (a new id): nothing to merge with
        self._whole = False
        self._meta_changed: set[str] = set()
        # "created" (lazily, on first use) or "rotated" (regenerate_token, regenerate)
        self._token_change: str | None = None
        # this request's flash changes; made the first time it touches flash data
        self._fd: _FlashDelta | None = None

    # -- state -----------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The session id (a new one until a stored session is loaded)."""
        return self._id

    @property
    def name(self) -> str:
        """The name of the driver this session lives on."""
        return self._ctx.name

    @property
    def new(self) -> bool:
        """True if this session was not loaded from the store."""
        return self._new

    @property
    def accessed(self) -> bool:
        """True once the session was started."""
        return self._started

    @property
    def started(self) -> bool:
        """True once ``start()`` ran."""
        return self._started

    @property
    def modified(self) -> bool:
        """True if there are changes that ``save()`` would write."""
        return bool(self._changes or self._flushed or self._meta_changed or self._rewrite
                    or self._token_change
                    or (self._fd is not None and bool(self._fd.read or self._fd.now)))

    @property
    def stored(self) -> bool:
        """True if a record for ``id`` exists in the store as far as this session knows."""
        return self._stored

    @property
    def ended(self) -> bool:
        """True if another request ended or moved this session while this one used it.

        Its changes are dropped and the middleware leaves the cookie alone: only the
        request that moved or ended a session decides its cookie.
        """
        return self._ended

    @property
    def moved(self) -> bool:
        """True if this request gave the session a new id or ended the record it loaded."""
        return self._moved

    @property
    def answered_at(self) -> float:
        """``time.monotonic()`` of the store's last answer to this session; 0.0 if none.

        The middleware ends an outage only on an answer given after it began.
        """
        return self._answered_at

    @property
    def written(self) -> bool:
        """True if this request wrote the session's record (its compare-and-set landed)."""
        return self._written

    @property
    def cookie_sent_at(self) -> float:
        """When a response last sent this session's cookie (epoch seconds); 0.0 if unknown.

        Kept in the record (metadata ``s``) so that a rolling ``max_age`` cookie is re-sent
        on time, whichever process served the requests in between.
        """
        value = self._meta.get("s", 0.0)
        return float(value) if self._stored else 0.0

    def cookie_sent(self, at: float) -> None:
        """Record that this response sends the cookie; the next ``save()`` writes it.

        The middleware rolls a ``max_age`` cookie this way: that write's compare-and-set
        proves the record still exists before the cookie is sent again.
        """
        if not self._ended:
            self._meta["s"] = at
            self._meta_changed.add("s")

    @property
    def created_at(self) -> float:
        """When the session was first created (seconds since the epoch)."""
        return float(self._meta.get("c", 0.0))

    @property
    def delta(self) -> Mapping[str, str | tuple[tuple[str, Any], ...]]:
        """This request's changes per key: ``"set"``, ``"del"``, or replayable operations."""
        return {k: v if isinstance(v, str) else tuple(v) for k, v in self._changes.items()}

    @property
    def flushed(self) -> bool:
        """True if this request flushed (or invalidated) the session."""
        return self._flushed

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the record named by the cookie id, or begin a new session with a new id."""
        if self._started:
            return
        ctx = self._ctx
        if self._cookie_id is not None:
            sid = self._cookie_id
            if ctx.can_touch:
                raw = await ctx.driver.read_touch(sid, ctx.ttl)  # type: ignore[attr-defined]
            else:
                raw = await ctx.driver.read(sid)
            self._answered_at = time.monotonic()
            if raw is None:
                if ctx.events.has_listeners(SessionEvents.EXPIRED):
                    ctx.events.emit(SessionEvent(SessionEvents.EXPIRED, sid))
            elif self._load(sid, raw):
                if ctx.absolute_ttl is not None and \
                        ctx.clock() - self._meta.get("c", 0) > ctx.absolute_ttl:
                    # past the absolute lifetime: the record ends however active it was
                    await ctx.destroy(sid)
                    self._data, self._meta, self._version = {}, {}, None
                    self._rewrite = False
                    self._moved = True
                    ctx.events.emit(SessionEvent(SessionEvents.EXPIRED, sid))
                else:
                    self._id = sid
                    self._new = False
                    self._stored = True
                    if not ctx.can_touch and ctx.clock() - self._meta.get("t", 0) > ctx.ttl / 10:
                        # this driver cannot extend expiry on read: rewrite now and then
                        self._rewrite = True
        if self._new:
            self._id = new_session_id()
            self._meta = {"c": ctx.clock()}
            self._whole = True
        self._started = True
        if ctx.events.has_listeners(SessionEvents.STARTED):
            ctx.events.emit(SessionEvent(SessionEvents.STARTED, self._id, self))

    def _load(self, session_id: str, raw: bytes) -> bool:
        """Adopt a stored record; False (and one WARNING) if it is unreadable."""
        decoded = self._decode(session_id, raw)
        if decoded is None:
            return False
        data, meta, stale = decoded
        self._data, self._meta, self._version = data, meta, raw[:VERSION_SIZE]
        self._rewrite = stale
        return True

    def _decode(self, session_id: str, raw: bytes) -> tuple[dict[str, Any], dict[str, Any],
                                                             bool] | None:
        try:
            if len(raw) <= VERSION_SIZE:
                raise DecodeError("record is truncated")
            record, stale = self._ctx.codec.decode(session_id, raw[VERSION_SIZE:])
            data, meta = record.get("d"), record.get("m", {})
            if not isinstance(data, dict) or not isinstance(meta, dict) or not _valid_meta(meta):
                raise DecodeError("record does not have the session shape")
        except DecodeError as exc:
            logger.warning("discarding unreadable session record on driver %r: %s",
                           self._ctx.name, exc)
            return None
        if isinstance(meta.get("f"), list):
            # written by aiosessmgr 0.1 ([new keys, old keys]): every key is still unread
            meta["f"] = {key: "0" for part in meta["f"] for key in part}
        return data, meta, stale

    def _encode(self) -> tuple[bytes, bytes]:
        version = os.urandom(VERSION_SIZE)
        while True:
            try:
                body = self._ctx.codec.encode(self._id, {"d": self._data, "m": self._meta})
            except SerializationError as exc:
                key = exc.key
                if key is None or key in self._changes or key not in self._data:
                    raise  # this request's own value: the handler's error to see
                # a stored value this request did not touch, which loads but cannot be
                # saved again (written by something else): drop it rather than fail every
                # request of this session from now on
                logger.warning("session %s…: dropping stored key %r, which cannot be "
                               "saved again: %s", self._id[:6], key, exc)
                self._delete(key)
                continue
            return version, version + body

    def _worth_storing(self) -> bool:
        return bool(self._data) or "k" in self._meta or self._stored

    async def save(self) -> None:
        """Write this request's changes; on a concurrent save, merge and retry.

        Does nothing if nothing changed. A session whose record was destroyed (logout
        elsewhere) or expired while this request ran is not written back. Raises
        :class:`SessionSaveTimeout` if other processes kept winning for SAVE_DEADLINE
        seconds (the middleware answers 503 with ``Retry-After``), and
        :class:`DriverError` if the store fails.
        """
        if not self._started or self._ended:
            return
        moved_from = None
        if self._carry is not None:
            moved_from = await self._carry_over()
            if moved_from is None:
                return  # the record it was moved from ended meanwhile: never revive it
        await self._write()  # if this fails, the old record stays: a failed login loses nothing
        if moved_from is not None:
            await self._destroy_moved(moved_from)

    async def _write(self) -> None:
        self._age_flash()
        if not self.modified:
            return
        if not self._worth_storing():
            self._clear_delta()
            return
        ctx = self._ctx
        self._meta["t"] = ctx.clock()
        self._meta_changed.add("t")
        version, record = self._encode()
        if not ctx.can_cas:
            if self._version is not None and self._id in ctx.tombstones:
                self._end()  # destroyed while this request ran: last-writer-wins would revive it
                return
            await ctx.driver.write(self._id, record, ctx.ttl)
        else:
            sid = self._id
            turn = await ctx.save_turns.acquire_lock(sid, SAVE_TURN_WAIT, SAVE_TURN_WAIT)
            if turn is None:
                raise SessionSaveTimeout(
                    f"session save waited {SAVE_TURN_WAIT:g} s for its turn behind other "
                    f"saves of the same session"
                )
            try:
                written = await self._compare_and_set(version, record)
            finally:
                await ctx.save_turns.release_lock(sid, turn)
            if written is None:
                return
            version = written
        self._answered_at = time.monotonic()
        self._written = True
        self._version = version
        self._stored = True
        self._whole = False
        self._clear_delta()
        if ctx.events.has_listeners(SessionEvents.SAVED):
            ctx.events.emit(SessionEvent(SessionEvents.SAVED, self._id, self))

    async def _compare_and_set(self, version: bytes, record: bytes) -> bytes | None:
        """Write with compare-and-set, replaying the delta after each conflict.

        Returns the version written, or None if the record ended under us.
        """
        ctx = self._ctx
        cas = ctx.driver.compare_and_set  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        deadline = 0.0
        conflicts = 0
        while True:
            if await cas(self._id, record, ctx.ttl, self._version):
                return version
            conflicts += 1
            if conflicts == 1:
                # the first conflict re-reads at once: the winner has just written
                deadline = loop.time() + SAVE_DEADLINE
            else:
                # back off *before* re-reading, never between the re-read and the write:
                # the snapshot the delta is replayed on is then as fresh as it can be
                delay = random.uniform(0, min(SAVE_BACKOFF_MAX,
                                              SAVE_BACKOFF_MIN * (1 << min(conflicts, 16))))
                if loop.time() + delay > deadline:
                    raise SessionSaveTimeout(
                        f"could not save session {self._id[:6]}…: other writers kept saving "
                        f"it first for {SAVE_DEADLINE:g} s ({conflicts} attempts)"
                    )
                await asyncio.sleep(delay)
            fresh = await ctx.driver.read(self._id)
            if fresh is not None and fresh[:VERSION_SIZE] == version:
                # our write landed but its reply was lost (a client that retried):
                # replaying the delta now would apply increments twice
                return version
            if fresh is None and self._version is not None:
                self._end()
                return None
            self._rebase(fresh)
            version, record = self._encode()

    def detach(self) -> None:
        """Save nothing and decide no cookie: another request moved or ended this session.

        For a request that arrived with an id which another request then regenerated,
        invalidated or destroyed: it was sent before the browser saw the new cookie, so
        what it does must not override what the other request did. ``regenerate()`` or
        ``invalidate()`` afterwards make it an ordinary session again.
        """
        if not self._ended:
            logger.info("session %s… was moved or ended by another request after this one "
                        "began; this request's changes will not be saved",
                        (self._cookie_id or self._id)[:6])
        self._ended = True
        self._clear_delta()

    def _end(self) -> None:
        logger.info("session %s… ended while a request used it; its changes were not "
                    "written back", self._id[:6])
        self._stored = False
        self._ended = True
        self._clear_delta()

    async def refresh(self) -> None:
        """Re-read the stored record and replay this request's changes on top of it."""
        self._require_started()
        if not self._stored or self._ended:
            return
        raw = await self._ctx.driver.read(self._id)
        self._answered_at = time.monotonic()
        if raw is None:
            self._end()
        else:
            self._rebase(raw)

    @asynccontextmanager
    async def lock(self, lock_seconds: float = 10.0, wait_seconds: float = 10.0,
                   *, save: bool = True) -> AsyncIterator[Session]:
        """Hold this session's lock: no other ``lock()`` holder runs meanwhile.

        For a read-modify-write that ``increment``/``push`` cannot express. On entry the
        session is refreshed from the store; on a normal exit it is saved while the
        lock is still held (unless *save* is False: then the caller saves, or not).
        Waiting longer than *wait_seconds* raises :class:`SessionLockTimeout`;
        *lock_seconds* bounds how long a crashed holder can keep the lock (where the
        store needs it, e.g. Redis)::

            async with session.lock():
                session.put("seats", session.get("seats", 0) - 1)
        """
        self._require_started()
        locks, locked_id = self._ctx.locks, self._id
        token = await locks.acquire_lock(locked_id, lock_seconds, wait_seconds)
        if token is None:
            raise SessionLockTimeout(
                f"session is locked by another request; gave up after {wait_seconds} s"
            )
        try:
            await self.refresh()
            yield self
            if save:
                await self.save()
        finally:
            try:
                await locks.release_lock(locked_id, token)
            except DriverError as exc:
                # the work is done (or failed on its own): do not hide that behind the
                # release; a lock the store could not release expires by itself
                logger.warning("could not release the lock of session %s…: %s",
                               locked_id[:6], exc)

    def _rebase(self, raw: bytes | None, session_id: str | None = None) -> None:
        """Replay this request's delta on the record another request just wrote.

        Data: keys set or deleted here win, operations replay on the fresh value.
        Metadata by meaning: flash keys read here are dropped only if they still hold
        the flash that was read (a newer flash of the same key stays), flashes made here
        are added; a CSRF token created here yields to one already stored (the page that
        showed it keeps working) unless this request rotated it.
        """
        decoded = None if raw is None else self._decode(session_id or self._id, raw)
        self._version = None if raw is None else raw[:VERSION_SIZE]
        if decoded is None or self._whole:
            # unreadable or absent, or a new id written whole: our state is the record
            return
        fresh, fresh_meta, _ = decoded
        merged: dict[str, Any] = {} if self._flushed else fresh
        for key, change in self._changes.items():
            if isinstance(change, list):
                value = merged.get(key)
                for op, arg in change:
                    value = _apply(op, value, arg)
                merged[key] = value
            elif change == _SET:
                merged[key] = self._data[key]
            else:
                merged.pop(key, None)
        for name in self._meta_changed:
            if name in self._meta:
                fresh_meta[name] = self._meta[name]
            else:
                fresh_meta.pop(name, None)
        token = self._meta.get("k")
        if token is not None and (self._token_change == "rotated" or (
                self._token_change == "created" and "k" not in fresh_meta)):
            fresh_meta["k"] = token
        flash: dict[str, str] = {} if self._flushed else dict(fresh_meta.get("f") or {})
        fd = self._fd
        if fd is not None:
            for key, read_token in fd.read.items():
                if flash.get(key) == read_token:
                    del flash[key]
                    merged.pop(key, None)
            flash.update(fd.new)
        if flash:
            fresh_meta["f"] = flash
        else:
            fresh_meta.pop("f", None)
        self._data, self._meta = merged, fresh_meta

    def _clear_delta(self) -> None:
        self._changes = {}
        self._flushed = False
        self._meta_changed = set()
        self._rewrite = False
        self._token_change = None
        self._fd = None

    async def regenerate(self, destroy: bool = True) -> None:
        """Move the data to a new id (call it at login); by default destroy the old record.

        The CSRF token rotates too. The move happens at ``save()`` (the middleware saves at
        the end of the request): the old record is re-read and this request's changes are
        replayed on it (so what concurrent requests saved meanwhile is kept), the result is
        written under the new id, and then the old record is destroyed. A request that
        fails after ``regenerate()`` (an exception, a 5xx, a failed save) leaves the
        session as it was; if the old record ended meanwhile (a logout elsewhere), nothing
        is written under the new id and the session ends: it is never revived.
        """
        self._require_started()
        old_id = self._id
        await self._move(destroy, at_save=True)
        self._new_token()
        self._ctx.events.emit(
            SessionEvent(SessionEvents.REGENERATED, self._id, self, old_id=old_id)
        )

    async def invalidate(self) -> None:
        """Log out: clear the data, switch to a new id and destroy the old record now.

        At once, unlike ``regenerate()``: a logout takes effect even if the request fails
        afterwards.
        """
        self._require_started()
        old_id = self._id
        self.flush()
        self._meta.pop("k", None)
        self._token_change = None
        self._meta["c"] = self._ctx.clock()  # a new session: the absolute lifetime restarts
        await self._move(True, at_save=False)
        self._ctx.events.emit(
            SessionEvent(SessionEvents.INVALIDATED, self._id, self, old_id=old_id)
        )

    async def _move(self, destroy: bool, at_save: bool) -> None:
        old_id, was_stored = self._id, self._stored
        if was_stored:
            self._ctx.moved.add(old_id, self._ctx.clock())
        self._id = new_session_id()
        self._stored = False
        self._ended = False
        self._moved = True
        if at_save and (self._carry is not None or (destroy and was_stored)):
            # regenerate(): the delta stays relative to the record it was loaded from
            if self._carry is None:
                self._carry = (old_id, self._version)
            self._version = None
            return
        self._version = None
        self._write_whole()
        if self._carry is not None:  # invalidate() after regenerate(): the old record goes now
            carried, self._carry = self._carry[0], None
            await self._destroy_moved(carried)
        elif destroy and was_stored:
            await self._destroy_moved(old_id)

    def _write_whole(self) -> None:
        """The next save writes the whole state under a new id: nothing to merge with."""
        self._whole = True
        self._changes = {key: _SET for key in self._data}
        self._flushed = True
        self._meta_changed = set(self._meta)

    async def _carry_over(self) -> str | None:
        """regenerate() then save(): bring the moved-from record's current state along.

        Re-reads that record, replays this request's changes on it (what other requests
        saved meanwhile is kept) and prepares the whole of it for the new id. Returns the
        id to destroy once the new record is written, or None, ending this session, if
        that record is gone: a logout in another tab, an admin's destroy.
        """
        assert self._carry is not None
        old_id, loaded = self._carry
        raw = await self._ctx.driver.read(old_id)
        self._answered_at = time.monotonic()
        self._carry = None
        if raw is None:
            logger.info("session %s… ended while a request moved it to a new id; the new "
                        "id is not stored", old_id[:6])
            self._end()
            return None
        if raw[:VERSION_SIZE] != loaded:
            self._rebase(raw, old_id)
        self._version = None
        self._write_whole()
        return old_id

    async def _destroy_moved(self, old_id: str) -> None:
        """Destroy the record this request moved away from."""
        await self._ctx.destroy(old_id)
        self._answered_at = time.monotonic()
        self._ctx.events.emit(SessionEvent(SessionEvents.DESTROYED, old_id, self))

    def _require_started(self) -> None:
        if not self._started:
            raise SessionError("the session is not started; call await session.start() first")

    # -- CSRF token ------------------------------------------------------------------------

    @property
    def token(self) -> str:
        """The per-session CSRF secret, created on first use."""
        token = self._meta.get("k")
        if not isinstance(token, str):
            token = self._new_token(rotate=False)
        return token

    def regenerate_token(self) -> str:
        """Replace the CSRF secret (done automatically on ``regenerate()``)."""
        return self._new_token()

    def _new_token(self, rotate: bool = True) -> str:
        token = secrets.token_urlsafe(32)
        self._meta["k"] = token
        if rotate or self._token_change is None:
            self._token_change = "rotated" if rotate else "created"
        return token

    # -- change tracking primitives ----------------------------------------------------------

    def _set(self, key: str, value: Any) -> None:
        self._data[key] = value
        self._changes[key] = _SET

    def _delete(self, key: str) -> None:
        del self._data[key]
        self._changes[key] = _DEL
        if "f" in self._meta:
            self._unflash(key)

    def _op(self, key: str, op: str, arg: Any) -> Any:
        value = _apply(op, self._data.get(key), arg)
        self._data[key] = value
        change = self._changes.get(key)
        if isinstance(change, list):
            change.append((op, arg))
        elif change is None:
            self._changes[key] = [(op, arg)]
        else:
            # after a plain set or delete in this request the final value is absolute
            self._changes[key] = _SET
        return value

    # -- mapping protocol ------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        if "f" in self._meta:
            self._seen(key)
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._set(key, value)

    def __delitem__(self, key: str) -> None:
        self._delete(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __repr__(self) -> str:
        state = "new" if self._new else "loaded"
        return f"<{type(self).__name__} {self._id[:6]}… {state} keys={len(self._data)}>"

    def clear(self) -> None:
        """Same as :meth:`flush`."""
        self.flush()

    # -- the API ---------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The value of *key*, or *default*."""
        if "f" in self._meta:
            self._seen(key)
        return self._data.get(key, default)

    def put(self, key: str | Mapping[str, Any], value: Any = None) -> None:
        """Set one key, or every key of a mapping."""
        if isinstance(key, Mapping):
            for k, v in key.items():
                self._set(k, v)
        else:
            self._set(key, value)

    def pull(self, key: str, default: Any = None) -> Any:
        """Remove *key* and return its value (or *default*)."""
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            return default
        self._delete(key)
        return value

    def has(self, *keys: str) -> bool:
        """True if every key is present and not None (reading a flashed key consumes it)."""
        if "f" in self._meta:
            for key in keys:
                self._seen(key)
        return all(self._data.get(k) is not None for k in keys)

    def exists(self, *keys: str) -> bool:
        """True if every key is present, even with a None value."""
        return all(k in self._data for k in keys)

    def missing(self, *keys: str) -> bool:
        """True if no key is present."""
        return not any(k in self._data for k in keys)

    def forget(self, *keys: str) -> None:
        """Remove the keys that are present."""
        for key in keys:
            if key in self._data:
                self._delete(key)

    def flush(self) -> None:
        """Remove all data (and pending flash data); the id and CSRF token stay."""
        self._data.clear()
        self._changes.clear()
        self._flushed = True
        self._meta.pop("f", None)
        self._fd = None

    def all(self) -> dict[str, Any]:
        """A shallow copy of all data (this reads, and so consumes, every flashed key)."""
        if "f" in self._meta:
            for key in list(self._meta["f"]):
                self._seen(key)
        return dict(self._data)

    def only(self, *keys: str) -> dict[str, Any]:
        """The present keys among *keys*, with their values."""
        if "f" in self._meta:
            for key in keys:
                self._seen(key)
        return {k: self._data[k] for k in keys if k in self._data}

    def except_(self, *keys: str) -> dict[str, Any]:
        """All data except *keys* (named with an underscore: ``except`` is a keyword)."""
        skip = set(keys)
        if "f" in self._meta:
            for key in list(self._meta["f"]):
                if key not in skip:
                    self._seen(key)
        return {k: v for k, v in self._data.items() if k not in skip}

    def increment(self, key: str, by: int | float = 1) -> int | float:
        """Add *by* to a number (missing counts as 0) and return it; merges with others."""
        current = self._data.get(key, 0)
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            raise SessionError(f"cannot increment {key!r}: it holds {type(current).__name__}")
        result: int | float = self._op(key, "incr", by)
        return result

    def decrement(self, key: str, by: int | float = 1) -> int | float:
        """Subtract *by* from a number and return it."""
        return self.increment(key, -by)

    def push(self, key: str, value: Any) -> None:
        """Append *value* to the list at *key* (created if missing); merges with others."""
        current = self._data.get(key, [])
        if not isinstance(current, list):
            raise SessionError(f"cannot push onto {key!r}: it holds {type(current).__name__}")
        self._op(key, "push", value)

    # -- flash data ------------------------------------------------------------------------
    #
    # A flashed key lasts until a later request reads it (get, [], pull, has, all, only,
    # except_) and is removed when that request saves; requests that never read it
    # (a background poll between a POST and its redirect) leave it alone. Each flash has
    # a token, so a request removes only the flash it read, never a newer one.

    def _flash_delta(self) -> _FlashDelta:
        if self._fd is None:
            self._fd = _FlashDelta()
        return self._fd

    def _seen(self, key: str) -> None:
        """A read of *key*: if it holds a flash of an earlier request, this consumes it."""
        token = self._meta["f"].get(key)
        if token is not None:
            fd = self._flash_delta()
            if key not in fd.new and key not in fd.read:
                fd.read[key] = token

    def _unflash(self, key: str) -> None:
        """*key* is removed: its pending flash goes too (conditionally, by its token)."""
        flash, fd = self._meta["f"], self._flash_delta()
        if key in fd.new:
            del fd.new[key]
            flash.pop(key, None)
            if key in fd.replaced:  # the flash it had replaced goes as well
                fd.read.setdefault(key, fd.replaced.pop(key))
        elif key in flash:
            fd.read.setdefault(key, flash[key])

    def flash(self, key: str, value: Any) -> None:
        """Set *key* until a later request reads it (the next page after a redirect)."""
        self._set(key, value)
        token = secrets.token_hex(4)
        flash, fd = self._meta.setdefault("f", {}), self._flash_delta()
        if key in flash and key not in fd.new:
            fd.replaced[key] = flash[key]
        flash[key] = token
        fd.new[key] = token
        fd.read.pop(key, None)
        fd.now.discard(key)

    def now(self, key: str, value: Any) -> None:
        """Set *key* for this request only."""
        if "f" in self._meta:
            self._unflash(key)
        self._set(key, value)
        self._flash_delta().now.add(key)

    def reflash(self) -> None:
        """Keep all flash data this request read (or set with ``now``) for a later request."""
        if self._fd is not None:
            self.keep(*self._fd.read, *self._fd.now)

    def keep(self, *keys: str) -> None:
        """Keep the named flash keys that this request read (or set with ``now``) for later."""
        fd = self._fd
        if fd is None:
            return
        for key in keys:
            if key in fd.read:
                del fd.read[key]  # still pending, with the flash's own token
            elif key in fd.now and key in self._data:
                fd.now.discard(key)
                self.flash(key, self._data[key])

    def _age_flash(self) -> None:
        """At save: drop the flashes this request read and the keys it set with ``now``.

        A flashed key this request read goes, with whatever this request wrote to it;
        whether the stored key goes too is decided at the merge, by the flash's token
        (another request may have flashed that key again meanwhile).
        """
        fd = self._fd
        if fd is None:
            return
        if fd.read:
            flash = self._meta.get("f") or {}
            for key, token in fd.read.items():
                if flash.get(key) == token:
                    del flash[key]
                self._data.pop(key, None)
                self._changes.pop(key, None)
            if not flash:
                self._meta.pop("f", None)
        for key in fd.now:
            self._data.pop(key, None)
            self._changes[key] = _DEL


class _FlashDelta:
    """One request's flash changes, made the first time a request touches flash data."""

    __slots__ = ("new", "now", "read", "replaced")

    def __init__(self) -> None:
        # flashes read, so consumed (key -> token of the flash read); flashes made here
        # (key -> new token); keys set with now(); pending flashes flashed over (key ->
        # their token)
        self.read: dict[str, str] = {}
        self.new: dict[str, str] = {}
        self.now: set[str] = set()
        self.replaced: dict[str, str] = {}


_SCALARS: Final = (str, int, float, bool, type(None))
_KNOWN_META: Final = frozenset({"c", "t", "s", "k", "f"})


def _valid_meta(meta: dict[str, Any]) -> bool:
    """Reject stored metadata of the wrong shape (a hostile or foreign payload).

    Times are finite numbers, the token a str, flash data a {str: str} map; keys we do not
    know (a later version's) may hold scalars only, so metadata always saves again.
    """
    for name in ("c", "t", "s"):
        if name in meta and (isinstance(meta[name], bool)
                             or not isinstance(meta[name], (int, float))
                             or not math.isfinite(meta[name])):
            return False
    if "k" in meta and not isinstance(meta["k"], str):
        return False
    if any(name not in _KNOWN_META and (not isinstance(value, _SCALARS) or (
            isinstance(value, float) and not math.isfinite(value)))
           for name, value in meta.items()):
        return False
    if "f" in meta:
        flash = meta["f"]
        if isinstance(flash, dict):
            return all(isinstance(k, str) and isinstance(v, str) for k, v in flash.items())
        # aiosessmgr 0.1: [new keys, old keys]
        if not (isinstance(flash, list) and len(flash) == 2
                and all(isinstance(part, list) and all(isinstance(k, str) for k in part)
                        for part in flash)):
            return False
    return True
