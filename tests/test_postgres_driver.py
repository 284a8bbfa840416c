"""examples/postgres_driver.py against the machine's real PostgreSQL.

The driver contract (aiosessmgr.testing.DriverContract) runs in TestPostgresDriverContract;
the tests after it cover what is PostgreSQL's own: the tables, the touch throttle, batched
gc, the user index's rows (hostile user ids, conditional deletes, concurrency, expiry),
read_many, options, outages.

The database comes from ``DATABASE_URL`` (default: the example's DEFAULT_DSN, then the
local Unix socket). Each test gets its own table (and users' index table), dropped at
teardown. Without a reachable server the tests skip, except in CI (``CI=true``), where
they fail.
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

from aiosessmgr import (
    ConfigError,
    DriverConfig,
    DriverError,
    SupportsCompareAndSet,
    SupportsReadMany,
    SupportsUserIndex,
    new_session_id,
)
from aiosessmgr.drivers.base import SupportsTouch
from aiosessmgr.ids import new_handle
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
    await admin.execute(f'DROP TABLE IF EXISTS "{name}", "{name}_users"')


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

    capabilities = frozenset({SupportsTouch, SupportsCompareAndSet, SupportsUserIndex,
                              SupportsReadMany})

    @pytest.fixture
    async def driver(self, dsn: str, table: str) -> AsyncIterator[PostgresDriver]:
        drv = PostgresDriver(dsn, table=table, timeout=5)
        yield drv
        await drv.close()

    @pytest.fixture
    def advance(self, admin: asyncpg.Connection, table: str) -> Advance:
        async def advance(seconds: float) -> None:
            for name in (table, f"{table}_users"):  # records and index entries alike
                await admin.execute(
                    f'UPDATE "{name}" SET expires_at = expires_at - $1::interval',
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
    # the users' index table came with it, with its two indexes
    assert await admin.fetchval("SELECT to_regclass($1)", f"{table}_users") is not None
    for name, column in (("exp", "(expires_at)"), ("sid", "(session_id)")):
        index = await admin.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = $1",
                                     f"{table}_users_{name}_idx")
        assert column in index


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


# -- the user index and read_many -------------------------------------------------------------

#: user ids that would break string-formatted SQL, or that a careless store would merge
HOSTILE_USER_IDS = [
    "'; DROP TABLE sessions; --", "' OR '1'='1", '"', "$1", "$2::text", "%", "_", "\\",
    "\\x00", "E'\\n'", "NULL", "null", "42", "42 ", " 42", "User", "user", "ß", "ss",
    "\u00e9", "e\u0301", "\uff21", "A", "ü🙂", "a b", "x" * 256, "(user_id, handle)",
]


async def index_rows(admin: asyncpg.Connection, table: str) -> set[tuple[str, str, str]]:
    """Every row of the users' index table, expired or not: (user_id, handle, session_id)."""
    rows = await admin.fetch(f'SELECT user_id, handle, session_id FROM "{table}_users"')
    return {(row["user_id"], row["handle"], row["session_id"]) for row in rows}


async def entry_seconds_left(admin: asyncpg.Connection, table: str, user: str,
                             handle: str) -> float:
    value = await admin.fetchval(
        f'SELECT extract(epoch FROM expires_at - now()) FROM "{table}_users" '
        "WHERE user_id = $1 AND handle = $2", user, handle)
    return float(value)


async def expire_entries(admin: asyncpg.Connection, table: str, user: str,
                         *handles: str) -> None:
    await admin.execute(f'UPDATE "{table}_users" SET expires_at = now() - interval \'1 second\' '
                        "WHERE user_id = $1 AND handle = ANY($2::text[])", user, list(handles))


async def test_hostile_user_ids_are_stored_as_text_and_kept_apart(
    driver: PostgresDriver, admin: asyncpg.Connection, table: str,
) -> None:
    assert all(0 < len(user) <= 256 and user.isprintable() for user in HOSTILE_USER_IDS)
    assert len(set(HOSTILE_USER_IDS)) == len(HOSTILE_USER_IDS)
    entries = {user: (new_handle(), new_session_id()) for user in HOSTILE_USER_IDS}
    await asyncio.gather(*(driver.index_user_session(user, handle, sid, 60)
                           for user, (handle, sid) in entries.items()))
    # stored as given, byte for byte: no escaping, no normalization, no case folding
    assert await index_rows(admin, table) == {
        (user, handle, sid) for user, (handle, sid) in entries.items()}
    for user, (handle, sid) in entries.items():
        assert await driver.user_session_index(user) == {handle: sid}, user
    assert await admin.fetchval("SELECT to_regclass($1)", table) is not None  # not dropped
    for user, (handle, sid) in entries.items():
        assert await driver.unindex_user_sessions(user, {handle: sid}) == 1, user
    assert await index_rows(admin, table) == set()


