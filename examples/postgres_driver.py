"""A custom driver: sessions in PostgreSQL through asyncpg, registered with ``extend``.

Run it (PostgreSQL on localhost; ``DATABASE_URL`` overrides the default DSN)::

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test python -m examples.postgres_driver

then open http://127.0.0.1:8088/. The table (``sessions`` by default) and the users'
index (the table's name with ``_users`` appended) are created on first use::

    CREATE TABLE IF NOT EXISTS sessions (
        id         text PRIMARY KEY,
        payload    bytea NOT NULL,
        expires_at timestamptz NOT NULL
    );
    CREATE INDEX IF NOT EXISTS sessions_expires_at_idx ON sessions (expires_at);
    CREATE TABLE IF NOT EXISTS sessions_users (
        user_id    text NOT NULL,
        handle     text NOT NULL,
        session_id text NOT NULL,
        expires_at timestamptz NOT NULL,
        PRIMARY KEY (user_id, handle)
    );
    CREATE INDEX IF NOT EXISTS sessions_users_exp_idx ON sessions_users (expires_at);
    CREATE INDEX IF NOT EXISTS sessions_users_sid_idx ON sessions_users (session_id);

The four required methods (``read``, ``write``, ``destroy``, ``gc``) are enough for a
driver. This one adds the optional capabilities the session layer picks up by itself:
``read_touch`` (a read-only request extends expiry in the same round trip),
``compare_and_set`` (a save writes only if the record's version, its first 8 bytes, is
still the one the request loaded; so concurrent requests on one session lose nothing),
the user index (``index_user_session``, ``user_session_index``, ``unindex_user_sessions``:
one row per session of a user, for ``manager.user_sessions()`` and "log out other
devices") and ``read_many`` (the records of a user's sessions in one statement).
Every method is one SQL statement (``gc``: one per batch), so each is atomic without a
transaction. Expiry uses the database's clock, so app servers with skewed clocks agree.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg
from aiohttp import web

from aiosessmgr import (
    ConfigError,
    DriverConfig,
    DriverError,
    SessionDriver,
    SessionManager,
    get_session,
    setup,
)

from . import _serve

__all__ = ["DEFAULT_DSN", "PostgresDriver", "make_app", "make_manager"]

_T = TypeVar("_T")

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
#: leaves room for the longest derived name (``<table>_users_exp_idx``) within PostgreSQL's
#: 63 bytes
_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")
#: rows removed per DELETE in gc(), so no statement holds locks on a huge set of rows
GC_BATCH = 5_000
#: connections per process
POOL_SIZE = 10
#: what asyncpg and the network raise; everything else is a bug and propagates as is
_STORE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                 OSError, TimeoutError)


class PostgresDriver(SessionDriver):
    """Sessions in one PostgreSQL table, users' indexes in a second; ``ttl`` and
    ``timeout`` in seconds.

    Building it does no I/O: the connection pool and the tables are created on first
    use (and again after a failed attempt, so the app recovers when the database does).
    Every operation is bounded by *timeout*; database, network and timeout failures
    become :class:`aiosessmgr.DriverError` (the middleware answers 503).
    """

    def __init__(self, dsn: str, *, table: str = "sessions", timeout: float = 5.0) -> None:
        if not isinstance(dsn, str) or not dsn.startswith(("postgresql://", "postgres://")):
            raise ConfigError("the database driver needs a 'dsn' option, a postgresql:// "
                              f"URL such as {DEFAULT_DSN!r}")
        if not isinstance(table, str) or not _TABLE_RE.fullmatch(table):
            raise ConfigError(f"table must match {_TABLE_RE.pattern}, got {table!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.dsn = dsn
        self.table = table
        self.timeout = float(timeout)
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._closed = False
        t = f'"{table}"'  # validated above, so quoting cannot be escaped
        u = f'"{table}_users"'  # the users' index: one row per (user, handle)
        # one simple-protocol query is one transaction: all of it is created or none
        self._sql_create = (
            f"CREATE TABLE IF NOT EXISTS {t} (id text PRIMARY KEY, payload bytea NOT NULL, "
            f"expires_at timestamptz NOT NULL); "
            f'CREATE INDEX IF NOT EXISTS "{table}_expires_at_idx" ON {t} (expires_at); '
            f"CREATE TABLE IF NOT EXISTS {u} (user_id text NOT NULL, handle text NOT NULL, "
            f"session_id text NOT NULL, expires_at timestamptz NOT NULL, "
            f"PRIMARY KEY (user_id, handle)); "
            f'CREATE INDEX IF NOT EXISTS "{table}_users_exp_idx" ON {u} (expires_at); '
            f'CREATE INDEX IF NOT EXISTS "{table}_users_sid_idx" ON {u} (session_id)'
        )
        self._sql_read = f"SELECT payload FROM {t} WHERE id = $1 AND expires_at > now()"
        # touch only when a tenth of the lifetime has passed since the last one: the
        # SELECT sees the row as it was before the UPDATE (same snapshot), and the touch
        # never changes the payload, so one round trip reads and extends
        self._sql_read_touch = (
            f"WITH touch AS (UPDATE {t} SET expires_at = now() + $2::interval "
            f"WHERE id = $1 AND expires_at > now() AND expires_at < now() + $3::interval) "
            f"SELECT payload FROM {t} WHERE id = $1 AND expires_at > now()"
        )
        self._sql_write = (
            f"INSERT INTO {t} (id, payload, expires_at) VALUES ($1, $2, now() + $3::interval) "
            f"ON CONFLICT (id) DO UPDATE SET payload = EXCLUDED.payload, "
            f"expires_at = EXCLUDED.expires_at"
        )
        # insert if absent; an expired row counts as absent and is replaced
        self._sql_insert_new = self._sql_write + f" WHERE {t}.expires_at <= now()"
        # a row lock makes concurrent updates take turns; the loser re-checks the version
        self._sql_replace_version = (
            f"UPDATE {t} SET payload = $2, expires_at = now() + $3::interval "
            f"WHERE id = $1 AND expires_at > now() AND substring(payload from 1 for 8) = $4"
        )
        self._sql_destroy = f"DELETE FROM {t} WHERE id = $1"
        # one batch of expired records, and the index entries naming them (found through
        # the session_id index: it costs what it removes); answers how many records
        self._sql_gc = (
            f"WITH gone AS (DELETE FROM {t} WHERE id IN "
            f"(SELECT id FROM {t} WHERE expires_at <= now() LIMIT {GC_BATCH}) RETURNING id), "
            f"entries AS (DELETE FROM {u} WHERE session_id IN (SELECT id FROM gone)) "
            f"SELECT count(*) FROM gone"
        )
        self._sql_gc_index = (
            f"DELETE FROM {u} WHERE (user_id, handle) IN "
            f"(SELECT user_id, handle FROM {u} WHERE expires_at <= now() LIMIT {GC_BATCH})"
        )
        self._sql_read_many = (
            f"SELECT id, payload FROM {t} WHERE id = ANY($1::text[]) AND expires_at > now()"
        )
        # every entry has its own deadline, which a refresh never moves closer; a
        # compare-and-set: a live row naming another id than this one or the one moved
        # from ($5, NULL if none) stays (the status then says 0 rows)
        self._sql_index = (
            f"INSERT INTO {u} AS i (user_id, handle, session_id, expires_at) "
            f"VALUES ($1, $2, $3, now() + $4::interval) "
            f"ON CONFLICT (user_id, handle) DO UPDATE SET session_id = EXCLUDED.session_id, "
            f"expires_at = greatest(i.expires_at, EXCLUDED.expires_at) "
            f"WHERE i.session_id = EXCLUDED.session_id OR i.session_id = $5::text "
            f"OR i.expires_at <= now()"
        )
        self._sql_user_index = (
            f"SELECT handle, session_id FROM {u} WHERE user_id = $1 AND expires_at > now()"
        )
        # a handle goes only if it still names the id given for it; concurrent calls on
        # one entry take turns on its row lock, and a DELETE that waited re-checks
        # session_id on the row as the other call left it
        self._sql_unindex = (
            f"DELETE FROM {u} AS i USING unnest($2::text[], $3::text[]) AS e(handle, sid) "
            f"WHERE i.user_id = $1 AND i.handle = e.handle AND i.session_id = e.sid "
            f"AND i.expires_at > now()"
        )

    @classmethod
    def from_config(cls, config: DriverConfig) -> PostgresDriver:
        """The factory for ``manager.extend("database", PostgresDriver.from_config)``."""
        config.check_options(("dsn", "table", "timeout"))
        options = config.options
        return cls(options.get("dsn", ""), table=options.get("table", "sessions"),
                   timeout=options.get("timeout", 5.0))

    # -- plumbing --------------------------------------------------------------------------

    async def _get_pool(self) -> asyncpg.Pool:
        """The pool, created (with the table) by the first caller; others wait for it."""
        if self._closed:
            raise DriverError("the PostgreSQL session driver is closed")
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                pool = await asyncpg.create_pool(
                    self.dsn, min_size=0, max_size=POOL_SIZE,
                    timeout=self.timeout, command_timeout=self.timeout,
                )
                try:
                    await pool.execute(self._sql_create)
                except asyncpg.UniqueViolationError:
                    pass  # another process created the table at the same moment
                except BaseException:
                    pool.terminate()
                    raise
                if self._closed:  # close() ran while the pool was being set up
                    pool.terminate()
                    raise DriverError("the PostgreSQL session driver is closed")
                self._pool = pool
        return self._pool

    async def _run(self, operation: str,
                   call: Callable[[asyncpg.Pool], Awaitable[_T]]) -> _T:
        """Run *call* on the pool within the timeout, translating store failures."""
        try:
            async with asyncio.timeout(self.timeout):
                return await call(await self._get_pool())
        except TimeoutError as exc:
            raise DriverError(
                f"PostgreSQL {operation} got no answer within {self.timeout:g}s") from exc
        except _STORE_ERRORS as exc:
            raise DriverError(
                f"PostgreSQL {operation} failed: {type(exc).__name__}: {exc}") from exc

    # -- the contract ----------------------------------------------------------------------

    async def read(self, session_id: str) -> bytes | None:
        """The live record, or None if absent or expired."""
        return await self._run("read", lambda pool: _fetch_bytes(
            pool, self._sql_read, session_id))

    async def read_touch(self, session_id: str, ttl: int) -> bytes | None:
        """Read, and extend expiry to *ttl* seconds from now (at most once per ttl/10)."""
        lifetime = timedelta(seconds=ttl)
        stale_below = lifetime - lifetime / 10
        return await self._run("read", lambda pool: _fetch_bytes(
            pool, self._sql_read_touch, session_id, lifetime, stale_below))

    async def write(self, session_id: str, payload: bytes, ttl: int) -> None:
        """Insert or replace the record (one atomic upsert)."""
        await self._run("write", lambda pool: pool.execute(
            self._sql_write, session_id, payload, timedelta(seconds=ttl)))

    async def compare_and_set(
        self, session_id: str, payload: bytes, ttl: int, expected: bytes | None
    ) -> bool:
        """Write only if the stored version is *expected* (None: only if no live record)."""
        if expected is None:
            status = await self._run("compare-and-set", lambda pool: pool.execute(
                self._sql_insert_new, session_id, payload, timedelta(seconds=ttl)))
        else:
            status = await self._run("compare-and-set", lambda pool: pool.execute(
                self._sql_replace_version, session_id, payload, timedelta(seconds=ttl),
                expected))
        return _row_count(status) == 1

    async def destroy(self, session_id: str) -> None:
        """Delete the record (no error if there is none)."""
        await self._run("destroy", lambda pool: pool.execute(self._sql_destroy, session_id))

    async def gc(self, max_lifetime: int) -> int:
        """Delete expired records in batches; return how many.

        Index entries naming a removed record go with it, and expired entries after it
        (those are not counted). Every row carries its own ``expires_at``, so
        *max_lifetime* is not needed.
        """
        removed = 0
        while True:
            count: int = await self._run("gc", lambda pool: pool.fetchval(self._sql_gc))
            removed += count
            if count < GC_BATCH:
                break
        while True:  # then expired index entries, in batches too
            status = await self._run("gc", lambda pool: pool.execute(self._sql_gc_index))
            if _row_count(status) < GC_BATCH:
                return removed

    async def read_many(self, session_ids: Sequence[str]) -> list[bytes | None]:
        """``read()`` of each id in one statement, in the order given (None: absent or
        expired)."""
        if not session_ids:
            return []
        rows = await self._run("read", lambda pool: pool.fetch(
            self._sql_read_many, list(session_ids)))
        found = {row["id"]: bytes(row["payload"]) for row in rows}
        return [found.get(sid) for sid in session_ids]

    # -- the user index --------------------------------------------------------------------

    async def index_user_session(self, user_id: str, handle: str, session_id: str,
                                 ttl: int, expected: str | None = None) -> bool:
        """Point *handle* at *session_id* in *user_id*'s index (one upsert) if it names
        nothing, that id or *expected*; False if it names another id (the row stays).
        A written entry lives at least *ttl* seconds (a shorter ttl never shortens it)."""
        status = await self._run("user index write", lambda pool: pool.execute(
            self._sql_index, user_id, handle, session_id, timedelta(seconds=ttl), expected))
        return bool(status != "INSERT 0 0")

    async def user_session_index(self, user_id: str) -> dict[str, str]:
        """The live entries of *user_id*'s index, ``{handle: session id}``."""
        rows = await self._run("user index read", lambda pool: pool.fetch(
            self._sql_user_index, user_id))
        return {row["handle"]: row["session_id"] for row in rows}

    async def unindex_user_sessions(self, user_id: str, entries: Mapping[str, str]) -> int:
        """Delete each handle of *entries* that still names the id given (one DELETE);
        return how many."""
        if not entries:
            return 0
        status = await self._run("user index delete", lambda pool: pool.execute(
            self._sql_unindex, user_id, list(entries), list(entries.values())))
        return _row_count(status)

    async def close(self) -> None:
        """Close the pool: wait up to the timeout for connections in use, then cut them."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self.timeout):
                await pool.close()
        except (TimeoutError, *_STORE_ERRORS):
            pool.terminate()


async def _fetch_bytes(pool: asyncpg.Pool, sql: str, *args: Any) -> bytes | None:
    value = await pool.fetchval(sql, *args)
    return None if value is None else bytes(value)


def _row_count(status: str) -> int:
    """The row count of a command status: ``"DELETE 3"`` -> 3, ``"INSERT 0 1"`` -> 1."""
    return int(status.rsplit(" ", 1)[-1])


# -- an app using it ---------------------------------------------------------------------------


def make_manager(dsn: str | None = None, table: str = "sessions") -> SessionManager:
    """A manager whose default driver is PostgreSQL (``DATABASE_URL``, else DEFAULT_DSN)."""
    manager = SessionManager({
        "default": "database",
        "drivers": {"database": {
            "driver": "database", "lifetime": 120,
            "dsn": dsn or os.environ.get("DATABASE_URL") or DEFAULT_DSN, "table": table,
        }},
        "cookie": {"name": "pg_session", "same_site": "lax"},
    })
    # custom driver types are built on first use, so extend() may follow the config
    manager.extend("database", PostgresDriver.from_config)
    return manager


async def index(request: web.Request) -> web.Response:
    """Count visits; concurrent requests of one visitor all count (compare-and-set)."""
    visits = (await get_session(request)).increment("visits")
    return web.Response(text=f"Visits: {visits}\n")


def make_app(dsn: str | None = None, table: str = "sessions") -> web.Application:
    """Build the app; connecting waits for the first request."""
    manager = make_manager(dsn, table)
    app = web.Application()
    app.router.add_get("/", index)
    setup(app, manager)
    return app


if __name__ == "__main__":
    _serve.main(make_app, "postgres_driver", __doc__, port=8088)
