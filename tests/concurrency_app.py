"""The app the concurrency tests drive, in-process or as a server in another process.

As a process: ``python -m tests.concurrency_app PORT CONFIG_JSON`` serves on
127.0.0.1:PORT with a SessionManager built from CONFIG_JSON, until terminated; its
clock can be moved forward with ``/advance?seconds=S``.

Races are made certain, not likely: ``?together=N`` holds a request, once it has loaded
its session, until N requests of this process with the same ``together`` have loaded
theirs (then all write: every save conflicts); ``?gate=NAME`` holds it until the test
opens the gate (``/gate/open?name=NAME``), and ``/gate/reached?name=NAME`` answers once
a request has loaded its session and is held there.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aiohttp import web

from aiosessmgr import SessionManager, get_session, session_lock, setup

#: seconds a held request (or a test waiting for one) waits before giving up
HOLD_LIMIT = 30


class Together:
    """Holds requests until N of them have arrived (``?together=N``)."""

    def __init__(self) -> None:
        self._groups: dict[str, tuple[int, asyncio.Event]] = {}

    async def wait(self, request: web.Request) -> None:
        size = request.query.get("together")
        if size is None:
            return
        count, event = self._groups.get(size, (0, asyncio.Event()))
        count += 1
        if count >= int(size):
            self._groups.pop(size, None)
            event.set()
        else:
            self._groups[size] = (count, event)
        async with asyncio.timeout(HOLD_LIMIT):
            await event.wait()


class Gates:
    """Named gates: a request reports that it reached one, then waits until it opens."""

    def __init__(self) -> None:
        self._reached: dict[str, asyncio.Event] = {}
        self._opened: dict[str, asyncio.Event] = {}

    def _events(self, name: str) -> tuple[asyncio.Event, asyncio.Event]:
        return (self._reached.setdefault(name, asyncio.Event()),
                self._opened.setdefault(name, asyncio.Event()))

    async def hold(self, request: web.Request) -> None:
        name = request.query.get("gate")
        if name is None:
            return
        reached, opened = self._events(name)
        reached.set()
        async with asyncio.timeout(HOLD_LIMIT):
            await opened.wait()

    async def reached(self, name: str) -> None:
        async with asyncio.timeout(HOLD_LIMIT):
            await self._events(name)[0].wait()

    def open(self, name: str) -> None:
        self._events(name)[1].set()


class ShiftedClock:
    """Wall-clock seconds, moved forward by hand (``/advance``): rolling cookies fall due
    without the test sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


GATES = web.AppKey("gates", Gates)


def app_for(manager: SessionManager, clock: ShiftedClock | None = None) -> web.Application:
    together, gates = Together(), Gates()

    async def set_key(request: web.Request) -> web.Response:
        session = await get_session(request)
        await together.wait(request)  # read, wait, write: the pattern that loses data elsewhere
        session[request.query["key"]] = request.query.get("value", True)
        return web.Response(text="ok")

    async def incr(request: web.Request) -> web.Response:
        session = await get_session(request)
        await together.wait(request)
        session.increment("n")
        return web.Response(text="ok")

    async def push(request: web.Request) -> web.Response:
        session = await get_session(request)
        await together.wait(request)
        session.push("items", int(request.query["i"]))
        return web.Response(text="ok")

    async def forget(request: web.Request) -> web.Response:
        session = await get_session(request)
        await together.wait(request)
        session.forget(request.query["key"])
        return web.Response(text="ok")

    async def dump(request: web.Request) -> web.Response:
        return web.Response(text=repr((await get_session(request)).all()))

    async def logout(request: web.Request) -> web.Response:
        await (await get_session(request)).invalidate()
        return web.Response(text="bye")

    async def slow_write(request: web.Request) -> web.Response:
        session = await get_session(request)
        await gates.hold(request)
        session["late"] = True
        return web.Response(text="ok")

    async def slow_read(request: web.Request) -> web.Response:
        # a poll: loads the session, waits, answers without changing it
        session = await get_session(request)
        await gates.hold(request)
        return web.Response(text=repr(session.get("user")))

    async def gate_reached(request: web.Request) -> web.Response:
        await gates.reached(request.query["name"])
        return web.Response(text="reached")

    async def gate_open(request: web.Request) -> web.Response:
        gates.open(request.query["name"])
        return web.Response(text="opened")

    async def advance(request: web.Request) -> web.Response:
        assert clock is not None
        clock.offset += float(request.query["seconds"])
        return web.Response(text="advanced")

    async def login(request: web.Request) -> web.Response:
        session = await get_session(request)
        await session.regenerate()
        session["user"] = request.query.get("user", "ada")
        return web.Response(text="in")

    async def bump(request: web.Request) -> web.Response:
        # a read-modify-write no delta can express: correct only under the session lock
        session = await get_session(request)
        current = session.get("count", 0)
        await together.wait(request)  # unlocked only: under the lock this would never end
        await asyncio.sleep(0.002)  # locked: let the other requests pile up at the lock
        session["count"] = current + 1
        return web.Response(text=str(session["count"]))

    locked_bump = session_lock(lock_seconds=10, wait_seconds=10)(bump)

    app = web.Application()
    app[GATES] = gates
    if clock is not None:
        app.router.add_get("/advance", advance)
    app.router.add_get("/gate/reached", gate_reached)
    app.router.add_get("/gate/open", gate_open)
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
    shifted = ShiftedClock()
    web.run_app(app_for(SessionManager(config, clock=shifted), shifted), host="127.0.0.1",
                port=port, print=None, access_log=None)
