"""aiohttp glue: ``setup()``, ``session_middleware()``, ``get_session()``, ``new_session()``.

The middleware works its settings out once. Per request it only remembers the
cookie; the session is loaded when a handler first calls ``get_session`` (so a
handler that never does costs no store operation), saved when it changed, and
the cookie is set or deleted before the response headers go out. Raised
``HTTPException`` responses (redirect after login) are saved too; an unhandled
exception saves nothing. Streaming and file responses are finalized through the
``on_response_prepare`` signal that ``setup()`` installs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from .errors import DriverError, SessionError, SessionLockTimeout
from .manager import SessionManager
from .session import SessionStore, is_valid_session_id

__all__ = ["get_session", "new_session", "session_lock", "session_middleware", "setup"]

logger = logging.getLogger("aiosessmgr")


class _Slot:
    """One manager's session state for one request."""

    __slots__ = ("cookie", "failed", "finalized", "front", "loading", "ready", "session")

    def __init__(self, front: _Front) -> None:
        self.front = front
        # the raw cookie value, read when the session is first loaded
        self.cookie: str | None = None
        self.session: SessionStore | None = None
        # created only if a second task of the request waits for the first load
        self.loading: asyncio.Event | None = None
        self.ready = False
        self.finalized = False
        self.failed = False


_SLOTS = web.RequestKey("aiosessmgr_slots", dict[SessionManager, _Slot])
_MANAGERS = web.AppKey("aiosessmgr_managers", list[SessionManager])


class _Front:
    """A manager's HTTP side: cookie settings, lottery and outage state, worked out once."""

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager
        cookie = manager.config.cookie
        self.cookie_name = cookie.name
        self._name_eq = cookie.name + "="
        self.cookie_path = cookie.path
        self.cookie_domain = cookie.domain
        self.max_age = cookie.max_age
        if self.max_age is None and not cookie.expire_on_close:
            self.max_age = manager.context().ttl
        self.cookie_options: dict[str, Any] = {
            "path": cookie.path,
            "domain": cookie.domain,
            "secure": cookie.secure,
            "httponly": cookie.http_only,
            "samesite": cookie.same_site.capitalize() if cookie.same_site else None,
            "max_age": self.max_age,
        }
        if cookie.partitioned:
            self.cookie_options["partitioned"] = True
        chances, out_of = manager.config.lottery
        self.lottery = chances / out_of
        self.in_outage = False

    def cookie_value(self, request: web.Request) -> str | None:
        """This manager's cookie from the request, without parsing every other cookie."""
        header = request.headers.get(hdrs.COOKIE)
        if not header:
            return None
        name_eq, start = self._name_eq, 0
        while (found := header.find(name_eq, start)) >= 0:
            if found == 0 or header[found - 1] in " ;":
                end = header.find(";", found)
                return header[found + len(name_eq):end if end >= 0 else None].strip()
            start = found + 1
        return None

    def store_failed(self, exc: DriverError) -> web.Response:
        """Answer 503, logging once per outage rather than once per request."""
        if not self.in_outage:
            self.in_outage = True
            logger.error("session store unavailable, answering 503 until it recovers: %s", exc)
        return web.Response(status=503, text="503: session store unavailable")

    def store_ok(self) -> None:
        if self.in_outage:
            self.in_outage = False
            logger.warning("session store is reachable again")

    async def finalize(self, slot: _Slot, response: web.StreamResponse,
                       preparing: bool = False) -> None:
        """Save the session if it changed and set or delete the cookie on *response*.

        *preparing*: called from ``on_response_prepare``, where aiohttp has already
        turned ``response.cookies`` into headers, so the cookie header is added directly.
        """
        slot.finalized = True
        session = slot.session
        if session is None or slot.failed:
            return
        await session.save()
        self.store_ok()
        changed = False
        if session.stored:
            if session.id != slot.cookie or self.max_age is not None:
                response.set_cookie(self.cookie_name, session.id, **self.cookie_options)
                changed = True
        elif slot.cookie is not None:
            response.del_cookie(self.cookie_name, path=self.cookie_path,
                                domain=self.cookie_domain)
            changed = True
        if changed and preparing:
            response.headers.add(hdrs.SET_COOKIE,
                                 response.cookies[self.cookie_name].OutputString())
        if session.accessed:
            vary = response.headers.get("Vary")
            if vary is None:
                response.headers["Vary"] = "Cookie"
            elif "cookie" not in vary.lower():
                response.headers["Vary"] = f"{vary}, Cookie"

    def maybe_collect(self) -> None:
        """The GC lottery: on a hit, collect after the response went out, in the background."""
        if self.lottery and random.random() < self.lottery:
            asyncio.get_running_loop().call_soon(self.manager.schedule_gc)


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
        slot = slots[manager] = _Slot(front)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if not slot.finalized:
                try:
                    await front.finalize(slot, exc)
                except DriverError as err:
                    return front.store_failed(err)
            raise
        except DriverError as exc:
            slot.failed = True
            return front.store_failed(exc)
        except SessionLockTimeout as exc:
            slot.failed = True
            return _locked(exc)
        except BaseException:
            slot.failed = True
            raise
        try:
            if not slot.finalized:
                await front.finalize(slot, response)
            elif slot.session is not None and slot.session.modified:
                # changed after a streamed response went out: save, the cookie cannot change
                await slot.session.save()
        except DriverError as exc:
            if response.prepared:
                raise
            return front.store_failed(exc)
        front.maybe_collect()
        return response

    return aiosessmgr_middleware


