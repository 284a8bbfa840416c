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
from .drivers.cookie import CookieDriver
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
            names = {name for name, _ in jar.outgoing}
            return [*(self._writer(name).set_header(value) for name, value in jar.outgoing),
                    *(self._writer(name).delete_header() for name in jar.sent
                      if name not in names)]
        if not session.stored and loaded is not None and (session.moved or replaced):
            return [self._writer(name).delete_header() for name in jar.sent]
        return []

    def _writer(self, name: str) -> CookieWriter:
        writer = self._writers.get(name)
        if writer is None:
            writer = self._writers[name] = CookieWriter(
                dataclasses.replace(self._cookie, name=name), self._max_age)
        return writer
