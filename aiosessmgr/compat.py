"""Migration from aiohttp-session: its API over an aiosessmgr ``SessionManager``.

An app written for aiohttp-session keeps its handlers; only the imports and the
storage change::

    from aiosessmgr.compat import get_session, new_session, setup

    async def login(request: web.Request) -> web.Response:
        session = await new_session(request)      # new id; the old record is destroyed
        session["user"] = "alice"
        return web.Response(text="hello")

    async def logout(request: web.Request) -> web.Response:
        session = await get_session(request)
        session.invalidate()                      # synchronous, as in aiohttp-session
        return web.Response(text="bye")

    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    setup(app, manager)                           # a SessionManager, not a storage

Decisions:

- ``get_session`` / ``new_session`` return a :class:`CompatSession`, a thin adapter
  with aiohttp-session's ``Session`` API over the aiosessmgr session (``.store``).
  One request gets one adapter per session, as aiohttp-session returns one object.
- ``invalidate()`` is synchronous in aiohttp-session. The adapter clears the data at
  once and records the invalidation; it is carried out (``await store.invalidate()``:
  new id, old record destroyed) when the handler returns or raises an
  ``HTTPException``, when a streamed response is prepared, or at the next
  ``get_session`` of the request, whichever comes first, so it always happens
  before the cookie is decided (through ``aiosessmgr.web.add_finalizer``, so middleware
  order does not matter and ``aiosessmgr.setup`` works too), and before a
  ``store.login()``, which then stands. Keys set after ``invalidate()`` are kept, under
  the new id, as aiohttp-session keeps them.
- ``new`` is the store's ``new``; ``created`` is ``int(store.created_at)``, the
  creation time in epoch seconds (aiohttp-session moves ``created`` to the time of
  each write; aiosessmgr keeps the real creation time and enforces its own
  ``lifetime`` / ``absolute_lifetime``). ``identity`` is the id once the session is
  stored, else None. ``changed()`` re-puts every key, so values mutated in place are
  written. ``max_age`` is ``cookie.max_age`` of the manager's config (read-only:
  per-session cookie lifetimes are not supported). ``set_new_identity`` is not
  supported (ids are always generated): it raises ``NotImplementedError``.
- ``new_session`` destroys the previous record, unlike aiohttp-session, so a cookie
  from before login cannot be replayed. Errors are aiosessmgr's (``SessionError``
  where aiohttp-session raised ``RuntimeError``).
- ``setup(app, storage)`` takes a ``SessionManager``; an aiohttp-session storage is a
  ``TypeError`` that says which driver replaces it.
- :func:`adopt_sessions` moves sessions of the old aiohttp-session storage into
  aiosessmgr on first contact, decoded by aiohttp-session's own code, so switching logs
  nobody out. An adopted session's ``new`` is False, as aiohttp-session reports for a
  session it loaded.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from http.cookies import CookieError, Morsel
from typing import Any, Final, NoReturn, Protocol, cast

from aiohttp import web
from aiohttp.typedefs import Middleware

from . import users
from . import web as _web
from .adoption import Adoption, set_adopter
from .errors import SessionError
from .ids import is_valid_session_id
from .log import logger
from .manager import SessionManager
from .session import SessionStore

__all__ = ["CompatSession", "adopt_sessions", "get_session", "new_session",
           "session_middleware", "setup"]


class CompatSession(MutableMapping[str, Any]):
    """aiohttp-session's ``Session`` API over an aiosessmgr session (``.store``)."""

    __slots__ = ("_adopted", "_arm", "_created", "_manager", "_pending", "_store")

    def __init__(self, store: SessionStore, manager: SessionManager) -> None:
        self._store = store
        self._manager = manager
        # invalidate() was called; the async part runs before the cookie is decided
        self._pending = False
        # set by get_session/new_session: schedules settle() at the end of the request
        self._arm: Callable[[], None] | None = None
        # creation time for stores without ``created_at`` (not a Session subclass)
        self._created = int(time.time())
        # adopt_sessions() filled the store with an old aiohttp-session session
        self._adopted = False

    @property
    def store(self) -> SessionStore:
        """The aiosessmgr session behind this adapter, for its richer API."""
        return self._store

    @property
    def new(self) -> bool:
        """True if the session was not loaded from the store (nor adopted from the old one)."""
        return self._store.new and not self._adopted

    @property
    def identity(self) -> str | None:
        """The session id once the session is stored, else None."""
        return self._store.id if self._store.stored else None

    @property
    def created(self) -> int:
        """When the session was created, in whole seconds since the epoch."""
        created_at = getattr(self._store, "created_at", None)
        return int(created_at) if isinstance(created_at, (int, float)) else self._created

    @property
    def empty(self) -> bool:
        """True if the session holds no data."""
        return len(self._store) == 0

    @property
    def max_age(self) -> int | None:
        """The cookie's ``max_age`` in seconds from the manager's config (None: browser session)."""
        return self._manager.config.cookie.max_age

    @max_age.setter
    def max_age(self, value: int | None) -> NoReturn:
        raise SessionError(
            "a per-session max_age is not supported; set cookie.max_age (or "
            "cookie.expire_on_close) in the SessionManager config"
        )

    @property
    def invalidation_pending(self) -> bool:
        """True between ``invalidate()`` and the moment it is carried out."""
        return self._pending

    def changed(self) -> None:
        """Mark every key changed, so values mutated in place are saved."""
        self._store.put(self._store.all())

    def invalidate(self) -> None:
        """Clear the data now; before the response, the id changes and the old record goes."""
        self._store.flush()
        if not self._pending:
            self._pending = True
            if self._arm is not None:
                self._arm()  # the middleware runs settle() before it decides the cookie

    async def settle(self) -> None:
        """Carry out a pending ``invalidate()`` now (the middleware does it for you).

        What was set after ``invalidate()`` moves to the new id as it is (aiohttp-session
        keeps those keys): flash data stays flash data, a CSRF token made since stays.
        """
        if not self._pending:
            return
        self._pending = False
        await self._store.invalidate(flush=False)

    def discard_invalidation(self) -> None:
        """Forget a pending ``invalidate()`` (``new_session`` replaces the session anyway)."""
        self._pending = False

    def set_new_identity(self, identity: Any) -> NoReturn:
        """Not supported: aiosessmgr always generates ids (256 bits from ``secrets``)."""
        raise NotImplementedError(
            "set_new_identity() is not supported: aiosessmgr generates every session id"
        )

    # -- the mapping protocol --------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._store[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._store[key] = value

    def __delitem__(self, key: str) -> None:
        del self._store[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: object) -> bool:
        return key in self._store

    def get(self, key: str, default: Any = None) -> Any:
        """The value of *key*, or *default*."""
        return self._store.get(key, default)

    def clear(self) -> None:
        """Remove all data (the id stays; call ``invalidate()`` at logout)."""
        self._store.flush()

    def __repr__(self) -> str:
        return (f"<CompatSession [new:{self.new}, created:{self.created}, "
                f"pending invalidation:{self._pending}] {self._store!r}>")


