"""No log line, error message or exception text that reaches logs shows a whole session id.

Every failure path of the session layer, the middleware, the manager and events is driven
here against a driver that puts whole ids into its own exception messages (as an OSError
naming a file, or a redis-py error naming a key, would); the file and Redis drivers' own
paths are driven in tests/drivers/. Records are formatted as a handler would format them,
tracebacks included, and searched for any run of characters long enough to be an id.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from aiosessmgr import (
    DriverError,
    MemoryDriver,
    SessionEventInfo,
    SessionEvents,
    SessionManager,
    get_session,
    new_session_id,
    setup,
)
from aiosessmgr.log import abbreviate, logger, redact

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]
COOKIE = "aiosessmgr_session"
#: an id-shaped run: 43+ URL-safe characters with capitals and lower case (snake_case
#: test names in tracebacks are not ids)
WHOLE_ID = re.compile(r"(?=[A-Za-z0-9_-]*[A-Z])(?=[A-Za-z0-9_-]*[a-z])[A-Za-z0-9_-]{43,}")


class Leaky(MemoryDriver):
    """The memory driver, failing on demand with whole ids in its messages."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: set[str] = set()

    def _maybe_fail(self, op: str, session_id: str) -> None:
        if op in self.failing:
            try:  # an error of the store, chained as drivers chain them
                raise OSError(24, "Too many open files", f"/var/sessions/{session_id}")
            except OSError as exc:
                raise DriverError(f"{op} of /var/sessions/{session_id} failed: {exc}") from exc

    async def read(self, session_id: str) -> bytes | None:
        self._maybe_fail("read", session_id)
        return await super().read(session_id)

    async def read_touch(self, session_id: str, ttl: int) -> bytes | None:
        self._maybe_fail("read", session_id)
        return await super().read_touch(session_id, ttl)

    async def compare_and_set(self, session_id: str, payload: bytes, ttl: int,
                              expected: bytes | None) -> bool:
        self._maybe_fail("write", session_id)
        return await super().compare_and_set(session_id, payload, ttl, expected)

    async def release_lock(self, session_id: str, token: str) -> None:
        self._maybe_fail("release", session_id)
        await super().release_lock(session_id, token)

    async def gc(self, max_lifetime: int) -> int:
        if "gc" in self.failing:
            raise RuntimeError(f"gc stopped at {new_session_id()}")
        return await super().gc(max_lifetime)

    async def close(self) -> None:
        if "close" in self.failing:
            raise OSError(5, "I/O error", f"/var/sessions/{new_session_id()}.lock")


def leaky_manager() -> tuple[SessionManager, Leaky]:
    driver = Leaky()
    manager = SessionManager({"default": "leaky", "lottery": (0, 1),
                              "drivers": {"leaky": {"driver": "leaky", "lifetime": 5}}})
    manager.extend("leaky", lambda cfg: driver)
    return manager, driver


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """Every aiosessmgr record of the test, formatted with its traceback; checked at the end.

    Yields the list the texts are collected in, so a test can also check what was logged.
    """
    texts: list[str] = []
    formatted: list[str] = []
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            texts.append(formatter.format(record))
            # as JSON formatters do: the traceback formatted from exc_info, not exc_text
            if record.exc_info:
                formatted.append(formatter.formatException(record.exc_info))

    handler = Collect(level=logging.DEBUG)
    watched = [logger, logging.getLogger("aiohttp.server"), logging.getLogger("aiohttp.web")]
    levels = [one.level for one in watched]
    for one in watched:
        one.addHandler(handler)
        one.setLevel(logging.DEBUG)
    try:
        yield texts
    finally:
        for one, level in zip(watched, levels, strict=True):
            one.removeHandler(handler)
            one.setLevel(level)
    leaked = [t for t in texts + formatted if WHOLE_ID.search(t)]
    assert leaked == [], "whole session ids reached the log"
    assert texts, "the test logged nothing: it drove no failure path"


def test_redact_abbreviates_every_id_shaped_run() -> None:
    sid = new_session_id()
    assert redact(f"open /var/s/{sid}.tmp1: EMFILE") == \
        f"open /var/s/{abbreviate(sid)}.tmp1: EMFILE"
    assert redact(f"key app:{{{sid}}}:lock") == f"key app:{{{abbreviate(sid)}}}:lock"
    assert redact(f"sess_{sid}") == f"sess_{sid[:1]}…"  # a longer run is shortened too
    for kept in ("short_words and a-42-char-RUN-" + "x" * 12,  # one short of an id
                 "in test_failures_of_the_session_layer_log_no_whole_id",  # no capitals
                 "NO_LOWER_CASE_AT_ALL_IN_THIS_VERY_LONG_CONSTANT_NAME"):
        assert redact(kept) == kept


def test_a_message_with_args_and_a_traceback_is_redacted(logged: list[str]) -> None:
    sid = new_session_id()
    try:
        raise DriverError(f"cannot open /var/sessions/{sid}")
    except DriverError:
        logger.exception("a failure for %s", sid)
    logger.warning("plain %s and %(x)s", sid)  # arguments that do not fit: never raises
    logger.info("stack of %s", sid, stack_info=True)
    assert f"a failure for {abbreviate(sid)}" in logged[0]
    assert abbreviate(sid) in logged[1] and abbreviate(sid) in logged[2]
    assert f"cannot open /var/sessions/{abbreviate(sid)}" in logged[0]


def test_the_filter_is_installed_once() -> None:
    import importlib

    import aiosessmgr.log

    importlib.reload(aiosessmgr.log)
    assert sum(type(f).__name__ == "RedactSessionIds" for f in logger.filters) == 1


