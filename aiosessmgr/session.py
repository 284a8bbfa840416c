"""Sessions: the data API, the lifecycle, the CSRF token, and saving without lost updates.

:class:`SessionStore` is the session, as Laravel's ``Illuminate\\Session\\Store`` is:
the interface the manager, the middleware and CSRF protection rely on, and its one
implementation. :class:`Session` is the default ``store_class``; a custom store
subclasses either and is passed as ``SessionManager(config, store_class=...)``.

A session remembers the version of the record it loaded and keeps this request's
changes as a :class:`~aiosessmgr.delta.Delta`. ``save()`` writes with the driver's
compare-and-set; if another request saved first, it re-reads, replays the delta on
the fresh record and tries again, so concurrent requests lose nothing. The record's
layout is :mod:`aiosessmgr.record`'s; bytes are the codec's.
"""

from __future__ import annotations

import asyncio
import enum
import time
from typing import Any, Final

from . import commit, record, users
from .data import SessionData
from .delta import Delta
from .deprecation import renamed
from .errors import (
    SerializationError,
    SessionError,
    SessionTooLarge,
)
from .events import SessionEventInfo, SessionEvents
from .ids import is_valid_session_id, new_session_id
from .locking import SessionLocking
from .log import logger
from .runtime import DriverRuntime, Tombstones

__all__ = ["Session", "SessionStore", "State", "Tombstones", "is_valid_session_id",
           "new_session_id"]


_VERSION_SIZE: Final = record.VERSION_SIZE
_MOVED_AWAY: Final = "while a request moved it to a new id; the new id is not stored"
_IN_USE: Final = "while a request used it; its changes were not written back"
_OVERTAKEN: Final = "as a second request moved it: the first one's move stands"


class State(enum.Enum):
    """Where a session is in its life, as far as this request knows."""

    #: not started: no store access yet
    UNSTARTED = "unstarted"
    #: started, no record under ``id`` (yet)
    NEW = "new"
    #: a record exists under ``id``
    STORED = "stored"
    #: loaded, then another request moved or ended it after this one began (detach())
    DETACHED = "detached"
    #: the record was destroyed or expired under this request: never written again
    ENDED = "ended"


