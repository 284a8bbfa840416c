"""The sessions of a user: the binding a login writes, the index, listing and ending them.

The record is the truth. A session bound to a user names it in its metadata (``u``, with
its public handle ``h``, the login time ``l`` and device info; see :mod:`aiosessmgr.record`).
The driver's index (:class:`~aiosessmgr.drivers.base.SupportsUserIndex`) maps each handle
of a user to the id its record currently has. It is a hint, repaired lazily: a listing
reads every record the index names and keeps only those that still name that user and
handle, so an expired or destroyed session disappears from it at once; entries whose
record is gone are removed then (and by drivers' ``gc()``).

Order of writes, which keeps the index consistent with the records under races: a record
is written before its index entry, and a login or regenerate checks that the record it
moved from still exists only after indexing the new one. Ending a handle destroys the
record it names, removes the entry only if it still names that id, and looks again: a
session that moved to a new id meanwhile is ended under that id too (``end``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from . import record
from .drivers.base import SupportsReadMany, SupportsUserIndex
from .errors import DriverError, SessionError
from .events import SessionEventInfo, SessionEvents
from .ids import handle_of
from .log import logger

if TYPE_CHECKING:
    from .config import UsersConfig
    from .delta import Delta
    from .runtime import DriverRuntime

__all__ = ["BEFORE_LOGIN", "BINDING", "MAX_USER_AGENT", "MAX_USER_ID", "UserBinding",
           "UserSession", "device", "end", "enforce_cap", "index", "index_of", "listing",
           "unindex", "user_key"]

#: characters: the longest user id accepted (a str, or an int written in decimal)
MAX_USER_ID: Final = 256
#: characters of the User-Agent header kept (browsers send 100-300)
MAX_USER_AGENT: Final = 512
#: the metadata keys of a user binding (user, handle, login, index refreshed, device)
BINDING: Final = ("u", "h", "l", "v", "a", "i")
#: work a request defers that must be done before its login (``compat``'s synchronous
#: ``invalidate()``): awaited, in order, at the start of ``login()``
BEFORE_LOGIN: Final = web.RequestKey("aiosessmgr_before_login",
                                     list[Callable[[], Awaitable[None]]])
#: ids read or destroyed per round when listing or ending a user's sessions
_CHUNK: Final = 1000
#: looks of ``end`` at the index: sessions that moved to a new id while being ended
_ROUNDS: Final = 8


@dataclass(frozen=True, slots=True)
class UserSession:
    """One live session of a user, as ``manager.user_sessions()`` lists it.

    Times are epoch seconds. ``last_seen`` is the last request that wrote the record,
    refreshed by read-only requests at most every ``users.touch_interval`` seconds.
    ``user_agent`` and ``ip`` are those of the login request, None where not recorded
    (``users.record_user_agent``, ``users.record_ip``).
    """

    #: the session's public handle (``session.handle``): never its id
    handle: str
    #: when the session logged in
    created_at: float
    last_seen: float
    user_agent: str | None
    ip: str | None


def user_key(user_id: object) -> str:
    """The stored form of a user id: a str as is, an int in decimal.

    Raises TypeError for any other type (bool included) and ValueError for an empty
    string, one longer than MAX_USER_ID characters, or one with control characters.
    """
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
        raise TypeError(f"user_id must be a str or an int, got {type(user_id).__name__}")
    key = user_id if isinstance(user_id, str) else str(user_id)
    if not key or len(key) > MAX_USER_ID or not key.isprintable():
        raise ValueError(f"user_id must be 1 to {MAX_USER_ID} printable characters")
    return key


def index_of(rt: DriverRuntime) -> SupportsUserIndex:
    """The driver of *rt* as a user index; SessionError naming the methods if it is not."""
    driver = rt.driver
    if not isinstance(driver, SupportsUserIndex):
        raise SessionError(
            f"driver {rt.name!r} ({type(driver).__name__}) keeps no index of a user's "
            f"sessions: implement index_user_session(), user_session_index() and "
            f"unindex_user_sessions() (aiosessmgr.SupportsUserIndex)")
    return driver


def device(users: UsersConfig, request: Any) -> dict[str, str]:
    """Device metadata of a login: the User-Agent (``a``) and IP address (``i``) of
    *request* (an aiohttp request, or None), as far as *users* says to record them."""
    found: dict[str, str] = {}
    if request is None:
        return found
    if users.record_user_agent:
        agent = request.headers.get("User-Agent")
        if isinstance(agent, str) and agent:
            found["a"] = agent[:MAX_USER_AGENT]
    if users.record_ip:
        remote = request.remote
        if isinstance(remote, str) and remote:
            found["i"] = remote
    return found


def _entry_ttl(rt: DriverRuntime) -> int:
    # a session refreshes its entry at most every touch_interval, while every request
    # extends its record's expiry: the entry outlives the record by that much slack
    return rt.ttl + math.ceil(2 * rt.users.touch_interval)


async def index(rt: DriverRuntime, meta: Mapping[str, Any], session_id: str,
                soft: bool = False, moved_from: str | None = None) -> bool:
    """Point the bound session's handle (in *meta*) at *session_id* in its user's index.

    A compare-and-set (see ``SupportsUserIndex``): False if the handle names another id
    than *session_id* and *moved_from* (the id this request moved the session from): a
    concurrent request moved it first. *soft*: a refresh of an entry that exists, which
    a move meanwhile leaves alone; a store failure is logged, not raised (the next
    refresh repairs it). Without a binding or an index: True, nothing done.
    """
    user, handle = meta.get("u"), meta.get("h")
    if not (isinstance(user, str) and isinstance(handle, str)
            and isinstance(rt.driver, SupportsUserIndex)):
        return True
    try:
        return await rt.driver.index_user_session(user, handle, session_id, _entry_ttl(rt),
                                                  None if soft else moved_from)
    except DriverError as exc:
        if not soft:
            raise
        logger.warning("could not refresh the user index entry of session %s…: %s",
                       session_id[:6], exc)
        return True


async def unindex(rt: DriverRuntime, user: str, entries: Mapping[str, str]) -> None:
    """Remove *entries* (handle -> id) from *user*'s index where they still name that id."""
    if entries and isinstance(rt.driver, SupportsUserIndex):
        await rt.driver.unindex_user_sessions(user, entries)


