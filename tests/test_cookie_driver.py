"""The ``cookie`` driver: client-side sessions sealed in the browser's cookies.

Over a real aiohttp server, with a hand-kept cookie jar (:class:`Jar`) so every test
sees exactly what the response set and decides exactly what the next request sends.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.fernet import Fernet

from aiosessmgr import (
    ConfigError,
    SessionError,
    SessionManager,
    SessionTooLarge,
    get_session,
    setup,
)
from aiosessmgr.drivers.cookie import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_SIZE, MAX_CHUNKS

from .conftest import FakeClock

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[..., Awaitable[Client]]
NAME = "aiosessmgr_session"
KEY = base64.b64encode(b"k" * 32).decode()
OTHER_KEY = base64.b64encode(b"o" * 32).decode()


def config(key: str = KEY, previous: tuple[str, ...] = (), name: str = NAME,
           lifetime: float = 1, **options: Any) -> dict[str, Any]:
    return {"default": "c", "lottery": (0, 100),
            "drivers": {"c": {"driver": "cookie", "lifetime": lifetime, **options}},
            "cookie": {"name": name},
            "encryption": {"key": key, "previous_keys": list(previous)}}


class Jar:
    """What a browser keeps: name -> value, applying each Set-Cookie header."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    def header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def take(self, response: aiohttp.ClientResponse) -> list[str]:
        """Apply the response's Set-Cookie headers; return the names they set or deleted."""
        names = []
        for raw in response.headers.getall("Set-Cookie", []):
            jar: SimpleCookie = SimpleCookie()
            jar.load(raw)
            for name, morsel in jar.items():
                names.append(name)
                if morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return names


def app_of(manager: SessionManager) -> web.Application:
    app = web.Application()

    async def put(request: web.Request) -> web.Response:
        session = await get_session(request)
        for key, value in request.query.items():
            session[key] = value
        session.increment("n")
        return web.Response(text="ok")

    async def show(request: web.Request) -> web.Response:
        session = await get_session(request)
        return web.json_response({"data": dict(session), "new": session.new})

    async def big(request: web.Request) -> web.Response:
        session = await get_session(request)
        session["blob"] = base64.urlsafe_b64encode(os.urandom(int(request.query["n"]))).decode()
        try:
            await session.save()
        except SessionTooLarge as exc:  # a 5xx saves nothing: the old cookies stand
            return web.Response(status=500, text=str(exc))
        return web.Response(text="ok")

    async def logout(request: web.Request) -> web.Response:
        session = await get_session(request)
        await session.invalidate()
        return web.Response(text="bye")

    async def login(request: web.Request) -> web.Response:
        session = await get_session(request)
        await session.login(request.query["user"])
        return web.Response(text="in")

    app.router.add_get("/put", put)
    app.router.add_get("/show", show)
    app.router.add_get("/big", big)
    app.router.add_get("/logout", logout)
    app.router.add_get("/login", login)
    setup(app, manager)
    return app


class Browser:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.jar = Jar()
        self.set: list[str] = []

    async def get(self, path: str, **params: str) -> aiohttp.ClientResponse:
        headers = {"Cookie": self.jar.header()} if self.jar.cookies else {}
        response = await self.client.get(path, params=params, headers=headers)
        await response.read()
        self.set = self.jar.take(response)
        return response

    async def show(self) -> dict[str, Any]:
        response = await self.get("/show")
        assert response.status == 200
        result: dict[str, Any] = await response.json()
        return result


async def browser(aiohttp_client: ClientFactory, manager: SessionManager) -> Browser:
    client = await aiohttp_client(app_of(manager), cookie_jar=aiohttp.DummyCookieJar())
    return Browser(client)


# -- configuration ------------------------------------------------------------------------------


def test_the_cookie_driver_needs_the_encryption_key() -> None:
    with pytest.raises(ConfigError, match="encryption section's key"):
        SessionManager({"default": "c", "drivers": {"c": {"driver": "cookie"}}})


