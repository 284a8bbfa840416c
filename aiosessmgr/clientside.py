"""The middleware's side of client-side sessions (the ``cookie`` driver).

The one driver the web layer knows about (../shared/DESIGN.md): its store is the
request's ``Cookie`` header and the response's ``Set-Cookie`` headers. Per request the
middleware opens the driver's jar; loading asks it for the ids the cookies name; after
the save this module turns the last record written into ``Set-Cookie`` headers (one per
chunk, deleting chunks a longer record left), or deletes what the request sent when the
request moved or ended its session and stored nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from .config import CookieConfig
from .cookies import CookieWriter
from .drivers.cookie import CookieDriver, CookieJar
from .manager import SessionManager
from .session import SessionStore

__all__ = ["ClientSide"]


class ClientSide:
    """A manager whose default driver is the ``cookie`` driver, seen from the middleware."""

    def __init__(self, driver: CookieDriver, writer: CookieWriter, cookie: CookieConfig,
                 max_age: int | None) -> None:
        self.driver = driver
        self._cookie = cookie
        self._max_age = max_age
        self._writers: dict[str, CookieWriter] = {cookie.name: writer}
        # the request's jar, for the response aiohttp prepares after the middleware ran
        self._key = web.RequestKey(f"aiosessmgr_cookie_jar_{id(self)}", CookieJar)
        #: the ids the request's cookies name (decoded once per request)
        self.cookie_ids: Callable[[], list[str]] = driver.cookie_ids

    @classmethod
    def of(cls, manager: SessionManager, writer: CookieWriter,
           max_age: int | None) -> ClientSide | None:
        """The client side of *manager*, or None if its default driver keeps sessions on
        the server (the common case: that driver is not built here)."""
        default = manager.config.drivers.get(manager.default)
        if default is None or default.driver != "cookie":
            return None
        driver = manager.runtime().driver
        if not isinstance(driver, CookieDriver):
            return None  # a "cookie" type replaced with manager.extend(): a server store
        return cls(driver, writer, manager.config.cookie, max_age)

    def middleware(self, inner: Middleware) -> Middleware:
        """*inner* (the session middleware) run with this request's jar open."""
        begin, end = self.driver.begin, self.driver.end

        @web.middleware
        async def aiosessmgr_client_side(request: web.Request,
                                         handler: Handler) -> web.StreamResponse:
            token = begin(request.headers.get(hdrs.COOKIE, ""))
            jar = self.driver.jar()
            if jar is not None:
                request[self._key] = jar
            try:
                return await inner(request, handler)
            finally:
                end(token)

        return aiosessmgr_client_side

    def headers(self, session: SessionStore, loaded: str | None, replaced: bool) -> list[str]:
        """The Set-Cookie values the response carries for *session*.

        *loaded*: the id the request's cookies named, if the session came from them;
        *replaced*: ``new_session()`` replaced it.
        """
        jar = self.driver.jar()
        if jar is None:
            return []
        jar.closed = True
        if session.ended:
            return []
        if session.stored and jar.written_id == session.id:
            return self._set(jar)
        if not session.stored and loaded is not None and (session.moved or replaced):
            return self._clear(jar)
        return []

    def prepared(self, request: web.Request, response: web.StreamResponse,
                 session: SessionStore | None, loaded: str | None, unsaved: bool) -> None:
        """*response* is being prepared: from now on a write cannot reach the browser.

        *unsaved*: the request failed or its status saves nothing (a 5xx), so the
        middleware sent no cookies; what the store of a server-side driver would keep all
        the same is sent here: a save the handler made itself, and an ``invalidate()``
        (logout), which takes effect at once on every driver.
        """
        jar = request.get(self._key)
        if jar is None or jar.closed:
            return
        jar.closed = True
        if not unsaved or session is None or session.ended:
            return
        if session.stored and jar.written_id == session.id:
            headers = self._set(jar)
        elif loaded is not None and loaded not in jar.records and not session.stored:
            headers = self._clear(jar)
        else:
            return
        for header in headers:
            response.headers.add(hdrs.SET_COOKIE, header)

    def _set(self, jar: CookieJar) -> list[str]:
        """Set the record written last, deleting the chunks a longer one left."""
        names = {name for name, _ in jar.outgoing}
        return [*(self._writer(name).set_header(value) for name, value in jar.outgoing),
                *(self._writer(name).delete_header() for name in jar.sent if name not in names)]

    def _clear(self, jar: CookieJar) -> list[str]:
        """Delete every cookie of ours the request sent."""
        return [self._writer(name).delete_header() for name in jar.sent]

    def _writer(self, name: str) -> CookieWriter:
        writer = self._writers.get(name)
        if writer is None:
            writer = self._writers[name] = CookieWriter(
                dataclasses.replace(self._cookie, name=name), self._max_age)
        return writer