async def test_unindex_removes_only_live_entries_still_naming_the_id(
    driver: PostgresDriver, admin: asyncpg.Connection, table: str,
) -> None:
    user, other = "ann", "bob"
    h1, h2, h3, h4 = (new_handle() for _ in range(4))
    a, b, c = new_session_id(), new_session_id(), new_session_id()
    await driver.index_user_session(user, h1, a, 60)
    await driver.index_user_session(user, h2, b, 60)
    await driver.index_user_session(user, h3, c, 60)
    await driver.index_user_session(other, h1, a, 60)  # the same entry under another user
    await expire_entries(admin, table, user, h3)
    # h1 still names a: removed; h2 names b: stays; h3 is expired: not in the index, not
    # counted; h4 was never indexed
    assert await driver.unindex_user_sessions(user, {h1: a, h2: a, h3: c, h4: a}) == 1
    assert await driver.user_session_index(user) == {h2: b}
    assert await driver.user_session_index(other) == {h1: a}
    assert (other, h1, a) in await index_rows(admin, table)
    assert await driver.unindex_user_sessions(user, {h2: b}) == 1
    assert await driver.unindex_user_sessions(user, {h2: b}) == 0  # gone already
    assert await driver.unindex_user_sessions(user, {}) == 0


async def test_many_index_calls_for_one_user_across_pools_lose_nothing(
    driver: PostgresDriver, dsn: str, table: str, admin: asyncpg.Connection,
) -> None:
    """Two drivers (two pools, as two processes would have) hammer one user's index."""
    elsewhere = PostgresDriver(dsn, table=table, timeout=5)
    drivers = [driver, elsewhere]
    user = "one user"
    try:
        await driver.read(SID)  # the tables exist before the race (no CREATE in it)
        fresh = {new_handle(): new_session_id() for _ in range(200)}
        moved = {new_handle(): (new_session_id(), new_session_id()) for _ in range(50)}
        for handle, (old, _) in moved.items():
            await driver.index_user_session(user, handle, old, 60)
        contested = new_handle()
        rivals = [new_session_id() for _ in range(40)]
        calls: list[Awaitable[object]] = []
        for i, (handle, sid) in enumerate(fresh.items()):
            calls.append(drivers[i % 2].index_user_session(user, handle, sid, 60))
        for i, (handle, (old, new)) in enumerate(moved.items()):
            # a move to a new id racing the removal of the old one: the move always stays
            calls.append(drivers[i % 2].index_user_session(user, handle, new, 60, old))
            calls.append(drivers[1 - i % 2].unindex_user_sessions(user, {handle: old}))
        for i, sid in enumerate(rivals):
            calls.append(drivers[i % 2].index_user_session(user, contested, sid, 60))
        won = await asyncio.gather(*calls)
        assert won[-len(rivals):].count(True) == 1  # a compare-and-set: one rival wins
        index = await elsewhere.user_session_index(user)
        assert index[contested] == rivals[won[-len(rivals):].index(True)]
        assert index == {**fresh, **{h: new for h, (_, new) in moved.items()},
                         contested: index[contested]}
        assert len(await index_rows(admin, table)) == len(index)
    finally:
        await elsewhere.close()


async def test_index_entries_expire_and_a_refresh_never_shortens_them(
    driver: PostgresDriver, admin: asyncpg.Connection, table: str,
) -> None:
    user, handle, other = "ann", new_handle(), new_handle()
    sid, moved = new_session_id(), new_session_id()
    await driver.index_user_session(user, handle, sid, 100)
    assert 95 < await entry_seconds_left(admin, table, user, handle) <= 100
    assert await driver.index_user_session(user, handle, moved, 10, sid)  # a shorter ttl
    assert 95 < await entry_seconds_left(admin, table, user, handle) <= 100
    await driver.index_user_session(user, handle, moved, 300)
    assert 295 < await entry_seconds_left(admin, table, user, handle) <= 300
    await driver.index_user_session(user, other, sid, 60)
    assert await driver.user_session_index(user) == {handle: moved, other: sid}

    await expire_entries(admin, table, user, handle)  # past its deadline: not listed
    assert await driver.user_session_index(user) == {other: sid}
    await driver.index_user_session(user, handle, sid, 60)  # indexed again: a new deadline
    assert 55 < await entry_seconds_left(admin, table, user, handle) <= 60
    assert await driver.user_session_index(user) == {handle: sid, other: sid}


