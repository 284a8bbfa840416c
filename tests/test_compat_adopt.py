"""aiosessmgr.compat.adopt_sessions: aiohttp-session's own cookies and records, adopted.

Every old session here is made by aiohttp-session itself: an app running
``aiohttp_session.setup(app, storage)`` logs a user in, and the cookie it set (and, for
RedisStorage, the record it wrote in a real Redis) goes, in the same cookie jar, to a
second app running aiosessmgr with ``adopt_sessions``, as a browser would after a deploy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp_session
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from aiohttp_session import AbstractStorage, Session, SimpleCookieStorage
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from aiohttp_session.redis_storage import RedisStorage
from redis.asyncio import Redis

import aiosessmgr
from aiosessmgr import SessionManager, compat, is_valid_session_id

from .redis_server import RedisServer, free_port

# aiohttp-session keys request storage by strings, which aiohttp now warns about
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[..., Awaitable[Client]]
Setup = Callable[[web.Application, SessionManager], None]

#: what the old app's login stores: aiohttp-session's JSON, nested
DATA: dict[str, Any] = {
    "user": "alice",
    "cart": ["book", "pen"],
    "prefs": {"theme": "dark", "sizes": [1, 2.5, None, True], "name": "Zoë ✓"},
    "visits": 3,
}
KINDS = [
    "encrypted",
    "simple",
    "nacl",  # pynacl is in the test extra: its absence is a failure, not a skip
    pytest.param("redis", marks=pytest.mark.redis),
]


ARRIVED = web.AppKey("arrived", asyncio.Event)
GATE = web.AppKey("gate", asyncio.Event)


# -- the old app (aiohttp-session) and the new one (aiosessmgr) --------------------------


def old_app(storage: AbstractStorage) -> web.Application:
    async def login(request: web.Request) -> web.Response:
        session = await aiohttp_session.new_session(request)
        session.update(json.loads(request.query.get("data", json.dumps(DATA))))
        return web.Response(text="logged in")

    app = web.Application()
    app.router.add_get("/login", login)
    aiohttp_session.setup(app, storage)
    return app


def new_app(manager: SessionManager, storage: AbstractStorage, *, order: str = "after",
            prefix: str = "", **options: Any) -> web.Application:
    """The migrated app: ``/`` answers its session's data, id and ``new`` flag as JSON."""

    async def index(request: web.Request) -> web.Response:
        session = await aiosessmgr.get_session(request)
        return web.json_response({"data": session.all(), "id": session.id})

    async def via_compat(request: web.Request) -> web.Response:
        session = await compat.get_session(request)
        return web.json_response({"data": dict(session), "new": session.new})

    async def fail(request: web.Request) -> web.Response:
        await aiosessmgr.get_session(request)
        return web.Response(status=500, text="broken")

    async def redirect(request: web.Request) -> web.Response:
        await aiosessmgr.get_session(request)
        raise web.HTTPFound(f"{prefix}/")

    async def stream(request: web.Request) -> web.StreamResponse:
        await aiosessmgr.get_session(request)
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"streamed")
        return response

    async def logout(request: web.Request) -> web.Response:
        session = await compat.get_session(request)
        session.invalidate()
        return web.Response(text="bye")

    async def wait(request: web.Request) -> web.Response:
        request.app[ARRIVED].set()
        await request.app[GATE].wait()  # arrived; the session is read when the test says
        return await index(request)

    app = web.Application()
    app[ARRIVED], app[GATE] = asyncio.Event(), asyncio.Event()
    for path, handler in {"/": index, "/compat": via_compat, "/fail": fail,
                          "/redirect": redirect, "/stream": stream, "/logout": logout,
                          "/wait": wait}.items():
        app.router.add_get(prefix + path, handler)
    if order == "before":
        compat.adopt_sessions(app, manager, storage, **options)
        aiosessmgr.setup(app, manager)
    else:
        (compat.setup if order == "compat" else aiosessmgr.setup)(app, manager)
        compat.adopt_sessions(app, manager, storage, **options)
    return app


# -- environments: one old storage and one manager per test ------------------------------


@dataclass
class Env:
    storage: AbstractStorage
    manager: SessionManager
    old_name: str
    our_name: str
    redis: Redis | None = None
    loads: list[str] = field(default_factory=list)  # a value per load_session call

    @property
    def same_name(self) -> bool:
        return self.old_name == self.our_name

    async def record_exists(self, identity: str) -> bool:
        assert self.redis is not None
        return bool(await self.redis.exists(f"{self.old_name}_{identity}"))