@dataclass(eq=False)
class _State:
    """The compat side of one request: its adapter per manager."""

    adapters: dict[SessionManager, CompatSession] = field(default_factory=dict)
    #: sessions adopt_sessions() filled in this request
    adopted: list[SessionStore] = field(default_factory=list)


_STATE = web.RequestKey("aiosessmgr_compat", _State)


def _state(request: web.Request, manager: SessionManager | None) -> tuple[_State, SessionManager]:
    state = cast("_State | None", request.get(_STATE))
    if state is None:
        state = request[_STATE] = _State()
    return state, manager or _web.default_manager(request)


def _adapt(request: web.Request, state: _State, mgr: SessionManager,
           store: SessionStore) -> CompatSession:
    adapter = state.adapters[mgr] = CompatSession(store, mgr)
    adapter._adopted = any(store is adopted for adopted in state.adopted)
    # each invalidate() is carried out before the middleware decides the cookie (or, after
    # a stream was prepared, before the request ends)
    adapter._arm = lambda: _arm(request, adapter, mgr)
    return adapter


def _arm(request: web.Request, adapter: CompatSession, mgr: SessionManager) -> None:
    _web.add_finalizer(request, adapter.settle, mgr)
    # and before a login of the store (invalidate() then store.login(): logged in after)
    before = request.get(users.BEFORE_LOGIN)
    if before is None:
        before = request[users.BEFORE_LOGIN] = []
    before.append(adapter.settle)