async def _on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Finalize sessions of responses prepared inside the handler (streams, files)."""
    slots = request.get(_SLOTS)
    if not slots:
        return
    for slot in slots.values():
        if not slot.finalized and not slot.failed and slot.session is not None:
            try:
                await slot.front.finalize(slot, response, preparing=True)
            except DriverError as exc:
                slot.front.store_failed(exc)
                raise web.HTTPServiceUnavailable(text="503: session store unavailable") \
                    from exc


def setup(app: web.Application, manager: SessionManager) -> None:
    """Install sessions on *app*: the middleware, the prepare signal, periodic GC, cleanup.

    Call it once per manager; the first manager set up is the default one of
    ``get_session(request)``. On app cleanup the manager is closed.
    """
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
            async with session.lock(lock_seconds, wait_seconds):
                try:
                    return await handler(request)
                except web.HTTPException:
                    await session.save()  # a redirect is a normal outcome: save under lock
                    raise

        return locked

    return decorate


def _slot(request: web.Request, manager: SessionManager | None) -> _Slot:
    slots = cast("dict[SessionManager, _Slot] | None", request.get(_SLOTS))
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
    """The request's session, loaded on first call (one store read at most per request).

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
    front = slot.front
    slot.cookie = front.cookie_value(request)
    # the session checks the cookie's format: a malformed value is never looked up
    session = slot.session = front.manager.session(slot.cookie)
    try:
        await session.start()
    except BaseException:
        slot.session = None
        raise
    else:
        slot.ready = True
    finally:
        if slot.loading is not None:
            slot.loading.set()
            slot.loading = None
    return session


async def new_session(request: web.Request, manager: SessionManager | None = None) -> SessionStore:
    """Replace the request's session with a new empty one under a new id.

    The previous record (if any) is destroyed, so an id from before cannot be replayed.
    """
    slot = _slot(request, manager)
    mgr = slot.front.manager
    old = slot.session if slot.ready else None
    if old is None:
        slot.cookie = slot.front.cookie_value(request)
        if is_valid_session_id(slot.cookie):
            await mgr.destroy(slot.cookie)  # type: ignore[arg-type]
    elif old.stored:
        await mgr.destroy(old.id)
    session = mgr.session(None)
    await session.start()
    slot.session = session
    slot.ready = True
    return session
