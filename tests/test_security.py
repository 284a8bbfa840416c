"""Encryption at rest, key rotation, timeouts, fixation and hardened cookies."""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aiosessmgr import (
    ConfigError,
    CookieConfig,
    SessionEvents,
    SessionManager,
    get_session,
    setup,
)
from aiosessmgr.drivers.base import VERSION_SIZE

from .conftest import FakeClock, record_events

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]
KEY = base64.b64encode(b"n" * 32).decode()
OLD = base64.b64encode(b"o" * 32).decode()
COOKIE = "aiosessmgr_session"


def encrypted(key: str = KEY, previous: tuple[str, ...] = (), **extra: Any) -> SessionManager:
    return SessionManager({"encryption": {"enabled": True, "key": key,
                                          "previous_keys": list(previous)},
                           "lottery": (0, 1), **extra})


async def test_store_holds_no_plaintext() -> None:
    manager = encrypted()
    s = await manager.driver()
    s.put({"email": "ada@example.test", "role": "administrator", "blob": b"RAWBYTES"})
    await s.save()
    record = await manager.get_driver().read(s.id)
    assert record is not None
    for needle in (b"ada@example.test", b"administrator", b"RAWBYTES", b"email", b"role"):
        assert needle not in record
    assert (await manager.load(s.id)).get("email") == "ada@example.test"


async def served_under_another_id(manager: SessionManager,
                                  caplog: pytest.LogCaptureFixture) -> str:
    """Put one session's stored record under another's id and load it: that session must
    start afresh with one WARNING, whose message is returned."""
    driver = manager.get_driver()
    victim = await manager.driver()
    victim.put("role", "admin")
    await victim.save()
    other = await manager.driver()
    other.put("role", "guest")
    await other.save()
    stolen = await driver.read(victim.id)
    assert stolen is not None
    await driver.write(other.id, stolen, 60)
    caplog.clear()
    loaded = await manager.load(other.id)
    assert loaded.new and loaded.all() == {}
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    return caplog.records[0].getMessage()


async def test_ciphertext_swapped_between_sessions_is_rejected(
        caplog: pytest.LogCaptureFixture) -> None:
    assert "does not verify" in await served_under_another_id(encrypted(), caplog)


async def test_a_plain_record_served_under_another_id_is_refused(
        caplog: pytest.LogCaptureFixture) -> None:
    # without encryption nothing secret binds a record to its id, but a store or a Redis
    # connection out of step that answers with another session's record must not hand
    # that session's data over: the record carries a tag of its id
    message = await served_under_another_id(SessionManager({"lottery": (0, 1)}), caplog)
    assert "another session id" in message


async def test_an_untagged_plain_record_of_0_1_is_rewritten_with_its_tag() -> None:
    manager = SessionManager({"lottery": (0, 1)})
    driver = manager.get_driver()
    s = await manager.driver()
    s.put("user", "alice")
    await s.save()
    record = await driver.read(s.id)
    assert record is not None and record[VERSION_SIZE:VERSION_SIZE + 1] == b"\x03"
    untagged = record[:VERSION_SIZE] + b"\x00" + record[VERSION_SIZE + 9:]
    await driver.write(s.id, untagged, 60)
    loaded = await manager.load(s.id)
    assert loaded.get("user") == "alice" and loaded.modified  # a read-only request rewrites
    await loaded.save()
    rewritten = await driver.read(s.id)
    assert rewritten is not None and rewritten[VERSION_SIZE:VERSION_SIZE + 1] == b"\x03"


async def test_tampered_byte_anywhere_gives_fresh_session(
        caplog: pytest.LogCaptureFixture) -> None:
    manager = encrypted()
    driver = manager.get_driver()
    s = await manager.driver()
    s.put("user", 1)
    await s.save()
    record = await driver.read(s.id)
    assert record is not None
    # the version prefix is not covered (it only steers compare-and-set); everything else is
    for i in range(VERSION_SIZE, len(record)):
        tampered = bytearray(record)
        tampered[i] ^= 0x80
        await driver.write(s.id, bytes(tampered), 60)
        caplog.clear()
        loaded = await manager.load(s.id)
        assert loaded.new and loaded.all() == {}, i
        assert len(caplog.records) == 1 and caplog.records[0].levelname == "WARNING"