@pytest.mark.parametrize(("options", "message"), [
    ({"max_size": 10}, "max_size must be a whole number"),
    ({"chunk_size": 5000}, "at most 4096"),
    ({"max_size": 8183}, "at most 8,182 bytes"),  # aiohttp would refuse the Cookie header
    ({"chunk_size": "big"}, "chunk_size must be a whole number"),
    ({"path": "/tmp"}, "max_size"),  # an unknown option names the valid ones
])
def test_bad_options_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SessionManager(config(**options))


def test_the_defaults_fit_one_browser_cookie_and_an_8k_header_line() -> None:
    assert DEFAULT_CHUNK_SIZE <= 4096 - 96  # room for browsers that count attributes too
    assert DEFAULT_MAX_SIZE <= 8192 - 2048


async def test_outside_a_request_saving_is_a_clear_error() -> None:
    manager = SessionManager(config())
    session = await manager.driver()
    session["x"] = 1
    with pytest.raises(SessionError, match="only inside a request"):
        await session.save()
    await manager.close()


# -- round trip -----------------------------------------------------------------------------------


async def test_round_trip_keeps_data_and_reads_cost_no_write(
        aiohttp_client: ClientFactory) -> None:
    b = await browser(aiohttp_client, SessionManager(config()))
    await b.get("/put", x="1", y="ü")
    assert b.set == [NAME]
    assert await b.show() == {"data": {"x": "1", "y": "ü", "n": 1}, "new": False}
    assert b.set == []  # a read-only request sends no cookie back
    await b.get("/put", x="2")
    assert (await b.show())["data"] == {"x": "2", "y": "ü", "n": 2}


async def test_the_value_is_opaque_and_the_name_is_bound(aiohttp_client: ClientFactory) -> None:
    b = await browser(aiohttp_client, SessionManager(config()))
    await b.get("/put", secret="visible-if-not-encrypted")
    value = b.jar.cookies[NAME]
    assert "visible" not in value
    assert "visible" not in base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode(
        "latin-1")
    # the same value under another cookie name does not verify (the name is the AAD)
    other = await browser(aiohttp_client, SessionManager(config(name="other_session")))
    other.jar.cookies["other_session"] = value
    assert (await other.show())["new"] is True


async def test_every_tampered_byte_is_a_fresh_session_and_one_warning(
        aiohttp_client: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    b = await browser(aiohttp_client, SessionManager(config()))
    await b.get("/put", x="1")
    value = b.jar.cookies[NAME]
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    assert len(raw) > 100
    for i in range(len(raw)):
        forged = bytearray(raw)
        forged[i] ^= 0x01
        b.jar.cookies[NAME] = base64.urlsafe_b64encode(bytes(forged)).rstrip(b"=").decode()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="aiosessmgr"):
            shown = await b.show()
        assert shown == {"data": {}, "new": True}, i
        # the first byte names the format: changed, the value is not ours at all (INFO, as
        # any other system's value); every other byte changed does not verify (WARNING)
        level = logging.INFO if i == 0 else logging.WARNING
        logged = [r for r in caplog.records if r.name == "aiosessmgr"]
        assert [r.levelno for r in logged] == [level], (i, [r.getMessage() for r in logged])
        assert value[:20] not in logged[0].getMessage()  # the value is never logged


