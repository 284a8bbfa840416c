"""examples/postgres_driver.py against the machine's real PostgreSQL.

The driver contract (aiosessmgr.testing.DriverContract) runs in TestPostgresDriverContract;
the tests after it cover what is PostgreSQL's own: the table, the touch throttle, batched
gc, options, outages.

The database comes from ``DATABASE_URL`` (default: the example's DEFAULT_DSN, then the
local Unix socket). Each test gets its own table, dropped at teardown. Without a
reachable server the tests skip, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from aiosessmgr import ConfigError, DriverConfig, DriverError, SupportsCompareAndSet
from aiosessmgr.drivers.base import SupportsTouch
from aiosessmgr.testing import Advance, DriverContract
from examples import postgres_driver
from examples.postgres_driver import PostgresDriver

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]

SOCKET_DSN = "postgresql://postgres@/test?host=/var/run/postgresql"
V1, V2 = b"version1", b"version2"
SID = "s" * 43

_reachable: list[str] = []  # the DSN that answered, found once per run
_failures: list[str] = []


async def _find_dsn() -> str:
    if _reachable:
        return _reachable[0]
    if not _failures:
        env = os.environ.get("DATABASE_URL")
        candidates = [env] if env else [postgres_driver.DEFAULT_DSN, SOCKET_DSN]
        for dsn in candidates:
            try:
                conn = await asyncpg.connect(dsn, timeout=3)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                _failures.append(f"{dsn}: {type(exc).__name__}: {exc}")
                continue
            await conn.close()
            _reachable.append(dsn)
            return dsn
    message = ("PostgreSQL is not reachable (" + "; ".join(_failures) + "). Install and "
               "start it with `apt-get install postgresql` (then `pg_ctlcluster <version> "
               "main start` if it is not running, and `createdb -U postgres test`), or set "
               "DATABASE_URL=postgresql://user:password@127.0.0.1:5432/dbname")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
async def dsn() -> str:
    return await _find_dsn()


@pytest.fixture
async def admin(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A separate connection for looking at and changing rows behind the driver's back."""
    conn = await asyncpg.connect(dsn, timeout=5)
    yield conn
    await conn.close()


@pytest.fixture
async def table(admin: asyncpg.Connection) -> AsyncIterator[str]:
    name = f"aiosessmgr_test_{secrets.token_hex(6)}"
    yield name
    await admin.execute(f'DROP TABLE IF EXISTS "{name}"')


@pytest.fixture
async def driver(dsn: str, table: str) -> AsyncIterator[PostgresDriver]:
    drv = PostgresDriver(dsn, table=table, timeout=5)
    yield drv
    await drv.close()


async def expire(admin: asyncpg.Connection, table: str, *ids: str) -> None:
    """Move rows' expiry into the past, as if their time had passed (no sleeping)."""
    await admin.execute(f'UPDATE "{table}" SET expires_at = now() - interval \'1 second\' '
                        "WHERE id = ANY($1::text[])", list(ids))


async def seconds_left(admin: asyncpg.Connection, table: str, sid: str) -> float:
    value = await admin.fetchval(
        f'SELECT extract(epoch FROM expires_at - now()) FROM "{table}" WHERE id = $1', sid)
    return float(value)


# -- against the database --------------------------------------------------------------------


class TestPostgresDriverContract(DriverContract):
    """The public driver contract (aiosessmgr.testing); time moves by moving expires_at."""

    capabilities = frozenset({SupportsTouch, SupportsCompareAndSet})

    @pytest.fixture
    async def driver(self, dsn: str, table: str) -> AsyncIterator[PostgresDriver]:
        drv = PostgresDriver(dsn, table=table, timeout=5)
        yield drv
        await drv.close()

    @pytest.fixture
    def advance(self, admin: asyncpg.Connection, table: str) -> Advance:
        async def advance(seconds: float) -> None:
            await admin.execute(f'UPDATE "{table}" SET expires_at = expires_at - $1::interval',
                                timedelta(seconds=seconds))

        return advance


async def test_round_trip_creates_the_table_on_first_use(
    driver: PostgresDriver, admin: asyncpg.Connection, table: str,
) -> None:
    assert await admin.fetchval("SELECT to_regclass($1)", table) is None
    assert await driver.read(SID) is None
    assert await admin.fetchval("SELECT to_regclass($1)", table) is not None
    index = await admin.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = $1",
                                 f"{table}_expires_at_idx")
    assert "(expires_at)" in index

    await driver.write(SID, V1 + b"\x00payload", 60)
    assert await driver.read(SID) == V1 + b"\x00payload"
    await driver.write(SID, V2 + b"\xff" * 1000, 60)  # upsert replaces
    assert await driver.read(SID) == V2 + b"\xff" * 1000
    assert await admin.fetchval(f'SELECT count(*) FROM "{table}"') == 1
    assert 55 < await seconds_left(admin, table, SID) <= 60


async def test_read_touch_extends_expiry_at_most_once_per_tenth(
    driver: PostgresDriver, admin: asyncpg.Connection, table: str,
) -> None:
    assert isinstance(driver, SupportsTouch)
    await driver.write(SID, V1 + b"data", 100)
    await admin.execute(f'UPDATE "{table}" SET expires_at = now() + interval \'95 seconds\'')
    assert await driver.read_touch(SID, 100) == V1 + b"data"
    assert 94 < await seconds_left(admin, table, SID) <= 95  # touched 5 s ago: left alone

    await admin.execute(f'UPDATE "{table}" SET expires_at = now() + interval \'30 seconds\'')
    assert await driver.read_touch(SID, 100) == V1 + b"data"
    assert 95 < await seconds_left(admin, table, SID) <= 100  # extended to ttl from now
    assert await driver.read_touch("x" * 43, 100) is None