def test_session_event_info_repr_abbreviates_ids() -> None:
    sid, old = new_session_id(), new_session_id()
    text = repr(SessionEventInfo(SessionEvents.REGENERATED, sid, old_id=old))
    assert sid not in text and old not in text and abbreviate(sid) in text


async def test_failures_of_the_session_layer_log_no_whole_id(logged: list[str]) -> None:
    manager, driver = leaky_manager()
    s = await manager.driver()
    s["user"] = "alice"
    await s.save()
    # an unreadable record: WARNING
    await driver.write(s.id, b"12345678\x00garbage", 60)
    assert (await manager.load(s.id)).new
    # a record ended under a request: INFO
    s = await manager.driver()
    s["user"] = "alice"
    await s.save()
    slow = await manager.load(s.id)
    await manager.destroy(s.id)
    slow["late"] = 1
    await slow.save()
    # a regenerate meeting a logout: INFO
    s = await manager.driver()
    s["user"] = "alice"
    await s.save()
    old_id = s.id
    await s.regenerate()
    await manager.destroy(old_id)
    await s.save()
    assert s.ended
    # a lock the store cannot release: WARNING
    s = await manager.driver()
    s["user"] = "alice"
    await s.save()
    driver.failing.add("release")
    async with s.lock():
        s["n"] = 1
    driver.failing.discard("release")

    # listeners that fail, sync and async: logged with their tracebacks
    def sync_listener(event: SessionEventInfo) -> None:
        raise RuntimeError(f"listener saw {event!r} for {event.session_id}")

    async def async_listener(event: SessionEventInfo) -> None:
        raise RuntimeError(f"async listener saw {event.session_id}")

    manager.on(SessionEvents.SAVED, sync_listener)
    manager.on(SessionEvents.SAVED, async_listener)
    s["m"] = 2
    await s.save()
    await manager.events.drain()
    # a failing GC run and a failing close: logged with tracebacks
    driver.failing.update({"gc", "close"})
    assert manager.schedule_gc()  # the lottery's way: errors are logged, never raised
    await manager.wait_gc()
    await manager.close()
    assert any("lock" in t for t in logged) and any("listener" in t for t in logged)
    assert any("garbage collection" in t for t in logged)


async def test_failures_in_the_middleware_log_no_whole_id(
        aiohttp_client: ClientFactory, logged: list[str]) -> None:
    manager, driver = leaky_manager()

    async def count(request: web.Request) -> web.Response:
        return web.Response(text=str((await get_session(request)).increment("n")))

    async def stream(request: web.Request) -> web.StreamResponse:
        (await get_session(request))["bad"] = {1, 2}  # refused at prepare()
        response = web.StreamResponse()
        await response.prepare(request)
        return response

    app = web.Application()
    app.router.add_get("/count", count)
    app.router.add_get("/stream", stream)
    setup(app, manager)
    client = await aiohttp_client(app)
    sid = (await client.get("/count")).cookies[COOKIE].value
    for op in ("read", "write"):  # the store fails: ERROR once per outage, then recovery
        driver.failing.add(op)
        assert (await client.get("/count")).status == 503
        driver.failing.discard(op)
        assert (await client.get("/count")).status == 200
    assert (await client.get("/stream")).status == 503
    await asyncio.sleep(0)
    assert any("unavailable" in t for t in logged) and any("streamed" in t for t in logged)
    assert any(abbreviate(sid) in t for t in logged)


def test_logging_the_failures_shows_the_abbreviated_form(logged: list[str]) -> None:
    sid = new_session_id()
    logger.error("store failed: %s", DriverError(f"read of {sid} failed"))
    assert logged == [f"ERROR aiosessmgr store failed: read of {abbreviate(sid)} failed"]


async def test_a_custom_driver_error_that_escapes_to_aiohttp_logs_no_whole_id(
        aiohttp_client: ClientFactory, logged: list[str]) -> None:
    # a driver that raises something other than DriverError breaks the contract: the
    # request is a 500, and aiohttp logs the traceback on its own logger
    class Careless(MemoryDriver):
        async def read_touch(self, session_id: str, ttl: int) -> bytes | None:
            raise ConnectionResetError(f"lost the connection reading {session_id}")

    manager = SessionManager({"default": "careless", "lottery": (0, 1),
                              "drivers": {"careless": {"driver": "careless", "lifetime": 5}}})
    manager.extend("careless", lambda cfg: Careless())

    async def count(request: web.Request) -> web.Response:
        return web.Response(text=str((await get_session(request)).increment("n")))

    app = web.Application()
    app.router.add_get("/count", count)
    setup(app, manager)
    client = await aiohttp_client(app)
    sid = new_session_id()
    response = await client.get("/count", headers={"Cookie": f"{COOKIE}={sid}"})
    assert response.status == 500
    await asyncio.sleep(0)
    assert any("Error handling request" in t and abbreviate(sid) in t for t in logged)


def test_the_filter_on_a_handler_covers_child_loggers_too() -> None:
    # the README's advice for records logged on an app's own loggers
    from aiosessmgr.log import RedactSessionIds

    texts: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            texts.append(self.format(record))

    handler = Collect()
    handler.addFilter(RedactSessionIds())
    child = logging.getLogger("aiosessmgr.myapp")
    child.addHandler(handler)
    try:
        sid = new_session_id()
        child.warning("user of %s logged in", sid)
    finally:
        child.removeHandler(handler)
    assert texts == [f"user of {abbreviate(sid)} logged in"]
