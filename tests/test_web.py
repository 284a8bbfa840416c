"""The aiohttp glue through a real server and real cookies."""

from __future__ import annotations

import ast
import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from aiosessmgr import (
    DriverError,
    MemoryDriver,
    SessionManager,
    get_session,
    new_session,
    new_session_id,
    setup,
)

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]
COOKIE = "aiosessmgr_session"


class CountingDriver(MemoryDriver):
    """The memory driver, counting every store operation."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.fail: Exception | None = None
        self.gc_delay = 0.0

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
        await asyncio.sleep(self.gc_delay)
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

    app = web.Application()
    app.router.add_get("/both", both)
    setup(app, web_manager)
    setup(app, api_manager)
    client = await aiohttp_client(app)
    first = await client.get("/both")
    assert await first.text() == "1 10"
    assert set_cookie(first, "web_session") is not None
    assert set_cookie(first, "api_session") is not None
    assert set_cookie(first, "web_session").value != set_cookie(first, "api_session").value
    assert await (await client.get("/both")).text() == "2 20"


async def test_lottery_gc_runs_after_the_response(aiohttp_client: ClientFactory) -> None:
    manager, driver = make_manager(lottery=(1, 1))
    driver.gc_delay = 0.3
    client = await aiohttp_client(app_with(manager))
    response = await client.get("/count")
    assert await response.text() == "1"
    assert driver.calls["gc_finished"] == 0  # the response did not wait for it
    await asyncio.sleep(0.05)
    assert driver.calls["gc"] == 1
    await client.get("/count")  # one run at a time per driver
    await asyncio.sleep(0.05)
    assert driver.calls["gc"] == 1
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
    await asyncio.sleep(0.05)
    await manager.wait_gc()
    assert driver.calls["gc"] == 1
    assert any("garbage collection" in r.getMessage() for r in caplog.records)


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


async def test_listener_error_does_not_break_request(aiohttp_client: ClientFactory) -> None:
    manager, _ = make_manager()

    def broken(event: Any) -> None:
        raise RuntimeError("listener bug")

    from aiosessmgr import SessionEvents

    for event in SessionEvents:
        manager.on(event, broken)
    client = await aiohttp_client(app_with(manager))
    assert await (await client.get("/count")).text() == "1"
    assert await (await client.get("/count")).text() == "2"


async def test_concurrent_requests_on_one_session_lose_nothing(
        aiohttp_client: ClientFactory) -> None:
    async def slow_set(request: web.Request) -> web.Response:
        session = await get_session(request)
        await asyncio.sleep(0.005)  # read, wait, then write: the racy pattern
        session[f"k{request.query['i']}"] = True
        session.increment("n")
        return web.Response(text="ok")

    manager, _ = make_manager()
    client = await aiohttp_client(app_with(manager, slow_set=slow_set))
    await client.get("/count")
    responses = await asyncio.gather(*(client.get(f"/slow_set?i={i}") for i in range(100)))
    assert all(r.status == 200 for r in responses)
    data = ast.literal_eval(await (await client.get("/peek")).text())
    assert data["n"] == 101
    assert len(data) == 101  # n plus 100 distinct keys


async def test_get_session_without_middleware_is_a_clear_error(
        aiohttp_client: ClientFactory) -> None:
    app = web.Application()
    app.router.add_get("/count", counter)
    client = await aiohttp_client(app)
    response = await client.get("/count")
    assert response.status == 500  # a programming error, reported clearly in the log


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
    manager, driver = make_manager(gc_interval=0.02)
    await aiohttp_client(app_with(manager))
    for _ in range(100):
        if driver.calls["gc"] >= 2:
            break
        await asyncio.sleep(0.01)
    assert driver.calls["gc"] >= 2