@pytest.mark.parametrize("forged", [
    "", "not base64!", "AAAA", "2.AAAA", "99.AAAA", "1.AAAA", "x.AAAA", "=" * 10,
    "\u00e9t\u00e9",
    # aiohttp-session's EncryptedCookieStorage value: a Fernet token, padded and unpadded
    Fernet(Fernet.generate_key()).encrypt(b'{"session": {}}').decode(),
    Fernet(Fernet.generate_key()).encrypt(b'{"session": {}}').decode().rstrip("="),
])
async def test_malformed_values_are_a_fresh_session(aiohttp_client: ClientFactory,
                                                    caplog: pytest.LogCaptureFixture,
                                                    forged: str) -> None:
    b = await browser(aiohttp_client, SessionManager(config()))
    b.jar.cookies[NAME] = forged
    b.jar.cookies[f"{NAME}.1"] = "AAAA"
    with caplog.at_level(logging.INFO, logger="aiosessmgr"):
        assert await b.show() == {"data": {}, "new": True}
    # not of our shape: one INFO line (docs/client-side.md), no WARNING, never the value
    ours = [r for r in caplog.records if r.name.startswith("aiosessmgr")]
    assert [r.levelno for r in ours] == [logging.INFO], [r.getMessage() for r in ours]
    assert not forged or forged not in ours[0].getMessage()
    await b.get("/put", x="1")  # and the next write gives a working session
    assert (await b.show())["data"] == {"x": "1", "n": 1}


# -- chunks ---------------------------------------------------------------------------------------


async def test_a_large_record_is_split_and_stale_chunks_are_deleted(
        aiohttp_client: ClientFactory) -> None:
    b = await browser(aiohttp_client, SessionManager(config(chunk_size=1000)))
    assert (await b.get("/big", n="1800")).status == 200
    assert sorted(b.jar.cookies) == [NAME, f"{NAME}.1", f"{NAME}.2", f"{NAME}.3"]
    assert b.jar.cookies[NAME].startswith("4.")
    for name, value in b.jar.cookies.items():
        assert len(name) + 1 + len(value) <= 1000
    assert len((await b.show())["data"]["blob"]) == 2400
    assert (await b.get("/big", n="800")).status == 200  # two chunks now
    assert sorted(b.jar.cookies) == [NAME, f"{NAME}.1"]
    assert {f"{NAME}.2", f"{NAME}.3"} <= set(b.set)  # deleted by this response
    assert len((await b.show())["data"]["blob"]) == 1068
    assert (await b.get("/big", n="100")).status == 200
    assert sorted(b.jar.cookies) == [NAME]
    assert "." not in b.jar.cookies[NAME]


async def test_the_default_sizes_give_two_chunks_at_most(aiohttp_client: ClientFactory) -> None:
    b = await browser(aiohttp_client, SessionManager(config()))
    assert (await b.get("/big", n="2000")).status == 200
    assert sorted(b.jar.cookies) == [NAME]
    assert (await b.get("/big", n="3300")).status == 200
    assert sorted(b.jar.cookies) == [NAME, f"{NAME}.1"]
    assert len(b.jar.header()) <= DEFAULT_MAX_SIZE
    assert len((await b.show())["data"]["blob"]) == 4400
    assert (await b.get("/big", n="3500")).status == 500  # over max_size


async def test_a_left_over_chunk_never_corrupts_the_session(
        aiohttp_client: ClientFactory) -> None:
    b = await browser(aiohttp_client, SessionManager(config()))
    await b.get("/put", x="1")
    b.jar.cookies[f"{NAME}.1"] = "AAAA"  # a chunk a longer record left (not deleted)
    assert (await b.show())["data"] == {"x": "1", "n": 1}
    await b.get("/put", x="2")  # the next write deletes it
    assert f"{NAME}.1" not in b.jar.cookies


async def test_a_missing_or_swapped_chunk_is_a_fresh_session(
        aiohttp_client: ClientFactory) -> None:
    b = await browser(aiohttp_client, SessionManager(config(chunk_size=1000)))
    await b.get("/big", n="1800")
    kept = dict(b.jar.cookies)
    del b.jar.cookies[f"{NAME}.2"]
    assert (await b.show())["new"] is True
    b.jar.cookies = dict(kept)
    b.jar.cookies[f"{NAME}.1"], b.jar.cookies[f"{NAME}.2"] = kept[f"{NAME}.2"], kept[f"{NAME}.1"]
    assert (await b.show())["new"] is True
    b.jar.cookies = dict(kept)
    assert (await b.show())["new"] is False