async def _read_many(rt: DriverRuntime, ids: Sequence[str]) -> list[bytes | None]:
    driver = rt.driver
    found: list[bytes | None] = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        if isinstance(driver, SupportsReadMany):
            found.extend(await driver.read_many(chunk))
        else:  # concurrent reads (the Redis driver sends one turn's as one pipeline)
            found.extend(await asyncio.gather(*(driver.read(sid) for sid in chunk)))
    return found


def _live(rt: DriverRuntime, user: str, handle: str, session_id: str,
          raw: bytes | None) -> UserSession | None:
    """The listing of one indexed record, or None if it no longer is that session."""
    if raw is None:
        return None
    try:
        meta = record.decode(rt.codec, session_id, raw)[1]
    except record.DecodeError:
        return None  # unreadable: the next load of it gives a fresh session
    if meta.get("u") != user or meta.get("h") != handle:
        return None
    created = meta.get("l", meta.get("c", 0.0))
    if rt.absolute_ttl is not None and rt.clock() - meta.get("c", 0.0) > rt.absolute_ttl:
        return None  # past its absolute lifetime: it ends at its next request
    seen = max(meta.get("t", 0.0), meta.get("v", 0.0), created)
    return UserSession(handle=handle, created_at=float(created), last_seen=float(seen),
                       user_agent=meta.get("a"), ip=meta.get("i"))


async def _survey(rt: DriverRuntime, user: str, entries: Mapping[str, str] | None = None
                  ) -> tuple[list[tuple[UserSession, str]], dict[str, str]]:
    """(live sessions of *user* with their ids, stale entries): every entry of the index
    (or of *entries*, read from it) checked against the record it names."""
    if entries is None:
        entries = await index_of(rt).user_session_index(user)
    handles = list(entries)
    raws = await _read_many(rt, [entries[h] for h in handles]) if handles else []
    live: list[tuple[UserSession, str]] = []
    stale: dict[str, str] = {}
    for handle, raw in zip(handles, raws, strict=True):
        info = _live(rt, user, handle, entries[handle], raw)
        if info is None:
            stale[handle] = entries[handle]
        else:
            live.append((info, entries[handle]))
    return live, stale


def _recency(item: tuple[UserSession, str]) -> tuple[float, float, str]:
    # most recently active first; ties (one clock tick) by login, then by handle, so
    # every process orders a user's sessions the same way
    return item[0].last_seen, item[0].created_at, item[0].handle


async def listing(rt: DriverRuntime, user: str) -> list[tuple[UserSession, str]]:
    """The live sessions of *user* with their ids, most recently active first.

    Entries whose record is gone, unreadable or no longer names this user and handle are
    removed from the index (only if they still name the id read).
    """
    live, stale = await _survey(rt, user)
    if stale:
        await index_of(rt).unindex_user_sessions(user, stale)
    live.sort(key=_recency, reverse=True)
    return live


