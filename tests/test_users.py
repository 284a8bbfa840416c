"""The sessions of a user, beyond the driver contract: user ids, device info, costs, errors.

The contract suite (aiosessmgr.testing, run per driver in tests/drivers/test_contract.py)
checks listing, ending and the races on every driver; this module checks what is the same
on all of them: validation, what a login records from a real aiohttp request, which store
operations a request costs with and without a user, and a driver without the index.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from aiosessmgr import (
    ConfigError,
    MemoryDriver,
    SessionDriver,
    SessionError,
    SessionEvents,
    SessionManager,
    UserSession,
    get_session,
    setup,
)
from aiosessmgr.ids import is_valid_handle
from aiosessmgr.users import MAX_USER_AGENT, MAX_USER_ID, user_key

from .conftest import FakeClock, record_events
from .test_web import ClientFactory


class Counted(MemoryDriver):
    """The memory driver (with its index), counting every store operation."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.calls: Counter[str] = Counter()

    async def read(self, session_id: str) -> bytes | None:
        self.calls["read"] += 1
        return await super().read(session_id)

    async def read_touch(self, session_id: str, ttl: int) -> bytes | None:
        self.calls["read_touch"] += 1
        return await super().read_touch(session_id, ttl)

    async def compare_and_set(self, session_id: str, payload: bytes, ttl: int,
                              expected: bytes | None) -> bool:
        self.calls["compare_and_set"] += 1
        return await super().compare_and_set(session_id, payload, ttl, expected)

    async def index_user_session(self, user_id: str, handle: str, session_id: str,
                                 ttl: int, expected: str | None = None) -> bool:
        self.calls["index_user_session"] += 1
        return await super().index_user_session(user_id, handle, session_id, ttl, expected)


class NoIndex(SessionDriver):
    """A custom driver with the required methods only."""

    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}

    async def read(self, session_id: str) -> bytes | None:
        return self.records.get(session_id)

    async def write(self, session_id: str, payload: bytes, ttl: int) -> None:
        self.records[session_id] = payload

    async def destroy(self, session_id: str) -> None:
        self.records.pop(session_id, None)

    async def gc(self, max_lifetime: int) -> int:
        return 0


def _manager(driver: SessionDriver, clock: FakeClock | None = None,
             users: Mapping[str, Any] | None = None) -> SessionManager:
    config: dict[str, Any] = {"default": "d", "drivers": {"d": {"driver": "d", "lifetime": 10}},
                              "lottery": (0, 1)}
    if users is not None:
        config["users"] = users
    manager = SessionManager(config) if clock is None else SessionManager(config, clock=clock)
    manager.extend("d", lambda cfg: driver)
    return manager


@pytest.fixture
async def counted(clock: FakeClock) -> AsyncIterator[tuple[SessionManager, Counted]]:
    driver = Counted(clock)
    manager = _manager(driver, clock, {"touch_interval": 60})
    yield manager, driver
    await manager.close()


# -- user ids -------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [True, False, None, 1.5, b"42", ["a"], object()])
def test_a_user_id_is_a_str_or_an_int(value: Any) -> None:
    with pytest.raises(TypeError, match="user_id must be a str or an int"):
        user_key(value)


@pytest.mark.parametrize("value", ["", "x" * (MAX_USER_ID + 1), "a\x00b", "a\nb", "\x1b[31m"])
def test_a_user_id_is_short_printable_text(value: str) -> None:
    with pytest.raises(ValueError, match="printable characters"):
        user_key(value)


def test_user_ids_as_stored() -> None:
    assert user_key(42) == "42" and user_key(-7) == "-7" and user_key("ann") == "ann"
    assert user_key("x" * MAX_USER_ID) == "x" * MAX_USER_ID
    assert user_key("ü 🙂") == "ü 🙂"


async def test_a_bad_user_id_fails_before_anything_is_written(
        counted: tuple[SessionManager, Counted]) -> None:
    manager, driver = counted
    session = await manager.driver()
    with pytest.raises(TypeError):
        await session.login(True)
    with pytest.raises(ValueError):
        await manager.user_sessions("")
    assert session.user_id is None and not session.stored
    assert driver.calls["compare_and_set"] == 0


