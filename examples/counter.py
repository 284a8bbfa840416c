"""The smallest aiosessmgr app: a page-view counter kept in the session.

Run it::

    python -m examples.counter        # then open http://127.0.0.1:8081/

Every request increments ``visits`` in the visitor's session; the memory driver
keeps it while the process runs.
"""

from __future__ import annotations

from aiohttp import web

import aiosessmgr

from . import _serve


async def index(request: web.Request) -> web.Response:
    """Count this visitor's page views."""
    session = await aiosessmgr.get_session(request)
    visits = session.increment("visits")
    return web.Response(text=f"You have been here {visits} time(s).\n")


def make_app() -> web.Application:
    """Build the app with a memory-driver session manager."""
    manager = aiosessmgr.SessionManager({
        "default": "memory",
        "drivers": {"memory": {"driver": "memory", "lifetime": 120}},
    })
    app = web.Application()
    app.router.add_get("/", index)
    aiosessmgr.setup(app, manager)
    return app


if __name__ == "__main__":
    _serve.main(make_app, "counter", __doc__, port=8081)