async def test_key_rotation_reads_old_and_rewrites_with_new() -> None:
    old_manager = encrypted(OLD)
    s = await old_manager.driver()
    s.put("user", 7)
    await s.save()
    record = await old_manager.get_driver().read(s.id)
    assert record is not None

    rotated = encrypted(KEY, previous=(OLD,))
    driver = rotated.get_driver()
    await driver.write(s.id, record, 60)
    loaded = await rotated.load(s.id)
    assert loaded.get("user") == 7 and loaded.modified  # to be re-encrypted
    await loaded.save()
    rewritten = await driver.read(s.id)
    assert rewritten is not None and rewritten != record
    # the new key alone now reads it: it was re-encrypted
    only_new = encrypted(KEY)
    await only_new.get_driver().write(s.id, rewritten, 60)
    assert (await only_new.load(s.id)).get("user") == 7
    # and a key that was dropped cannot
    await only_new.get_driver().write(s.id, record, 60)
    assert (await only_new.load(s.id)).new


async def test_records_of_0_1_are_read_and_rewritten_under_a_derived_key() -> None:
    # 0.1 encrypted with the configured key itself (``0x01``); 0.2 derives a key per salt
    # (HKDF-SHA256) so no key nears NIST SP 800-38D's 2**32 random-nonce encryptions
    manager = encrypted()
    driver = manager.get_driver()
    s = await manager.driver()
    s.put("user", 7)
    await s.save()
    record = await driver.read(s.id)
    assert record is not None and record[VERSION_SIZE:VERSION_SIZE + 1] == b"\x02"
    key = base64.b64decode(KEY)
    body = AESGCM(HKDF(algorithm=SHA256(), length=32, salt=record[13:29],
                       info=b"aiosessmgr record key v2" + record[9:13]).derive(key)
                  ).decrypt(record[29:41], record[41:], s.id.encode())
    nonce = secrets.token_bytes(12)
    legacy = (record[:VERSION_SIZE] + b"\x01" + record[9:13] + nonce
              + AESGCM(key).encrypt(nonce, body, s.id.encode()))
    await driver.write(s.id, legacy, 60)
    loaded = await manager.load(s.id)
    assert loaded.get("user") == 7 and loaded.modified  # to be re-encrypted
    await loaded.save()
    rewritten = await driver.read(s.id)
    assert rewritten is not None and rewritten[VERSION_SIZE:VERSION_SIZE + 1] == b"\x02"
    assert (await manager.load(s.id)).get("user") == 7


@pytest.mark.parametrize(
    ("cookie", "ok"),
    [
        pytest.param({"name": "__Host-s", "secure": True}, True, id="host-ok"),
        pytest.param({"name": "__Host-s", "secure": False}, False, id="host-insecure"),
        pytest.param({"name": "__Host-s", "secure": True, "path": "/app"}, False,
                     id="host-path"),
        pytest.param({"name": "__Host-s", "secure": True, "domain": "x.test"}, False,
                     id="host-domain"),
        pytest.param({"name": "__Secure-s", "secure": False}, False, id="secure-prefix"),
        pytest.param({"partitioned": True, "secure": True}, True, id="partitioned"),
        pytest.param({"partitioned": True}, False, id="partitioned-insecure"),
    ],
)
def test_cookie_prefix_rules(cookie: dict[str, Any], ok: bool) -> None:
    if ok:
        CookieConfig.from_dict(cookie)
    else:
        with pytest.raises(ConfigError):
            CookieConfig.from_dict(cookie)


async def counter(request: web.Request) -> web.Response:
    session = await get_session(request)
    return web.Response(text=str(session.increment("n")))


def app_for(manager: SessionManager) -> web.Application:
    async def login(request: web.Request) -> web.Response:
        session = await get_session(request)
        await session.regenerate()
        session["user"] = "ada"
        return web.Response(text="in")

    async def logout(request: web.Request) -> web.Response:
        await (await get_session(request)).invalidate()
        return web.Response(text="out")

    async def whoami(request: web.Request) -> web.Response:
        session = await get_session(request)
        return web.Response(text=str(session.get("user")))

    app = web.Application()
    app.router.add_get("/", counter)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/whoami", whoami)
    setup(app, manager)
    return app


def cookie_value(client: Client) -> str:
    return client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value


async def test_replayed_ids_after_login_and_logout_are_dead(
        aiohttp_client: ClientFactory) -> None:
    manager = SessionManager({"lottery": (0, 1)})
    client = await aiohttp_client(app_for(manager))
    await client.get("/")
    anonymous_id = cookie_value(client)
    await client.post("/login")
    logged_in_id = cookie_value(client)
    assert logged_in_id != anonymous_id
    assert await (await client.get("/whoami")).text() == "ada"
    # an attacker who planted or saw the pre-login id gets nothing: its record is gone
    assert await manager.get_driver().read(anonymous_id) is None
    replay = await client.get("/", cookies={COOKIE: anonymous_id})
    assert await replay.text() == "1"  # a fresh session, not the visitor's (n was 1)
    assert cookie_value(client) not in (anonymous_id, logged_in_id)
    await client.post("/logout", cookies={COOKIE: logged_in_id})
    assert await manager.get_driver().read(logged_in_id) is None
    replay = await client.get("/whoami", cookies={COOKIE: logged_in_id})
    assert await replay.text() == "None"