async def test_an_unhandled_over_max_size_is_a_500_and_the_old_cookies_stand(
        aiohttp_client: ClientFactory) -> None:
    b = await browser(aiohttp_client, SessionManager(config()))
    await b.get("/put", x="1")
    before = dict(b.jar.cookies)
    response = await b.get("/put", x="y" * 5000)
    assert response.status == 500
    assert b.set == [] and b.jar.cookies == before
    assert (await b.show())["data"] == {"x": "1", "n": 1}


async def test_over_max_size_save_raises_and_the_old_cookies_stand(
        aiohttp_client: ClientFactory) -> None:
    b = await browser(aiohttp_client, SessionManager(config()))
    await b.get("/big", n="3000")
    before = dict(b.jar.cookies)
    response = await b.get("/big", n="6000")
    assert response.status == 500
    text = await response.text()
    assert "max_size" in text and f"{DEFAULT_MAX_SIZE:,} bytes" in text
    assert b.set == [] and b.jar.cookies == before
    assert len((await b.show())["data"]["blob"]) == 4000


def test_a_max_size_beyond_the_chunks_read_back_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=f"more than {MAX_CHUNKS} cookies"):
        SessionManager(config(max_size=8000, chunk_size=256))


# -- keys, expiry, what cannot hold client-side ---------------------------------------------------


async def test_rotating_the_key_logs_nobody_out(aiohttp_client: ClientFactory) -> None:
    old = await browser(aiohttp_client, SessionManager(config(key=KEY)))
    await old.get("/put", x="1")
    rotated = await browser(aiohttp_client,
                            SessionManager(config(key=OTHER_KEY, previous=(KEY,))))
    rotated.jar.cookies = dict(old.jar.cookies)
    assert (await rotated.show())["data"] == {"x": "1", "n": 1}
    await rotated.get("/put", x="2")  # re-sealed under the new key
    only_new = await browser(aiohttp_client, SessionManager(config(key=OTHER_KEY)))
    only_new.jar.cookies = dict(rotated.jar.cookies)
    assert (await only_new.show())["data"] == {"x": "2", "n": 2}
    only_new.jar.cookies = dict(old.jar.cookies)  # the old key is gone: a fresh session
    assert (await only_new.show())["new"] is True


async def test_a_copied_cookie_replayed_after_its_lifetime_is_a_fresh_session(
        aiohttp_client: ClientFactory) -> None:
    clock = FakeClock()
    manager = SessionManager(config(lifetime=1), clock=clock)
    b = await browser(aiohttp_client, manager)
    await b.get("/put", x="1")
    copy = dict(b.jar.cookies)
    clock.advance(59)
    assert (await b.show())["data"] == {"x": "1", "n": 1}  # within the idle minute
    clock.advance(2)
    b.jar.cookies = dict(copy)
    assert (await b.show())["new"] is True


async def test_an_active_session_rolls_its_idle_deadline(aiohttp_client: ClientFactory) -> None:
    clock = FakeClock()
    b = await browser(aiohttp_client, SessionManager(config(lifetime=1), clock=clock))
    await b.get("/put", x="1")
    for _ in range(10):  # 10 minutes of a request every 20 s, each read-only
        clock.advance(20)
        assert (await b.show())["data"]["x"] == "1"


async def test_the_absolute_lifetime_holds_however_active(aiohttp_client: ClientFactory) -> None:
    clock = FakeClock()
    cfg = config(lifetime=10)
    cfg["absolute_lifetime"] = 2
    b = await browser(aiohttp_client, SessionManager(cfg, clock=clock))
    await b.get("/put", x="1")
    for _ in range(2):
        clock.advance(50)
        await b.get("/put")
    assert (await b.show())["data"] == {"x": "1", "n": 3}
    clock.advance(50)  # 150 s after its creation, over the absolute 120 s
    assert (await b.show())["new"] is True
    assert NAME in b.set  # and this response deletes it


