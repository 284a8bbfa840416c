"""Flash messages with post/redirect/get: "Saved!" is shown once, after the redirect.

Run it::

    python -m examples.flash_messages     # then open http://127.0.0.1:8083/

``POST /save`` stores the note, calls ``session.flash("status", "Saved!")`` and redirects
to ``/``. A flashed key lives for the current and the next request only, so the page
after the redirect shows the message and a reload no longer does: no message repeats
and the browser never offers to re-send the form.
"""

from __future__ import annotations

import html
from typing import Any

from aiohttp import web

from aiosessmgr import SessionManager, csrf_middleware, csrf_token, get_session, setup

from . import _serve

COOKIE: dict[str, Any] = {"name": "flash_session", "same_site": "lax", "secure": False}


async def index(request: web.Request) -> web.Response:
    """Show the flash message (if any), the saved note and the form."""
    session = await get_session(request)
    status = session.get("status")
    note = session.get("note", "")
    token = await csrf_token(request)
    flash = f'<p class="flash">{html.escape(status)}</p>' if status else ""
    return web.Response(
        content_type="text/html",
        text=f"<!doctype html><title>Notes</title>{flash}"
             f"<p>Your note: {html.escape(note)}</p>"
             '<form method="post" action="/save">'
             f'<input type="hidden" name="_token" value="{token}">'
             '<input type="text" name="note"><button type="submit">Save</button></form>',
    )


async def save(request: web.Request) -> web.Response:
    """Store the note, flash a status for the next request, redirect (PRG)."""
    note = (await request.post()).get("note", "")
    session = await get_session(request)
    session["note"] = note if isinstance(note, str) else ""
    session.flash("status", "Saved!")
    raise web.HTTPSeeOther("/")


def make_app() -> web.Application:
    """Build the app on the memory driver; forms are CSRF-checked as in any real app."""
    manager = SessionManager({
        "default": "memory",
        "drivers": {"memory": {"driver": "memory", "lifetime": 120}},
        "cookie": COOKIE,
    })
    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_post("/save", save)
    setup(app, manager)
    app.middlewares.append(csrf_middleware(manager))
    return app


if __name__ == "__main__":
    _serve.main(make_app, "flash_messages", __doc__, port=8083)
