"""aiohttp glue: ``setup()``, ``session_middleware()``, ``get_session()``, ``new_session()``.

The middleware works its settings out once. Per request it only remembers that a
request arrived; the session is loaded when a handler first calls ``get_session`` (so
a handler that never does costs no store operation), saved when it changed, and the
cookie is set or deleted before the response headers go out. Raised
``HTTPException`` responses (redirect after login) are saved too; an unhandled
exception, and by default any 5xx response, saves nothing. Streaming and file
responses are finalized through the ``on_response_prepare`` signal that ``setup()``
installs.

Which cookie: every value of our cookie name in the ``Cookie`` header, as aiohttp's
parser reads them (see ``cookies.py``); each well-formed id is tried in header order,
at most MAX_COOKIE_CANDIDATES of them, and the first that names a live record wins.
Who decides the cookie: a request sets it when its session was stored under an id the
browser did not send (a new session, or one this request moved), re-sends it for a
rolling ``max_age``, and deletes it only when this request moved or ended the session
(``regenerate``, ``invalidate``, ``new_session``) and nothing was stored under the new
id. A request whose record vanished under it (another request moved or ended it, found
at load, at save or while moving it) says nothing about the cookie, so a slow request
never undoes a login or logout.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from .adoption import Adoption, offer
from .clientside import ClientSide
from .cookies import CookieWriter, cookie_values
from .errors import DriverError, SessionError, SessionLockTimeout, SessionSaveTimeout
from .ids import is_valid_session_id
from .log import install as install_log_filter
from .log import logger
from .manager import SessionManager
from .session import SessionStore

__all__ = ["MAX_COOKIE_CANDIDATES", "add_finalizer", "default_manager", "get_session",
           "new_session", "session_lock", "session_middleware", "setup"]


#: well-formed ids of our cookie name tried per request (a browser sends more than one
#: when an older or more specifically scoped cookie of the same name exists)
MAX_COOKIE_CANDIDATES: Final = 3


class _Slot:
    """One manager's session state for one request."""

    __slots__ = ("adoption", "arrived", "cookie", "destroy_on_save", "failed", "finalized",
                 "finalizers", "front", "loading", "ready", "replaced", "session")

    def __init__(self, front: _Front, arrived: float) -> None:
        self.front = front
        # when the request reached the middleware (the manager's clock, epoch seconds)
        self.arrived = arrived
        self.cookie: str | None = None  # the cookie value the session was loaded from
        self.session: SessionStore | None = None
        self.loading: asyncio.Event | None = None  # if a second task waits for the load
        self.ready = False
        self.finalized = False
        self.failed = False
        # new_session() replaced the cookie's session; its record goes when this one saves
        self.replaced = False
        self.destroy_on_save: str | None = None
        # add_finalizer(): run before the session is saved and the cookie decided
        self.finalizers: list[Callable[[], Awaitable[None]]] | None = None
        # set_adopter(): an old session moved into this one, finished when it is saved
        self.adoption: Adoption | None = None

    async def run_finalizers(self) -> None:
        """Run (once) what add_finalizer() registered, in order."""
        while self.finalizers:
            await self.finalizers.pop(0)()


_SLOTS = web.RequestKey("aiosessmgr_slots", dict[SessionManager, _Slot])
_MANAGERS = web.AppKey("aiosessmgr_managers", list[SessionManager])