async def get_session(request: web.Request,
                      manager: SessionManager | None = None) -> CompatSession:
    """The request's session as aiohttp-session returns it (one store read at most)."""
    state, mgr = _state(request, manager)
    store = await _web.get_session(request, mgr)
    adapter = state.adapters.get(mgr)
    if adapter is None or adapter.store is not store:
        adapter = _adapt(request, state, mgr, store)
    await adapter.settle()
    return adapter


async def new_session(request: web.Request,
                      manager: SessionManager | None = None) -> CompatSession:
    """A new empty session under a new id; the previous record is destroyed."""
    state, mgr = _state(request, manager)
    previous = state.adapters.pop(mgr, None)
    if previous is not None:
        previous.discard_invalidation()  # its record is destroyed below anyway
    store = await _web.new_session(request, mgr)
    return _adapt(request, state, mgr, store)


def session_middleware(manager: SessionManager) -> Middleware:
    """``aiosessmgr.session_middleware(manager)``, after checking *manager*'s type.

    As with ``aiosessmgr.session_middleware`` alone, sessions of responses the handler
    streams itself are saved only with ``setup()``.
    """
    _check_manager(manager, "session_middleware")
    return _web.session_middleware(manager)


def setup(app: web.Application, storage: SessionManager) -> None:
    """``aiosessmgr.setup(app, manager)``, after checking that *storage* is a manager.

    Nothing more is needed: the adapter's deferred ``invalidate()`` runs through
    :func:`aiosessmgr.web.add_finalizer`, so ``aiosessmgr.setup`` works as well.
    """
    _check_manager(storage, "setup")
    _web.setup(app, storage)


#: aiohttp-session storage class name -> what replaces it
_REPLACEMENTS = {
    "SimpleCookieStorage": 'the "memory" driver (also the test driver)',
    "EncryptedCookieStorage": 'the "file" or "redis" driver with "encryption": '
                              '{"enabled": True, "key": KEY} (data stays on the server)',
    "NaClCookieStorage": 'the "file" or "redis" driver with "encryption": '
                         '{"enabled": True, "key": KEY} (data stays on the server)',
    "RedisStorage": 'the "redis" driver: {"driver": "redis", "url": "redis://..."} '
                    '(or "client": your_redis to reuse a client)',
    "MemcachedStorage": "a custom driver registered with manager.extend(name, factory)",
}


def _check_manager(storage: object, where: str) -> None:
    if isinstance(storage, SessionManager):
        return
    kind = type(storage)
    if any(cls.__module__.split(".")[0] == "aiohttp_session" for cls in kind.__mro__):
        replacement = next((_REPLACEMENTS[cls.__name__] for cls in kind.__mro__
                            if cls.__name__ in _REPLACEMENTS), "a driver of your choice")
        raise TypeError(
            f"aiosessmgr.compat.{where}() takes an aiosessmgr.SessionManager, not the "
            f"aiohttp-session storage {kind.__name__}. Build a manager instead, e.g. "
            'SessionManager({"default": "main", "drivers": {"main": {...}}, '
            '"cookie": {"name": "AIOHTTP_SESSION"}}), using '
            f"{replacement}. Cookie options (cookie_name, max_age, secure, httponly, "
            'samesite, path, domain) move to the "cookie" section.'
        )
    raise TypeError(
        f"aiosessmgr.compat.{where}() takes an aiosessmgr.SessionManager, "
        f"not {kind.__name__}"
    )


# -- adopt_sessions: moving from aiohttp-session without logging anyone out ---------------


class _OldStorage(Protocol):
    """What :func:`adopt_sessions` uses of an aiohttp-session storage (``AbstractStorage``)."""

    @property
    def cookie_name(self) -> str: ...

    @property
    def cookie_params(self) -> Mapping[str, Any]: ...

    async def load_session(self, request: web.Request) -> Any: ...


