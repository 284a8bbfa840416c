"""Hostile input never becomes a 5xx: generated cookies and stored payloads, per driver."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiosessmgr import AesGcmCipher, Secret, SessionManager, get_session, new_session_id, setup
from aiosessmgr.drivers.base import VERSION_SIZE

from .redis_server import RedisServer

KEY = base64.b64encode(b"f" * 32).decode()
WRONG_KEY = base64.b64encode(b"w" * 32).decode()
COOKIE = "aiosessmgr_session"
FUZZ = settings(max_examples=2000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def driver_entry(kind: str, tmp: Path, redis_url: str | None) -> dict[str, Any]:
    if kind == "memory":
        return {"driver": "memory"}
    if kind == "file":
        return {"driver": "file", "path": str(tmp)}
    return {"driver": "redis", "url": redis_url, "prefix": f"fz{uuid.uuid4().hex[:8]}:"}


class Harness:
    """One app on one driver, served by a real aiohttp server on its own loop."""

    def __init__(self, kind: str, tmp: Path, key: str, redis_url: str | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.tmp = tmp
        self.manager = SessionManager({
            "default": kind, "drivers": {kind: driver_entry(kind, tmp, redis_url)},
            "encryption": {"enabled": True, "key": key}, "lottery": (0, 1)})

        async def handler(request: web.Request) -> web.Response:
            session = await get_session(request)
            session.put("fuzzed", True)
            return web.Response(text="new" if session.new else "loaded")

        app = web.Application()
        app.router.add_get("/", handler)
        setup(app, self.manager)

        async def start() -> TestClient[web.Request, web.Application]:
            client = TestClient(TestServer(app))
            await client.start_server()
            return client

        self.client = self.loop.run_until_complete(start())

    def get(self, cookie: str) -> tuple[int, str]:
        async def go() -> tuple[int, str]:
            self.client.session.cookie_jar.clear()
            response = await self.client.get("/", headers={"Cookie": f"{COOKIE}={cookie}"})
            return response.status, await response.text()

        return self.loop.run_until_complete(go())

    def store(self, session_id: str, payload: bytes) -> None:
        driver = self.manager.get_driver()
        self.loop.run_until_complete(driver.write(session_id, payload, 60))

    def valid_record(self, manager: SessionManager | None = None) -> tuple[str, bytes]:
        async def go() -> tuple[str, bytes]:
            source = manager or self.manager
            session = await source.driver()
            session.put({"user": 1, "cart": ["a", "b"], "flash": "hi"})
            await session.save()
            record = await source.get_driver().read(session.id)
            assert record is not None
            return session.id, record

        return self.loop.run_until_complete(go())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture(params=["memory", "file", "redis"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    redis_url = None
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        redis_url = server.url
    h = Harness(request.param, tmp_path / "sessions", KEY, redis_url)
    yield h
    h.close()
    outside = {p.name for p in tmp_path.iterdir()}
    assert outside <= {"sessions"}, f"files created outside the session directory: {outside}"


cookie_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=";,\\\""),
    max_size=300,
) | st.sampled_from(["", "../" * 20, "/etc/passwd", "..\\..\\x", "a" * 4096,
                     new_session_id()[:-1] + ".", "%00" * 10])


@FUZZ
@given(value=cookie_text)
def test_generated_cookies(harness: Harness, value: str) -> None:
    status, body = harness.get(value)
    assert status == 200 and body == "new"


def flip(record: bytes, index: int, bit: int) -> bytes:
    data = bytearray(record)
    data[index % len(data)] ^= 1 << bit
    return bytes(data)


@st.composite
def hostile_payloads(draw: st.DrawFn, valid: bytes, foreign: bytes, session_id: str) -> bytes:
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "wrong-key", "shape"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "truncated":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == "flipped":
        index = draw(st.integers(VERSION_SIZE, len(valid) - 1))
        return flip(valid, index, draw(st.integers(0, 7)))
    if kind == "wrong-key":
        return foreign
    leaf = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.text(max_size=10) | st.binary(max_size=10))
    shapes = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                          max_leaves=10)
    # mostly near-misses of the real {"d": ..., "m": ...} shape, some anything at all
    value = draw(st.fixed_dictionaries({"d": shapes, "m": shapes}) | st.fixed_dictionaries(
        {"d": st.dictionaries(st.text(max_size=3), shapes, max_size=3),
         "m": st.dictionaries(st.sampled_from(["c", "t", "k", "f"]), shapes)}) | shapes)
    # well encrypted under the right key and id, so it reaches the decoder's shape checks
    body = msgpack.packb(value, use_bin_type=True)
    return b"v" * VERSION_SIZE + AesGcmCipher(Secret(base64.b64decode(KEY))).encrypt(
        body, session_id.encode())


@FUZZ
@given(data=st.data())
def test_generated_stored_payloads(harness: Harness, data: st.DataObject) -> None:
    session_id, valid = harness.valid_record()
    other = SessionManager({"encryption": {"enabled": True, "key": WRONG_KEY}})
    _, foreign = harness.valid_record(other)
    payload = data.draw(hostile_payloads(valid, foreign, session_id))
    harness.store(session_id, payload)
    status, _ = harness.get(session_id)
    assert status == 200
