"""The aiohttp glue through a real server and real cookies."""

from __future__ import annotations

import ast
import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import Handler

from aiosessmgr import (
    DriverError,
    MemoryDriver,
    Session,
    SessionError,
    SessionManager,
    get_session,
    new_session,
    new_session_id,
    session_lock,
    setup,
)

from .conftest import eventually

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]
COOKIE = "aiosessmgr_session"


class CountingDriver(MemoryDriver):
    """The memory driver, counting every store operation."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.fail: Exception | None = None
        # if set, gc() waits for it: the test decides when a collection finishes
        self.gc_gate: asyncio.Event | None = None

    def _count(self, name: str) -> None:
        self.calls[name] += 1
        if self.fail is not None:
            raise self.fail

    async def read(self, session_id: str) -> bytes | None:
        self._count("read")
        return await super().read(session_id)

    async def read_touch(self, session_id: str, ttl: int) -> bytes | None:
        self._count("read_touch")
        return await super().read_touch(session_id, ttl)

    async def write(self, session_id: str, payload: bytes, ttl: int) -> None:
        self._count("write")
        await super().write(session_id, payload, ttl)

    async def compare_and_set(self, session_id: str, payload: bytes, ttl: int,
                              expected: bytes | None) -> bool:
        self._count("compare_and_set")
        return await super().compare_and_set(session_id, payload, ttl, expected)

    async def destroy(self, session_id: str) -> None:
        self._count("destroy")
        await super().destroy(session_id)

    async def gc(self, max_lifetime: int) -> int:
        self._count("gc")
        if self.gc_gate is not None:
            async with asyncio.timeout(10):
                await self.gc_gate.wait()
        self.calls["gc_finished"] += 1
        return await super().gc(max_lifetime)

    @property
    def writes(self) -> int:
        return self.calls["write"] + self.calls["compare_and_set"]


def make_manager(lottery: tuple[int, int] = (0, 1), **config: Any) -> tuple[SessionManager,
                                                                          CountingDriver]:
    driver = CountingDriver()
    manager = SessionManager({"default": "counted",
                              "drivers": {"counted": {"driver": "counting", "lifetime": 5}},
                              "lottery": lottery, **config})
    manager.extend("counting", lambda cfg: driver)
    return manager, driver


async def counter(request: web.Request) -> web.Response:
    session = await get_session(request)
    return web.Response(text=str(session.increment("n")))


async def peek(request: web.Request) -> web.Response:
    session = await get_session(request)
    return web.Response(text=repr(session.all()))


async def ignore(request: web.Request) -> web.Response:
    return web.Response(text="no session here")


def app_with(manager: SessionManager, **routes: Any) -> web.Application:
    app = web.Application()
    app.router.add_get("/count", counter)
    app.router.add_get("/peek", peek)
    app.router.add_get("/ignore", ignore)
    for path, handler in routes.items():
        app.router.add_route("*", f"/{path}", handler)
    setup(app, manager)
    return app


def set_cookie(response: Any, name: str = COOKIE) -> Any:
    cookies: SimpleCookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie", []):
        cookies.load(header)
    return cookies.get(name)


async def test_counter_increments_across_requests(aiohttp_client: ClientFactory) -> None:
    manager, _ = make_manager()
    client = await aiohttp_client(app_with(manager))
    texts = [await (await client.get("/count")).text() for _ in range(3)]
    assert texts == ["1", "2", "3"]


async def test_cookie_attributes_and_vary() -> None:
    manager, _ = make_manager(cookie={"name": "app_session", "secure": True,
                                      "same_site": "strict", "domain": "example.test",
                                      "path": "/app", "max_age": 600})
    app = app_with(manager)
    async with TestClient(web_server(app)) as client:
        response = await client.get("/count")
        morsel = set_cookie(response, "app_session")
        assert morsel is not None
        assert morsel["httponly"] and morsel["secure"]
        assert morsel["samesite"] == "Strict"
        assert morsel["domain"] == "example.test" and morsel["path"] == "/app"
        assert morsel["max-age"] == "600"
        assert response.headers["Vary"] == "Cookie"


def web_server(app: web.Application) -> Any:
    from aiohttp.test_utils import TestServer

    return TestServer(app)


async def test_untouched_session_costs_no_store_operation(
        aiohttp_client: ClientFactory) -> None:
    manager, driver = make_manager()
    client = await aiohttp_client(app_with(manager))
    await client.get("/count")
    driver.calls.clear()
    response = await client.get("/ignore")
    assert response.status == 200
    assert sum(driver.calls.values()) == 0
    assert "Set-Cookie" not in response.headers and "Vary" not in response.headers


async def test_read_only_request_is_one_read_and_no_write(
        aiohttp_client: ClientFactory) -> None:
    manager, driver = make_manager()
    client = await aiohttp_client(app_with(manager))
    await client.get("/count")
    driver.calls.clear()
    response = await client.get("/peek")
    assert await response.text() == "{'n': 1}"
    assert driver.calls == Counter({"read_touch": 1})
    assert "Set-Cookie" not in response.headers  # same id: nothing to re-send


async def test_save_on_raised_redirect(aiohttp_client: ClientFactory) -> None:
    async def login(request: web.Request) -> web.Response:
        session = await get_session(request)
        await session.regenerate()
        session["user"] = "ada"
        raise web.HTTPFound("/peek")

    manager, _ = make_manager()
    client = await aiohttp_client(app_with(manager, login=login))
    response = await client.post("/login", allow_redirects=False)
    assert response.status == 302 and set_cookie(response) is not None
    assert await (await client.get("/peek")).text() == "{'user': 'ada'}"


async def test_stream_and_file_responses_save(aiohttp_client: ClientFactory,
                                              tmp_path: Path) -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        session = await get_session(request)
        session["streamed"] = True
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"chunk")
        return response

    async def file(request: web.Request) -> web.FileResponse:
        session = await get_session(request)
        session["downloaded"] = True
        target = tmp_path / "file.txt"
        target.write_text("file body")
        return web.FileResponse(target)

    manager, _ = make_manager()
    client = await aiohttp_client(app_with(manager, stream=stream, file=file))
    response = await client.get("/stream")
    assert await response.read() == b"chunk" and set_cookie(response) is not None
    response = await client.get("/file")
    assert await response.text() == "file body"
    assert await (await client.get("/peek")).text() == "{'streamed': True, 'downloaded': True}"


async def test_unhandled_exception_saves_nothing(aiohttp_client: ClientFactory) -> None:
    async def boom(request: web.Request) -> web.Response:
        session = await get_session(request)
        session["half"] = "done"
        raise RuntimeError("handler bug")

    manager, driver = make_manager()
    client = await aiohttp_client(app_with(manager, boom=boom))
    await client.get("/count")
    driver.calls.clear()
    response = await client.get("/boom")
    assert response.status == 500
    assert driver.writes == 0
    assert await (await client.get("/peek")).text() == "{'n': 1}"


async def test_flash_across_three_requests(aiohttp_client: ClientFactory) -> None:
    async def flash(request: web.Request) -> web.Response:
        session = await get_session(request)
        session.flash("status", "Profile saved")
        raise web.HTTPSeeOther("/peek")

    manager, _ = make_manager()
    client = await aiohttp_client(app_with(manager, flash=flash))
    response = await client.post("/flash")  # follows the redirect: request 2 sees it
    assert await response.text() == "{'status': 'Profile saved'}"
    assert await (await client.get("/peek")).text() == "{}"  # request 3: gone


async def test_invalidate_clears_data_and_cookie(aiohttp_client: ClientFactory) -> None:
    async def logout(request: web.Request) -> web.Response:
        session = await get_session(request)
        await session.invalidate()
        return web.Response(text="bye")

    manager, driver = make_manager()
    client = await aiohttp_client(app_with(manager, logout=logout))
    await client.get("/count")
    old_id = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value
    response = await client.get("/logout")
    morsel = set_cookie(response)
    assert morsel is not None and morsel.value == "" and morsel["max-age"] == "0"
    assert await driver.read(old_id) is None
    assert await (await client.get("/peek")).text() == "{}"


async def test_regenerate_changes_cookie_and_old_id_is_dead(
        aiohttp_client: ClientFactory) -> None:
    async def login(request: web.Request) -> web.Response:
        session = await get_session(request)
        await session.regenerate()
        return web.Response(text="ok")

    manager, _ = make_manager()
    client = await aiohttp_client(app_with(manager, login=login))
    await client.get("/count")
    old_id = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value
    response = await client.get("/login")
    new_id = set_cookie(response).value
    assert new_id != old_id
    assert await (await client.get("/count")).text() == "2"  # data kept under the new id
    replay = await client.get("/peek", cookies={COOKIE: old_id})
    assert await replay.text() == "{}"


async def test_new_session_destroys_previous(aiohttp_client: ClientFactory) -> None:
    async def fresh(request: web.Request) -> web.Response:
        session = await new_session(request)
        session["fresh"] = True
        return web.Response(text=session.id)

    manager, driver = make_manager()
    client = await aiohttp_client(app_with(manager, fresh=fresh))
    await client.get("/count")
    old_id = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value
    response = await client.get("/fresh")
    new_id = await response.text()
    assert new_id != old_id and set_cookie(response).value == new_id
    assert await driver.read(old_id) is None
    assert await (await client.get("/peek")).text() == "{'fresh': True}"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("a" * 4096, id="4kB"),
        pytest.param("../x", id="traversal"),
        pytest.param("../../../../etc/passwd", id="deep-traversal"),
        pytest.param("sessión-" + "x" * 35, id="non-ascii"),
        pytest.param("x" * 42, id="one-short"),
        pytest.param("x" * 44, id="one-long"),
        pytest.param("x" * 42 + "=", id="padding"),
        pytest.param('"' + "x" * 41 + '"', id="quoted"),
    ],
)
async def test_malformed_cookie_gives_fresh_session(aiohttp_client: ClientFactory,
                                                    value: str) -> None:
    manager, driver = make_manager()
    client = await aiohttp_client(app_with(manager))
    response = await client.get("/count", headers={"Cookie": f"{COOKIE}={value}"})
    assert response.status == 200 and await response.text() == "1"
    assert driver.calls["read"] + driver.calls["read_touch"] == 0  # never looked up


async def test_unknown_well_formed_id_is_not_adopted(aiohttp_client: ClientFactory) -> None:
    manager, driver = make_manager()
    client = await aiohttp_client(app_with(manager))
    forged = new_session_id()
    response = await client.get("/count", headers={"Cookie": f"{COOKIE}={forged}"})
    assert await response.text() == "1"
    assert set_cookie(response).value != forged
    assert await driver.read(forged) is None


def two_managers(handler: Handler, outer: SessionManager,
                 inner: SessionManager) -> web.Application:
    """An app serving *handler* at /both, with *outer* set up first (the default of
    get_session, the outer middleware) and *inner* second."""
    app = web.Application()
    app.router.add_get("/both", handler)
    setup(app, outer)
    setup(app, inner)
    return app


async def test_two_managers_keep_separate_cookies(aiohttp_client: ClientFactory) -> None:
    web_manager = SessionManager({"cookie": {"name": "web_session"}, "lottery": (0, 1)})
    api_manager = SessionManager({"cookie": {"name": "api_session", "path": "/"},
                                  "lottery": (0, 1)})

    async def both(request: web.Request) -> web.Response:
        web_session = await get_session(request)  # the first manager set up
        api_session = await get_session(request, api_manager)
        web_session.increment("web")
        api_session.increment("api", 10)
        return web.Response(text=f"{web_session['web']} {api_session['api']}")

    client = await aiohttp_client(two_managers(both, web_manager, api_manager))
    first = await client.get("/both")
    assert await first.text() == "1 10"
    assert set_cookie(first, "web_session") is not None
    assert set_cookie(first, "api_session") is not None
    assert set_cookie(first, "web_session").value != set_cookie(first, "api_session").value
    assert await (await client.get("/both")).text() == "2 20"


async def test_a_store_failure_of_one_manager_keeps_what_another_saved(
        aiohttp_client: ClientFactory) -> None:
    """docs/quickstart.md: with several managers each saves on its own; a store failure of
    one (503) does not undo what another already saved (the one set up last, the inner
    middleware, saves first)."""
    outer, broken = make_manager(cookie={"name": "web_session"})
    inner = SessionManager({"cookie": {"name": "api_session"}, "lottery": (0, 1)})

    async def both(request: web.Request) -> web.Response:
        (await get_session(request)).increment("web")
        (await get_session(request, inner)).increment("api")
        if "fail" in request.query:
            broken.fail = DriverError("store unreachable")  # loaded; its save will fail
        return web.Response(text="ok")

    client = await aiohttp_client(two_managers(both, outer, inner))
    first = await client.get("/both")
    api_id = set_cookie(first, "api_session").value
    response = await client.get("/both", params={"fail": "1"})
    assert response.status == 503
    # the inner manager saved before the outer store failed, and that stays (the 503 is a
    # new response: it carries neither manager's Set-Cookie)
    assert (await inner.load(api_id)).get("api") == 2
    broken.fail = None
    assert (await client.get("/both")).status == 200
    assert (await inner.load(api_id)).get("api") == 3


async def test_lottery_gc_runs_after_the_response(aiohttp_client: ClientFactory) -> None:
    manager, driver = make_manager(lottery=(1, 1))
    driver.gc_gate = asyncio.Event()  # a collection that finishes only when the test says
    started: list[bool] = []
    schedule = manager.schedule_gc

    def recording_schedule(name: str | None = None) -> bool:
        started.append(schedule(name))
        return started[-1]

    manager.schedule_gc = recording_schedule  # type: ignore[method-assign]
    client = await aiohttp_client(app_with(manager))
    response = await asyncio.wait_for(client.get("/count"), 10)  # not held up by the GC
    assert await response.text() == "1"
    await eventually(lambda: driver.calls["gc"] == 1, "the lottery's GC run started")
    assert driver.calls["gc_finished"] == 0  # it is still running
    assert await (await client.get("/count")).text() == "2"
    await eventually(lambda: len(started) == 2, "the second request drew the lottery")
    assert started == [True, False]  # one run at a time per driver
    assert driver.calls["gc"] == 1
    driver.gc_gate.set()
    await manager.wait_gc()
    assert driver.calls["gc_finished"] == 1


async def test_failing_gc_does_not_affect_the_response(
        aiohttp_client: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    class BrokenGC(CountingDriver):
        async def gc(self, max_lifetime: int) -> int:
            self._count("gc")
            raise OSError("disk on fire")

    driver = BrokenGC()
    manager = SessionManager({"default": "b", "drivers": {"b": {"driver": "broken"}},
                              "lottery": (1, 1)})
    manager.extend("broken", lambda cfg: driver)
    client = await aiohttp_client(app_with(manager))
    response = await client.get("/count")
    assert response.status == 200 and await response.text() == "1"
    await eventually(lambda: driver.calls["gc"] == 1, "the lottery's GC run started")
    await manager.wait_gc()
    [logged] = [r for r in caplog.records if "garbage collection" in r.getMessage()]
    assert logged.levelno == logging.ERROR and logged.name == "aiosessmgr"
    assert logged.exc_info is not None and isinstance(logged.exc_info[1], OSError)
    assert await (await client.get("/count")).text() == "2"  # later requests too


async def test_driver_error_is_a_503_logged_once(aiohttp_client: ClientFactory,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    manager, driver = make_manager()
    client = await aiohttp_client(app_with(manager))
    await client.get("/count")
    driver.fail = DriverError("store unreachable")
    with caplog.at_level(logging.ERROR, logger="aiosessmgr"):
        statuses = [(await client.get("/count")).status for _ in range(3)]
    assert statuses == [503, 503, 503]
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1
    assert (await client.get("/ignore")).status == 200  # no session, no store
    driver.fail = None
    assert await (await client.get("/count")).text() == "2"


async def test_listener_error_does_not_break_request(
        aiohttp_client: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    manager, _ = make_manager()
    called: list[Any] = []

    def broken(event: Any) -> None:
        called.append(event)
        raise RuntimeError("listener bug")

    from aiosessmgr import SessionEvents

    for event in SessionEvents:
        manager.on(event, broken)
    client = await aiohttp_client(app_with(manager))
    with caplog.at_level(logging.ERROR, logger="aiosessmgr"):
        assert await (await client.get("/count")).text() == "1"
        assert await (await client.get("/count")).text() == "2"
    assert called  # the listener did run, and raise
    failures = [r for r in caplog.records if "listener" in r.getMessage()]
    assert len(failures) == len(called) and all(r.exc_info for r in failures)


async def test_concurrent_requests_on_one_session_lose_nothing(
        aiohttp_client: ClientFactory) -> None:
    loaded = 0
    all_loaded = asyncio.Event()

    async def slow_set(request: web.Request) -> web.Response:
        nonlocal loaded
        session = await get_session(request)
        loaded += 1
        if loaded == 100:
            all_loaded.set()
        async with asyncio.timeout(10):
            await all_loaded.wait()  # every request loaded the same record: all conflict
        session[f"k{request.query['i']}"] = True
        session.increment("n")
        return web.Response(text="ok")

    manager, driver = make_manager()
    client = await aiohttp_client(app_with(manager, slow_set=slow_set))
    await client.get("/count")
    driver.calls.clear()
    responses = await asyncio.gather(*(client.get(f"/slow_set?i={i}") for i in range(100)))
    assert [r.status for r in responses] == [200] * 100
    # each save after the first is replayed on the record this process wrote last, so none
    # conflicts and none re-reads (group commit, aiosessmgr.commit)
    assert driver.calls["compare_and_set"] == 100
    assert driver.calls["read"] == 0, driver.calls
    data = ast.literal_eval(await (await client.get("/peek")).text())
    assert data["n"] == 101
    assert len(data) == 101  # n plus 100 distinct keys


async def test_get_session_without_middleware_is_a_clear_error(
        aiohttp_client: ClientFactory) -> None:
    raised: list[BaseException] = []

    async def handler(request: web.Request) -> web.Response:
        try:
            await get_session(request)
        except BaseException as exc:
            raised.append(exc)
            raise
        return web.Response(text="no error")

    app = web.Application()
    app.router.add_get("/count", handler)
    client = await aiohttp_client(app)
    response = await client.get("/count")
    assert response.status == 500  # a programming error, reported clearly in the log
    [error] = raised
    assert type(error) is SessionError
    assert "no session middleware" in str(error) and "aiosessmgr.setup(app, manager)" in str(error)


async def test_cleanup_closes_the_manager() -> None:
    closed: list[bool] = []

    class Closing(MemoryDriver):
        async def close(self) -> None:
            closed.append(True)

    manager = SessionManager({"default": "c", "drivers": {"c": {"driver": "closing"}}})
    manager.extend("closing", lambda cfg: Closing())
    app = app_with(manager)
    async with TestClient(web_server(app)) as client:
        await client.get("/count")
    assert closed == [True]


async def test_periodic_gc(aiohttp_client: ClientFactory) -> None:
    manager, driver = make_manager(gc_interval=0.02)  # lottery (0, 1): only the timer collects
    await aiohttp_client(app_with(manager))
    await eventually(lambda: driver.calls["gc"] >= 2, "two periodic GC runs")


# -- which cookie a request uses (issue: duplicates, quoting) ----------------------------


def raw_set_cookies(response: Any) -> list[str]:
    headers: list[str] = response.headers.getall("Set-Cookie", [])
    return headers


async def send_cookie_header(client: Client, path: str, header: str) -> Any:
    """GET *path* with exactly this Cookie header (the jar is emptied so it adds nothing)."""
    client.session.cookie_jar.clear()
    return await client.get(path, headers={"Cookie": header})


async def destroyed_id(manager: SessionManager) -> str:
    """A well-formed id whose session existed and was destroyed (a stale cookie)."""
    session = await manager.driver()
    session["old"] = True
    await session.save()
    await manager.destroy(session.id)
    return session.id


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param("{dead}; {live}", id="stale-first"),
        pytest.param("{live}; {dead}", id="live-first"),
        pytest.param("other=1; {dead};{live}; last=2", id="among-others"),
        pytest.param('{dead}; aiosessmgr_session="{live_id}"', id="quoted-live"),
        pytest.param("{malformed}; {dead}; {live}", id="malformed-dead-live"),
    ],
)
async def test_duplicate_cookies_find_the_live_session(aiohttp_client: ClientFactory,
                                                       shape: str) -> None:
    manager, _ = make_manager()
    client = await aiohttp_client(app_with(manager))
    await client.get("/count")
    live_id = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value
    dead_id = await destroyed_id(manager)
    header = shape.format(dead=f"{COOKIE}={dead_id}", live=f"{COOKIE}={live_id}",
                          live_id=live_id, malformed=f"{COOKIE}=../../x")
    response = await send_cookie_header(client, "/count", header)
    assert await response.text() == "2"  # the live session, not a fresh one
    assert raw_set_cookies(response) == []  # same id: nothing set, and nothing deleted


async def test_candidate_cookies_are_bounded(aiohttp_client: ClientFactory) -> None:
    from aiosessmgr.web import MAX_COOKIE_CANDIDATES

    manager, driver = make_manager()
    client = await aiohttp_client(app_with(manager))
    await client.get("/count")
    live_id = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value
    dead = [await destroyed_id(manager) for _ in range(MAX_COOKIE_CANDIDATES)]
    driver.calls.clear()
    header = "; ".join(f"{COOKIE}={sid}" for sid in [*dead, live_id])
    response = await send_cookie_header(client, "/count", header)
    assert await response.text() == "1"  # a fresh session: the live one was too far back
    assert driver.calls["read_touch"] == MAX_COOKIE_CANDIDATES


# -- the cookie we send (issue: deletion attributes, Partitioned, Expires) -----------------


async def logout(request: web.Request) -> web.Response:
    session = await get_session(request)
    await session.invalidate()
    return web.Response(text="bye")


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param({"name": "__Host-sid", "secure": True}, id="host-prefix"),
        pytest.param({"name": "__Secure-sid", "secure": True, "domain": "127.0.0.1",
                      "path": "/"}, id="secure-prefix-domain"),
        pytest.param({"name": "sid", "secure": True, "partitioned": True,
                      "same_site": "none"}, id="partitioned"),
        pytest.param({"name": "sid", "max_age": 600}, id="max-age"),
    ],
)
async def test_logout_deletes_the_cookie_it_set(aiohttp_client: ClientFactory,
                                                cookie: dict[str, Any]) -> None:
    manager, _ = make_manager(cookie=cookie)
    client = await aiohttp_client(app_with(manager, logout=logout))
    login = await client.get("/count")
    assert login.status == 200
    [set_header] = raw_set_cookies(login)
    response = await client.get("/logout", headers={"Cookie": set_header.split(";")[0]})
    assert response.status == 200
    [delete_header] = raw_set_cookies(response)
    set_attrs, delete_attrs = attributes(set_header), attributes(delete_header)
    for name in ("path", "domain", "secure", "httponly", "samesite", "partitioned"):
        assert set_attrs.get(name) == delete_attrs.get(name), (name, delete_header)
    assert delete_attrs["max-age"] == "0" and delete_header.startswith(f'{cookie["name"]}=""')


def attributes(header: str) -> dict[str, str]:
    _, *rest = header.split(";")
    pairs = (part.strip().partition("=") for part in rest)
    return {key.lower(): value or "1" for key, _, value in pairs}


async def test_partitioned_cookie_is_sent_not_a_500(aiohttp_client: ClientFactory) -> None:
    manager, _ = make_manager(cookie={"secure": True, "partitioned": True,
                                           "same_site": "none"})
    client = await aiohttp_client(app_with(manager))
    response = await client.get("/count")
    assert response.status == 200
    [header] = raw_set_cookies(response)
    assert "partitioned" in attributes(header) and "secure" in attributes(header)


async def test_max_age_cookie_carries_expires(aiohttp_client: ClientFactory) -> None:
    import email.utils
    import time

    manager, _ = make_manager(cookie={"max_age": 3600})
    client = await aiohttp_client(app_with(manager))
    before = time.time()
    [header] = raw_set_cookies(await client.get("/count"))
    attrs = attributes(header)
    assert attrs["max-age"] == "3600"
    expires = email.utils.parsedate_to_datetime(attrs["expires"]).timestamp()
    assert before + 3600 - 2 <= expires <= time.time() + 3600 + 1


# -- only the request that moved or ended a session decides its cookie ---------------------


@pytest.fixture(params=["memory", "file", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


MOVES = ["regenerate", "invalidate", "new_session"]


@pytest.mark.parametrize("move", MOVES)
@pytest.mark.parametrize("poll", [
    pytest.param("writes", id="poll-writes"),
    pytest.param("reads-max-age", id="poll-reads-with-max-age"),
    pytest.param("loads-after-the-move", id="poll-loads-late"),
])
async def test_a_request_whose_record_vanished_leaves_the_cookie_alone(
        aiohttp_client: ClientFactory, request: pytest.FixtureRequest, tmp_path: Path,
        store_kind: str, move: str, poll: str) -> None:
    from .stores import store_entry

    cookie = {"max_age": 600} if poll == "reads-max-age" else {}
    manager = SessionManager({"default": "main", "lottery": (0, 1), "cookie": cookie,
                              "drivers": {"main": store_entry(store_kind, request, tmp_path)}})
    loaded, go = asyncio.Event(), asyncio.Event()

    async def polling(req: web.Request) -> web.Response:
        if poll == "loads-after-the-move":
            loaded.set()
            await go.wait()
            session = await get_session(req)
        else:
            session = await get_session(req)
            loaded.set()
            await go.wait()
        if poll != "reads-max-age":
            session.increment("polls")
        return web.Response(text=repr(session.get("user")))

    async def login(req: web.Request) -> web.Response:
        if move == "new_session":
            session = await new_session(req)
        else:
            session = await get_session(req)
            await getattr(session, move)()
        if move != "invalidate":
            session["user"] = "ada"
        return web.Response(text="done")

    client = await aiohttp_client(app_with(manager, poll=polling, login=login))
    assert (await client.get("/count")).status == 200  # an anonymous session exists
    pending = asyncio.ensure_future(client.get("/poll"))
    await loaded.wait()
    moved = await client.post("/login")  # B answers first ...
    assert moved.status == 200
    go.set()
    late = await pending  # ... then A answers: the browser applies B, then A
    assert late.status == 200
    assert raw_set_cookies(late) == []
    data = ast.literal_eval(await (await client.get("/peek")).text())
    assert "polls" not in data  # A's change was dropped
    if move == "invalidate":
        assert data == {}  # still logged out
    else:
        assert data.get("user") == "ada"  # still logged in
    await manager.close()


async def test_a_stale_cookie_is_not_deleted_by_a_request_that_did_not_end_it(
        aiohttp_client: ClientFactory) -> None:
    manager, _ = make_manager()
    client = await aiohttp_client(app_with(manager))
    response = await send_cookie_header(client, "/peek", f"{COOKIE}={new_session_id()}")
    assert response.status == 200 and raw_set_cookies(response) == []


# -- 5xx responses save nothing ---------------------------------------------------------------


def failing_handlers() -> dict[str, Any]:
    async def returns_500(request: web.Request) -> web.Response:
        (await get_session(request))["half"] = "done"
        return web.Response(status=500, text="broken")

    async def raises_500(request: web.Request) -> web.Response:
        (await get_session(request))["half"] = "done"
        raise web.HTTPInternalServerError()

    async def raises_503(request: web.Request) -> web.Response:
        (await get_session(request))["half"] = "done"
        raise web.HTTPServiceUnavailable()

    async def streams_502(request: web.Request) -> web.StreamResponse:
        (await get_session(request))["half"] = "done"
        response = web.StreamResponse(status=502)
        await response.prepare(request)
        await response.write(b"upstream broke")
        return response

    @session_lock()
    async def locked_500(request: web.Request) -> web.Response:
        (await get_session(request))["half"] = "done"
        return web.Response(status=500)

    @session_lock()
    async def locked_raises_503(request: web.Request) -> web.Response:
        (await get_session(request))["half"] = "done"
        raise web.HTTPServiceUnavailable()

    return {"returns_500": returns_500, "raises_500": raises_500, "raises_503": raises_503,
            "streams_502": streams_502, "locked_500": locked_500,
            "locked_raises_503": locked_raises_503}


FAILING = list(failing_handlers())


@pytest.mark.parametrize("path", FAILING)
async def test_a_5xx_saves_nothing(aiohttp_client: ClientFactory, path: str) -> None:
    manager, driver = make_manager()
    client = await aiohttp_client(app_with(manager, **failing_handlers()))
    await client.get("/count")
    driver.calls.clear()
    response = await client.get(f"/{path}")
    assert response.status >= 500
    assert driver.writes == 0 and raw_set_cookies(response) == []
    assert await (await client.get("/peek")).text() == "{'n': 1}"


@pytest.mark.parametrize("path", FAILING)
async def test_save_on_server_error_saves_a_5xx(aiohttp_client: ClientFactory,
                                                path: str) -> None:
    manager, _ = make_manager(save_on_server_error=True)
    client = await aiohttp_client(app_with(manager, **failing_handlers()))
    await client.get("/count")
    assert (await client.get(f"/{path}")).status >= 500
    assert await (await client.get("/peek")).text() == "{'n': 1, 'half': 'done'}"


RAISED: dict[int, Callable[[], web.HTTPException]] = {
    302: lambda: web.HTTPFound("/peek"), 303: lambda: web.HTTPSeeOther("/peek"),
    400: web.HTTPBadRequest, 404: web.HTTPNotFound, 422: web.HTTPUnprocessableEntity,
}


@pytest.mark.parametrize(("status", "raised"), [
    *[pytest.param(code, False, id=f"returned-{code}") for code in (200, 201, 302, 400, 404)],
    *[pytest.param(code, True, id=f"raised-{code}") for code in RAISED],
])
async def test_2xx_3xx_4xx_save(aiohttp_client: ClientFactory, status: int,
                                raised: bool) -> None:
    async def answer(request: web.Request) -> web.Response:
        (await get_session(request))["seen"] = status
        if raised:
            raise RAISED[status]()
        return web.Response(status=status)

    manager, _ = make_manager()
    client = await aiohttp_client(app_with(manager, answer=answer))
    response = await client.get("/answer", allow_redirects=False)
    assert response.status == status
    assert await (await client.get("/peek")).text() == f"{{'seen': {status}}}"


# -- a save that cannot finish is a 503 with Retry-After, not a 500 ---------------------------


async def test_a_save_that_keeps_conflicting_is_a_503_with_retry_after(
        aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import os

    from aiosessmgr import commit

    class AlwaysConflicting(CountingDriver):
        async def compare_and_set(self, session_id: str, payload: bytes, ttl: int,
                                  expected: bytes | None) -> bool:
            self._count("compare_and_set")
            current = await MemoryDriver.read(self, session_id)
            if current is not None:  # another process saves first, every time
                await MemoryDriver.write(self, session_id, os.urandom(8) + current[8:], ttl)
            return False

    driver = AlwaysConflicting()
    manager = SessionManager({"default": "c", "drivers": {"c": {"driver": "conflicting"}},
                              "lottery": (0, 1)})
    manager.extend("conflicting", lambda cfg: driver)
    sid = new_session_id()
    record = manager.codec.encode(sid, {"d": {"n": 1}, "m": {"c": 1.0}})
    await MemoryDriver.write(driver, sid, b"version0" + record, 60)
    monkeypatch.setattr(commit, "SAVE_DEADLINE", 0.05)
    client = await aiohttp_client(app_with(manager))
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        response = await send_cookie_header(client, "/count", f"{COOKIE}={sid}")
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert driver.calls["compare_and_set"] > 2  # it did keep trying until the deadline
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # not an outage


async def test_a_cookie_replayed_after_logout_starts_a_working_session(
        aiohttp_client: ClientFactory) -> None:
    """The logout response was lost, or the old cookie is replayed: a new visit, not stuck."""
    async def form(request: web.Request) -> web.Response:
        return web.Response(text=(await get_session(request)).token)

    async def check(request: web.Request) -> web.Response:
        session = await get_session(request)
        return web.Response(text=str(not session.new and session.token == request.query["t"]))

    manager, _ = make_manager()
    client = await aiohttp_client(app_with(manager, logout=logout, form=form, check=check))
    await client.get("/count")
    old = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value
    assert (await client.get("/logout")).status == 200
    # the browser never saw the logout's response: it still sends the old cookie
    token_page = await send_cookie_header(client, "/form", f"{COOKIE}={old}")
    token = await token_page.text()
    [header] = raw_set_cookies(token_page)  # a new session, stored with its CSRF secret
    fresh = header.split(";")[0].partition("=")[2]
    assert fresh != old
    checked = await send_cookie_header(client, f"/check?t={token}", f"{COOKIE}={fresh}")
    assert await checked.text() == "True"


# -- found by an outside test: rolling cookies across processes, failed logins, streams ----


@pytest.mark.parametrize("kind", ["file", "redis"])
async def test_a_reading_poll_on_another_process_does_not_undo_a_login(
        request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> None:
    """With a rolling max_age, a read-only poll answering after a login elsewhere."""
    import aiohttp

    from .stores import store_entry, two_servers

    # max_age 10 s: the poll, 1.2 s after the last write, is due to re-send the cookie
    with two_servers(store_entry(kind, request, tmp_path), cookie={"max_age": 10}) as urls:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                         timeout=aiohttp.ClientTimeout(total=60)) as http:

            async def call(url: str) -> str:
                async with http.get(url) as response:
                    assert response.status == 200
                    return await response.text()

            async def advance_clocks(seconds: float) -> None:
                for url in urls:  # both processes: their records share one timeline
                    await call(f"{url}/advance?seconds={seconds}")

            async with http.get(f"{urls[0]}/set?key=anon") as first:
                sid = first.cookies[COOKIE].value
            await advance_clocks(1.2)
            headers = {"Cookie": f"{COOKIE}={sid}"}
            async with http.get(f"{urls[0]}/slow_read", headers=headers) as control:
                assert control.status == 200
                assert raw_set_cookies(control) != []  # due: the rolling refresh is sent
            await advance_clocks(1.2)
            poll = asyncio.ensure_future(http.get(f"{urls[0]}/slow_read?gate=poll",
                                                  headers=headers))
            try:
                await call(f"{urls[0]}/gate/reached?name=poll")  # the poll loaded the session
                async with http.get(f"{urls[1]}/login", headers=headers) as login:
                    assert login.status == 200 and login.cookies[COOKIE].value != sid
            finally:
                await call(f"{urls[0]}/gate/open?name=poll")
            late = await poll
            assert late.status == 200
            assert raw_set_cookies(late) == []  # the old id is not sent back
            late.release()


async def test_a_poll_does_not_undo_a_login_that_kept_the_old_record(
        aiohttp_client: ClientFactory) -> None:
    """regenerate(destroy=False): the old record stays, the poll must not resurrect its id."""
    from .conftest import FakeClock

    clock = FakeClock(time.time())
    driver = CountingDriver()
    manager = SessionManager({"default": "c", "drivers": {"c": {"driver": "counting"}},
                              "lottery": (0, 1), "cookie": {"max_age": 600}}, clock=clock)
    manager.extend("counting", lambda cfg: driver)
    loaded, go = asyncio.Event(), asyncio.Event()

    async def polling(req: web.Request) -> web.Response:
        session = await get_session(req)
        loaded.set()
        await go.wait()
        return web.Response(text=repr(session.get("user")))

    async def login(req: web.Request) -> web.Response:
        session = await get_session(req)
        await session.regenerate(destroy=False)
        session["user"] = "ada"
        return web.Response(text="in")

    client = await aiohttp_client(app_with(manager, poll=polling, login=login))
    await client.get("/count")
    clock.advance(3600)  # the poll is due to re-send the rolling cookie
    pending = asyncio.ensure_future(client.get("/poll"))
    await loaded.wait()
    assert (await client.get("/login")).status == 200
    go.set()
    late = await pending
    assert raw_set_cookies(late) == []
    assert "ada" in await (await client.get("/peek")).text()


@pytest.mark.parametrize("move", ["regenerate", "new_session", "invalidate"])
async def test_a_failed_login_keeps_the_session_a_failed_logout_still_logs_out(
        aiohttp_client: ClientFactory, move: str) -> None:
    async def fails(req: web.Request) -> web.Response:
        if move == "new_session":
            session = await new_session(req)
        else:
            session = await get_session(req)
            await getattr(session, move)()
        session["user"] = "ada"
        raise web.HTTPInternalServerError()

    manager, _ = make_manager()
    client = await aiohttp_client(app_with(manager, fails=fails))
    await client.get("/count")
    assert (await client.get("/fails")).status == 500
    after = await (await client.get("/peek")).text()
    if move == "invalidate":
        assert after == "{}"  # a logout takes effect at once, even if the request fails
    else:
        assert after == "{'n': 1}"  # the visitor's session (a cart, say) is still there


async def test_a_request_answered_after_an_outage_began_does_not_end_it(
        aiohttp_client: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    manager, driver = make_manager()
    loaded, go = asyncio.Event(), asyncio.Event()

    async def slow(req: web.Request) -> web.Response:
        session = await get_session(req)  # the store answers here, before the outage
        loaded.set()
        await go.wait()
        return web.Response(text=repr(session.all()))

    client = await aiohttp_client(app_with(manager, slow=slow))
    await client.get("/count")
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        pending = asyncio.ensure_future(client.get("/slow"))
        await loaded.wait()
        driver.fail = DriverError("store unreachable")
        assert (await client.get("/count")).status == 503  # the outage begins
        go.set()
        assert (await pending).status == 200  # answered without touching the store again
        assert (await client.get("/count")).status == 503
        driver.fail = None
        assert (await client.get("/count")).status == 200  # really back
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    recoveries = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(errors) == 1 and len(recoveries) == 1


@pytest.mark.parametrize("failure", ["store-down", "save-timeout"])
async def test_a_stream_whose_session_cannot_be_saved_is_a_well_framed_503(
        aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    import aiohttp

    from aiosessmgr import SessionSaveTimeout, commit

    manager, driver = make_manager()

    async def stream(req: web.Request) -> web.StreamResponse:
        session = await get_session(req)
        session["streamed"] = True
        if failure == "store-down":
            driver.fail = DriverError("store unreachable")
        else:
            async def timeout(*args: Any) -> None:
                raise SessionSaveTimeout("other writers kept winning")
            monkeypatch.setattr(commit, "_compare_and_set", timeout)
        response = web.StreamResponse()
        await response.prepare(req)
        await response.write(b"chunk one ")
        await response.write(b"chunk two")
        return response

    # one connection: the second request must find it in step after the first
    client = await cast(Any, aiohttp_client)(app_with(manager, stream=stream),
                                             connector=aiohttp.TCPConnector(limit=1))
    await client.get("/count")
    response = await client.get("/stream")
    assert response.status == 503  # the client learns that the session was not saved
    assert await response.read() == b"chunk one chunk two"  # and the body is intact
    if failure == "save-timeout":
        assert response.headers["Retry-After"] == "1"
    driver.fail = None
    monkeypatch.undo()
    again = await client.get("/peek")  # the same keep-alive connection still works
    assert again.status == 200 and await again.text() == "{'n': 1}"


@pytest.mark.parametrize("kind", ["204", "websocket"])
async def test_a_bodiless_or_upgraded_stream_whose_session_cannot_be_saved(
        aiohttp_client: ClientFactory, kind: str) -> None:
    import aiohttp

    manager, driver = make_manager()

    async def empty(req: web.Request) -> web.StreamResponse:
        (await get_session(req))["x"] = 1
        driver.fail = DriverError("store unreachable")
        response = web.StreamResponse(status=204)
        await response.prepare(req)
        return response

    async def ws(req: web.Request) -> web.StreamResponse:
        (await get_session(req))["x"] = 1
        driver.fail = DriverError("store unreachable")
        socket = web.WebSocketResponse()
        await socket.prepare(req)
        await socket.send_str("hi")
        await socket.close()
        return socket

    client = await cast(Any, aiohttp_client)(app_with(manager, empty=empty, ws=ws),
                                             connector=aiohttp.TCPConnector(limit=1))
    await client.get("/count")
    if kind == "204":
        response = await asyncio.wait_for(client.get("/empty"), 10)
        assert response.status == 503 and response.headers["Content-Length"] == "0"
        driver.fail = None
        again = await asyncio.wait_for(client.get("/peek"), 10)  # the connection is in step
        assert await again.text() == "{'n': 1}"
    else:
        async with client.ws_connect("/ws") as socket:  # the upgrade goes ahead
            message = await asyncio.wait_for(socket.receive(), 10)
            assert message.data == "hi"
        driver.fail = None
        again = await asyncio.wait_for(client.get("/peek"), 10)
        assert await again.text() == "{'n': 1}"  # and nothing was saved


async def test_a_rolling_cookie_is_re_sent_even_when_other_writes_send_none(
        aiohttp_client: ClientFactory) -> None:
    from .conftest import FakeClock

    clock = FakeClock(time.time())
    driver = CountingDriver()
    manager = SessionManager({"default": "c", "drivers": {"c": {"driver": "counting"}},
                              "lottery": (0, 1), "cookie": {"max_age": 100}}, clock=clock)
    manager.extend("counting", lambda cfg: driver)
    client = await aiohttp_client(app_with(manager))
    await client.get("/count")
    sid = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value
    for _ in range(3):  # writes that send no cookie (a background job, a websocket)
        clock.advance(9)
        background = await manager.load(sid)
        background.increment("jobs")
        await background.save()
    clock.advance(9)  # 36 s since the cookie went out; its interval is 10 s
    response = await client.get("/peek")
    assert raw_set_cookies(response) != []  # due: rolled, though the record is fresh


async def test_new_session_whose_save_fails_keeps_the_old_session(
        aiohttp_client: ClientFactory) -> None:
    async def fresh(req: web.Request) -> web.Response:
        session = await new_session(req)
        session["bad"] = {1, 2}  # not serializable: the save fails
        return web.Response(text="in")

    manager, _ = make_manager()
    client = await aiohttp_client(app_with(manager, fresh=fresh))
    await client.get("/count")
    assert (await client.get("/fresh")).status == 500
    assert await (await client.get("/peek")).text() == "{'n': 1}"


async def test_a_slow_id_rotation_does_not_undo_a_logout(aiohttp_client: ClientFactory) -> None:
    rotating, go = asyncio.Event(), asyncio.Event()

    async def rotate(req: web.Request) -> web.Response:
        session = await get_session(req)
        await session.regenerate()  # periodic rotation, "switch organisation"
        rotating.set()
        await go.wait()
        return web.Response(text="rotated")

    manager, _ = make_manager()
    client = await aiohttp_client(app_with(manager, rotate=rotate, logout=logout))
    await client.get("/count")
    pending = asyncio.ensure_future(client.get("/rotate"))
    await rotating.wait()
    assert (await client.get("/logout")).status == 200
    go.set()
    late = await pending
    # the rotated id is not handed out, and the cookie is left to the logout (which
    # deleted it): deleting it here could undo another request's move of the session
    assert raw_set_cookies(late) == []
    assert await (await client.get("/peek")).text() == "{}"  # still logged out


@pytest.mark.parametrize("failure", ["finalizer-error", "finalizer-http", "unserializable"])
async def test_a_failure_while_a_stream_is_prepared_is_a_well_framed_503(
        aiohttp_client: ClientFactory, failure: str, caplog: pytest.LogCaptureFixture) -> None:
    import datetime

    import aiohttp

    from aiosessmgr.web import add_finalizer

    manager, driver = make_manager()

    async def fail() -> None:
        if failure == "finalizer-http":
            raise web.HTTPForbidden(text="nope")
        raise ValueError("a bug in a finalizer")

    async def stream(req: web.Request) -> web.StreamResponse:
        session = await get_session(req)
        session["n"] = 1
        if failure == "unserializable":
            session["day"] = datetime.date(2026, 1, 1)  # not in the accepted set
        else:
            add_finalizer(req, fail)
        response = web.StreamResponse()
        await response.prepare(req)
        await response.write(b"body")
        return response

    client = await cast(Any, aiohttp_client)(app_with(manager, stream=stream),
                                             connector=aiohttp.TCPConnector(limit=1))
    with caplog.at_level(logging.ERROR, logger="aiosessmgr"):
        response = await client.get("/stream")
        assert response.status == 503 and await response.read() == b"body"
    assert "streamed response could not be saved" in caplog.text
    assert driver.calls["compare_and_set"] == 0 and driver.calls["write"] == 0  # nothing saved
    # the same keep-alive connection is still in step
    assert (await client.get("/count")).status == 200


async def test_a_finalizer_runs_at_prepare_even_before_the_session_is_loaded(
        aiohttp_client: ClientFactory) -> None:
    from aiosessmgr.web import add_finalizer

    manager, _ = make_manager()
    order: list[str] = []

    async def stream(req: web.Request) -> web.StreamResponse:
        async def load_and_set() -> None:
            order.append("finalizer")
            (await get_session(req))["from_finalizer"] = True

        add_finalizer(req, load_and_set)
        response = web.StreamResponse()
        await response.prepare(req)
        order.append("prepared")
        await response.write(b"body")
        return response

    client = await cast(Any, aiohttp_client)(app_with(manager, stream=stream))
    response = await client.get("/stream")
    assert order == ["finalizer", "prepared"]
    assert set_cookie(response) is not None  # the record it saved is reachable
    assert await (await client.get("/peek")).text() == "{'from_finalizer': True}"


# -- regenerate() meeting a logout in another tab ------------------------------------------


async def test_regenerate_after_a_logout_elsewhere_revives_nothing_and_leaves_the_cookie(
        aiohttp_client: ClientFactory) -> None:
    manager = SessionManager({"lottery": (0, 1)})
    release, loaded = asyncio.Event(), asyncio.Event()

    async def login(request: web.Request) -> web.Response:
        (await get_session(request))["user"] = "alice"
        return web.Response(text="in")

    async def rotate(request: web.Request) -> web.Response:
        session = await get_session(request)  # loaded before the logout ...
        assert session.get("user") == "alice"
        loaded.set()
        await release.wait()
        await session.regenerate()  # ... moved after it ("switch organisation")
        return web.Response(text="rotated")

    async def logout(request: web.Request) -> web.Response:
        await (await get_session(request)).invalidate()
        return web.Response(text="out")

    app = web.Application()
    app.router.add_get("/login", login)
    app.router.add_get("/rotate", rotate)
    app.router.add_get("/logout", logout)
    setup(app, manager)
    client = await aiohttp_client(app)
    sid = (await client.get("/login")).cookies[COOKIE].value
    slow = asyncio.ensure_future(client.get("/rotate", headers={"Cookie": f"{COOKIE}={sid}"}))
    await asyncio.wait_for(loaded.wait(), 10)
    out = await client.get("/logout", headers={"Cookie": f"{COOKIE}={sid}"})
    assert out.status == 200
    release.set()
    response = await slow
    assert response.status == 200
    assert "Set-Cookie" not in response.headers  # no new id; the logout decided the cookie
    assert len(manager.get_driver()) == 0  # type: ignore[arg-type]  # nothing revived


async def test_a_session_over_max_record_size_fails_its_request_and_keeps_the_record(
        aiohttp_client: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    manager = SessionManager({"lottery": (0, 1), "max_record_size": 4096})

    async def put(request: web.Request) -> web.Response:
        (await get_session(request))["note"] = request.query["note"]
        return web.Response(text="saved")

    app = web.Application()
    app.router.add_get("/put", put)
    setup(app, manager)
    client = await aiohttp_client(app)
    ok = await client.get("/put", params={"note": "short"})
    sid = ok.cookies[COOKIE].value
    before = await manager.get_driver().read(sid)
    with caplog.at_level(logging.ERROR):
        big = await client.get("/put", params={"note": "x" * 5000})
    # the handler stored more than allowed: a programming error, named in the log
    assert big.status == 500 and "Set-Cookie" not in big.headers
    assert any("over max_record_size (4,096 bytes)" in (r.exc_text or r.getMessage())
               or (r.exc_info and "max_record_size" in str(r.exc_info[1]))
               for r in caplog.records)
    assert await manager.get_driver().read(sid) == before


# -- responses that carry the cookie are not for shared caches -----------------------------


async def test_responses_that_set_or_delete_the_cookie_are_private(
        aiohttp_client: ClientFactory) -> None:
    async def own(req: web.Request) -> web.Response:
        (await get_session(req))["n"] = 1
        return web.Response(text="mine", headers={"Cache-Control": req.query["cc"]})

    async def login_redirect(req: web.Request) -> web.Response:
        session = await get_session(req)
        session["user"] = "alice"
        await session.regenerate()
        raise web.HTTPFound("/peek")

    async def stream(req: web.Request) -> web.StreamResponse:
        (await get_session(req))["streamed"] = True
        response = web.StreamResponse()
        await response.prepare(req)
        await response.write(b"body")
        return response

    manager, _ = make_manager()
    client = await aiohttp_client(app_with(manager, own=own, logout=logout,
                                           login=login_redirect, stream=stream))
    first = await client.get("/count")
    assert first.headers["Set-Cookie"] and first.headers["Cache-Control"] == "private"
    again = await client.get("/count")  # same id, no Set-Cookie: nothing to protect
    assert "Set-Cookie" not in again.headers and "Cache-Control" not in again.headers
    assert again.headers["Vary"] == "Cookie"  # the body still depends on the cookie
    assert "Cache-Control" not in (await client.get("/ignore")).headers
    moved = await client.get("/login", allow_redirects=False)
    assert moved.status == 302 and moved.headers["Cache-Control"] == "private"
    client.session.cookie_jar.clear()
    streamed = await client.get("/stream")  # a new session, its cookie set at prepare()
    assert streamed.headers["Set-Cookie"] and streamed.headers["Cache-Control"] == "private"
    gone = await client.get("/logout")
    assert "Max-Age=0" in gone.headers["Set-Cookie"]
    assert gone.headers["Cache-Control"] == "private"
    client.session.cookie_jar.clear()
    for cc in ("no-store", "public, max-age=60"):  # the handler's own choice stands
        response = await client.get("/own", params={"cc": cc})
        assert response.headers["Set-Cookie"] and response.headers["Cache-Control"] == cc
        client.session.cookie_jar.clear()


async def test_new_session_after_regenerate_destroys_the_record_it_was_loaded_from(
        aiohttp_client: ClientFactory) -> None:
    async def switch(req: web.Request) -> web.Response:
        session = await get_session(req)
        await session.regenerate()  # a move still pending ...
        fresh = await new_session(req)  # ... then the handler starts over
        fresh["started"] = "over"
        return web.Response(text="ok")

    manager, driver = make_manager()
    client = await aiohttp_client(app_with(manager, switch=switch))
    sid = (await client.get("/count")).cookies[COOKIE].value
    assert (await client.get("/switch")).status == 200
    assert await driver.read(sid) is None  # the pre-login id cannot be replayed
    assert await (await client.get("/peek")).text() == "{'started': 'over'}"


async def test_a_store_class_that_overrides_save_is_saved_on_read_only_requests(
        aiohttp_client: ClientFactory) -> None:
    # the middleware skips save() for an unchanged session only when save() is ours: a
    # subclass's own save() (an audit hook, a stamp) still runs on every request
    calls: list[str] = []

    class Audited(Session):
        async def save(self) -> None:
            calls.append(self.id)
            await super().save()

    driver = CountingDriver()
    manager = SessionManager({"default": "counted",
                              "drivers": {"counted": {"driver": "counting", "lifetime": 5}},
                              "lottery": (0, 1)}, store_class=Audited)
    manager.extend("counting", lambda cfg: driver)
    client = await aiohttp_client(app_with(manager))
    await client.get("/count")
    for _ in range(3):
        assert (await client.get("/peek")).status == 200
    assert len(calls) == 4
