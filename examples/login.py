"""Log in and out: a new session id at login, a cleared session at logout, CSRF on every form.

Run it::

    python -m examples.login          # then open http://127.0.0.1:8082/

``POST /login`` calls ``session.regenerate()`` before storing the user name, so an id
an attacker planted or saw before login is worthless afterwards (session fixation).
``POST /logout`` calls ``session.invalidate()``: the data is cleared, the old record is
destroyed and the cookie removed. Both forms carry the masked CSRF token, checked by
``csrf_middleware``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from aiosessmgr import SessionManager, csrf_middleware, csrf_token, get_session, setup

from . import _serve

#: session key holding the logged-in user name
USER_KEY = "user"

#: plain http on localhost; use ``"secure": True`` (or a ``__Host-`` name) in production
COOKIE: dict[str, Any] = {
    "name": "app_session",
    "http_only": True,
    "same_site": "lax",
    "secure": False,
}


def make_manager(driver: Mapping[str, Any] | None = None) -> SessionManager:
    """The app's session manager; *driver* replaces the memory driver entry (e.g. in tests)."""
    return SessionManager({
        "default": "main",
        "drivers": {"main": dict(driver or {"driver": "memory", "lifetime": 120})},
        "cookie": COOKIE,
    })


def page(title: str, body: str, status: int = 200) -> web.Response:
    """A minimal HTML page; *body* must already be escaped."""
    return web.Response(
        status=status,
        content_type="text/html",
        text=f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>"
             f"</head><body>{body}</body></html>",
    )


async def index(request: web.Request) -> web.Response:
    """Say who is logged in."""
    user = (await get_session(request)).get(USER_KEY)
    if user is None:
        return page("Home", '<p>Not logged in</p><p><a href="/login">Log in</a></p>')
    return page("Home", f"<p>Logged in as {html.escape(user)}</p>"
                        '<p><a href="/protected">Secret area</a></p>')


async def login_form(request: web.Request) -> web.Response:
    """The login form, with the CSRF token in a hidden field."""
    token = await csrf_token(request)
    return page("Log in", '<form method="post" action="/login">'
                          f'<input type="hidden" name="_token" value="{token}">'
                          '<label>User name <input type="text" name="username" required></label>'
                          '<button type="submit">Log in</button></form>')


async def login(request: web.Request) -> web.Response:
    """Regenerate the session id, remember the user, go to the protected page."""
    form = await request.post()  # already parsed by the CSRF check; cached by aiohttp
    username = form.get("username")
    if not isinstance(username, str) or not username.strip() or len(username) > 64:
        return page("Log in", '<p>Enter a user name (at most 64 characters).</p>'
                              '<p><a href="/login">Back</a></p>', status=400)
    session = await get_session(request)
    await session.regenerate()  # new id (and new CSRF secret) for the logged-in session
    session[USER_KEY] = username.strip()
    # the middleware saves on raised redirects too, and sets the new cookie
    raise web.HTTPSeeOther("/protected")


async def protected(request: web.Request) -> web.Response:
    """Only for logged-in users; others are sent to the login form."""
    session = await get_session(request)
    user = session.get(USER_KEY)
    if user is None:
        raise web.HTTPFound("/login")
    token = await csrf_token(request)
    return page("Secret area", f"<p>Secret area for {html.escape(user)}</p>"
                               '<form method="post" action="/logout">'
                               f'<input type="hidden" name="_token" value="{token}">'
                               '<button type="submit">Log out</button></form>')


async def logout(request: web.Request) -> web.Response:
    """Clear the session, destroy its record, and go home."""
    await (await get_session(request)).invalidate()
    raise web.HTTPSeeOther("/")


def make_app(manager: SessionManager | None = None) -> web.Application:
    """Build the app; pass a *manager* from :func:`make_manager` to choose its driver."""
    manager = manager or make_manager()
    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_get("/protected", protected)
    app.router.add_post("/logout", logout)
    setup(app, manager)
    app.middlewares.append(csrf_middleware(manager))
    return app


if __name__ == "__main__":
    _serve.main(make_app, "login", __doc__, port=8082)