_Survey = tuple[Mapping[str, str], list[tuple[UserSession, str]], dict[str, str]]


async def end(rt: DriverRuntime, user: str, keep: str | None = None,
              handles: Collection[str] | None = None, first: _Survey | None = None,
              rounds: int = _ROUNDS) -> int:
    """End *user*'s sessions (those of *handles*; None: all) but *keep*; return how many.

    Each is destroyed (DESTROYED fires for it), then its entry is removed if it still
    names the id destroyed. The handles are those in the index when the call begins; a
    session that moved to a new id meanwhile (a regenerate or login in flight) is found
    under that id at the next look and ended there too, until no entry of those handles
    names an id not yet seen (at most ``_ROUNDS`` looks). Requests in flight on an ended
    session cannot write it back (compare-and-set). *first*: the index entries, and what
    ``_survey`` made of them, just read by the caller (the first look); *rounds*: 1 ends
    what that look found and follows no move.
    """
    idx = index_of(rt)
    ended: set[str] = set()
    looked: set[tuple[str, str]] = set()  # (handle, id) pairs already ended or found stale
    known: set[str] | None = None
    for _ in range(rounds):
        if first is not None:
            (entries, live, stale), first = first, None
        else:
            entries = await idx.user_session_index(user)
            if known is None:
                live, stale = await _survey(rt, user, entries)
        if known is None:
            known = {h for h in entries if h != keep and (handles is None or h in handles)}
            targets = {info.handle: sid for info, sid in live if info.handle in known}
        else:
            # a handle met before, under an id not seen yet: a session moving while it is
            # being ended. Destroyed at once, unread: its next move checks that this
            # record still exists, so only a destroy before that check ends it
            stale = {}
            targets = {h: sid for h, sid in entries.items()
                       if h in known and (h, sid) not in looked}
        looked.update(stale.items())
        if not targets and not stale:
            break
        items = list(targets.items())
        for start in range(0, len(items), _CHUNK):
            await asyncio.gather(*(rt.destroy(sid) for _, sid in items[start:start + _CHUNK]))
        for _, sid in items:
            rt.events.emit(SessionEventInfo(SessionEvents.DESTROYED, sid))
        await idx.unindex_user_sessions(user, {**stale, **targets})
        ended.update(targets)
        looked.update(items)
    return len(ended)


async def enforce_cap(rt: DriverRuntime, user: str, own: str) -> int:
    """``users.max_sessions`` at a login of the session *own* (a handle): end *user*'s
    least recently active sessions beyond the cap; return how many were ended. Without a
    cap the user's sessions are listed all the same, so every login prunes the entries of
    ended ones and an index never grows beyond the sessions alive (plus those since).

    Only sessions less recent than *own* are ended, never *own* itself: of logins racing
    each other, the later ones end the earlier ones, so the cap holds without every one
    of them ending all the others. (A login that did not see a racing one leaves the cap
    exceeded until the next login.)
    """
    cap = rt.users.max_sessions
    if not isinstance(rt.driver, SupportsUserIndex):
        return 0
    if cap is None:  # one look anyway: entries of the user's ended sessions go
        await listing(rt, user)
        return 0
    entries = await index_of(rt).user_session_index(user)
    live, stale = await _survey(rt, user, entries)
    live.sort(key=_recency, reverse=True)
    mine = next((n for n, (info, _) in enumerate(live) if info.handle == own), None)
    if len(live) <= cap or mine is None:
        if stale:
            await index_of(rt).unindex_user_sessions(user, stale)
        return 0
    older = {info.handle for info, _ in live[max(cap, mine + 1):]}
    # those records, not their handles: one that is moving (a login again, on another
    # device) is a newer login than its old record says, and not this one's to end
    return await end(rt, user, keep=own, handles=older, first=(entries, live, stale),
                     rounds=1)