async def test_destroy(driver: PostgresDriver, admin: asyncpg.Connection, table: str) -> None:
    await driver.write(SID, V1 + b"data", 60)
    await driver.destroy(SID)
    assert await driver.read(SID) is None
    assert await admin.fetchval(f'SELECT count(*) FROM "{table}"') == 0
    await driver.destroy(SID)  # absent: no error


async def test_gc_removes_expired_rows_and_counts_them(
    driver: PostgresDriver, admin: asyncpg.Connection, table: str,
) -> None:
    ids = [f"{i:043d}" for i in range(5)]
    for sid in ids:
        await driver.write(sid, V1 + b"data", 60)
    await expire(admin, table, *ids[:3])
    assert await driver.gc(60) == 3
    assert await driver.gc(60) == 0
    assert sorted(await admin.fetch(f'SELECT id FROM "{table}"')) == [(i,) for i in ids[3:]]


async def test_gc_works_in_batches(
    driver: PostgresDriver, admin: asyncpg.Connection, table: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(postgres_driver, "GC_BATCH", 2)
    small = PostgresDriver(driver.dsn, table=table)  # SQL is built with the batch size
    try:
        await small.write(SID, V1, 60)
        await admin.execute(
            f'INSERT INTO "{table}" SELECT g::text, $1, now() - interval \'1 second\' '
            "FROM generate_series(1, 7) AS g", V1)
        assert await small.gc(60) == 7
        assert await admin.fetchval(f'SELECT count(*) FROM "{table}"') == 1
    finally:
        await small.close()


async def test_factory_reads_options_and_does_no_io(dsn: str, table: str) -> None:
    driver = PostgresDriver.from_config(
        DriverConfig("database", options={"dsn": dsn, "table": table, "timeout": 2}))
    try:
        assert (driver.dsn, driver.table, driver.timeout) == (dsn, table, 2.0)
        await driver.write(SID, V1, 60)
        assert await driver.read(SID) == V1
    finally:
        await driver.close()
    with pytest.raises(DriverError, match="closed"):
        await driver.read(SID)


# -- through the middleware ------------------------------------------------------------------


async def test_http_round_trip(
    aiohttp_client: ClientFactory, dsn: str, table: str, admin: asyncpg.Connection,
) -> None:
    client = await aiohttp_client(postgres_driver.make_app(dsn, table))
    assert await (await client.get("/")).text() == "Visits: 1\n"
    assert await (await client.get("/")).text() == "Visits: 2\n"
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))["pg_session"]
    rows = await admin.fetch(f'SELECT id FROM "{table}"')
    assert [row["id"] for row in rows] == [cookie.value]


async def test_concurrent_increments_through_the_middleware_lose_nothing(
    aiohttp_client: ClientFactory, dsn: str, table: str,
) -> None:
    client = await aiohttp_client(postgres_driver.make_app(dsn, table))
    assert await (await client.get("/")).text() == "Visits: 1\n"  # the session exists now

    async def visit() -> int:
        async with client.get("/") as resp:
            assert resp.status == 200
            return int((await resp.text()).split()[1])

    await asyncio.gather(*(visit() for _ in range(50)))
    assert await (await client.get("/")).text() == "Visits: 52\n"


# -- no database needed ----------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    pytest.param({}, "needs a 'dsn' option", id="no-dsn"),
    pytest.param({"dsn": "127.0.0.1:5432"}, "a postgresql:// URL", id="not-a-url"),
    pytest.param({"dsn": "postgresql://x", "table": "a; DROP TABLE b"}, "table must match",
                 id="bad-table"),
    pytest.param({"dsn": "postgresql://x", "table": "t" * 49}, "table must match",
                 id="long-table"),
    pytest.param({"dsn": "postgresql://x", "timeout": 0}, "timeout must be a positive number",
                 id="zero-timeout"),
    pytest.param({"dsn": "postgresql://x", "tabel": "t"}, "did you mean 'table'",
                 id="typo"),
])
def test_bad_options_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PostgresDriver.from_config(DriverConfig("database", options=options))


async def test_unreachable_database_is_a_driver_error() -> None:
    # port 1 on loopback: nothing listens, the connection is refused at once
    driver = PostgresDriver("postgresql://postgres@127.0.0.1:1/test", timeout=5)
    try:
        with pytest.raises(DriverError, match="PostgreSQL read failed") as info:
            await driver.read(SID)
        assert isinstance(info.value.__cause__, OSError)
        with pytest.raises(DriverError):  # tried again, not stuck on a broken pool
            await driver.write(SID, V1, 60)
    finally:
        await driver.close()


async def test_silent_server_times_out() -> None:
    """A server that accepts and never answers costs the timeout, not a hang."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    driver = PostgresDriver(f"postgresql://postgres@127.0.0.1:{port}/test?sslmode=disable",
                            timeout=0.5)
    try:
        with pytest.raises(DriverError, match=r"no answer within 0\.5s"):
            await driver.read(SID)
    finally:
        await driver.close()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_middleware_answers_503_when_the_database_is_down(
    aiohttp_client: ClientFactory,
) -> None:
    client = await aiohttp_client(
        postgres_driver.make_app("postgresql://postgres@127.0.0.1:1/test", "sessions"))
    resp = await client.get("/")
    assert resp.status == 503