async def test_logout_deletes_every_chunk_but_a_copy_stays_valid(
        aiohttp_client: ClientFactory) -> None:
    # what cannot hold client-side (README): no server-side invalidation
    b = await browser(aiohttp_client, SessionManager(config()))
    await b.get("/big", n="3000")
    copy = dict(b.jar.cookies)
    assert len(copy) == 2
    await b.get("/logout")
    assert b.jar.cookies == {}
    assert sorted(b.set) == [NAME, f"{NAME}.1"]
    b.jar.cookies = copy
    assert (await b.show())["new"] is False


async def test_concurrent_requests_are_last_response_wins(
        aiohttp_client: ClientFactory) -> None:
    # what cannot hold client-side (README): each response carries its own whole record
    b = await browser(aiohttp_client, SessionManager(config()))
    await b.get("/put", x="0")
    header = {"Cookie": b.jar.header()}
    first, second = await asyncio.gather(
        b.client.get("/put", params={"a": "1"}, headers=header),
        b.client.get("/put", params={"b": "1"}, headers=header))
    for response in (first, second):
        b.jar.take(response)
    data = (await b.show())["data"]
    assert data["n"] == 2  # one increment, not two: the other response's is lost
    assert ("a" in data) != ("b" in data)


async def test_login_binds_but_there_is_no_index(aiohttp_client: ClientFactory) -> None:
    manager = SessionManager(config())
    b = await browser(aiohttp_client, manager)
    await b.get("/put", x="1")
    before = b.jar.cookies[NAME]
    assert (await b.get("/login", user="alice")).status == 200
    assert b.jar.cookies[NAME] != before
    assert (await b.show())["data"] == {"x": "1", "n": 1}
    with pytest.raises(SessionError, match="index"):
        await manager.user_sessions("alice")


async def test_of_duplicate_cookies_the_first_that_verifies_wins(
        aiohttp_client: ClientFactory) -> None:
    # a browser sends two cookies of one name when an older one of another path exists
    b = await browser(aiohttp_client, SessionManager(config()))
    await b.get("/put", x="1")
    good = b.jar.cookies[NAME]
    response = await b.client.get("/show", headers={"Cookie": f"{NAME}=AAAA; {NAME}={good}"})
    assert (await response.json())["data"] == {"x": "1", "n": 1}


async def test_a_streamed_response_carries_the_cookies_and_a_late_change_warns(
        aiohttp_client: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    manager = SessionManager(config())
    app = web.Application()

    async def stream(request: web.Request) -> web.StreamResponse:
        session = await get_session(request)
        session["x"] = "streamed"
        response = web.StreamResponse()
        await response.prepare(request)  # the session is saved and the cookies set here
        await response.write(b"body")
        session["late"] = True  # after the headers went out: cannot reach the browser
        return response

    app.router.add_get("/stream", stream)
    setup(app, manager)
    client = await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar())
    jar = Jar()
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        response = await client.get("/stream")
        assert await response.read() == b"body"
    assert jar.take(response) == [NAME]
    assert any("cannot reach the browser" in r.getMessage() for r in caplog.records)


async def test_tasks_of_the_handler_share_its_session(aiohttp_client: ClientFactory) -> None:
    manager = SessionManager(config())
    app = web.Application()

    async def spawn(request: web.Request) -> web.Response:
        async def work() -> None:
            session = await get_session(request)
            session["from_task"] = 1
        await asyncio.gather(asyncio.create_task(work()), asyncio.create_task(work()))
        return web.Response(text="ok")

    async def show(request: web.Request) -> web.Response:
        return web.json_response(dict(await get_session(request)))

    app.router.add_get("/spawn", spawn)
    app.router.add_get("/show", show)
    setup(app, manager)
    client = await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar())
    jar = Jar()
    jar.take(await client.get("/spawn"))
    response = await client.get("/show", headers={"Cookie": jar.header()})
    assert await response.json() == {"from_task": 1}


# -- what a failed request does (found by an outside tester) --------------------------------------