#: exceptions of a storage's decoding (a bad cookie or payload); anything else is the store's
_UNREADABLE = (ValueError, TypeError, LookupError, AttributeError)


def adopt_sessions(app: web.Application, manager: SessionManager, storage: _OldStorage, *,
                   delete_record: Callable[[str], Awaitable[None]] | None = None,
                   timeout: float | None = 5.0) -> None:
    """Move each visitor's aiohttp-session session into aiosessmgr at its first request.

    Switching an app from aiohttp-session to aiosessmgr would otherwise log everyone
    out. With this, a request of *app* whose cookies name no live session of *manager*
    but carry the cookie of *storage* (any aiohttp-session storage: Encrypted, NaCl or
    Simple cookie, Redis, Memcached, a custom ``AbstractStorage``; keep it configured as
    it was) has that cookie decoded by aiohttp-session's own code,
    ``await storage.load_session(request)``. A non-empty result (a ``dict`` of the
    values, as aiohttp-session's decoder returned them) is put into the request's new
    aiosessmgr session, which is saved under a new id with our cookie. Once that save
    succeeded, and only then (not on a failed save or a 5xx response: the old session
    stays usable): the old cookie is deleted, with the storage's ``cookie_params``
    (``domain``, ``path``, ``secure``, ``httponly``, ``samesite``), unless it is ours by
    name, path and domain, when our new cookie simply replaces it; and the old
    server-side record is deleted. aiohttp-session's ``created`` and per-session
    ``max_age`` are not carried over: *manager*'s ``lifetime`` applies from now on.

    Requests with a live session of ours never touch *storage*, nor does a request
    without its cookie, nor, when the names are the same, one whose value has the shape
    of our id (an expired session of ours). Nothing happens until a handler calls
    ``get_session``. Call before the app starts, before or after ``setup(app, manager)``
    (``aiosessmgr`` or ``aiosessmgr.compat``); one storage per manager.

    The old record: aiohttp-session has no public delete, and what its API offers
    (``invalidate()`` then ``save_session``) writes ``{}`` back under the same key,
    with no expiry when ``max_age`` is None; so the key is deleted directly:
    ``DEL cookie_name + "_" + identity`` on ``storage._redis`` (RedisStorage) or
    ``storage.conn.delete`` (MemcachedStorage), the layout of aiohttp-session 2.x. For
    anything else (a custom server-side storage, a subclass keying records its own
    way), pass *delete_record*: awaited with the old identity (``str``) once the new
    session is saved. Cookie storages have no record.

    Errors in a request never become a 500. An old cookie the storage cannot decode:
    aiohttp-session's Encrypted and NaCl storages log a WARNING themselves (logger
    ``aiohttp_session``) and return an empty session; other storages raise, which logs
    one WARNING on the ``aiosessmgr`` logger (the cookie's value is never logged).
    Either way there is nothing to adopt, and the old cookie is deleted with the next
    save. A storage that fails or takes longer than *timeout* (seconds per call; None:
    no limit), such as its Redis being down, is logged likewise and treated as nothing
    to adopt: that user starts a fresh session, logged out, rather than getting an
    error page (the old cookie is kept, but once our session is saved it is never asked
    about again). A failed record deletion is logged; the record then lasts until its
    own expiry. Values aiosessmgr's serializer refuses (an integer beyond 64 bits, a custom
    decoder's types) are
    dropped, each with a WARNING naming the key. Here, at setup: TypeError if *manager*
    or *storage* is of the wrong kind, ValueError if the storage's cookie attributes
    cannot be written in a ``Set-Cookie`` header.

    Limits. An old cookie copied before adoption and replayed later is adopted again
    while aiohttp-session can still decode it: a cookie storage's cookie until its
    ``max_age`` (forever if None; changing the storage's key ends it), a server-side
    one never (its record is gone). Requests sent at once with the same old cookie each
    adopt it, into a session of their own, all with the data; the browser keeps the
    cookie of the response it gets last, and the others expire unused. With a
    server-side storage a request may read the record after another deleted it: in the
    same process it still gets the data if it arrived before the deletion (kept in
    memory for 10 seconds); in another process it starts a fresh session. A handler
    that empties the adopted session on that first request (a logout) stores nothing;
    the old cookie and record are deleted all the same. An adopted session's
    ``session.new`` (of :func:`get_session`) is False. Usage::

        storage = EncryptedCookieStorage(KEY, cookie_name="AIOHTTP_SESSION")  # as before
        setup(app, manager)            # the "cookie" name may stay "AIOHTTP_SESSION"
        adopt_sessions(app, manager, storage)
    """
    _check_manager(manager, "adopt_sessions")
    name = getattr(storage, "cookie_name", None)
    if not isinstance(name, str) or not callable(getattr(storage, "load_session", None)):
        raise TypeError("adopt_sessions() takes an aiohttp-session storage (an "
                        f"AbstractStorage) as its third argument, not {type(storage).__name__}")
    ours = manager.config.cookie
    same_name = name == ours.name
    same_cookie = _same_cookie(storage, ours.name, ours.path, ours.domain)
    deletion = [] if same_cookie else [_deletion_header(storage)]
    # the very cookie ours is: ours replaces it, unless the response sets none (a logout)
    unless_ours = [_deletion_header(storage)] if same_cookie else []
    delete = delete_record or _record_deleter(storage)
    recent = _Recent()

    async def forget(identity: str) -> None:
        assert delete is not None
        try:
            async with asyncio.timeout(timeout):
                await delete(identity)
        except Exception as exc:
            logger.warning("the adopted aiohttp-session record could not be deleted (it "
                           "lasts until it expires): %s: %s", type(exc).__name__, exc)

    async def adopt(request: web.Request, session: SessionStore,
                    arrived: float) -> Adoption | None:
        value = request.cookies.get(name)
        if not value or (same_name and is_valid_session_id(value)):
            return None  # no old cookie, or one of ours: the old storage is not asked
        try:
            async with asyncio.timeout(timeout):
                old = await storage.load_session(request)
            data = dict(old)  # aiohttp-session's Session is a MutableMapping
        except _UNREADABLE as exc:
            logger.warning("the aiohttp-session cookie %r could not be decoded; the request "
                           "gets a fresh session: %s: %s", name, type(exc).__name__, exc)
            return Adoption(headers=deletion, unless_ours=unless_ours)
        except Exception as exc:
            logger.warning("the aiohttp-session storage failed reading cookie %r; nothing to "
                           "adopt, the request gets a fresh session: %s: %s",
                           name, type(exc).__name__, exc)
            return None  # the cookie stays: it may be adopted once the store is back
        identity = getattr(old, "identity", None)
        after_save = None
        if delete is not None and identity is not None:
            key = str(identity)

            async def after_save() -> None:
                await forget(key)
                recent.deleted(value, manager.clock())
            if data:
                recent.add(value, data)
        elif delete is not None and not data:
            # sent with the same old cookie as a request of this process that adopted it
            # and deleted its record meanwhile (see _Recent)
            data = recent.get(value, arrived)
        keys: list[str] = []
        if data:
            stored = _storable(manager, session, data)
            session.put(stored)
            keys = list(stored)
            state, _ = _state(request, manager)
            state.adopted.append(session)
        else:
            logger.debug("aiohttp-session cookie %r: an empty or expired session, nothing "
                         "to adopt", name)
        return Adoption(headers=deletion, after_save=after_save,
                        unless_ours=unless_ours, keys=keys)

    set_adopter(app, manager, adopt)


