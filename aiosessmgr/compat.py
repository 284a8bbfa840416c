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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

from aiohttp import web
from aiohttp.typedefs import Middleware

from . import users
from . import web as _web
from .errors import SessionError
from .manager import SessionManager
from .session import SessionStore

__all__ = ["CompatSession", "get_session", "new_session", "session_middleware", "setup"]


class CompatSession(MutableMapping[str, Any]):
    """aiohttp-session's ``Session`` API over an aiosessmgr session (``.store``)."""

    __slots__ = ("_arm", "_created", "_manager", "_pending", "_store")

    def __init__(self, store: SessionStore, manager: SessionManager) -> None:
        self._store = store
        self._manager = manager
        # invalidate() was called; the async part runs before the cookie is decided
        self._pending = False
        # set by get_session/new_session: schedules settle() at the end of the request
        self._arm: Callable[[], None] | None = None
        # creation time for stores without ``created_at`` (not a Session subclass)
        self._created = int(time.time())

    @property
    def store(self) -> SessionStore:
        """The aiosessmgr session behind this adapter, for its richer API."""
        return self._store

    @property
    def new(self) -> bool:
        """True if the session was not loaded from the store."""
        return self._store.new

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


_STATE = web.RequestKey("aiosessmgr_compat", _State)


def _state(request: web.Request, manager: SessionManager | None) -> tuple[_State, SessionManager]:
    state = cast("_State | None", request.get(_STATE))
    if state is None:
        state = request[_STATE] = _State()
    return state, manager or _web.default_manager(request)


def _adapt(request: web.Request, state: _State, mgr: SessionManager,
           store: SessionStore) -> CompatSession:
    adapter = state.adapters[mgr] = CompatSession(store, mgr)
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