EnvFactory = Callable[..., Env]


@pytest.fixture
async def envs(request: pytest.FixtureRequest, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[EnvFactory]:
    """``envs(kind, naming)``: a fresh aiohttp-session storage (a unique cookie name, which
    is also RedisStorage's key prefix) and an aiosessmgr manager whose cookie has the same
    name (``naming="same"``) or another (``"different"``); load_session calls are counted."""
    made: list[Env] = []

    def make(kind: str, naming: str = "different", driver: str = "memory",
             cookie: dict[str, Any] | None = None, **params: Any) -> Env:
        old_name = f"OLD_{secrets.token_hex(4)}"
        our_name = old_name if naming == "same" else "app_session"
        redis = None
        storage: AbstractStorage
        if kind == "encrypted":
            storage = EncryptedCookieStorage(os.urandom(32), cookie_name=old_name, **params)
        elif kind == "simple":
            storage = SimpleCookieStorage(cookie_name=old_name, **params)
        elif kind == "nacl":
            from aiohttp_session.nacl_storage import NaClCookieStorage
            storage = NaClCookieStorage(os.urandom(32), cookie_name=old_name, **params)
        else:
            url = params.pop("url", None)
            if url is None:
                server: RedisServer = request.getfixturevalue("redis_server")
                url = server.url
            redis = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            storage = RedisStorage(redis, cookie_name=old_name, **params)
        entry: dict[str, Any] = {"driver": driver, "lifetime": 120}
        if driver == "file":
            entry["path"] = str(tmp_path / "sessions")
        config = {"default": "main", "drivers": {"main": entry},
                  "cookie": {"name": our_name, **(cookie or {})}, "lottery": (0, 100)}
        if driver == "cookie":
            config["encryption"] = {"key": base64.b64encode(os.urandom(32)).decode()}
        manager = SessionManager(config)
        env = Env(storage, manager, old_name, our_name, redis)
        load = storage.load_session

        async def counting(req: web.Request) -> Session:
            env.loads.append(req.cookies.get(old_name, ""))
            return await load(req)

        monkeypatch.setattr(storage, "load_session", counting)
        made.append(env)
        return env

    yield make
    for env in made:
        await env.manager.close()
        if env.redis is not None:
            try:
                keys = [key async for key in env.redis.scan_iter(match=f"{env.old_name}_*")]
                if keys:
                    await env.redis.delete(*keys)
            except Exception:  # the "Redis down" test's client: nothing to clean
                pass
            await env.redis.aclose()


@dataclass
class Browser:
    """One cookie jar shared by a client of each app, as a browser across a deploy."""

    old: Client
    new: Client
    jar: aiohttp.CookieJar

    def cookies(self) -> dict[tuple[str, str], str]:
        """(name, path) -> value of every cookie the jar holds."""
        return {(m.key, m["path"]): m.value for m in self.jar}

    async def login(self, data: dict[str, Any] | None = None) -> str:
        """Log in on the old app; the old cookie's value (its Redis identity, if any)."""
        before = self.cookies()
        response = await self.old.get("/login", params={"data": json.dumps(data or DATA)})
        assert response.status == 200
        values = [v for k, v in self.cookies().items() if k not in before or before[k] != v]
        assert len(values) == 1, self.cookies()
        return values[0]


BrowserFactory = Callable[[web.Application, web.Application], Awaitable[Browser]]


@pytest.fixture
def browser(aiohttp_client: ClientFactory) -> BrowserFactory:
    async def make(old: web.Application, new: web.Application) -> Browser:
        jar = aiohttp.CookieJar(unsafe=True)  # both servers are on 127.0.0.1
        return Browser(await aiohttp_client(old, cookie_jar=jar),
                       await aiohttp_client(new, cookie_jar=jar), jar)

    return make


def set_cookies(response: aiohttp.ClientResponse) -> list[tuple[str, str, str]]:
    """(name, value, max-age) of each Set-Cookie header, in order."""
    found = []
    for header in response.headers.getall("Set-Cookie", []):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        found += [(name, m.value, m["max-age"]) for name, m in jar.items()]
    return found


@pytest.fixture
async def manager() -> AsyncIterator[SessionManager]:
    """A memory manager with its own cookie name, for custom storages made in the test."""
    mgr = SessionManager({"cookie": {"name": "app_session"}, "lottery": (0, 100)})
    yield mgr
    await mgr.close()


async def page(client: Client, path: str = "/", **kwargs: Any) -> dict[str, Any]:
    response = await client.get(path, **kwargs)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


# -- the migration -----------------------------------------------------------------------


@pytest.mark.parametrize("naming", ["same", "different"])
@pytest.mark.parametrize("kind", KINDS)
async def test_old_session_moves_once(kind: str, naming: str, envs: EnvFactory,
                                      browser: BrowserFactory) -> None:
    env = envs(kind, naming)
    b = await browser(old_app(env.storage), new_app(env.manager, env.storage))
    old_value = await b.login()
    if env.redis is not None:
        assert await env.record_exists(old_value)

    response = await b.new.get("/")
    assert response.status == 200
    body = await response.json()
    assert body["data"] == DATA
    headers = set_cookies(response)
    ours = [h for h in headers if h[1] == body["id"]]
    assert [h[0] for h in ours] == [env.our_name]
    if env.same_name:
        # no deletion: our Set-Cookie replaces the old cookie of the same name and scope
        assert headers == ours
    else:
        assert (env.old_name, "", "0") in headers and len(headers) == 2
    # what the browser keeps: our cookie, and no old one
    assert b.cookies() == {(env.our_name, "/"): body["id"]}
    assert is_valid_session_id(body["id"])
    assert await env.manager.get_driver().read(body["id"]) is not None
    if env.redis is not None:
        assert not await env.record_exists(old_value)
    assert env.loads == [old_value]

    # the next request carries our cookie and never touches the old storage
    again = await page(b.new, "/")
    assert again == body
    assert env.loads == [old_value]


@pytest.mark.parametrize("order", ["before", "after", "compat"])
async def test_before_or_after_setup(order: str, envs: EnvFactory,
                                     browser: BrowserFactory) -> None:
    env = envs("encrypted", "same")
    b = await browser(old_app(env.storage), new_app(env.manager, env.storage, order=order))
    await b.login()
    # the compat adapter reports the adopted session as loaded, as aiohttp-session would
    assert await page(b.new, "/compat") == {"data": DATA, "new": False}
    assert await page(b.new, "/compat") == {"data": DATA, "new": False}
    assert len(env.loads) == 1
    b.jar.clear()
    assert await page(b.new, "/compat") == {"data": {}, "new": True}  # a new visitor


async def test_on_the_file_driver(envs: EnvFactory, browser: BrowserFactory) -> None:
    env = envs("encrypted", "same", driver="file")
    b = await browser(old_app(env.storage), new_app(env.manager, env.storage))
    await b.login()
    body = await page(b.new)
    assert body["data"] == DATA
    assert await env.manager.get_driver().read(body["id"]) is not None
    assert await page(b.new) == body and len(env.loads) == 1


@pytest.mark.parametrize("naming", ["same", "different"])
async def test_into_the_cookie_driver(naming: str, envs: EnvFactory,
                                      browser: BrowserFactory) -> None:
    """From one client-side storage to another: the data moves into our sealed cookie."""
    env = envs("encrypted", naming, driver="cookie")
    b = await browser(old_app(env.storage), new_app(env.manager, env.storage))
    old_value = await b.login()
    response = await b.new.get("/")
    body = await response.json()
    assert body["data"] == DATA
    names = {name for name, _ in b.cookies()}
    assert names == {env.our_name}
    assert b.cookies()[(env.our_name, "/")] != old_value
    if not env.same_name:
        assert (env.old_name, "", "0") in set_cookies(response)
    assert await page(b.new) == body and env.loads == [old_value]


@pytest.mark.parametrize("kind", ["encrypted", pytest.param("redis", marks=pytest.mark.redis)])
async def test_same_name_other_scope_deletes_the_old_cookie(
        kind: str, envs: EnvFactory, browser: BrowserFactory) -> None:
    """Our cookie has the old name but another path: two cookies in the browser, so the old
    one is deleted with its own path (and ours, set after it, is left alone)."""
    env = envs(kind, "same", cookie={"path": "/app"})
    b = await browser(old_app(env.storage), new_app(env.manager, env.storage, prefix="/app"))
    old_value = await b.login()
    response = await b.new.get("/app/")
    body = await response.json()
    assert body["data"] == DATA
    assert set_cookies(response) == [(env.old_name, "", "0"), (env.old_name, body["id"], "")]
    assert b.cookies() == {(env.old_name, "/app"): body["id"]}
    assert await page(b.new, "/app/") == body and env.loads == [old_value]


async def test_deletion_carries_the_old_cookie_attributes(
        envs: EnvFactory, aiohttp_client: ClientFactory) -> None:
    env = envs("encrypted", "different", secure=True, samesite="Strict", path="/")
    client = await aiohttp_client(new_app(env.manager, env.storage))
    # a Secure cookie does not come back over http: made by aiohttp-session, sent by hand
    made = web.Response()
    await env.storage.save_session(make_mocked_request("GET", "/"), made,
                                   Session(None, data={"session": DATA}, new=True))
    response = await client.get("/", cookies={env.old_name: made.cookies[env.old_name].value})
    assert (await response.json())["data"] == DATA
    deletion = next(h for h in response.headers.getall("Set-Cookie")
                    if h.startswith(env.old_name))
    assert deletion == (f'{env.old_name}=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; '
                        f"Max-Age=0; Path=/; SameSite=Strict; Secure")


# -- what is not offered to the old storage ----------------------------------------------


@pytest.mark.parametrize("naming", ["same", "different"])
async def test_requests_without_the_old_cookie_skip_the_storage(
        naming: str, envs: EnvFactory, browser: BrowserFactory) -> None:
    env = envs("encrypted", naming)
    b = await browser(old_app(env.storage), new_app(env.manager, env.storage))
    assert (await page(b.new))["data"] == {}
    assert env.loads == []


async def test_an_expired_id_of_ours_is_not_offered(envs: EnvFactory,
                                                    browser: BrowserFactory) -> None:
    env = envs("encrypted", "same")
    b = await browser(old_app(env.storage), new_app(env.manager, env.storage))
    stale = aiosessmgr.new_session_id()  # the shape of our id, no record: expired
    body = await page(b.new, cookies={env.our_name: stale})
    assert body["data"] == {} and body["id"] != stale
    assert env.loads == []


# -- once: replays, concurrency ----------------------------------------------------------


@pytest.mark.redis
async def test_replayed_redis_cookie_finds_nothing(envs: EnvFactory,
                                                   browser: BrowserFactory) -> None:
    env = envs("redis", "same")
    b = await browser(old_app(env.storage), new_app(env.manager, env.storage))
    old_value = await b.login()
    assert (await page(b.new))["data"] == DATA
    b.jar.clear()
    # a copy of the old cookie after adoption: its record is gone, so a fresh session
    assert (await page(b.new, cookies={env.old_name: old_value}))["data"] == {}
    assert env.loads == [old_value, old_value]


async def test_replayed_cookie_storage_cookie_is_adopted_again(
        envs: EnvFactory, browser: BrowserFactory) -> None:
    """Inherent to client-side cookies: a copy stays decodable until the storage's max_age
    (or a new key); each replay is adopted into another new session."""
    env = envs("encrypted", "same")
    b = await browser(old_app(env.storage), new_app(env.manager, env.storage))
    old_value = await b.login()
    first = await page(b.new)
    b.jar.clear()
    replayed = await page(b.new, cookies={env.old_name: old_value})
    assert replayed["data"] == DATA and replayed["id"] != first["id"]


async def test_replay_after_max_age_finds_nothing(envs: EnvFactory, browser: BrowserFactory,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    env = envs("encrypted", "same", max_age=1)
    b = await browser(old_app(env.storage), new_app(env.manager, env.storage))
    old_value = await b.login()
    await asyncio.sleep(2.1)  # Fernet's ttl counts whole seconds
    b.jar.clear()
    with caplog.at_level(logging.WARNING):
        assert (await page(b.new, cookies={env.old_name: old_value}))["data"] == {}
    assert [r.name for r in caplog.records if r.levelno >= logging.WARNING] == ["aiohttp_session"]


@pytest.mark.parametrize("kind", ["encrypted", pytest.param("redis", marks=pytest.mark.redis)])
async def test_two_requests_at_once_with_the_old_cookie(
        kind: str, envs: EnvFactory, browser: BrowserFactory) -> None:
    """Both adopt (no lock across requests): two new sessions with the data, no error; the
    browser keeps the cookie of the response it got last and the other session expires."""
    env = envs(kind, "different")
    b = await browser(old_app(env.storage), new_app(env.manager, env.storage))
    old_value = await b.login()
    b.jar.clear()
    bodies = await asyncio.gather(*(page(b.new, cookies={env.old_name: old_value})
                                    for _ in range(2)))
    assert [body["data"] for body in bodies] == [DATA, DATA]
    assert bodies[0]["id"] != bodies[1]["id"]
    for body in bodies:
        assert await env.manager.get_driver().read(body["id"]) is not None
    if env.redis is not None:
        assert not await env.record_exists(old_value)


@pytest.mark.redis
async def test_a_request_sent_before_the_adoption_reads_after_it(
        envs: EnvFactory, browser: BrowserFactory) -> None:
    """Sent with the old cookie before another request adopted it, but reading the session
    after that one deleted the record: it adopts the same data (not a fresh session that
    could log the browser out if its response comes last). Sent after: a replay, nothing."""
    env = envs("redis", "different")
    app = new_app(env.manager, env.storage)
    b = await browser(old_app(env.storage), app)
    old_value = await b.login()
    b.jar.clear()
    cookies = {env.old_name: old_value}
    early = asyncio.ensure_future(page(b.new, "/wait", cookies=cookies))
    await app[ARRIVED].wait()
    first = await page(b.new, cookies=cookies)
    assert first["data"] == DATA and not await env.record_exists(old_value)
    app[GATE].set()
    second = await early
    assert second["data"] == DATA and second["id"] != first["id"]
    assert env.loads == [old_value, old_value]  # each read Redis itself
    b.jar.clear()
    assert (await page(b.new, cookies=cookies))["data"] == {}  # arrived after: a replay
    assert len(env.loads) == 3


# -- only once the new session is saved --------------------------------------------------


@pytest.mark.parametrize("kind", ["encrypted", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_5xx_keeps_the_old_session(kind: str, envs: EnvFactory,
                                           browser: BrowserFactory) -> None:
    env = envs(kind, "different")
    b = await browser(old_app(env.storage), new_app(env.manager, env.storage))
    old_value = await b.login()
    response = await b.new.get("/fail")
    assert response.status == 500 and set_cookies(response) == []
    if env.redis is not None:
        assert await env.record_exists(old_value)
    assert b.cookies() == {(env.old_name, "/"): old_value}
    # the old session is still there for the next request, which adopts it
    assert (await page(b.new))["data"] == DATA
    assert set(b.cookies()) == {(env.our_name, "/")}
    if env.redis is not None:
        assert not await env.record_exists(old_value)


@pytest.mark.parametrize("path", ["/redirect", "/stream"])
async def test_redirects_and_streams_adopt(path: str, envs: EnvFactory,
                                           browser: BrowserFactory) -> None:
    env = envs("encrypted", "different")
    b = await browser(old_app(env.storage), new_app(env.manager, env.storage))
    await b.login()
    response = await b.new.get(path, allow_redirects=False)
    assert response.status in (200, 302)
    assert (env.old_name, "", "0") in set_cookies(response)
    assert set(b.cookies()) == {(env.our_name, "/")}
    assert (await page(b.new))["data"] == DATA and len(env.loads) == 1


@pytest.mark.parametrize("naming", ["same", "different"])
async def test_logout_on_the_first_request_stays_logged_out(
        naming: str, envs: EnvFactory, browser: BrowserFactory) -> None:
    env = envs("encrypted", naming)
    b = await browser(old_app(env.storage), new_app(env.manager, env.storage))
    await b.login()
    response = await b.new.get("/logout")
    assert await response.text() == "bye"
    assert set_cookies(response) == [(env.old_name, "", "0")]
    assert b.cookies() == {}
    assert (await page(b.new))["data"] == {}


# -- errors ------------------------------------------------------------------------------


async def test_tampered_encrypted_cookie(envs: EnvFactory, browser: BrowserFactory,
                                         caplog: pytest.LogCaptureFixture) -> None:
    env = envs("encrypted", "different")
    b = await browser(old_app(env.storage), new_app(env.manager, env.storage))
    old_value = await b.login()
    tampered = old_value[:-6] + ("A" if old_value[-6] != "A" else "B") + old_value[-5:]
    b.jar.clear()
    with caplog.at_level(logging.WARNING):
        response = await b.new.get("/", cookies={env.old_name: tampered})
        assert response.status == 200 and (await response.json())["data"] == {}
    # aiohttp-session's own warning, one; nothing adopted, and no 500
    assert [r.name for r in caplog.records if r.levelno >= logging.WARNING] == ["aiohttp_session"]


async def test_undecodable_cookie_is_one_warning(envs: EnvFactory, browser: BrowserFactory,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    env = envs("simple", "same")
    b = await browser(old_app(env.storage), new_app(env.manager, env.storage))
    with caplog.at_level(logging.WARNING):
        body = await page(b.new, cookies={env.old_name: "not-json"})
    assert body["data"] == {}
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in warnings] == ["aiosessmgr"]
    assert "could not be decoded" in warnings[0].getMessage()
    assert "not-json" not in warnings[0].getMessage()  # the value is not logged


async def test_old_redis_down_is_a_fresh_session(envs: EnvFactory, browser: BrowserFactory,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    env = envs("redis", "different", url=f"redis://127.0.0.1:{free_port()}/0")
    b = await browser(old_app(env.storage), new_app(env.manager, env.storage))
    with caplog.at_level(logging.WARNING):
        response = await b.new.get("/", cookies={env.old_name: "0" * 32})
        assert response.status == 200 and (await response.json())["data"] == {}
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in warnings] == ["aiosessmgr"]
    assert "storage failed" in warnings[0].getMessage()
    assert set_cookies(response) == []  # nothing saved; the old cookie is not deleted


class SlowStorage(SimpleCookieStorage):
    async def load_session(self, request: web.Request) -> Session:
        await asyncio.sleep(10)
        return await super().load_session(request)


async def test_a_hanging_storage_times_out(manager: SessionManager,
                                           aiohttp_client: ClientFactory,
                                           caplog: pytest.LogCaptureFixture) -> None:
    storage = SlowStorage(cookie_name="OLD")
    client = await aiohttp_client(new_app(manager, storage, timeout=0.05))
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        body = await page(client, cookies={"OLD": json.dumps({"session": DATA})})
    assert body["data"] == {}
    assert "TimeoutError" in caplog.records[-1].getMessage()


async def test_values_the_serializer_refuses_are_dropped(
        manager: SessionManager, aiohttp_client: ClientFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    def decoder(text: str) -> Any:
        data = json.loads(text)
        data["session"]["tags"] = set(data["session"]["tags"])  # a custom decoder's type
        return data

    storage = SimpleCookieStorage(cookie_name="OLD", decoder=decoder)
    client = await aiohttp_client(new_app(manager, storage))
    old = json.dumps({"created": int(time.time()), "session": {"tags": ["a"], **DATA}})
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        body = await page(client, cookies={"OLD": old})
    assert body["data"] == DATA
    assert "dropping key 'tags'" in caplog.records[-1].getMessage()
    assert await page(client) == body


# -- records of other storages -----------------------------------------------------------


class DictStorage(AbstractStorage):
    """A custom server-side storage: records in a dict, keyed by the cookie's value."""

    def __init__(self, cookie_name: str) -> None:
        super().__init__(cookie_name=cookie_name)
        self.records: dict[str, dict[str, Any]] = {}

    async def load_session(self, request: web.Request) -> Session:
        key = self.load_cookie(request)
        record = self.records.get(key or "")
        if record is None:
            return Session(None, data=None, new=True)
        return Session(key, data={"session": record}, new=False)

    async def save_session(self, request: web.Request, response: web.StreamResponse,
                           session: Session) -> None:
        raise NotImplementedError


async def test_custom_storage_with_delete_record(manager: SessionManager,
                                                 aiohttp_client: ClientFactory) -> None:
    storage = DictStorage("OLD")
    storage.records["k1"] = dict(DATA)
    deleted: list[str] = []

    async def delete_record(identity: str) -> None:
        deleted.append(identity)
        del storage.records[identity]

    client = await aiohttp_client(new_app(manager, storage, delete_record=delete_record))
    assert (await page(client, cookies={"OLD": "k1"}))["data"] == DATA
    assert deleted == ["k1"] and storage.records == {}


class MemcachedStorage(DictStorage):
    """Shaped like aiohttp-session's MemcachedStorage (aiomcache is not installed here):
    its records live in ``conn`` under ``cookie_name + "_" + identity`` as bytes."""

    __module__ = "aiohttp_session.memcached_storage"

    def __init__(self, cookie_name: str) -> None:
        super().__init__(cookie_name)
        self.conn = self

    async def delete(self, key: bytes) -> bool:
        identity = key.decode().removeprefix(self.cookie_name + "_")
        return self.records.pop(identity, None) is not None


async def test_memcached_record_is_deleted(manager: SessionManager,
                                           aiohttp_client: ClientFactory) -> None:
    storage = MemcachedStorage("OLD")
    storage.records["k1"] = dict(DATA)
    client = await aiohttp_client(new_app(manager, storage))
    assert (await page(client, cookies={"OLD": "k1"}))["data"] == DATA
    assert storage.records == {}


@pytest.mark.redis
async def test_aiohttp_session_own_invalidate_would_not_delete(envs: EnvFactory) -> None:
    """Why the record is deleted with DEL: aiohttp-session's own route (invalidate, then
    save_session) writes ``{}`` back under the key, with no expiry when max_age is None."""
    env = envs("redis")
    assert env.redis is not None
    await env.redis.set(f"{env.old_name}_k1", json.dumps({"session": DATA}))
    request = make_mocked_request("GET", "/", headers={"Cookie": f"{env.old_name}=k1"})
    session = await env.storage.load_session(request)
    session.invalidate()
    await env.storage.save_session(request, web.Response(), session)
    assert await env.redis.get(f"{env.old_name}_k1") == b"{}"
    assert await env.redis.ttl(f"{env.old_name}_k1") == -1  # never expires


def test_wrong_arguments(manager: SessionManager) -> None:
    app = web.Application()
    with pytest.raises(TypeError, match="not the aiohttp-session storage SimpleCookieStorage"):
        compat.adopt_sessions(app, SimpleCookieStorage(), manager)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes an aiohttp-session storage"):
        compat.adopt_sessions(app, manager, manager)  # type: ignore[arg-type]


async def test_an_old_session_too_large_for_the_new_store_starts_afresh(
        aiohttp_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    # found by an outside tester: every request was a 500, and the old session stayed
    # adoptable, so the visitor was locked out until it expired
    storage = SimpleCookieStorage(cookie_name="OLD_SESSION")
    manager = SessionManager({"default": "c", "drivers": {"c": {"driver": "cookie"}},
                              "encryption": {"key": "c" * 64}})
    app = web.Application()

    async def show(request: web.Request) -> web.Response:
        session = await aiosessmgr.get_session(request)
        session["visits"] = session.get("visits", 0) + 1
        return web.json_response(dict(session))

    app.router.add_get("/", show)
    aiosessmgr.setup(app, manager)
    compat.adopt_sessions(app, manager, storage)
    client = await aiohttp_client(app)
    old = json.dumps({"created": int(time.time()), "session": {"blob": "x" * 5000}})
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        response = await client.get("/", headers={"Cookie": f"OLD_SESSION={json.dumps(old)}"})
    assert response.status == 200
    assert any("too large" in r.getMessage() for r in caplog.records)
    deleted = [h for h in response.headers.getall("Set-Cookie") if h.startswith("OLD_SESSION=")]
    assert deleted and "Max-Age=0" in deleted[0]
    again = await client.get("/")  # with the cookie of ours that response set
    assert again.status == 200
    assert await again.json() == {"visits": 2}  # afresh: the old data did not fit


async def test_an_expired_cookie_driver_cookie_is_never_offered_to_the_old_storage(
        aiohttp_client: Any) -> None:
    # found by an outside tester: a sealed value of ours is not shaped like an id, so an
    # expired one went to the old storage (a Redis lookup of our cookie, a WARNING)
    calls: list[str] = []

    class Counting(SimpleCookieStorage):
        async def load_session(self, request: web.Request) -> Session:
            calls.append(request.path)
            return await super().load_session(request)

    now = [1_000_000.0]
    manager = SessionManager({"default": "c", "drivers": {"c": {"driver": "cookie",
                                                                "lifetime": 1}},
                              "cookie": {"name": "AIOHTTP_SESSION"},
                              "encryption": {"key": "c" * 64}}, clock=lambda: now[0])
    app = web.Application()

    async def show(request: web.Request) -> web.Response:
        session = await aiosessmgr.get_session(request)
        session["visits"] = session.get("visits", 0) + 1
        return web.json_response(dict(session))

    app.router.add_get("/", show)
    aiosessmgr.setup(app, manager)
    compat.adopt_sessions(app, manager, Counting())
    client = await aiohttp_client(app)
    assert (await (await client.get("/")).json()) == {"visits": 1}
    now[0] += 3600  # our cookie's sealed deadline has passed
    assert (await (await client.get("/")).json()) == {"visits": 1}
    assert calls == []