class _Recent:
    """Server-side sessions this process adopted in the last few seconds, by old cookie.

    Requests a browser sent at once with the same old cookie (parallel requests of a
    page) may read it after the first of them deleted its record. Those that arrived
    before the deletion adopt the same data instead of starting afresh, whichever
    response's cookie the browser keeps; a request arriving after it is a new visit (a
    replay) and finds nothing, as web.py treats a request sent with a moved cookie.
    """

    #: seconds a record's data is kept after its load
    SECONDS: Final = 10.0
    #: sessions kept at most (the oldest go first)
    LIMIT: Final = 10_000

    def __init__(self) -> None:
        # old cookie -> [monotonic time it goes, its data, manager clock when deleted]
        self._entries: dict[str, list[Any]] = {}

    def add(self, cookie: str, data: dict[str, Any]) -> None:
        """Keep *data*, loaded for *cookie* and about to be adopted."""
        now = time.monotonic()
        entries = self._entries
        entries.pop(cookie, None)
        entries[cookie] = [now + self.SECONDS, copy.deepcopy(data), None]
        while entries:  # in order of expiry: drop the expired ones and any above LIMIT
            oldest = next(iter(entries))
            if entries[oldest][0] > now and len(entries) <= self.LIMIT:
                break
            del entries[oldest]

    def deleted(self, cookie: str, at: float) -> None:
        """The record of *cookie* was deleted at *at* (the manager's clock)."""
        entry = self._entries.get(cookie)
        if entry is not None:
            entry[2] = at

    def get(self, cookie: str, arrived: float) -> dict[str, Any]:
        """A copy of the data adopted for *cookie* if its record was deleted after a request
        arriving at *arrived* (the manager's clock) was sent, else {}."""
        entry = self._entries.get(cookie)
        if entry is None or entry[0] <= time.monotonic() or entry[2] is None \
                or arrived > entry[2]:
            return {}
        data: dict[str, Any] = copy.deepcopy(entry[1])
        return data