class SessionStore(SessionData, SessionLocking, users.UserBinding):
    """A session: a mapping with change tracking, flash data and a CSRF token.

    Usage (normally through ``get_session(request)``)::

        session = await manager.driver()      # a new, started session
        session.put("user_id", 42)
        session.increment("visits")
        session.flash("status", "Saved!")     # kept until a later request reads it
        await session.save()

    Values must be serializable (msgpack: None, bool, int, float, str, bytes, datetime,
    list, tuple, dict and their subclasses; the exact set is in ``aiosessmgr.serializers``);
    ``save()`` raises SerializationError for anything else. Mutating a nested value in
    place is not tracked; ``put`` it again, or use ``push``/``increment`` which also merge
    correctly with concurrent requests.
    """

    # one session per request: slots make it cheaper (a subclass may still have a __dict__)
    __slots__ = ("_answered_at", "_carry", "_cookie_id", "_d", "_id", "_index", "_moved",
                 "_moving", "_new", "_rt", "_state", "_version", "_written", "request")

    def __init__(self, context: DriverRuntime, session_id: str | None = None) -> None:
        """Bind to a driver's runtime; *session_id* is the id from the cookie, if any."""
        self._rt = context
        self._cookie_id = session_id if is_valid_session_id(session_id) else None
        self._id = self._cookie_id or ""
        self._d = Delta()
        self._version: bytes | None = None
        self._state = State.UNSTARTED
        self._new = True
        # this request gave the session a new id or ended the record it was loaded from
        self._moved = False
        # time.monotonic() of the store's last answer to this session
        self._answered_at = 0.0
        self._written = False
        # regenerate(): the record moved from, the version loaded, whether to destroy it
        self._carry: tuple[str, bytes | None, bool] | None = None
        # the next write (re)points this session's entry in its user's index
        self._index = False
        # set while a save() moves the session (regenerate): other saves wait for it
        self._moving: asyncio.Future[None] | None = None
        #: the aiohttp request (set by the middleware): login() reads device info from it
        self.request: Any = None

    # -- state -----------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The session id (a new one until a stored session is loaded)."""
        return self._id

    @property
    def name(self) -> str:
        """The name of the driver this session lives on."""
        return self._rt.name

    @property
    def state(self) -> State:
        """The lifecycle state (see :class:`State`)."""
        return self._state

    @property
    def new(self) -> bool:
        """True if this session was not loaded from the store."""
        return self._new

    @property
    def started(self) -> bool:
        """True once ``start()`` ran (the response then depends on the cookie)."""
        return self._state is not State.UNSTARTED

    accessed = started  # aiohttp-session's and the middleware's name for it

    @property
    def stored(self) -> bool:
        """True if a record for ``id`` exists in the store as far as this session knows."""
        return self._state is State.STORED or self._state is State.DETACHED

    @property
    def ended(self) -> bool:
        """True if another request ended or moved this session while this one used it.

        Its changes are dropped and the middleware leaves the cookie alone: only the
        request that moved or ended a session decides its cookie.
        """
        return self._state is State.ENDED or self._state is State.DETACHED

    @property
    def moved(self) -> bool:
        """True if this request gave the session a new id or ended the record it loaded."""
        return self._moved

    @property
    def answered_at(self) -> float:
        """``time.monotonic()`` of the store's last answer (0.0: none); ends an outage."""
        return self._answered_at

    @property
    def written(self) -> bool:
        """True if this request wrote the session's record (its compare-and-set landed)."""
        return self._written

    @property
    def cookie_sent_at(self) -> float:
        """When a response last sent this session's cookie (epoch seconds); 0.0 if unknown.

        Kept in the record (metadata ``s``): a rolling ``max_age`` cookie is re-sent on
        time, whichever process served the requests in between."""
        return float(self._d.meta.get("s", 0.0)) if self.stored else 0.0

    def cookie_sent(self, at: float) -> None:
        """Record that this response sends the cookie; the next ``save()`` writes it.

        The middleware rolls a ``max_age`` cookie this way: that write's compare-and-set
        proves the record still exists before the cookie is sent again.
        """
        if not self.ended:
            self._d.set_meta("s", at)

    # -- loading ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the record named by the cookie id, or begin a new session with a new id."""
        if self._state is not State.UNSTARTED:
            return
        rt = self._rt
        self._state = State.NEW
        if self._cookie_id is not None:
            sid = self._cookie_id
            raw = await (rt.driver.read_touch(sid, rt.ttl)  # type: ignore[attr-defined]
                         if rt.can_touch else rt.driver.read(sid))
            self._answered_at = time.monotonic()
            if raw is None:
                if rt.events.has_listeners(SessionEvents.EXPIRED):
                    rt.events.emit(SessionEventInfo(SessionEvents.EXPIRED, sid))
            elif self._load(sid, raw):
                if rt.absolute_ttl is not None and \
                        rt.clock() - self._d.meta.get("c", 0) > rt.absolute_ttl:
                    # past the absolute lifetime: the record ends however active it was
                    await rt.destroy(sid)
                    self._d, self._version, self._moved = Delta(), None, True
                    rt.events.emit(SessionEventInfo(SessionEvents.EXPIRED, sid))
                else:
                    self._id, self._new, self._state = sid, False, State.STORED
                    if "u" in self._d.meta and rt.can_index and rt.clock() - \
                            self._d.meta.get("v", 0) >= rt.users.touch_interval:
                        self._d.rewrite = self._index = True  # refresh last_seen and entry
                    if not rt.can_touch and rt.clock() - self._d.meta.get("t", 0) > rt.ttl / 10:
                        # this driver cannot extend expiry on read: rewrite now and then
                        self._d.rewrite = True
        if self._new:
            self._id = new_session_id()
            self._d.meta = {"c": rt.clock()}
            self._d.whole = True
        if rt.events.has_listeners(SessionEvents.STARTED):
            rt.events.emit(SessionEventInfo(SessionEvents.STARTED, self._id, self))

    def _load(self, session_id: str, raw: bytes) -> bool:
        """Adopt a stored record; False (and one WARNING) if it is unreadable."""
        decoded = self._decode(session_id, raw)
        if decoded is None:
            return False
        data, meta, stale = decoded
        d = self._d  # still empty: this is start(), before any change
        d.data, d.meta, d.rewrite = data, meta, stale
        self._version = raw[:_VERSION_SIZE]
        return True

    def _decode(self, session_id: str,
                raw: bytes) -> tuple[dict[str, Any], dict[str, Any], bool] | None:
        try:
            return record.decode(self._rt.codec, session_id, raw)
        except record.DecodeError as exc:
            logger.warning("discarding unreadable session record on driver %r: %s",
                           self._rt.name, exc)
            return None

    def _encode(self) -> tuple[bytes, bytes]:
        d, limit = self._d, self._rt.max_record_size
        while True:
            try:
                encoded = record.encode(self._rt.codec, self._id, d.data, d.meta)
                if limit is not None and len(encoded[1]) > limit:
                    raise SessionTooLarge(len(encoded[1]), limit)
                return encoded
            except SerializationError as exc:
                key = exc.key
                if key is None or key in d.changes or key not in d.data:
                    raise  # this request's own value: the handler's error to see
                # a stored value not touched here that cannot be saved again (written by
                # something else): dropped, rather than failing every request
                logger.warning("session %s…: dropping stored key %r, which cannot be "
                               "saved again: %s", self._id[:6], key, exc)
                d.delete(key)

    def _rebase(self, raw: bytes | None, session_id: str | None = None) -> bytes | None:
        """Replay this request's delta on a record another wrote; return its version."""
        decoded = None if raw is None else self._decode(session_id or self._id, raw)
        self._version = None if raw is None else raw[:_VERSION_SIZE]
        if decoded is not None:
            self._d.rebase(decoded[0], decoded[1])
        return self._version

    def _adopt(self, raw: bytes) -> None:  # the record a group commit wrote: take it
        if (decoded := self._decode(self._id, raw)) is not None:
            self._d.data, self._d.meta = decoded[0], decoded[1]

    # -- saving ----------------------------------------------------------------------------

    async def save(self) -> None:
        """Write this request's changes; on a concurrent save, merge and retry.

        Does nothing if nothing changed. A session whose record was destroyed (logout
        elsewhere) or expired while this request ran is not written back. Raises
        :class:`SessionSaveTimeout` if other processes kept winning for ``commit.SAVE_DEADLINE``
        seconds (the middleware answers 503 with ``Retry-After``), and
        :class:`DriverError` if the store fails.
        """
        while self._moving is not None:  # a save moving this session: this one goes after
            await asyncio.shield(self._moving)
        if self._state is State.UNSTARTED or self.ended:
            return
        carry, login = self._carry, self._index and self._moved and "u" in self._d.meta
        moving = self._moving = None if carry is None else asyncio.Future()
        try:
            if carry is not None and not await self._carry_over(*carry):
                return  # the record it was moved from ended meanwhile: never revive it
            # if this fails, the old record stays and the move stays pending (a retried save
            # re-checks it): a failed login loses nothing and revives nothing
            carry = self._carry  # None if a login found it ended and started afresh
            await self._write()
            self._carry = None
            if carry is not None and self._state is not State.ENDED:
                await self._finish_move(carry[0], carry[2], self._state is State.STORED)
        finally:
            if moving is not None:
                moving.set_result(None)
                self._moving = None
        if login and self._state is State.STORED:  # a login (or move) written: the cap
            await users.enforce_cap(self._rt, self._d.meta["u"], self._d.meta["h"])

    async def _write(self) -> None:
        d, rt = self._d, self._rt
        d.age_flash()
        if not d.pending:
            return
        if not (d.data or "k" in d.meta or "u" in d.meta or self.stored):
            d.clear()  # nothing worth a record: an empty session is never stored
            return
        d.set_meta("t", rt.clock())
        index, soft = self._index and "u" in d.meta, not (self._moved or self._carry)
        if index:
            d.set_meta("v", d.meta["t"])
        save = commit.write(rt, self._id, commit.Save(
            self._version, self._answered_at, self._encode, self._rebase, self._adopt, self))
        if index and soft:  # a refresh: sent with the write (one round trip on Redis)
            written = (await asyncio.gather(save, users.index(rt, d.meta, self._id, True)))[0]
        else:
            written = await save
        if written is None:
            self._end(self._id)  # the record ended under this request: never write it back
            if index and soft:  # nor leave the entry just refreshed behind
                await users.unindex(rt, d.meta["u"], {d.meta["h"]: self._id})
            return
        self._answered_at = time.monotonic()
        if index and not soft and not await users.index(  # a new id: its record, then entry
                rt, d.meta, self._id, moved_from=self._carry[0] if self._carry else None):
            await rt.destroy(self._id)  # another request moved it first: its record stands
            return self._end(self._id, _OVERTAKEN)
        self._written = True
        self._version = written
        self._state = State.STORED
        self._index = False
        self._d.whole = False
        self._d.clear()
        if rt.events.has_listeners(SessionEvents.SAVED):
            rt.events.emit(SessionEventInfo(SessionEvents.SAVED, self._id, self))

    def detach(self) -> None:
        """Save nothing and decide no cookie: another request moved or ended this session.

        For a request that arrived with an id which another request then regenerated,
        invalidated or destroyed: it was sent before the browser saw the new cookie, so
        what it does must not override what the other request did. ``regenerate()`` or
        ``invalidate()`` afterwards make it an ordinary session again.
        """
        if not self.ended:
            logger.info("session %s… was moved or ended by another request after this one "
                        "began; this request's changes will not be saved",
                        (self._cookie_id or self._id)[:6])
        self._state = State.DETACHED if self._state is State.STORED else State.ENDED
        self._d.clear()

    def _begin_anew(self) -> None:
        """An ended session becomes a new, empty one under a new id (a login after its end)."""
        self._d, self._carry, self._version = Delta(meta={"c": self._rt.clock()}), None, None
        self._d.whole = True
        self._id, self._state, self._new, self._moved = new_session_id(), State.NEW, True, True

    def _end(self, sid: str, why: str = _IN_USE) -> None:
        logger.info("session %s… ended %s", sid[:6], why)
        self._state = State.ENDED
        self._d.clear()

    # -- moving: regenerate and invalidate ---------------------------------------------------

    async def regenerate(self, destroy: bool = True) -> None:
        """Move the data to a new id (``login`` calls it); by default destroy the old record.

        The CSRF token rotates too (OWASP: renew the session id at any privilege change).
        The move happens at ``save()`` (the middleware saves at the end of the request):
        the old record is re-read, this request's changes replayed on it (what others saved
        before is kept; one landing before the destroy is not: docs/concurrency.md) and
        written under the new id, then the old record is destroyed (kept with
        ``destroy=False``, unless logged in: a copy would escape ``end_user_sessions``). A
        request that fails after it (an exception, a 5xx, a failed save) changes nothing.
        If the old record ended meanwhile (a logout in another tab, another request's
        move), even while the new record was written, nothing stays under the new id and
        the session ends, never revived; the request that ended it owns the cookie.
        """
        self._require_started()
        await self._rt.commits.settled(self)  # a save of this session in progress ends first
        if self._state is State.ENDED:
            self._begin_anew()  # its record ended under this request: its data stays gone
        old_id = self._id
        if "u" in self._d.meta:  # a copy of a logged-in session would escape its index
            destroy = self._index = True
        await self._move(destroy, at_save=True)
        self._d.new_token()
        self._rt.events.emit(
            SessionEventInfo(SessionEvents.REGENERATED, self._id, self, old_id=old_id)
        )

    async def invalidate(self, *, flush: bool = True) -> None:
        """Log out: clear the data, switch to a new id and destroy the old record now.

        At once, unlike ``regenerate()``: a logout takes effect even if the request fails
        afterwards. ``flush=False`` is for a caller that already flushed (``compat``'s
        synchronous ``invalidate()``): what was set since, flash data and a CSRF token
        made since included, moves to the new id.
        """
        self._require_started()
        await self._rt.commits.settled(self)  # a save of this session in progress ends first
        old_id, d = self._id, self._d
        bound = {n: d.meta.pop(n) for n in users.BINDING if n in d.meta}  # logged out
        indexed = self._carry[0] if self._carry else old_id if self.stored else None
        if flush:
            d.flush()
        d.drop_token(unless_new=not flush)
        d.meta["c"] = self._rt.clock()  # a new session: the absolute lifetime restarts
        await self._move(True, at_save=False)
        self._index = False
        if "u" in bound and "h" in bound and indexed is not None:
            await users.unindex(self._rt, bound["u"], {bound["h"]: indexed})
        self._rt.events.emit(
            SessionEventInfo(SessionEvents.INVALIDATED, self._id, self, old_id=old_id)
        )

    async def _move(self, destroy: bool, at_save: bool) -> None:
        old_id, was_stored = self._id, self.stored
        if was_stored:
            self._rt.moved.add(old_id, self._rt.clock())
        self._id = new_session_id()
        self._state = State.NEW
        self._moved = True
        if at_save and (self._carry is not None or was_stored):
            # regenerate(): the delta stays relative to the record it was loaded from
            if self._carry is None:
                self._carry = (old_id, self._version, destroy)
            elif destroy:
                self._carry = (*self._carry[:2], True)
            self._version = None
            return
        self._version = None
        self._d.write_whole()
        if self._carry is not None:  # invalidate() after regenerate(): the old record goes now
            carried, self._carry = self._carry[0], None
            await self._destroy_moved(carried)
        elif destroy and was_stored:
            await self._destroy_moved(old_id)

    async def _carry_over(self, old_id: str, loaded: bytes | None, destroy: bool) -> bool:
        """regenerate() then save(): bring the moved-from record's current state along.

        Re-reads that record, replays this request's changes on it (what other requests
        saved meanwhile is kept) and prepares the whole of it for the new id. False, ending
        this session, if that record is gone (a logout in another tab, an admin's destroy),
        unless this request logged in: then it starts afresh, logged in (``_relogin``).
        """
        raw = await self._rt.driver.read(old_id)
        self._answered_at = time.monotonic()
        if raw is None:
            self._carry = None
            if await self._relogin(old_id):  # a login here: afresh, the old data stays gone
                return True
            self._end(old_id, _MOVED_AWAY)
            return False
        if raw[:_VERSION_SIZE] != loaded:
            self._rebase(raw, old_id)
        self._version = None
        self._d.write_whole()
        return True

    async def _finish_move(self, old_id: str, destroy: bool, written: bool) -> None:
        """The new record is written: end the old one, or undo the move if a logout ended
        it after ``_carry_over`` read it (a logout after this check is the later one)."""
        if written and await self._rt.driver.read(old_id) is None:
            await self._rt.destroy(self._id)
            self._end(old_id, _MOVED_AWAY)
        elif destroy:
            await self._destroy_moved(old_id)
        self._answered_at = time.monotonic()

    async def _destroy_moved(self, old_id: str) -> None:
        """Destroy the record this request moved away from."""
        await self._rt.destroy(old_id)
        self._answered_at = time.monotonic()
        self._rt.events.emit(SessionEventInfo(SessionEvents.DESTROYED, old_id, self))

    def __repr__(self) -> str:
        state = "new" if self._new else "loaded"
        return f"<{type(self).__name__} {self._id[:6]}… {state} keys={len(self._d.data)}>"

    def _require_started(self) -> None:
        if self._state is State.UNSTARTED:
            raise SessionError("the session is not started; call await session.start() first")


class Session(SessionStore):
    """The default ``store_class``; subclass it (or SessionStore) to add behaviour."""

    __slots__ = ()


# names before 0.2, kept for one release
__getattr__ = renamed("aiosessmgr.session", {
    "StoreContext": ("aiosessmgr.DriverRuntime", lambda: DriverRuntime),
})
