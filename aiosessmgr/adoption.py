"""Adopting sessions of another system: the hook behind ``compat.adopt_sessions``.

A request whose cookies name no live session of a manager is offered to the adopter
set for it (:func:`set_adopter`), with the fresh session the request got: the adopter
may fill it from an old session (aiohttp-session's cookie or record) and say what
finishes the move once the session is saved (:class:`Adoption`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from .errors import SessionTooLarge
from .log import logger
from .manager import SessionManager
from .session import SessionStore

__all__ = ["Adopter", "Adoption", "offer", "set_adopter"]


class Adoption:
    """What an :data:`Adopter` did with a request: what the response carries once the
    session it filled is saved, and what runs after that save.

    *headers*: ``Set-Cookie`` values added to the response (deleting an old cookie);
    *unless_ours*: ``Set-Cookie`` values added only if the response sets or deletes no
    cookie of our name (deleting an old cookie of our name and scope, which ours
    replaces otherwise); *after_save*: awaited once the session is saved (deleting an
    old server-side record). All happen once the save succeeded, also when the handler
    emptied the session so that nothing was stored (a logout on the first request);
    none if the save fails or the response is a 5xx: the old session stays.
    """

    __slots__ = ("after_save", "headers", "keys", "unless_ours")

    def __init__(self, headers: list[str] | None = None,
                 after_save: Callable[[], Awaitable[None]] | None = None,
                 unless_ours: list[str] | None = None, keys: list[str] | None = None) -> None:
        self.headers = headers or []
        self.after_save = after_save
        self.unless_ours = unless_ours or []
        #: the session keys the adopter filled from the old session
        self.keys = keys or []

    async def save(self, session: SessionStore) -> None:
        """Save the session the adopter filled. If the old session is too large for this
        store (``SessionTooLarge``), its keys are dropped with a WARNING and the save is
        tried once more: the visitor starts afresh, rather than every request failing
        while the old session stays adoptable. An error of the request's own data is
        raised as usual."""
        try:
            await session.save()
        except SessionTooLarge as exc:
            if not self.keys:
                raise
            logger.warning("the adopted session is too large for this store and is dropped "
                           "(the visitor starts a fresh session): %s", exc)
            session.forget(*self.keys)
            self.keys = []
            await session.save()

    async def finish(self, response: web.StreamResponse, ours: list[str], name: str) -> None:
        """The session is saved (or emptied, so that nothing is stored: a logout on the
        first request; the old session is done with either way): run *after_save*, add
        the headers to *response*. *ours*: the Set-Cookie values it carries for our
        cookie *name*; *unless_ours* is left out if one of them is of that name."""
        if self.after_save is not None:
            await self.after_save()
        prefix = name + "="
        own = any(header.startswith(prefix) for header in ours)
        for header in self.headers if own else [*self.headers, *self.unless_ours]:
            response.headers.add(hdrs.SET_COOKIE, header)


#: ``async (request, session, arrived) -> Adoption | None``: called when a request's
#: cookies name no live session of ours, with the fresh session the request got and when
#: the request reached the middleware (the manager's clock, epoch seconds; set_adopter)
Adopter = Callable[[web.Request, SessionStore, float], Awaitable[Adoption | None]]

_ADOPTERS = web.AppKey("aiosessmgr_adopters", dict[SessionManager, Adopter])


def set_adopter(app: web.Application, manager: SessionManager, adopter: Adopter) -> None:
    """Have *adopter* fill the fresh session of every request of *app* (and its sub-apps)
    whose cookies name no live session of *manager*.

    The hook behind :func:`aiosessmgr.compat.adopt_sessions`: it may put data into the
    session and return an :class:`Adoption` (old cookies to delete, an old record to
    delete once the session is saved). Requests with a live session of ours never call
    it. Call before the app starts, before or after ``setup(app, manager)``; one adopter
    per manager (a second replaces the first).
    """
    adopters = app.get(_ADOPTERS)
    if adopters is None:
        adopters = app[_ADOPTERS] = {}
    adopters[manager] = adopter


async def offer(request: web.Request, manager: SessionManager, session: SessionStore,
                arrived: float) -> Adoption | None:
    """Offer *request* (whose cookies named no live session of *manager*) to the adopter
    set for it, if any; what it returns."""
    adopters = request.config_dict.get(_ADOPTERS)
    if not adopters:
        return None
    adopter = adopters.get(manager)
    return None if adopter is None else await adopter(request, session, arrived)