def _same_cookie(storage: _OldStorage, name: str, path: str, domain: str | None) -> bool:
    """True if *storage*'s cookie is the very cookie ours is (name, path and domain)."""
    params = storage.cookie_params

    def host(value: object) -> str | None:
        return value.lower().lstrip(".") if isinstance(value, str) and value else None

    return (storage.cookie_name == name and (params.get("path") or "/") == path
            and host(params.get("domain")) == host(domain))


def _deletion_header(storage: _OldStorage) -> str:
    """The ``Set-Cookie`` value deleting *storage*'s cookie, with its own attributes."""
    params = storage.cookie_params
    morsel: Morsel[str] = Morsel()
    try:
        morsel.set(storage.cookie_name, "", '""')
        morsel["expires"] = "Thu, 01 Jan 1970 00:00:00 GMT"
        morsel["max-age"] = 0
        morsel["path"] = params.get("path") or "/"
        for attribute in ("domain", "secure", "httponly", "samesite"):
            if params.get(attribute):
                morsel[attribute] = params[attribute]
    except CookieError as exc:
        raise ValueError(f"the cookie of {type(storage).__name__} cannot be deleted with a "
                         f"Set-Cookie header: {exc}") from exc
    return morsel.OutputString()


def _record_deleter(storage: _OldStorage) -> Callable[[str], Awaitable[None]] | None:
    """How to delete a record of aiohttp-session's Redis or Memcached storage, or None."""
    kinds = {cls.__name__ for cls in type(storage).__mro__
             if cls.__module__.split(".")[0] == "aiohttp_session"}
    prefix = storage.cookie_name + "_"
    if "RedisStorage" in kinds:
        redis = storage._redis  # type: ignore[attr-defined]

        async def delete_redis(identity: str) -> None:
            await redis.delete(prefix + identity)

        return delete_redis
    if "MemcachedStorage" in kinds:
        memcached = storage.conn  # type: ignore[attr-defined]

        async def delete_memcached(identity: str) -> None:
            await memcached.delete((prefix + identity).encode("utf-8"))

        return delete_memcached
    return None


def _storable(manager: SessionManager, session: SessionStore,
              data: dict[str, Any]) -> dict[str, Any]:
    """*data* without the values the session's serializer refuses (each logged)."""
    serializer = manager.runtime(session.name).codec.serializer
    try:
        serializer.serialize(data)
    except Exception:
        pass  # find the keys at fault
    else:
        return data
    kept = {}
    for key, value in data.items():
        try:
            serializer.serialize({key: value})
        except Exception as exc:
            logger.warning("adopting an aiohttp-session session: dropping key %r, which "
                           "cannot be stored: %s", key, exc)
        else:
            kept[key] = value
    return kept