# -- config ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("users", "message"), [
    ({"max_sessions": 0}, "users.max_sessions must be a whole number >= 1 or None"),
    ({"max_sessions": True}, "users.max_sessions"),
    ({"max_sessions": 2.5}, "users.max_sessions"),
    ({"record_ip": "yes"}, "users.record_ip must be true or false"),
    ({"record_user_agent": 1}, "users.record_user_agent must be true or false"),
    ({"touch_interval": -1}, "users.touch_interval must be 0 or more seconds"),
    ({"touch_interval": float("inf")}, "users.touch_interval must be finite"),
    ({"max_session": 3}, "did you mean 'max_sessions'"),
    ([], "users must be a mapping"),
])
def test_bad_users_config_is_a_config_error(users: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SessionManager({"users": users})


# -- a driver without the index -------------------------------------------------------------

async def test_a_driver_without_the_index_says_what_to_implement() -> None:
    manager = _manager(NoIndex())
    try:
        session = await manager.driver()
        await session.login("ann")  # the binding works without an index
        await session.save()
        assert session.user_id == "ann" and is_valid_handle(session.handle)
        assert (await manager.load(session.id)).user_id == "ann"
        for call in (manager.user_sessions("ann"), manager.end_user_sessions("ann"),
                     manager.end_user_session("ann", session.handle)):
            with pytest.raises(SessionError, match=r"implement index_user_session\(\), "
                               r"user_session_index\(\) and unindex_user_sessions\(\)"):
                await call
        await session.logout()
        assert session.user_id is None
    finally:
        await manager.close()


async def test_max_sessions_without_the_index_logs_in_anyway() -> None:
    manager = _manager(NoIndex(), users={"max_sessions": 1})
    try:
        first, second = await manager.driver(), await manager.driver()
        await first.login("ann")
        await first.save()
        await second.login("ann")  # no index: the cap cannot be known, the login stands
        await second.save()
        assert (await manager.load(first.id)).user_id == "ann"
    finally:
        await manager.close()


# -- the handle -----------------------------------------------------------------------------

async def test_the_handle_is_stable_random_and_new_after_logout(
        counted: tuple[SessionManager, Counted]) -> None:
    manager, _ = counted
    session = await manager.driver()
    early = session.handle  # an anonymous session has one too, made on first use
    assert is_valid_handle(early) and early not in session.id and session.id not in early
    assert session.handle == early
    await session.login("ann")
    await session.save()
    assert session.handle == early  # the login keeps it: the same device
    await session.regenerate()
    await session.save()
    assert session.handle == early
    assert (await manager.load(session.id)).handle == early
    await session.logout()
    assert session.handle != early
    handles = {(await manager.driver()).handle for _ in range(200)}
    assert len(handles) == 200


async def test_a_handle_alone_stores_nothing(counted: tuple[SessionManager, Counted]) -> None:
    manager, driver = counted
    session = await manager.driver()
    assert session.handle
    await session.save()  # an empty session is never stored, a handle does not change it
    assert not session.stored and driver.calls["compare_and_set"] == 0


# -- what requests cost ---------------------------------------------------------------------

async def test_a_request_without_a_user_costs_one_read(
        counted: tuple[SessionManager, Counted], clock: FakeClock) -> None:
    manager, driver = counted
    session = await manager.driver()
    session.put("cart", [1])
    await session.save()
    driver.calls.clear()
    for _ in range(3):
        clock.advance(100)  # past the touch interval, which only logged-in sessions have
        loaded = await manager.load(session.id)
        assert loaded.get("cart") == [1] and not loaded.modified
        await loaded.save()
    assert driver.calls == Counter({"read_touch": 3})


async def test_a_logged_in_read_refreshes_last_seen_once_per_touch_interval(
        counted: tuple[SessionManager, Counted], clock: FakeClock) -> None:
    manager, driver = counted
    session = await manager.driver()
    await session.login("ann")
    await session.save()
    driver.calls.clear()
    for _ in range(5):
        clock.advance(10)
        loaded = await manager.load(session.id)
        await loaded.save()
    assert driver.calls == Counter({"read_touch": 5})  # within 60 s: reads only
    clock.advance(30)  # 80 s since the login
    loaded = await manager.load(session.id)
    await loaded.save()
    assert driver.calls == Counter({"read_touch": 6, "compare_and_set": 1,
                                    "index_user_session": 1})
    [info] = await manager.user_sessions("ann")
    assert info.last_seen == clock.now
    driver.calls.clear()
    clock.advance(59)
    await (await manager.load(session.id)).save()
    assert driver.calls == Counter({"read_touch": 1})


# -- device info from a real request --------------------------------------------------------

async def _login_over_http(aiohttp_client: ClientFactory, manager: SessionManager,
                           headers: Mapping[str, str]) -> UserSession:
    async def login(request: web.Request) -> web.Response:
        session = await get_session(request)
        await session.login(request.query["user"])
        return web.Response(text=session.handle)

    app = web.Application()
    app.router.add_post("/login", login)
    setup(app, manager)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    response = await client.post("/login?user=ann", headers=headers)
    assert response.status == 200
    handle = await response.text()
    [info] = await manager.user_sessions("ann")
    assert info.handle == handle
    return info


async def test_a_login_keeps_the_user_agent_and_not_the_ip(
        aiohttp_client: ClientFactory) -> None:
    manager = SessionManager({"lottery": (0, 1)})
    info = await _login_over_http(aiohttp_client, manager,
                                  {"User-Agent": "<script>alert(1)</script>" + "x" * 600})
    assert info.user_agent == ("<script>alert(1)</script>" + "x" * 600)[:MAX_USER_AGENT]
    assert info.ip is None  # record_ip is off by default: an IP is personal data


async def test_record_ip_keeps_request_remote(aiohttp_client: ClientFactory) -> None:
    manager = SessionManager({"lottery": (0, 1), "users": {"record_ip": True,
                                                           "record_user_agent": False}})
    info = await _login_over_http(aiohttp_client, manager, {"User-Agent": "Firefox"})
    assert info.ip == "127.0.0.1" and info.user_agent is None


async def test_a_second_login_replaces_the_device_info() -> None:
    manager = SessionManager({"users": {"record_ip": True}})
    try:
        session = await manager.driver()
        session.request = _FakeRequest("Old/1", "192.0.2.1")
        await session.login("ann")
        await session.save()
        session.request = _FakeRequest(None, None)
        await session.login("ann")
        await session.save()
        [info] = await manager.user_sessions("ann")
        assert (info.user_agent, info.ip) == (None, None)
    finally:
        await manager.close()


async def test_a_login_as_another_user_flushes_the_data() -> None:
    # Django's login() does the same: what one user put in the session is not the next's
    manager = SessionManager({})
    try:
        session = await manager.driver()
        await session.login("ann")
        session.put("cart", ["ann's"])
        session.flash("status", "hi ann")
        await session.save()
        old_handle = session.handle
        await session.login("ann")  # the same user again: the data stays
        assert session.get("cart") == ["ann's"]
        await session.login("bob")
        assert session.all() == {} and session.handle != old_handle
        await session.save()
        assert (await manager.load(session.id)).all() == {}
        assert await manager.user_sessions("ann") == []
        assert [info.handle for info in await manager.user_sessions("bob")] == [session.handle]
    finally:
        await manager.close()


class _FakeRequest:
    def __init__(self, agent: str | None, remote: str | None) -> None:
        self.headers = {} if agent is None else {"User-Agent": agent}
        self.remote = remote


# -- records and events ---------------------------------------------------------------------

@pytest.mark.parametrize("meta", [{"u": 5}, {"u": "ann", "h": ["x"]}, {"l": "yesterday"},
                                  {"v": float("nan")}, {"a": b"bytes"}, {"i": 127}])
async def test_a_record_with_a_malformed_binding_is_a_fresh_session(
        meta: dict[str, Any]) -> None:
    manager = SessionManager()
    try:
        driver = manager.get_driver()
        session = await manager.driver()
        session.put("k", 1)
        await session.save()
        from aiosessmgr import record

        raw = await driver.read(session.id)
        assert raw is not None
        data, stored, _ = record.decode(manager.codec, session.id, raw)
        _, forged = record.encode(manager.codec, session.id, data, {**stored, **meta})
        await driver.write(session.id, forged, 60)
        loaded = await manager.load(session.id)
        assert loaded.new and loaded.user_id is None
    finally:
        await manager.close()


async def test_login_regenerates_and_ending_fires_destroyed(
        counted: tuple[SessionManager, Counted]) -> None:
    manager, _ = counted
    seen = record_events(manager, SessionEvents.REGENERATED, SessionEvents.DESTROYED)
    session = await manager.driver()
    session.put("k", 1)
    await session.save()
    old = session.id
    await session.login("ann")
    await session.save()
    await manager.events.drain()
    assert (SessionEvents.REGENERATED, session.id) in seen
    assert (SessionEvents.DESTROYED, old) in seen  # the pre-login record
    seen.clear()
    assert await manager.end_user_sessions("ann") == 1
    await manager.events.drain()
    assert seen == [(SessionEvents.DESTROYED, session.id)]


@pytest.mark.parametrize("driver", ["memory", "file"])
async def test_racing_logins_keep_the_cap_most_recent_and_the_next_login_restores_it(
        driver: str, tmp_path: Path) -> None:
    """docs/users.md: a login ends only sessions less recent than itself, so logins racing
    each other never leave fewer than max_sessions alive, may leave more (the file driver's
    threads interleave them), and the next login brings the user back to the cap, keeping
    itself."""
    entry = {"driver": driver, **({"path": str(tmp_path)} if driver == "file" else {})}
    manager = SessionManager({"drivers": {driver: entry}, "users": {"max_sessions": 2},
                              "lottery": (0, 1)})

    async def login() -> str:
        session = await manager.driver()
        await session.login("ada")
        await session.save()
        return session.handle

    burst = set(await asyncio.gather(*(login() for _ in range(8))))
    alive = {entry.handle for entry in await manager.user_sessions("ada")}
    assert len(alive) >= 2 and alive <= burst
    last = await login()
    alive = {entry.handle for entry in await manager.user_sessions("ada")}
    assert len(alive) == 2 and last in alive
    await manager.close()
