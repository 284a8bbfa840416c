"""An audit log of session lifecycle events: started, regenerated, invalidated, destroyed.

Run it::

    python -m examples.events         # then open http://127.0.0.1:8086/

Log in and out on ``/``, then read ``/audit``. ``manager.on(event, listener)`` calls the
listener with a :class:`~aiosessmgr.SessionEventInfo` (type, session id, old id). Listeners
may also be ``async def`` (they then run in the background, e.g. to write to a
database); one that raises is logged and never breaks a request.
"""

from __future__ import annotations

import html
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from aiosessmgr import (
    SessionEventInfo,
    SessionEvents,
    SessionManager,
    csrf_middleware,
    csrf_token,
    get_session,
    setup,
)

from . import _serve

AUDITED = (SessionEvents.STARTED, SessionEvents.REGENERATED,
           SessionEvents.INVALIDATED, SessionEvents.DESTROYED)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the audit log."""

    at: float
    event: SessionEvents
    session_id: str
    old_id: str | None = None

    def __str__(self) -> str:
        # ids are credentials: log a prefix, enough to follow one session through the log
        moved = f" (was {self.old_id[:8]}…)" if self.old_id else ""
        stamp = time.strftime("%H:%M:%S", time.gmtime(self.at))
        return f"{stamp} {self.event.value} {self.session_id[:8]}…{moved}"


#: the newest entries kept in memory (a real app would write them to a log or table)
AUDIT_LIMIT = 1_000
AUDIT_LOG = web.AppKey("audit_log", deque[AuditEntry])


def audit_to(log: deque[AuditEntry]) -> Callable[[SessionEventInfo], None]:
    """A listener appending events to *log*; STARTED only when a new session begins."""

    def listener(event: SessionEventInfo) -> None:
        if event.type is SessionEvents.STARTED and event.session is not None \
                and not event.session.new:
            return  # a stored session loaded again: not news
        log.append(AuditEntry(time.time(), event.type, event.session_id, event.old_id))

    return listener


async def index(request: web.Request) -> web.Response:
    """Who is logged in, and the forms to log in or out."""
    session = await get_session(request)
    token = await csrf_token(request)
    user = session.get("user")
    hidden = f'<input type="hidden" name="_token" value="{token}">'
    if user is None:
        body = (f'<form method="post" action="/login">{hidden}<input name="username">'
                '<button type="submit">Log in</button></form>')
    else:
        body = (f"<p>Logged in as {html.escape(user)}</p>"
                f'<form method="post" action="/logout">{hidden}'
                '<button type="submit">Log out</button></form>')
    return web.Response(content_type="text/html",
                        text=f'<!doctype html><title>Events</title>{body}'
                             '<p><a href="/audit">Audit log</a></p>')


async def login(request: web.Request) -> web.Response:
    """Regenerate the id (REGENERATED; DESTROYED of the old id once the new one is saved)."""
    username = (await request.post()).get("username")
    session = await get_session(request)
    await session.regenerate()
    session["user"] = username if isinstance(username, str) and username else "anonymous"
    raise web.HTTPSeeOther("/")


async def logout(request: web.Request) -> web.Response:
    """Invalidate the session (INVALIDATED, DESTROYED of the old id)."""
    await (await get_session(request)).invalidate()
    raise web.HTTPSeeOther("/")


async def audit(request: web.Request) -> web.Response:
    """The audit log, oldest first; this page does not touch the session itself."""
    lines = "\n".join(str(entry) for entry in request.app[AUDIT_LOG])
    return web.Response(text=lines + "\n")


def make_app() -> web.Application:
    """Build the app with the audit listener registered for the four lifecycle events."""
    manager = SessionManager({
        "default": "memory",
        "drivers": {"memory": {"driver": "memory", "lifetime": 120}},
        "cookie": {"name": "events_session", "same_site": "lax"},
    })
    app = web.Application()
    app[AUDIT_LOG] = deque(maxlen=AUDIT_LIMIT)
    listener = audit_to(app[AUDIT_LOG])
    for event_type in AUDITED:
        manager.on(event_type, listener)
    app.router.add_get("/", index)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/audit", audit)
    setup(app, manager)
    app.middlewares.append(csrf_middleware(manager))
    return app


if __name__ == "__main__":
    _serve.main(make_app, "events", __doc__, port=8086)