class _Front:
    """A manager's HTTP side: cookie settings, lottery and outage state, worked out once."""

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager
        cookie = manager.config.cookie
        self.cookie_name = cookie.name
        max_age = cookie.max_age
        if max_age is None and not cookie.expire_on_close:
            max_age = manager.runtime().ttl
        self.max_age = max_age
        self.cookies = CookieWriter(cookie, max_age)
        #: the default driver keeps sessions in the cookies themselves (client-side)
        self.client = ClientSide.of(manager, self.cookies, max_age)
        #: seconds between two re-sends of a max_age cookie (each one writes the record)
        self.refresh_interval = 0 if max_age is None else max(1, max_age // 10)
        self.save_on_server_error = manager.config.save_on_server_error
        # a read-only request may skip save() only if save() is ours: a store_class that
        # overrides it (an audit hook, a stamp) is called on every request, as before
        self.own_save = manager.store_class.save is SessionStore.save
        # ids requests of this process moved away from or destroyed
        self.moved = manager.runtime().moved
        chances, out_of = manager.config.lottery
        self.lottery = chances / out_of
        self.in_outage = False
        # time.monotonic() when the current outage began
        self.outage_since = 0.0

    def cookie_ids(self, request: web.Request) -> list[str]:
        """The well-formed ids among our cookie's values, distinct, in header order."""
        if self.client is not None:
            return self.client.cookie_ids()
        header = request.headers.get(hdrs.COOKIE)
        if not header:
            return []
        ids: list[str] = []
        for value in cookie_values(header, self.cookie_name):
            if is_valid_session_id(value) and value not in ids:
                ids.append(value)
                if len(ids) == MAX_COOKIE_CANDIDATES:
                    break
        return ids

    def saves(self, status: int) -> bool:
        """True if a response with *status* saves the session (5xx: only if configured)."""
        return status < 500 or self.save_on_server_error

    def store_failed(self, exc: DriverError) -> web.Response:
        """Answer 503, logging once per outage rather than once per request."""
        if not self.in_outage:
            self.in_outage = True
            self.outage_since = time.monotonic()
            logger.error("session store unavailable, answering 503 until it recovers: %s", exc)
        return web.Response(status=503, text="503: session store unavailable")

    def store_answered(self, session: SessionStore) -> None:
        """End the outage if the store answered this session after the outage began."""
        if self.in_outage and session.answered_at > self.outage_since:
            self.in_outage = False
            logger.warning("session store is reachable again")

    def moved_since_arrival(self, slot: _Slot, session_id: str) -> bool:
        """True if a request of this process moved or ended *session_id* after *slot*'s
        request arrived: that request was sent with the old cookie."""
        moved_at = self.moved.since(session_id)
        return moved_at is not None and moved_at >= slot.arrived

    def cookie_header(self, slot: _Slot, session: SessionStore,
                      rolling: bool = False) -> str | None:
        """The Set-Cookie value this response carries for the session, or None.

        *rolling*: a max_age cookie is due to be re-sent (see ``finalize``).
        """
        if session.ended:
            # another request moved or ended it: that one decides the cookie. Also when
            # this request's own move found it so: deleting the cookie here could undo a
            # concurrent move's new one (a double-submitted login); the cookie this
            # browser keeps then names no record, so its next request starts afresh
            return None
        if session.stored:
            if session.id != slot.cookie:
                return self.cookies.set_header(session.id)
            if rolling and session.written:
                # the write's compare-and-set has just proven that the record exists
                return self.cookies.set_header(session.id)
            return None
        if slot.cookie is not None and (session.moved or slot.replaced):
            return self.cookies.delete_header()
        return None

    async def finalize(self, slot: _Slot, response: web.StreamResponse,
                       preparing: bool = False) -> None:
        """Save the session if it changed and set or delete the cookie on *response*.

        A 5xx response saves nothing (unless ``save_on_server_error``) and leaves the
        cookie alone. *preparing*: called from ``on_response_prepare``, where aiohttp
        has already turned ``response.cookies`` into headers.
        """
        if slot.finalizers:
            await slot.run_finalizers()
        slot.finalized = True
        session = slot.session
        if session is None or slot.failed:
            return
        if session.accessed:
            vary = response.headers.get(hdrs.VARY)
            if vary is None:
                response.headers[hdrs.VARY] = "Cookie"
            elif "cookie" not in vary.lower():
                response.headers[hdrs.VARY] = f"{vary}, Cookie"
        if not self.saves(response.status):
            return
        if (self.own_save and session.stored and session.id == slot.cookie
                and not session.modified
                and not session.moved and not self.in_outage and slot.destroy_on_save is None
                and not (session.written and self.client is not None)  # cookies to send
                and not (self.refresh_interval
                         and slot.arrived - session.cookie_sent_at >= self.refresh_interval)):
            return  # read only (the common case): nothing to save, no cookie to send
        rolling = False
        if self.refresh_interval and not session.ended:
            if session.id != slot.cookie:
                session.cookie_sent(slot.arrived)  # set by this response, if it is stored
            elif session.stored and not self.moved_since_arrival(slot, session.id) \
                    and slot.arrived - session.cookie_sent_at >= self.refresh_interval:
                # due to roll: the save writes when it was sent, and its compare-and-set
                # proves the record still exists before the cookie goes out again
                session.cookie_sent(slot.arrived)
                rolling = True
        await (session.save() if slot.adoption is None else slot.adoption.save(session))
        if slot.destroy_on_save is not None:
            # new_session(): the replaced record goes once the new one is saved, so a
            # request whose save fails keeps the session it had
            await self.manager.destroy(slot.destroy_on_save)
            slot.destroy_on_save = None
        self.store_answered(session)
        if self.client is not None:
            headers = self.client.headers(session, slot.cookie, slot.replaced)
        else:
            header = self.cookie_header(slot, session, rolling)
            headers = [] if header is None else [header]
        if slot.adoption is not None and not session.ended:  # saved, or emptied (a logout)
            adoption, slot.adoption = slot.adoption, None
            await adoption.finish(response, headers, self.cookie_name)
        if headers:
            if not preparing and self.cookie_name in response.cookies:
                del response.cookies[self.cookie_name]  # ours replaces the handler's
            for header in headers:
                response.headers.add(hdrs.SET_COOKIE, header)
            if hdrs.CACHE_CONTROL not in response.headers:
                # a shared cache must not keep one user's cookie for others (RFC 9111
                # section 5.2.2.7); a handler's own Cache-Control is its decision
                response.headers[hdrs.CACHE_CONTROL] = "private"

    def save_timed_out(self, exc: SessionSaveTimeout) -> web.Response:
        """Answer 503 with Retry-After: the session is busy, not broken."""
        logger.warning("%s; answering 503", exc)
        return web.Response(status=503, text="503: session busy, retry",
                            headers={hdrs.RETRY_AFTER: "1"})

    def done(self, slot: _Slot) -> None:
        """The request is over: unlink the session from it (no reference cycle left for
        Python's GC), then the GC lottery (not sooner than ``lottery_interval``)."""
        if slot.session is not None:
            slot.session.request = None
        if self.lottery and random.random() < self.lottery:
            asyncio.get_running_loop().call_soon(self.manager.lottery_gc)


def session_middleware(manager: SessionManager) -> Middleware:
    """The middleware that gives handlers ``get_session(request)``; ``setup()`` adds it.

    Used alone (without ``setup``) everything works except saving sessions of
    responses that the handler prepares itself (streaming), which needs the
    ``on_response_prepare`` signal ``setup`` installs.
    """
    front = _Front(manager)

    @web.middleware
    async def aiosessmgr_middleware(
        request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        slots = request.get(_SLOTS)
        if slots is None:
            slots = request[_SLOTS] = {}
        slot = slots[manager] = _Slot(front, manager.clock())
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if not slot.finalized:
                try:
                    await front.finalize(slot, exc)
                except DriverError as err:
                    return front.store_failed(err)
                except SessionSaveTimeout as err:
                    return front.save_timed_out(err)
            raise
        except DriverError as exc:
            slot.failed = True
            return front.store_failed(exc)
        except SessionLockTimeout as exc:
            slot.failed = True
            return _locked(exc)
        except SessionSaveTimeout as exc:
            slot.failed = True
            return front.save_timed_out(exc)
        except BaseException:
            slot.failed = True
            raise
        try:
            if not slot.finalized:
                await front.finalize(slot, response)
            elif slot.session is not None and not slot.failed and front.saves(response.status):
                await slot.run_finalizers()
                if slot.session.modified:
                    # changed after a streamed response went out: save; the cookie cannot
                    # change any more
                    await slot.session.save()
        except DriverError as exc:
            error = front.store_failed(exc)
            # a streamed response is already out: its status cannot change any more
            return response if response.prepared else error
        except SessionSaveTimeout as exc:
            busy = front.save_timed_out(exc)
            return response if response.prepared else busy
        front.done(slot)
        return response

    if front.client is None:
        return aiosessmgr_middleware
    return front.client.middleware(aiosessmgr_middleware)


async def _on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Finalize sessions of responses prepared inside the handler (streams, files).

    Nothing raised here may escape: aiohttp has set up the streamed body's framing, and
    an error would send a status line that disagrees with it (the connection then goes
    out of step). A failure is logged and the response goes out as a well-framed 503.
    """
    try:
        slots = request[_SLOTS]  # set by the middleware: present on (nearly) every request
    except KeyError:
        return
    for slot in slots.values():
        if slot.finalized or slot.failed or (slot.session is None and not slot.finalizers):
            continue
        try:
            await slot.front.finalize(slot, response, preparing=True)
        except DriverError as exc:
            slot.failed = True
            slot.front.store_failed(exc)
            _unsaved(response)
        except SessionSaveTimeout as exc:
            slot.failed = True
            slot.front.save_timed_out(exc)
            _unsaved(response)
            response.headers[hdrs.RETRY_AFTER] = "1"
        except Exception:
            # a value the serializer refuses, a finalizer's own error, an HTTPException
            # raised by one: the handler's error, but a streamed status cannot be a 500
            slot.failed = True
            logger.exception("the session of a streamed response could not be saved")
            _unsaved(response)
    for slot in slots.values():
        if slot.front.client is not None:  # the cookie driver: what this response carries
            slot.front.client.prepared(request, response, slot.session, slot.cookie,
                                       slot.failed or not slot.front.saves(response.status))


def _unsaved(response: web.StreamResponse) -> None:
    """A streamed response whose session could not be saved goes out as a 503.

    Inside ``prepare()`` aiohttp's public ``set_status`` refuses, so its internal setter is
    used; raising instead would send a 503 framed for the streamed body. A bodiless answer
    (204, 304) becomes a 503 with ``Content-Length: 0``; a protocol switch (a WebSocket's
    101) is left alone, since its frames follow (the failure is logged).
    """
    status = response.status
    if status < 200:
        return
    set_status = getattr(response, "_set_status", None)
    if set_status is None:
        return
    if status in (204, 304):
        response.headers[hdrs.CONTENT_LENGTH] = "0"
    set_status(503, None)


def setup(app: web.Application, manager: SessionManager) -> None:
    """Install sessions on *app*: the middleware, the prepare signal, periodic GC, cleanup.

    Call it once per manager; the first manager set up is the default one of
    ``get_session(request)``. On app cleanup the manager is closed. aiohttp's error
    loggers (``aiohttp.server``, ``aiohttp.web``) get the filter that abbreviates session
    ids (:mod:`aiosessmgr.log`): the traceback of an exception that escapes a handler may
    name one.
    """
    for name in ("aiohttp.server", "aiohttp.web"):
        install_log_filter(logging.getLogger(name))
    managers = app.get(_MANAGERS)
    if managers is None:
        managers = app[_MANAGERS] = []
        app.on_response_prepare.append(_on_response_prepare)
    if manager in managers:
        raise SessionError("this SessionManager is already set up on this app")
    managers.append(manager)
    app.middlewares.append(session_middleware(manager))
    app.cleanup_ctx.append(_lifecycle(manager))


def _lifecycle(manager: SessionManager) -> Callable[[web.Application], AsyncIterator[None]]:
    async def run(app: web.Application) -> AsyncIterator[None]:
        interval = manager.config.gc_interval
        task = None
        if interval:
            task = asyncio.get_running_loop().create_task(_periodic_gc(manager, interval))
        yield
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await manager.close()

    return run


async def _periodic_gc(manager: SessionManager, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        for name in manager.config.drivers:
            if manager.schedule_gc(name):
                await manager.wait_gc()


def _locked(exc: SessionLockTimeout) -> web.Response:
    # 423 Locked: the session (the resource) is held by another request; retrying helps
    return web.Response(status=423, text=f"423: {exc}", headers={"Retry-After": "1"})


def session_lock(
    lock_seconds: float = 10.0,
    wait_seconds: float = 10.0,
    manager: SessionManager | None = None,
) -> Callable[[Handler], Handler]:
    """Run a handler while holding its session's lock (see ``Session.lock``).

    For handlers that read a value, compute, and write it back::

        @session_lock(lock_seconds=10, wait_seconds=10)
        async def reserve(request: web.Request) -> web.Response:
            session = await get_session(request)
            session["seats"] = session.get("seats", 10) - 1
            return web.Response(text=str(session["seats"]))

    If the lock cannot be taken within *wait_seconds* the middleware answers
    423 Locked with ``Retry-After: 1``.
    """

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def locked(request: web.Request) -> web.StreamResponse:
            session = await get_session(request, manager)
            front = _slot(request, manager).front
            async with session.lock(lock_seconds, wait_seconds, save=False):
                # saved under the lock, on the same terms as the middleware (not on a 5xx)
                try:
                    response = await handler(request)
                except web.HTTPException as exc:
                    if front.saves(exc.status):
                        await session.save()  # a redirect is a normal outcome
                    raise
                if front.saves(response.status):
                    await session.save()
                return response

        return locked

    return decorate


def add_finalizer(request: web.Request, callback: Callable[[], Awaitable[None]],
                  manager: SessionManager | None = None) -> None:
    """Run *callback* once, just before the middleware saves the session and decides
    the cookie of this request (on return, on a raised HTTPException, or when a
    streamed response is prepared), whatever the order of the app's middlewares.

    For layers over the session that defer async work to the end of a request, such as
    ``aiosessmgr.compat``'s synchronous ``invalidate()``. An error it raises is handled
    as the save's would be (``DriverError``: 503). Raises SessionError without the
    session middleware of *manager* (default: the first set up).
    """
    slot = _slot(request, manager)
    if slot.finalizers is None:
        slot.finalizers = []
    slot.finalizers.append(callback)


def default_manager(request: web.Request) -> SessionManager:
    """The manager ``get_session(request)`` uses when none is given (the first set up).

    Raises SessionError if the app has no session middleware.
    """
    return _slot(request, None).front.manager


def _slot(request: web.Request, manager: SessionManager | None) -> _Slot:
    try:
        slots = request[_SLOTS]  # not request.get(): Mapping.get costs more on every call
    except KeyError:
        slots = None
    if not slots:
        raise SessionError(
            "no session middleware on this app: call aiosessmgr.setup(app, manager)"
        )
    if manager is None:
        return next(iter(slots.values()))
    slot = slots.get(manager)
    if slot is None:
        raise SessionError("this SessionManager is not set up on this app")
    return slot


async def get_session(request: web.Request, manager: SessionManager | None = None) -> SessionStore:
    """The request's session, loaded on first call (one store read per request).

    (One read per well-formed cookie tried: more only when the browser sent duplicates
    of our cookie and the first named no live record.)

    With several managers on one app, pass the one you want; the default is the
    first one set up.
    """
    slot = _slot(request, manager)
    session = slot.session
    if session is not None:
        if slot.ready:
            return session
        # another task of this request is loading it: wait, then use (or retry) its result
        if slot.loading is None:
            slot.loading = asyncio.Event()
        await slot.loading.wait()
        return await get_session(request, manager)
    try:
        session = await _load(slot, request)
    except BaseException:
        slot.session = None
        raise
    else:
        slot.session = session
        slot.ready = True
    finally:
        if slot.loading is not None:
            slot.loading.set()
            slot.loading = None
    return session


async def _load(slot: _Slot, request: web.Request) -> SessionStore:
    """Start the session the cookie names: the first well-formed candidate with a record."""
    front = slot.front
    first: SessionStore | None = None
    candidates = front.cookie_ids(request)
    for candidate in candidates:
        # the session checks the id once more; a malformed value is never looked up
        session = slot.session = front.manager.session(candidate)
        session.request = request
        await session.start()
        if not session.new or session.moved:  # found (or found expired and ended here)
            slot.cookie = candidate
            return session
        if first is None:
            first = session
    if first is not None:
        # another request of this process moved or ended the session after this one
        # arrived: this one was sent with the old cookie and must not decide the new one
        # (a request that arrives later, after a lost response or a replay, is a new visit)
        if any(front.moved_since_arrival(slot, candidate) for candidate in candidates):
            first.detach()
        return first  # a cookie of ours, expired: never offered to an adopter
    session = slot.session = front.manager.session(None)
    session.request = request
    await session.start()
    # no cookie of ours at all: another system's session may move in
    slot.adoption = await offer(request, front.manager, session, slot.arrived)
    return session


async def new_session(request: web.Request, manager: SessionManager | None = None) -> SessionStore:
    """Replace the request's session with a new empty one under a new id.

    The previous record (if any) is destroyed when the request saves (as with
    ``regenerate()``), so an id from before cannot be replayed, and a request that fails
    keeps the session it had.
    """
    slot = _slot(request, manager)
    mgr = slot.front.manager
    old = await get_session(request, manager)
    # the record to destroy: the old session's, or, if it was regenerate()d and not saved
    # since, the one it was loaded from (the cookie's), which its move would have destroyed
    replaced = old.id if old.stored else slot.cookie if old.moved else None
    if replaced is not None:
        # destroyed when the request saves: a request that fails keeps the old session
        slot.destroy_on_save = slot.destroy_on_save or replaced
        slot.front.moved.add(replaced, mgr.clock())
    session = mgr.session(None)
    session.request = request
    await session.start()
    slot.session = session
    slot.replaced = True
    return session
