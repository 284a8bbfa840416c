"""Requests of one browser that move its session at once, over HTTP, on every driver.

A double-submitted login form, two tabs logging in, an app that regenerates on every
privilege change: two requests carry the same cookie and both move the session to a new
id. Only one move may stand, or a second live record of the same handle escapes the
index (it survives ``end_user_sessions``) and a session is listed that no cookie holds.
And the response of the request that lost must not delete the cookie the winner set.

The browser here is explicit: a cookie jar of one cookie, updated from each response in
the order the responses arrive, as a browser applies Set-Cookie headers. The store is
then checked as it is (every record read back, see ``tests.test_users_processes``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from aiosessmgr import SessionManager, compat, get_session, setup

from .stores import store_entry
from .test_users_processes import assert_index_agrees, bound, stored_records

COOKIE = "aiosessmgr_session"
#: rounds of two overlapping moves (the outside tester's reproduction lost 12-37 of 40)
ROUNDS = 40
USER = "ann@example.com"

Factory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


class Browser:
    """One cookie, set and deleted by responses in the order they arrive."""

    def __init__(self, client: TestClient[web.Request, web.Application]) -> None:
        self.client = client
        self.cookie: str | None = None
        #: every session id a response ever handed out
        self.seen: set[str] = set()

    async def send(self, method: str, path: str, cookie: str | None = None,
                   **params: str) -> tuple[int, str]:
        """One request with *cookie* (default: the jar's); the jar takes its Set-Cookie."""
        sent = self.cookie if cookie is None else cookie
        headers = {} if sent is None else {"Cookie": f"{COOKIE}={sent}"}
        async with self.client.request(method, path, headers=headers,
                                       params=params) as response:
            text = await response.text()
            morsel = response.cookies.get(COOKIE)
            if morsel is not None:
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookie = None
                else:
                    self.cookie = morsel.value
                    self.seen.add(morsel.value)
            return response.status, text

    async def overlapping(self, method: str, path: str, **params: str) -> None:
        """Two requests with the same cookie, both loaded before either goes on (a
        browser's second request arrives while the first is in flight): both 200."""
        sent, app = self.cookie, self.client.app
        assert app is not None
        app[BOTH].barrier = asyncio.Barrier(2)
        try:
            answers = await asyncio.gather(self.send(method, path, sent, **params),
                                           self.send(method, path, sent, **params))
        finally:
            app[BOTH].barrier = asyncio.Barrier(1)
        assert [status for status, _ in answers] == [200, 200], answers


READY = web.AppKey("ready", asyncio.Semaphore)


class Gate:
    """Where a handler waits, once it loaded the session, for the other of its pair."""

    def __init__(self) -> None:
        self.barrier = asyncio.Barrier(1)


#: both requests of a pair have loaded the session before either moves it
BOTH = web.AppKey("both", Gate)


def app_for(manager: SessionManager, hold: asyncio.Event | None = None) -> web.Application:
    async def login(request: web.Request) -> web.Response:
        session = await get_session(request)
        await request.app[BOTH].barrier.wait()
        if hold is not None and "hold" in request.query:
            ready.release()
            await hold.wait()  # the session is loaded; the test ends it meanwhile
        await session.login(request.query["user"])
        session.increment("logins")
        return web.Response(text="ok")

    async def regenerate(request: web.Request) -> web.Response:
        session = await get_session(request)
        await request.app[BOTH].barrier.wait()
        await session.regenerate()
        return web.Response(text="ok")

    async def relogin(request: web.Request) -> web.Response:
        # log out, then in (the session of the previous user must not carry over)
        session = await get_session(request)
        await request.app[BOTH].barrier.wait()
        await session.logout()
        await session.login(request.query["user"])
        return web.Response(text="ok")

    async def compat_relogin(request: web.Request) -> web.Response:
        # the same through aiohttp-session's API: a synchronous invalidate(), then login
        session = await compat.get_session(request)
        await request.app[BOTH].barrier.wait()
        session.invalidate()
        await session.store.login(request.query["user"])
        return web.Response(text="ok")

    async def logins(request: web.Request) -> web.Response:
        session = await get_session(request)
        return web.Response(text=str(session.get("logins")))

    async def visit(request: web.Request) -> web.Response:
        session = await get_session(request)
        session.increment("visits")
        return web.Response(text="ok")

    async def whoami(request: web.Request) -> web.Response:
        session = await get_session(request)
        return web.Response(text=session.user_id or "-")

    ready = asyncio.Semaphore(0)
    app = web.Application()
    app[READY] = ready
    app[BOTH] = Gate()
    app.router.add_post("/login", login)
    app.router.add_post("/regenerate", regenerate)
    app.router.add_post("/visit", visit)
    app.router.add_post("/relogin", relogin)
    app.router.add_post("/compat-relogin", compat_relogin)
    app.router.add_get("/logins", logins)
    app.router.add_get("/whoami", whoami)
    setup(app, manager)
    return app


@pytest.fixture(params=["memory", "file", pytest.param("redis", marks=pytest.mark.redis)])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    entry = store_entry(request.param, request, tmp_path)
    entry["lifetime"] = 600  # nothing expires during the test
    return {"default": "main", "drivers": {"main": entry}, "lottery": [0, 1]}


@pytest.fixture
async def manager(config: dict[str, Any]) -> AsyncIterator[SessionManager]:
    mgr = SessionManager(config)
    yield mgr
    await mgr.close()


async def browser_for(factory: Factory, app: web.Application) -> Browser:
    return Browser(await factory(app, cookie_jar=aiohttp.DummyCookieJar()))


async def check_store(manager: SessionManager, config: dict[str, Any],
                      browser: Browser) -> None:
    """One live session of the user, indexed, held by the browser's cookie; ending the
    user's sessions leaves no record of the user and no id ever handed out readable."""
    assert await browser.send("GET", "/whoami") == (200, USER), "the browser was logged out"
    listed = await manager.user_sessions(USER)
    assert len(listed) == 1, listed
    if config["drivers"]["main"]["driver"] != "memory":
        live = await assert_index_agrees(manager, config, USER)
        assert list(live.values()) == [browser.cookie], "a session no cookie holds is listed"
    assert await manager.end_user_sessions(USER) == 1
    driver = manager.get_driver()
    for sid in browser.seen:
        assert await driver.read(sid) is None, "a session escaped end_user_sessions"
    if config["drivers"]["main"]["driver"] != "memory":
        assert bound(await stored_records(manager, config), USER) == {}
    assert await browser.send("GET", "/whoami") == (200, "-")


async def test_a_double_submitted_login_leaves_one_session(
        aiohttp_client: Factory, manager: SessionManager, config: dict[str, Any]) -> None:
    browser = await browser_for(aiohttp_client, app_for(manager))
    await browser.send("POST", "/login", user=USER)
    for _ in range(ROUNDS):
        await browser.overlapping("POST", "/login", user=USER)
        assert await browser.send("GET", "/whoami") == (200, USER)
    await check_store(manager, config, browser)


async def test_overlapping_regenerates_of_a_logged_in_session_leave_one(
        aiohttp_client: Factory, manager: SessionManager, config: dict[str, Any]) -> None:
    browser = await browser_for(aiohttp_client, app_for(manager))
    await browser.send("POST", "/login", user=USER)
    for _ in range(ROUNDS):
        await browser.overlapping("POST", "/regenerate")
        assert await browser.send("GET", "/whoami") == (200, USER)
    await check_store(manager, config, browser)


@pytest.mark.parametrize("path", ["/relogin", "/compat-relogin"])
async def test_a_double_submitted_logout_then_login_leaves_one_session(
        aiohttp_client: Factory, manager: SessionManager, config: dict[str, Any],
        path: str) -> None:
    # the logout moves each request to its own new id at once; the login's handle comes
    # from the record both loaded, so the two logins still contend for one entry
    browser = await browser_for(aiohttp_client, app_for(manager))
    await browser.send("POST", "/login", user=USER)
    for _ in range(ROUNDS // 2):
        await browser.overlapping("POST", path, user=USER)
        assert await browser.send("GET", "/whoami") == (200, USER)
        assert len(await manager.user_sessions(USER)) == 1
    await check_store(manager, config, browser)


async def test_an_anonymous_session_logged_in_twice_at_once_is_one_session(
        aiohttp_client: Factory, manager: SessionManager, config: dict[str, Any]) -> None:
    # the handle of a first login comes from the record's id: both requests make the same
    browser = await browser_for(aiohttp_client, app_for(manager))
    for _ in range(ROUNDS // 4):
        browser.cookie = None
        await browser.send("POST", "/visit")  # an anonymous session, stored
        assert browser.cookie is not None
        await browser.overlapping("POST", "/login", user=USER)
        assert len(await manager.user_sessions(USER)) == 1
        assert await manager.end_user_sessions(USER) == 1
    await browser.send("POST", "/login", user=USER)
    await check_store(manager, config, browser)


async def test_logins_that_find_their_session_ended_start_afresh_once(
        aiohttp_client: Factory, manager: SessionManager, config: dict[str, Any]) -> None:
    # both requests loaded the session, then "log out everywhere" ended it, then both log
    # in: each starts afresh, and of those two fresh sessions only one may stand
    hold = asyncio.Event()
    app = app_for(manager, hold)
    browser = await browser_for(aiohttp_client, app)
    for _ in range(ROUNDS // 4):
        await browser.send("POST", "/login", user=USER)
        hold.clear()
        both = asyncio.ensure_future(browser.overlapping("POST", "/login", user=USER,
                                                         hold="1"))
        for _ in range(2):
            await asyncio.wait_for(app[READY].acquire(), 30)
        assert await manager.end_user_sessions(USER) == 1
        hold.set()
        await both
        assert await browser.send("GET", "/whoami") == (200, USER)
        # afresh: the ended session's count is gone, this request's own increment stays
        assert await browser.send("GET", "/logins") == (200, "1")
        listed = await manager.user_sessions(USER)
        assert len(listed) == 1, listed
    await check_store(manager, config, browser)
