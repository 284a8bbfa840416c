"""The app the concurrency tests drive, in-process or as a server in another process.

As a process: ``python -m tests.concurrency_app PORT CONFIG_JSON`` serves on
127.0.0.1:PORT with a SessionManager built from CONFIG_JSON, until terminated.
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiohttp import web

from aiosessmgr import SessionManager, get_session, session_lock, setup


def app_for(manager: SessionManager) -> web.Application:
    async def set_key(request: web.Request) -> web.Response:
        session = await get_session(request)
        await asyncio.sleep(0.005)  # read, wait, write: the pattern that loses data elsewhere
        session[request.query["key"]] = request.query.get("value", True)
        return web.Response(text="ok")

    async def incr(request: web.Request) -> web.Response:
        session = await get_session(request)
        await asyncio.sleep(0.005)
        session.increment("n")
        return web.Response(text="ok")

    async def push(request: web.Request) -> web.Response:
        session = await get_session(request)
        await asyncio.sleep(0.005)
        session.push("items", int(request.query["i"]))
        return web.Response(text="ok")

    async def forget(request: web.Request) -> web.Response:
        session = await get_session(request)
        await asyncio.sleep(0.005)
        session.forget(request.query["key"])
        return web.Response(text="ok")

    async def dump(request: web.Request) -> web.Response:
        return web.Response(text=repr((await get_session(request)).all()))

    async def logout(request: web.Request) -> web.Response:
        await (await get_session(request)).invalidate()
        return web.Response(text="bye")

    async def slow_write(request: web.Request) -> web.Response:
        session = await get_session(request)
        await asyncio.sleep(float(request.query["sleep"]))
        session["late"] = True
        return web.Response(text="ok")

    async def slow_read(request: web.Request) -> web.Response:
        # a poll: loads the session, waits, answers without changing it
        session = await get_session(request)
        await asyncio.sleep(float(request.query["sleep"]))
        return web.Response(text=repr(session.get("user")))

    async def login(request: web.Request) -> web.Response:
        session = await get_session(request)
        await session.regenerate()
        session["user"] = request.query.get("user", "ada")
        return web.Response(text="in")

    async def bump(request: web.Request) -> web.Response:
        # a read-modify-write no delta can express: correct only under the session lock
        session = await get_session(request)
        current = session.get("count", 0)
        await asyncio.sleep(0.002)
        session["count"] = current + 1
        return web.Response(text=str(session["count"]))

    locked_bump = session_lock(lock_seconds=10, wait_seconds=10)(bump)

    app = web.Application()
    app.router.add_get("/bump", bump)
    app.router.add_get("/locked_bump", locked_bump)
    for name, handler in [("set", set_key), ("incr", incr), ("push", push),
                          ("forget", forget), ("dump", dump), ("logout", logout),
                          ("slow_write", slow_write), ("slow_read", slow_read),
                          ("login", login)]:
        app.router.add_get(f"/{name}", handler)
    setup(app, manager)
    return app


if __name__ == "__main__":
    port, config = int(sys.argv[1]), json.loads(sys.argv[2])
    web.run_app(app_for(SessionManager(config)), host="127.0.0.1", port=port, print=None,
                access_log=None)
