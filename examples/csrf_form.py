"""CSRF protection for an HTML form and for a JSON API called from JavaScript.

Run it::

    python -m examples.csrf_form      # then open http://127.0.0.1:8084/

The form carries the masked token (``await csrf_token(request)``) in a hidden ``_token``
field. A script gets a token from ``GET /token`` and sends it in the ``X-CSRF-Token``
header::

    const {token} = await (await fetch("/token")).json();
    await fetch("/api/echo", {method: "POST", body: JSON.stringify({hello: "world"}),
                              headers: {"Content-Type": "application/json",
                                        "X-CSRF-Token": token}});

``csrf_middleware`` answers 403 to any POST without a valid token, or sent cross-site.
"""

from __future__ import annotations

import html
from typing import Any

from aiohttp import web

from aiosessmgr import SessionManager, csrf_middleware, csrf_token, setup

from . import _serve

#: the header JSON clients send the token in (the middleware checks it first)
TOKEN_HEADER = "X-CSRF-Token"

#: plain http on localhost; use ``"secure": True`` (or a ``__Host-`` name) in production
COOKIE: dict[str, Any] = {
    "name": "app_session",
    "http_only": True,
    "same_site": "lax",
    "secure": False,
}


def make_manager() -> SessionManager:
    """A memory-driver manager with the example's cookie settings."""
    return SessionManager({
        "default": "memory",
        "drivers": {"memory": {"driver": "memory", "lifetime": 120}},
        "cookie": COOKIE,
    })


def page(title: str, body: str) -> web.Response:
    """A minimal HTML page; *body* must already be escaped."""
    return web.Response(
        content_type="text/html",
        text=f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>"
             f"</head><body>{body}</body></html>",
    )


async def form(request: web.Request) -> web.Response:
    """The form; every render embeds a differently masked form of the same secret."""
    token = await csrf_token(request)
    return page("Send a message", '<form method="post" action="/submit">'
                                  f'<input type="hidden" name="_token" value="{token}">'
                                  '<input type="text" name="message">'
                                  '<button type="submit">Send</button></form>')


async def submit(request: web.Request) -> web.Response:
    """Reached only with a valid token: the middleware has checked it."""
    message = (await request.post()).get("message", "")
    text = message if isinstance(message, str) else ""
    return page("Thanks", f"<p>Thanks: {html.escape(text)}</p>")


async def token(request: web.Request) -> web.Response:
    """A masked token for JavaScript clients."""
    return web.json_response({"token": await csrf_token(request)})


async def echo(request: web.Request) -> web.Response:
    """Echo the JSON body; the token must come in the header, not the body."""
    if TOKEN_HEADER not in request.headers:
        raise web.HTTPForbidden(text=f"403: send the token in the {TOKEN_HEADER} header")
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="400: the body must be JSON") from None
    return web.json_response(body)


def make_app() -> web.Application:
    """Build the app: sessions first, then the CSRF check that uses them."""
    manager = make_manager()
    app = web.Application()
    app.router.add_get("/", form)
    app.router.add_post("/submit", submit)
    app.router.add_get("/token", token)
    app.router.add_post("/api/echo", echo)
    setup(app, manager)
    app.middlewares.append(csrf_middleware(manager))
    return app


if __name__ == "__main__":
    _serve.main(make_app, "csrf_form", __doc__, port=8084)