async def test_absolute_lifetime_ends_an_active_session(aiohttp_client: ClientFactory,
                                                        clock: FakeClock) -> None:
    manager = SessionManager({"lifetime": 30, "absolute_lifetime": 60, "lottery": (0, 1)},
                             clock=clock)
    client = await aiohttp_client(app_for(manager))
    assert await (await client.get("/")).text() == "1"
    first_id = cookie_value(client)
    for minute in range(1, 6):  # active every 10 minutes: the idle timeout never hits
        clock.advance(600)
        assert await (await client.get("/")).text() == str(minute + 1)
    clock.advance(601)  # now 60 min 1 s after creation
    assert await (await client.get("/")).text() == "1"
    assert cookie_value(client) != first_id
    assert await manager.get_driver().read(first_id) is None


async def test_rolling_cookie_with_expire_on_close_false(aiohttp_client: ClientFactory) -> None:
    import time

    from .conftest import FakeClock

    clock = FakeClock(time.time())
    manager = SessionManager({"lifetime": 30, "cookie": {"expire_on_close": False},
                              "lottery": (0, 1)}, clock=clock)
    client = await aiohttp_client(app_for(manager))
    for advance, sent in [(0, True), (60, False), (120, True), (60, False), (120, True)]:
        # re-sent every lifetime / 10 (180 s), so the browser's expiry rolls with the server's
        clock.advance(advance)
        response = await client.get("/")
        assert ("Set-Cookie" in response.headers) is sent, advance
        if sent:
            cookies: SimpleCookie = SimpleCookie()
            cookies.load(response.headers["Set-Cookie"])
            assert cookies[COOKIE]["max-age"] == str(30 * 60)


async def test_tampered_stored_payload_through_middleware(
        aiohttp_client: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    manager = encrypted()
    client = await aiohttp_client(app_for(manager))
    await client.get("/")
    sid = cookie_value(client)
    await manager.get_driver().write(sid, secrets.token_bytes(80), 60)
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        response = await client.get("/")
    assert response.status == 200 and await response.text() == "1"
    assert any(r.levelname == "WARNING" for r in caplog.records)


async def test_absolute_lifetime_restarts_at_login_not_at_regenerate(clock: FakeClock) -> None:
    """docs/configuration.md: login() restarts the absolute lifetime (a login starts a new
    session in all but the data); a bare regenerate() does not. The end is one EXPIRED
    event and no DESTROYED (docs/events.md)."""
    manager = SessionManager({"lifetime": 120, "absolute_lifetime": 60, "lottery": (0, 1)},
                             clock=clock)
    events = record_events(manager, SessionEvents.EXPIRED, SessionEvents.DESTROYED)
    anonymous = await manager.driver()
    anonymous.put("n", 1)
    await anonymous.save()
    clock.advance(50 * 60)
    session = await manager.load(anonymous.id)
    await session.login("ada")  # minute 50 of 60
    await session.save()
    logged_in = session.id
    clock.advance(20 * 60)  # minute 70 since creation, 20 since the login
    session = await manager.load(logged_in)
    assert session.id == logged_in and session.get("n") == 1
    await session.regenerate()  # does not restart the count
    await session.save()
    moved = session.id
    clock.advance(41 * 60)  # 61 minutes since the login
    events.clear()
    session = await manager.load(moved)
    assert session.id != moved and session.get("n") is None
    assert events == [(SessionEvents.EXPIRED, moved)]
    assert await manager.get_driver().read(moved) is None
    await manager.close()


async def test_regenerate_destroy_false_keeps_the_old_record_unless_logged_in() -> None:
    """docs/security.md: regenerate(destroy=False) keeps the old record by the app's
    choice, except for a logged-in session, whose copy would escape end_user_sessions."""
    manager = SessionManager({"lottery": (0, 1)})
    session = await manager.driver()
    session.put("n", 1)
    await session.save()
    anonymous = session.id
    await session.regenerate(destroy=False)
    await session.save()
    assert await manager.get_driver().read(anonymous) is not None
    await session.login("ada")
    await session.save()
    logged_in = session.id
    session = await manager.load(logged_in)
    await session.regenerate(destroy=False)
    await session.save()
    assert session.id != logged_in
    assert await manager.get_driver().read(logged_in) is None
    assert [s.handle for s in await manager.user_sessions("ada")] == [session.handle]
    await manager.close()