async def test_gc_removes_expired_entries_and_entries_of_removed_records(
    driver: PostgresDriver, admin: asyncpg.Connection, table: str,
) -> None:
    old, live, destroyed = new_session_id(), new_session_id(), new_session_id()
    for sid in (old, live, destroyed):
        await driver.write(sid, V1 + b"data", 60)
    h1, h2, h3, h4, h5 = (new_handle() for _ in range(5))
    await driver.index_user_session("ann", h1, old, 60)
    await driver.index_user_session("ann", h2, live, 60)
    await driver.index_user_session("bob", h3, old, 60)
    await driver.index_user_session("ann", h4, live, 60)
    await driver.index_user_session("ann", h5, destroyed, 60)
    await expire(admin, table, old)
    await expire_entries(admin, table, "ann", h4)
    await driver.destroy(destroyed)

    assert await driver.gc(60) == 1  # records only: entries are not sessions
    # the entries of the record gc removed went with it, the expired entry after it; the
    # entry of a destroyed record stays until its deadline (or the next listing of ann)
    assert await index_rows(admin, table) == {("ann", h2, live), ("ann", h5, destroyed)}
    assert await driver.gc(60) == 0
    assert await driver.user_session_index("ann") == {h2: live, h5: destroyed}


async def test_gc_removes_expired_entries_in_batches(
    driver: PostgresDriver, admin: asyncpg.Connection, table: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(postgres_driver, "GC_BATCH", 2)
    small = PostgresDriver(driver.dsn, table=table)  # SQL is built with the batch size
    try:
        keep = new_handle()
        await small.index_user_session("ann", keep, SID, 60)
        await admin.execute(
            f'INSERT INTO "{table}_users" SELECT \'ann\', g::text, $1, '
            "now() - interval '1 second' FROM generate_series(1, 7) AS g", SID)
        assert await small.gc(60) == 0
        assert await index_rows(admin, table) == {("ann", keep, SID)}
    finally:
        await small.close()


async def test_read_many_keeps_order_and_reads_like_read(
    driver: PostgresDriver, admin: asyncpg.Connection, table: str,
) -> None:
    assert isinstance(driver, SupportsReadMany)
    a, b, expired, absent = (new_session_id() for _ in range(4))
    await driver.write(a, V1 + b"a", 60)
    await driver.write(b, V2 + b"\x00b", 60)
    await driver.write(expired, V1 + b"expired", 60)
    await expire(admin, table, expired)
    assert await driver.read_many([]) == []
    assert await driver.read_many([b, absent, a, b, expired, a]) == [
        V2 + b"\x00b", None, V1 + b"a", V2 + b"\x00b", None, V1 + b"a"]
    assert await driver.read_many((absent,)) == [None]
    # a read, not a touch: expiry stays where the write put it
    await admin.execute(f'UPDATE "{table}" SET expires_at = now() + interval \'30 seconds\'')
    assert await driver.read_many([a]) == [V1 + b"a"]
    assert await seconds_left(admin, table, a) <= 30
    many = [new_session_id() for _ in range(1000)]
    await admin.execute(
        f'INSERT INTO "{table}" SELECT id, convert_to(id, \'UTF8\'), '
        "now() + interval '60 seconds' FROM unnest($1::text[]) AS id", many[::2])
    assert await driver.read_many(many) == [
        sid.encode() if i % 2 == 0 else None for i, sid in enumerate(many)]


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
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: driver.read_many([SID]),
            lambda: driver.index_user_session("ann", new_handle(), SID, 60),
            lambda: driver.user_session_index("ann"),
            lambda: driver.unindex_user_sessions("ann", {new_handle(): SID}),
        ]
        for call in calls:
            with pytest.raises(DriverError, match=r"PostgreSQL .* failed"):
                await call()
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
