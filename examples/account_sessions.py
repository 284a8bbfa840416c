"""The sessions of a user: a "Your devices" page that lists them and logs them out.

Run it::

    python -m examples.account_sessions   # then open http://127.0.0.1:8089/
    python -m examples.account_sessions --host 0.0.0.0 --port 9000

Log in with any user name (there are no passwords here, as in ``login.py``) from two
browsers, or a normal and a private window: ``/devices`` then lists both sessions of that
user, most recently active first, from ``manager.user_sessions(user)``, each with the
User-Agent of its login and when it was last seen. "Log out other devices" calls
``manager.end_user_sessions(user, keep=session.handle)``; a device's own "Log out" calls
``manager.end_user_session(user, handle)`` (for this device: ``session.logout()``). An
ended session's record is destroyed at once, so that browser's next request arrives with
a cookie that names nothing and sees the login page.

Devices are named by ``session.handle``, a public random handle, never by the session
id (which is a credential and never appears in a page). ``POST /login`` calls
``session.login(user)``: a new id (no session fixation), the session bound to the user and
indexed with the request's User-Agent. User agents are whatever the client sent, so every
value shown is escaped. Every form carries the masked CSRF token, checked by
``csrf_middleware``.
"""

from __future__ import annotations

import html
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from aiosessmgr import (
    SessionManager,
    UserSession,
    csrf_middleware,
    csrf_token,
    get_session,
    setup,
)

from . import _serve

#: the app's session manager, for the handlers that list and end a user's sessions
MANAGER = web.AppKey("account_sessions_manager", SessionManager)

#: characters: the longest user name accepted at login
MAX_USER_NAME = 64

#: plain http on localhost; use ``"secure": True`` (or a ``__Host-`` name) in production
COOKIE: dict[str, Any] = {
    "name": "app_session",
    "http_only": True,
    "same_site": "lax",
    "secure": False,
}


def make_manager(driver: Mapping[str, Any] | None = None) -> SessionManager:
    """The app's session manager; *driver* replaces the memory driver entry (e.g. in tests).

    The driver must keep a user index (memory, file and redis do).
    """
    return SessionManager({
        "default": "main",
        "drivers": {"main": dict(driver or {"driver": "memory", "lifetime": 120})},
        "cookie": COOKIE,
        # the defaults, spelled out: the User-Agent is kept, the IP address is not (it is
        # personal data), and last_seen is refreshed at most once a minute
        "users": {"record_user_agent": True, "record_ip": False, "touch_interval": 60},
    })


def page(title: str, body: str, status: int = 200) -> web.Response:
    """A minimal HTML page; *title* and *body* must already be escaped."""
    return web.Response(
        status=status,
        content_type="text/html",
        text=f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>"
             f"</head><body>{body}</body></html>",
    )


def hidden_token(token: str) -> str:
    """The hidden CSRF field of a form."""
    return f'<input type="hidden" name="_token" value="{html.escape(token)}">'