class UserBinding:
    """The user side of a session: ``login``, ``logout``, ``user_id``, ``handle``.

    Mixed into :class:`~aiosessmgr.SessionStore` (as :class:`~aiosessmgr.data.SessionData`
    is), which provides what is declared below.
    """

    if not TYPE_CHECKING:  # SessionStore's slots hold the state (mypy: declared below)
        __slots__ = ()
    else:
        _d: Delta
        _rt: DriverRuntime
        _id: str
        _carry: tuple[str, bytes | None, bool] | None
        _cookie_id: str | None
        _new: bool
        _index: bool
        request: Any

        @property
        def ended(self) -> bool:
            raise NotImplementedError

        def _require_started(self) -> None: ...
        def _begin_anew(self) -> None: ...
        async def regenerate(self, destroy: bool = True) -> None: ...
        async def invalidate(self, *, flush: bool = True) -> None: ...
        async def save(self) -> None: ...

    @property
    def user_id(self) -> str | None:
        """The user this session is logged in as (``login``, always a str), or None."""
        user = self._d.meta.get("u")
        return user if isinstance(user, str) else None

    @property
    def handle(self) -> str:
        """The session's public handle: stable for its lifetime (a new one after
        ``invalidate``), never the id, and the id cannot be derived from it.

        Made at ``login``, or on first use (then a stored session is written once more),
        from the id of the record (``ids.handle_of``): requests of one record agree on it.
        """
        self._require_started()
        handle = self._d.meta.get("h")
        if not isinstance(handle, str):
            handle = handle_of(self._source)
            self._d.set_meta("h", handle)
        return handle

    @property
    def _source(self) -> str:
        # the id of the record this request loaded (a move at save() comes from it)
        return self._carry[0] if self._carry is not None else self._id

    async def login(self, user_id: str | int) -> None:
        """Log in as *user_id*: ``regenerate()``, bind the session to the user, and at
        ``save()`` add it to the user's index with device info from the request.

        As with ``regenerate()``, the move happens at ``save()`` (the middleware saves at
        the end of the request; call it yourself outside one), so a request that fails
        after ``login()`` leaves the session as it was. That save also applies
        ``users.max_sessions``. The handle stays, unless the session was logged in as
        another user: then its data is flushed too, as Django's ``login()`` does (a
        login as the same user keeps the data). The absolute lifetime restarts. A
        session ended meanwhile (by ``end_user_sessions``, another request's logout),
        before the login or before its save, starts afresh: empty, under a new handle.
        Work deferred to before a login (``BEFORE_LOGIN``: ``compat``'s ``invalidate()``)
        is done first. Of two requests logging in one session at once (a double-submitted
        form), the first to save wins; the other saves nothing and leaves the cookie to it.
        TypeError/ValueError for a bad *user_id* (see ``user_key``).
        """
        self._require_started()
        uid = user_key(user_id)
        if isinstance(self.request, web.Request):
            for settle in self.request.get(BEFORE_LOGIN, ()):
                await settle()  # an invalidate() deferred by compat comes first
        if self.ended:
            self._begin_anew()
        # the record this request loaded, even after an invalidate() here: requests logging
        # in from one record (a double-submitted logout-then-login) make one handle
        loaded = self._cookie_id if self._cookie_id is not None and not self._new else None
        was, source = (self._d.meta.get("u"), self._d.meta.get("h")), loaded or self._source
        if was[0] is not None and was[0] != uid:
            self._d.flush()  # another user's data is not this one's (as Django's login())
        await self.regenerate()
        handle = was[1] if was[0] in (None, uid) and isinstance(was[1], str) \
            else handle_of(source, uid)
        for name in BINDING[4:]:
            self._d.unset_meta(name)  # device info of an earlier login
        now = self._rt.clock()
        for name, value in {"c": now, "u": uid, "h": handle, "l": now, "v": now,
                            **device(self._rt.users, self.request)}.items():
            self._d.set_meta(name, value)
        self._index = True

    async def _relogin(self, moved_from: str) -> bool:
        """A login of this request whose old record *moved_from* ended before its save:
        begin a new session bound to the user under a new handle (True), holding only
        what this request wrote (the ended session's data stays gone).

        False if there is no login, or if another request moved the session first (its
        handle names a new id: a double-submitted login, which that request completes).
        """
        meta, rt = self._d.meta, self._rt
        user, handle = meta.get("u"), meta.get("h")
        if "l" not in self._d.meta_changed or not isinstance(user, str):
            return False
        if isinstance(handle, str) and isinstance(rt.driver, SupportsUserIndex) and \
                (await rt.driver.user_session_index(user)).get(handle, moved_from) \
                != moved_from:
            return False
        binding = {name: meta[name] for name in BINDING if name in meta}
        own = self._d.own()  # what this request itself wrote stays; the old data does not
        self._begin_anew()
        for key, (value, flashed) in own.items():
            (self._d.flash if flashed else self._d.set)(key, value)
        # derived, so requests starting afresh from one record at once contend for one entry
        for name, value in {**binding, "h": handle_of(moved_from, user, "afresh")}.items():
            self._d.set_meta(name, value)
        self._index = True
        return True

    async def logout(self) -> None:
        """Log out: the same as ``invalidate()`` (new id, data cleared, the old record
        destroyed now), which also takes a logged-in session out of its user's index."""
        await self.invalidate()
