"""Two session managers in one app: browser pages and a JSON API, kept apart.

Run it::

    python -m examples.multiple_contexts              # sessions of the API in a temp dir
    python -m examples.multiple_contexts /var/tmp/api-sessions

then open http://127.0.0.1:8085/ and http://127.0.0.1:8085/api/count.

The "web" manager keeps page sessions in memory for 2 hours under the cookie
``web_session``; the "api" manager keeps API sessions in files for 15 minutes under
``api_session``, a cookie sent only to ``/api/``. Each has its own middleware, so a
request loads only the sessions its handler asks for: ``get_session(request)`` is the
first manager set up (web), ``get_session(request, api_manager)`` the other.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from aiosessmgr import SessionManager, get_session, setup

from . import _serve

WEB_MANAGER = web.AppKey("web_manager", SessionManager)
API_MANAGER = web.AppKey("api_manager", SessionManager)


def make_managers(api_path: str) -> tuple[SessionManager, SessionManager]:
    """The web manager (memory, 120 minutes) and the API manager (files in *api_path*, 15)."""
    web_manager = SessionManager({
        "default": "web",
        "drivers": {"web": {"driver": "memory", "lifetime": 120}},
        "cookie": {"name": "web_session", "same_site": "lax"},
    })
    api_manager = SessionManager({
        "default": "api",
        "drivers": {"api": {"driver": "file", "path": api_path, "lifetime": 15}},
        "cookie": {"name": "api_session", "path": "/api", "same_site": "strict"},
    })
    return web_manager, api_manager


async def page(request: web.Request) -> web.Response:
    """A browser page: counts page views in the web session (the default manager)."""
    session = await get_session(request)
    views = session.increment("page_views")
    return web.Response(text=f"Page views: {views}\n")


async def api_count(request: web.Request) -> web.Response:
    """An API call: counts calls in the API session, which pages never load."""
    session = await get_session(request, request.app[API_MANAGER])
    return web.json_response({"calls": session.increment("api_calls")})


def _remove_when_done(
    directory: tempfile.TemporaryDirectory[str],
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        directory.cleanup()

    return ctx


def make_app(api_path: str | None = None) -> web.Application:
    """Build the app; API sessions go to *api_path*, or to a temp dir removed at shutdown."""
    app = web.Application()
    if api_path is None:
        directory = tempfile.TemporaryDirectory(prefix="aiosessmgr-api-")
        api_path = directory.name
        # cleanup contexts unwind in reverse: this one runs after the managers closed
        app.cleanup_ctx.append(_remove_when_done(directory))
    web_manager, api_manager = make_managers(api_path)
    app[WEB_MANAGER] = web_manager
    app[API_MANAGER] = api_manager
    app.router.add_get("/", page)
    app.router.add_get("/api/count", api_count)
    setup(app, web_manager)  # first set up: the default of get_session(request)
    setup(app, api_manager)
    return app


if __name__ == "__main__":
    sys.exit(_serve.run(
        lambda args: make_app(args.dir), module="multiple_contexts", doc=__doc__, port=8085,
        arguments=lambda parser: parser.add_argument(
            "dir", nargs="?", help="directory of the API sessions (default: a temporary one)")))