def failing_app(manager: SessionManager) -> web.Application:
    app = app_of(manager)

    async def logout_then_fail(request: web.Request) -> web.Response:
        session = await get_session(request)
        await session.logout()
        raise RuntimeError("after the logout")

    async def save_then_fail(request: web.Request) -> web.Response:
        session = await get_session(request)
        session.increment("n")
        await session.save()
        return web.Response(status=500, text="failed after saving")

    async def regenerate_then_fail(request: web.Request) -> web.Response:
        session = await get_session(request)
        await session.regenerate()
        session["x"] = "changed"
        raise RuntimeError("a failed login")

    async def stream_then_change(request: web.Request) -> web.StreamResponse:
        session = await get_session(request)
        response = web.StreamResponse()
        await response.prepare(request)
        session["late"] = 1
        await response.write(b"x")
        return response

    app.router.add_get("/logout-fail", logout_then_fail)
    app.router.add_get("/save-fail", save_then_fail)
    app.router.add_get("/regenerate-fail", regenerate_then_fail)
    app.router.add_get("/stream-change", stream_then_change)
    return app


async def failing_browser(aiohttp_client: ClientFactory) -> Browser:
    client = await aiohttp_client(failing_app(SessionManager(config())),
                                  cookie_jar=aiohttp.DummyCookieJar())
    b = Browser(client)
    await b.get("/put", x="1")
    return b


async def test_a_logout_stands_when_the_request_then_fails(
        aiohttp_client: ClientFactory) -> None:
    # as on every driver: invalidate() takes effect at once, whatever happens after it
    b = await failing_browser(aiohttp_client)
    assert (await b.get("/logout-fail")).status == 500
    assert b.set == [NAME] and b.jar.cookies == {}
    assert (await b.show())["new"] is True


async def test_an_explicit_save_stands_when_the_response_is_a_5xx(
        aiohttp_client: ClientFactory) -> None:
    b = await failing_browser(aiohttp_client)
    assert (await b.get("/save-fail")).status == 500
    assert (await b.show())["data"] == {"x": "1", "n": 2}


async def test_a_failed_login_keeps_the_session(aiohttp_client: ClientFactory) -> None:
    b = await failing_browser(aiohttp_client)
    before = dict(b.jar.cookies)
    assert (await b.get("/regenerate-fail")).status == 500
    assert b.set == [] and b.jar.cookies == before
    assert (await b.show())["data"] == {"x": "1", "n": 1}


async def test_a_change_after_a_streamed_response_warns_with_a_cookie_too(
        aiohttp_client: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    b = await failing_browser(aiohttp_client)
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        assert (await b.get("/stream-change")).status == 200
    assert b.set == []
    assert [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()]
    assert "late" not in (await b.show())["data"]


async def test_only_numbered_chunks_are_ours_to_delete(aiohttp_client: ClientFactory) -> None:
    b = await browser(aiohttp_client, SessionManager(config()))
    await b.get("/put", x="1")
    for own in (f"{NAME}.theme", f"{NAME}.01", f"{NAME}.-1", f"{NAME}.16", f"{NAME}.0"):
        b.jar.cookies[own] = "kept"
    b.jar.cookies[f"{NAME}.3"] = "left-over"
    await b.get("/put", x="2")
    assert b.set == [NAME, f"{NAME}.3"]  # the stale chunk only


def test_max_sessions_cannot_be_enforced_client_side() -> None:
    cfg = config()
    cfg["users"] = {"max_sessions": 2}
    with pytest.raises(ConfigError, match="max_sessions cannot be enforced"):
        SessionManager(cfg)


def test_no_record_is_remembered_across_requests() -> None:
    # one request's jar is never the base of another's save (each request is its own store)
    manager = SessionManager(config())
    commits = manager.runtime().commits
    commits.remember("x" * 43, b"v" * 8, b"record")
    assert commits.base("x" * 43, _loaded()) == (b"w" * 8, None)


def _loaded() -> Any:
    from aiosessmgr.commit import Save

    return Save(b"w" * 8, 0.0, lambda: (b"", b""), lambda raw: None, lambda raw: None)