def ago(seconds: float) -> str:
    """*seconds* in the past, in words: "just now", "5 minutes ago", "2 hours ago"..."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'' if count == 1 else 's'} ago"
    return "just now"


def when(epoch: float, now: float) -> str:
    """An epoch time (seconds) as UTC date and time, and how long ago it was."""
    stamp = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} ({ago(max(0.0, now - epoch))})"


def device_item(info: UserSession, current: bool, token: str, now: float) -> str:
    """One device of the list, with its own "Log out" form (everything escaped)."""
    agent = html.escape(info.user_agent) if info.user_agent else "<em>unknown browser</em>"
    mark = ' <strong class="this-device">(this device)</strong>' if current else ""
    ip = f' from <span class="ip">{html.escape(info.ip)}</span>' if info.ip else ""
    handle = html.escape(info.handle)
    return (f'<li class="device" data-handle="{handle}" data-current="{str(current).lower()}" '
            f'data-last-seen="{info.last_seen:.0f}" data-created-at="{info.created_at:.0f}">'
            f'<span class="agent">{agent}</span>{mark}{ip}'
            f'<br>last seen <span class="last-seen">{when(info.last_seen, now)}</span>, '
            f'logged in {when(info.created_at, now)}'
            '<form method="post" action="/devices/logout">'
            f'{hidden_token(token)}<input type="hidden" name="handle" value="{handle}">'
            '<button type="submit">Log out</button></form></li>')


async def index(request: web.Request) -> web.Response:
    """Home: the devices page when logged in, else the login form."""
    session = await get_session(request)
    raise web.HTTPFound("/devices" if session.user_id is not None else "/login")


async def login_form(request: web.Request) -> web.Response:
    """The login form, with the CSRF token in a hidden field."""
    token = await csrf_token(request)
    return page("Log in", '<h1>Log in</h1><form method="post" action="/login">'
                          f'{hidden_token(token)}'
                          '<label>User name <input type="text" name="username" required>'
                          '</label><button type="submit">Log in</button></form>')


async def login(request: web.Request) -> web.Response:
    """``session.login(user)``: a new id, bound to the user, indexed with this device."""
    form = await request.post()  # already parsed by the CSRF check; cached by aiohttp
    username = form.get("username")
    name = username.strip() if isinstance(username, str) else ""
    if not name or len(name) > MAX_USER_NAME or not name.isprintable():
        return page("Log in", f"<p>Enter a user name (at most {MAX_USER_NAME} printable "
                              'characters).</p><p><a href="/login">Back</a></p>', status=400)
    await (await get_session(request)).login(name)  # written and indexed when the middleware saves
    raise web.HTTPSeeOther("/devices")


async def devices(request: web.Request) -> web.Response:
    """Your devices: every live session of the user, this one marked."""
    session = await get_session(request)
    user = session.user_id
    if user is None:  # never logged in, logged out, or ended from another device
        raise web.HTTPFound("/login")
    infos = await request.app[MANAGER].user_sessions(user)
    token, now = await csrf_token(request), time.time()
    items = "".join(device_item(info, info.handle == session.handle, token, now)
                    for info in infos)
    count = len(infos)
    return page("Your devices",
                f'<h1>Your devices</h1><p>Logged in as <span class="user">'
                f'{html.escape(user)}</span> on <span class="count">{count}</span> '
                f'device{"" if count == 1 else "s"}.</p>'
                f'<ul class="devices">{items}</ul>'
                '<form method="post" action="/devices/logout-others">'
                f'{hidden_token(token)}<button type="submit">Log out other devices</button>'
                '</form><form method="post" action="/logout">'
                f'{hidden_token(token)}<button type="submit">Log out</button></form>')


async def logout_others(request: web.Request) -> web.Response:
    """End every session of the user but this one."""
    session = await get_session(request)
    user = session.user_id
    if user is None:
        raise web.HTTPSeeOther("/login")
    await request.app[MANAGER].end_user_sessions(user, keep=session.handle)
    raise web.HTTPSeeOther("/devices")


async def logout_device(request: web.Request) -> web.Response:
    """End one session of the user by its handle; this device's own logs out here."""
    session = await get_session(request)
    user = session.user_id
    if user is None:
        raise web.HTTPSeeOther("/login")
    handle = (await request.post()).get("handle")
    if handle == session.handle:
        await session.logout()
        raise web.HTTPSeeOther("/login")
    # a handle of another user's session is not in this user's index: nothing ends
    if not isinstance(handle, str) \
            or not await request.app[MANAGER].end_user_session(user, handle):
        return page("Not found", "<p>That device is not logged in (any more).</p>"
                                 '<p><a href="/devices">Your devices</a></p>', status=404)
    raise web.HTTPSeeOther("/devices")


async def logout(request: web.Request) -> web.Response:
    """Log this device out: a new empty session, the old record and its index entry gone."""
    await (await get_session(request)).logout()
    raise web.HTTPSeeOther("/login")


def make_app(manager: SessionManager | None = None) -> web.Application:
    """Build the app; pass a *manager* from :func:`make_manager` to choose its driver."""
    manager = manager or make_manager()
    app = web.Application()
    app[MANAGER] = manager
    app.router.add_get("/", index)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_get("/devices", devices)
    app.router.add_post("/devices/logout-others", logout_others)
    app.router.add_post("/devices/logout", logout_device)
    app.router.add_post("/logout", logout)
    setup(app, manager)
    app.middlewares.append(csrf_middleware(manager))
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the app; ``--host`` and ``--port`` choose where (default 127.0.0.1:8089)."""
    return _serve.run(lambda _: make_app(), module="account_sessions", doc=__doc__,
                      port=8089, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
