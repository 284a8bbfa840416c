"""The sessions of a user: ``session.login()``, ``manager.user_sessions()``, and what a
logged-in read-only request costs next to an anonymous one, per driver.

Run ``python -m benchmarks.users`` (``--help`` for options; ``--quick`` is a smoke run that
prints no target verdicts; ``--drivers`` chooses among DRIVERS). Drivers, each built
through ``SessionManager`` from a config entry:

* ``memory``; ``file`` in a temporary directory;
* ``redis``: a ``redis-server`` this benchmark starts on a free loopback port;
* ``redis-cluster``: a Redis Cluster of three masters (no replicas) it starts the same way
  (``redis-cli --cluster create``; about 2 s);
* ``postgres``: ``examples.postgres_driver`` on PostgreSQL at 127.0.0.1:5432, database
  ``test`` (``--pg-dsn``), in tables of its own that are dropped afterwards; skipped with a
  note when the database cannot be reached.

A driver that keeps no user index (``manager.user_sessions`` raises SessionError) is
skipped with a note. Parts, per driver (the GC lottery off everywhere):

1. ``login``: ms per ``await session.login(user)`` and the ``await session.save()`` that
   writes it (what the middleware does at the end of a login request; a no-op where
   ``login()`` saved already), into a user that already has 10 sessions, ``--repeat``
   times (median, p90). Cases: ``new`` (a new session with a little
   data, never saved), ``stored`` (a stored anonymous session, loaded by id as a request
   with its cookie would: the move re-reads and destroys the old record), ``cap``
   (``users.max_sessions=10``: each login lists the user's 11 sessions and ends the least
   recently active). After each ``new``/``stored`` login the session logs out (not
   timed), so the user stays at 10.
2. ``user_sessions`` of a user with each of ``--sizes`` sessions (10, 100, 1,000), all
   live: ms per call, ``--repeat`` times (median, p90).
3. Read-only requests: aiohttp's own request handler fed through the in-memory transport
   of ``benchmarks.hotpath`` (no sockets; the client is this process, on the same CPU), one
   keep-alive connection per manager, ``--requests`` requests (250) per case and run,
   ``--http-repeat`` runs (40) of the cases interleaved, minimum µs per request reported
   (noise only adds; many short runs find the quiet moments of a shared machine). Cases:
   an anonymous and a logged-in session, each read by the same handler (one
   ``session.get``), on a manager with the default ``users.touch_interval`` (60 s: every
   request within it, so a logged-in read costs one read like an anonymous one) and on one
   with ``touch_interval=0`` (every logged-in request past it: it rewrites the record and
   refreshes its index entry). Ratios are logged-in / anonymous of the same manager, run
   and connection. CPU µs/request is this process's (server and in-process client).

Redis counts: ``commands`` are the deltas of ``INFO commandstats`` (summed over the
Cluster's nodes; commands run inside Lua scripts count too; ``INFO`` itself excluded):
for login and ``user_sessions`` around single calls in a separate, untimed pass, for
requests around the timed runs. ``round trips`` (single node only) are the network writes
of a second client on the same Redis in an untimed pass (the same calls, the same
requests on an app of its own): a ``redis.asyncio.Connection`` subclass, passed with the
public ``connection_class`` option, counts its ``send_packed_command`` calls (one per
command, or one per pipeline); the timed runs use the driver exactly as configured from a
URL. On a Cluster round trips are not counted (its client offers no such hook); the
``nodes`` the commands went to are shown instead. PostgreSQL statements are not counted.

Targets (issue): ``user_sessions`` of 1,000 sessions under 50 ms on every driver (judged on
p90); a fixed small number of round trips on Redis whatever the size; a logged-in read-only
request within the touch interval at >= 0.95x the requests/s of an anonymous one (the
ratio by CPU per request is given too). Prints the setup line, Markdown tables and one
verdict per target; writes ``benchmarks/results/users.json``. About 2 minutes with every
driver on a 2-CPU machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

import redis.asyncio
from aiohttp import web

from aiosessmgr import SessionError, SessionManager, SessionStore, get_session, setup
from benchmarks import hotpath
from benchmarks._common import (
    cli_parser,
    free_port,
    progress,
    redis_server,
    setup_line,
    stop,
    table,
    wait_listening,
    write_json,
)
from benchmarks.drivers import file_system

DRIVERS = ("memory", "file", "redis", "redis-cluster", "postgres")
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
#: what a session holds besides the user binding (a little data, as a shop's would)
DATA: dict[str, Any] = {"theme": "dark", "cart": [101, 202, 303], "visits": 3}
#: sessions the login user has before each timed login
LOGIN_BASE = 10
#: calls per counting pass (commands and round trips are per call: they never vary)
COUNTED = 3
#: logins in flight at once while a user's sessions are created
POPULATE_CHUNK = 50
#: the targets: user_sessions of 1,000 sessions in ms, logged-in vs anonymous ratio
LISTING_MS = 50.0
LOGGED_IN_RATIO = 0.95
LISTING_TARGET_SIZE = 1000
#: the most round trips a listing may take on one Redis node (index script, one pipeline)
ROUND_TRIPS_MAX = 3


# -- counting what Redis did ---------------------------------------------------------------------


class CountingConnection(redis.asyncio.Connection):
    """A redis-py connection that counts its network writes: one per command sent alone,
    one per pipeline (redis-py packs a pipeline's commands into one write)."""

    sent = 0

    async def send_packed_command(self, command: bytes | str | Iterable[bytes],
                                  check_health: bool = True) -> None:
        CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


@dataclass
class Counts:
    """What one call cost on Redis: commands by name, nodes that got any, round trips."""

    commands: dict[str, float]
    nodes: float
    round_trips: float | None

    @property
    def total(self) -> float:
        return sum(self.commands.values())

    def words(self) -> str:
        """``1,002 (get 1000, evalsha 1, hgetall 1)``, most frequent first."""
        parts = ", ".join(f"{name} {n:g}" for name, n in
                          sorted(self.commands.items(), key=lambda item: (-item[1], item[0])))
        return f"{self.total:,g} ({parts})" if parts else "0"

    def json(self) -> dict[str, Any]:
        return {"commands": self.total, "by_command": self.commands, "nodes": self.nodes,
                "round_trips": self.round_trips}


class RedisMeter:
    """``INFO commandstats`` of every node of one Redis deployment, through clients of its
    own (not the driver's)."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.clients = [redis.asyncio.Redis(host="127.0.0.1", port=port, socket_timeout=5,
                                            socket_connect_timeout=5) for port in ports]

    async def snapshot(self) -> list[dict[str, int]]:
        """Calls per command since start, per node (``info`` left out)."""
        found = []
        for client in self.clients:
            stats = await client.info("commandstats")
            found.append({name.removeprefix("cmdstat_"): int(value["calls"])
                          for name, value in stats.items() if name != "cmdstat_info"})
        return found

    @staticmethod
    def delta(before: list[dict[str, int]], after: list[dict[str, int]]
              ) -> tuple[dict[str, int], int]:
        """Commands run between two snapshots, summed over nodes, and how many nodes ran
        any."""
        total: dict[str, int] = {}
        nodes = 0
        for old, new in zip(before, after, strict=True):
            ran = {name: n - old.get(name, 0) for name, n in new.items() if n > old.get(name, 0)}
            nodes += bool(ran)
            for name, n in ran.items():
                total[name] = total.get(name, 0) + n
        return total, nodes

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


# -- the drivers ---------------------------------------------------------------------------------


@dataclass
class Target:
    """One driver to measure: its config entry, and where its Redis nodes listen."""

    name: str
    entry: dict[str, Any]
    #: redis-server ports (every node of a Cluster); empty for other drivers
    ports: list[int] = field(default_factory=list)
    cluster: bool = False

    def manager(self, users: dict[str, Any] | None = None,
                entry: dict[str, Any] | None = None) -> SessionManager:
        """A manager whose default driver is this one (or *entry*), with *users* config,
        the GC lottery off."""
        manager = SessionManager({"default": self.name,
                                  "drivers": {self.name: entry or self.entry},
                                  "lottery": (0, 1), "users": users or {}})
        if self.entry["driver"] == "postgres":
            from examples.postgres_driver import PostgresDriver

            manager.extend("postgres", PostgresDriver.from_config)
        return manager


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@contextlib.contextmanager
def redis_cluster(masters: int = 3, timeout: float = 30) -> Iterator[list[int]]:
    """A throwaway Redis Cluster of *masters* masters on free loopback ports: yields the
    ports. RuntimeError if it does not come up within *timeout* seconds."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        raise RuntimeError("redis-server and redis-cli are needed for a cluster")
    workdir = tempfile.mkdtemp(prefix="aiosessmgr-bench-cluster-")
    processes: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for n in range(masters):
            port = cluster_port()
            node_dir = os.path.join(workdir, str(n))
            os.mkdir(node_dir)
            processes.append(subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", node_dir, "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            ports.append(port)
            wait_listening(port, processes[-1])
        subprocess.run([cli, "-h", "127.0.0.1", "-p", str(ports[0]), "--cluster", "create",
                        *(f"127.0.0.1:{port}" for port in ports), "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=timeout)
        deadline = time.monotonic() + timeout
        while not all("cluster_state:ok" in subprocess.run(
                [cli, "-h", "127.0.0.1", "-p", str(port), "CLUSTER", "INFO"],
                capture_output=True, text=True, check=True, timeout=10).stdout
                for port in ports):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok after {timeout}s")
            time.sleep(0.05)
        yield ports
    finally:
        for process in processes:
            stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


async def postgres_version(dsn: str) -> str:
    """The server's version, or raise (ImportError without asyncpg, OSError and asyncpg's
    errors if unreachable) within 3 s."""
    import asyncpg

    connection = await asyncpg.connect(dsn, timeout=3)
    try:
        version: str = await connection.fetchval("SHOW server_version", timeout=3)
        return version
    finally:
        await connection.close(timeout=3)


async def drop_tables(dsn: str, prefix: str) -> list[str]:
    """Drop every table whose name starts with *prefix* (the benchmark's own); their names."""
    import asyncpg

    connection = await asyncpg.connect(dsn, timeout=3)
    try:
        names: list[str] = [row[0] for row in await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND starts_with(tablename, $1)", prefix, timeout=5)]
        for name in names:
            await connection.execute(f'DROP TABLE IF EXISTS "{name}" CASCADE', timeout=10)
        return names
    finally:
        await connection.close(timeout=3)


def redis_parser() -> str:
    """Which RESP parser redis-py uses: ``hiredis`` if installed, else pure ``python``."""
    return "hiredis" if importlib.util.find_spec("hiredis") else "python (no hiredis)"


def drop_tables_now(dsn: str, prefix: str) -> None:
    """``drop_tables`` outside a running loop (an ExitStack callback)."""
    dropped = asyncio.run(drop_tables(dsn, prefix))
    progress(f"dropped PostgreSQL tables {', '.join(dropped) or '(none)'}")


# -- measuring -----------------------------------------------------------------------------------


def ms_stats(seconds: Sequence[float]) -> dict[str, Any]:
    """Median and p90 (nearest rank) in ms, and every sample."""
    ordered = sorted(s * 1e3 for s in seconds)
    p90 = ordered[min(len(ordered) - 1, max(0, round(0.9 * len(ordered)) - 1))]
    return {"median_ms": statistics.median(ordered), "p90_ms": p90, "n": len(ordered),
            "samples_ms": ordered}


async def populate(manager: SessionManager, user: str, count: int) -> None:
    """Give *user* *count* new logged-in sessions (POPULATE_CHUNK logins at once)."""

    async def one() -> None:
        session = await manager.driver()
        session.put(DATA)
        await session.login(user)
        await session.save()

    for start in range(0, count, POPULATE_CHUNK):
        await asyncio.gather(*(one() for _ in range(min(POPULATE_CHUNK, count - start))))


class Tally:
    """Commands (and on one node round trips) of the calls between ``begin`` and ``end``,
    per call."""

    def __init__(self, meter: RedisMeter, round_trips: bool) -> None:
        self.meter, self.round_trips = meter, round_trips
        self.commands: dict[str, int] = {}
        self.nodes = self.trips = self.calls = 0
        self.before: list[dict[str, int]] = []
        self.sent = 0

    async def begin(self) -> None:
        self.before, self.sent = await self.meter.snapshot(), CountingConnection.sent

    async def end(self) -> None:
        sent = CountingConnection.sent - self.sent
        delta, nodes = self.meter.delta(self.before, await self.meter.snapshot())
        for name, n in delta.items():
            self.commands[name] = self.commands.get(name, 0) + n
        self.nodes += nodes
        self.trips += sent
        self.calls += 1

    def result(self) -> Counts:
        calls = self.calls or 1
        return Counts({name: n / calls for name, n in self.commands.items()},
                      self.nodes / calls, self.trips / calls if self.round_trips else None)


@contextlib.asynccontextmanager
async def counting(target: Target, users: dict[str, Any] | None = None
                   ) -> AsyncIterator[tuple[SessionManager, Tally] | None]:
    """For Redis: a manager on the same store for the untimed counting pass, and its tally.
    On one node its client counts round trips (CountingConnection); on a Cluster it is a
    plain one and only commands are counted. None for other drivers."""
    if not target.ports:
        yield None
        return
    pool = client = None
    entry = None
    if not target.cluster:
        # RESP2 and the timeouts of the driver's own client (see aiosessmgr's redis.client)
        pool = redis.asyncio.ConnectionPool(
            connection_class=CountingConnection, host="127.0.0.1", port=target.ports[0],
            protocol=2, socket_timeout=3, socket_connect_timeout=3)
        client = redis.asyncio.Redis(connection_pool=pool)
        entry = {"driver": "redis", "client": client}
    manager, meter = target.manager(users, entry), RedisMeter(target.ports)
    try:
        yield manager, Tally(meter, round_trips=pool is not None)
    finally:
        await manager.close()
        await meter.close()
        if client is not None and pool is not None:  # passed in: the driver leaves it open
            await client.aclose()
            await pool.aclose()


LOGIN_CASES = ("new", "stored", "cap")


async def bench_login(target: Target, repeat: int) -> list[dict[str, Any]]:
    """ms per ``session.login()`` + ``save()`` into a user with LOGIN_BASE sessions, per
    case."""
    rows = []
    for case in LOGIN_CASES:
        users = {"max_sessions": LOGIN_BASE} if case == "cap" else {}
        user = f"login-{case}-{os.getpid()}-{time.monotonic_ns()}"

        async def prepare(manager: SessionManager, case: str = case) -> SessionStore:
            session = await manager.driver()
            session.put(DATA)
            if case == "stored":  # what a request with the cookie of a stored one has
                await session.save()
                session = await manager.load(session.id)
            return session

        async def finish(session: SessionStore, case: str = case) -> None:
            if case != "cap":  # the cap ends one session per login by itself
                await session.logout()

        manager = target.manager(users)
        try:
            await populate(manager, user, LOGIN_BASE)
            samples = []
            for number in range(repeat + 2):  # two warm-up logins
                session = await prepare(manager)
                started = time.perf_counter()
                await session.login(user)
                await session.save()
                elapsed = time.perf_counter() - started
                if number >= 2:
                    samples.append(elapsed)
                await finish(session)
            counts = None
            async with counting(target, users) as count:
                if count is not None:
                    other, tally = count
                    for number in range(COUNTED + 1):  # the first opens its connections
                        session = await prepare(other)
                        if number:
                            await tally.begin()
                        await session.login(user)
                        await session.save()
                        if number:
                            await tally.end()
                        await finish(session)
                    counts = tally.result()
            left = len(await manager.user_sessions(user))
            if left != LOGIN_BASE:
                raise RuntimeError(f"{target.name} login {case}: the user has {left} "
                                   f"sessions after the runs, not {LOGIN_BASE}")
            await manager.end_user_sessions(user)
        finally:
            await manager.close()
        rows.append({"driver": target.name, "case": case, **ms_stats(samples),
                     "redis": counts.json() if counts else None, "_counts": counts})
    return rows


async def bench_listing(target: Target, sizes: Sequence[int], repeat: int
                        ) -> list[dict[str, Any]]:
    """ms per ``manager.user_sessions()`` of a user with each size of sessions."""
    rows = []
    manager = target.manager()
    try:
        for size in sizes:
            user = f"list-{size}-{os.getpid()}-{time.monotonic_ns()}"
            progress(f"{target.name}: {size:,} sessions of one user ...")
            await populate(manager, user, size)
            samples = []
            for number in range(repeat + 2):  # two warm-up calls
                started = time.perf_counter()
                listed = await manager.user_sessions(user)
                elapsed = time.perf_counter() - started
                if len(listed) != size:
                    raise RuntimeError(f"{target.name}: user_sessions listed {len(listed)} "
                                       f"of {size} sessions")
                if number >= 2:
                    samples.append(elapsed)
            counts = None
            async with counting(target) as count:
                if count is not None:
                    other, tally = count
                    await other.user_sessions(user)  # connections opened, scripts loaded
                    for _ in range(COUNTED):
                        await tally.begin()
                        await other.user_sessions(user)
                        await tally.end()
                    counts = tally.result()
            rows.append({"driver": target.name, "sessions": size, **ms_stats(samples),
                         "redis": counts.json() if counts else None, "_counts": counts})
            await manager.end_user_sessions(user)  # keeps the store small for what follows
    finally:
        await manager.close()
    return rows


# -- read-only requests --------------------------------------------------------------------------


async def _start(request: web.Request) -> web.Response:
    session = await get_session(request)
    session.put(DATA)
    return web.Response(text="ok")


async def _login(request: web.Request) -> web.Response:
    session = await get_session(request)
    session.put(DATA)
    await session.login(request.query["user"])
    return web.Response(text="ok")


async def _read(request: web.Request) -> web.Response:
    session = await get_session(request)
    return web.Response(text=f"theme={session.get('theme')}")


async def _me(request: web.Request) -> web.Response:
    session = await get_session(request)
    return web.Response(text=f"user={session.user_id}")


def app_of(manager: SessionManager) -> web.Application:
    app = web.Application()
    setup(app, manager)
    for path, handler in (("/start", _start), ("/login", _login), ("/read", _read),
                          ("/me", _me)):
        app.router.add_get(path, handler)
    return app


def cookie_of(response: bytes, name: str) -> str:
    """``name=value`` of the cookie *response* sets; RuntimeError if it sets none."""
    jar: SimpleCookie = SimpleCookie()
    for line in response.split(b"\r\n\r\n", 1)[0].decode().split("\r\n"):
        if line.lower().startswith("set-cookie:"):
            jar.load(line.split(":", 1)[1].strip())
    if name not in jar:
        raise RuntimeError(f"no {name} cookie in {response[:200]!r}")
    return f"{name}={jar[name].value}"


async def timed(case: hotpath.Case, requests: int) -> tuple[float, float]:
    """``hotpath.timed`` that also measures this process's CPU seconds (all threads: the
    file driver's pool included): (wall seconds, CPU seconds) of *requests* requests."""
    gc.collect()
    send, raw = case.connection.send, case.raw
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(requests):
        await send(raw)
    return time.perf_counter() - started, time.process_time() - cpu


#: (case, touch_interval seconds, logged in)
REQUEST_CASES = (("anonymous", 60.0, False), ("logged-in", 60.0, True),
                 ("anonymous", 0.0, False), ("logged-in", 0.0, True))


async def bench_requests(target: Target, requests: int, repeat: int
                         ) -> list[dict[str, Any]]:
    """µs per read-only request of each REQUEST_CASES case (minimum of *repeat* runs)."""
    connections: dict[float, hotpath.Connection] = {}
    managers: dict[float, SessionManager] = {}
    cases: list[hotpath.Case] = []
    meter = RedisMeter(target.ports) if target.ports else None
    seen: dict[float, float] = {}
    users: dict[float, str] = {}
    try:
        for touch in (60.0, 0.0):
            manager = managers[touch] = target.manager({"touch_interval": touch})
            connection = connections[touch] = hotpath.Connection(app_of(manager))
            await connection.open()
            name = manager.config.cookie.name
            anonymous = cookie_of(await connection.send(hotpath.request("/start", None)),
                                  name)
            user = f"ann-{touch:g}-{os.getpid()}-{time.monotonic_ns()}"
            users[touch] = user
            logged_in = cookie_of(await connection.send(
                hotpath.request(f"/login?user={user}", None)), name)
            for cookie, expected in ((anonymous, "user=None"), (logged_in, f"user={user}")):
                got = hotpath.body(await connection.send(hotpath.request("/me", cookie)))
                if got != expected:
                    raise RuntimeError(f"{target.name}: /me answered {got!r}, not {expected}")
            cases += [hotpath.Case(f"anonymous@{touch:g}", connection,
                                   hotpath.request("/read", anonymous)),
                      hotpath.Case(f"logged-in@{touch:g}", connection,
                                   hotpath.request("/read", logged_in))]
        for case in cases:  # caches, first-call costs, connections to the store
            await timed(case, min(500, requests * 2))
        wall: dict[str, list[float]] = {case.name: [] for case in cases}
        cpu: dict[str, list[float]] = {case.name: [] for case in cases}
        commands: dict[str, dict[str, int]] = {case.name: {} for case in cases}
        for _ in range(repeat):
            for case in cases:  # interleaved, so a slow moment hits every case alike
                before = await meter.snapshot() if meter else None
                seconds, process = await timed(case, requests)
                cpu[case.name].append(process / requests * 1e6)
                wall[case.name].append(seconds / requests * 1e6)
                if meter is not None and before is not None:
                    delta = meter.delta(before, await meter.snapshot())[0]
                    for command, n in delta.items():
                        commands[case.name][command] = commands[case.name].get(command,
                                                                               0) + n
        for case in cases:
            response = await case.connection.send(case.raw)
            if not response.startswith(b"HTTP/1.1 200 ") or \
                    hotpath.body(response) != "theme=dark":
                raise RuntimeError(f"{target.name} {case.name} answered {response[:80]!r}")
        for touch, manager in managers.items():
            (info,) = await manager.user_sessions(users[touch])
            seen[touch] = info.last_seen - info.created_at
        if seen[0.0] <= 0:
            raise RuntimeError(f"{target.name}: touch_interval=0 never refreshed last_seen")
        trips = await count_requests(target, cases)
    finally:
        for connection in connections.values():
            await connection.close()  # closes its manager too (setup registered it)
        if meter is not None:
            await meter.close()
    rows: list[dict[str, Any]] = []
    for (label, touch, logged), case in zip(REQUEST_CASES, cases, strict=True):
        us = min(wall[case.name])
        per_request = ({name: n / (requests * repeat) for name, n in commands[case.name].items()}
                       if meter is not None else None)
        rows.append({"driver": target.name, "case": label, "touch_interval_s": touch,
                     "logged_in": logged, "us_min": us,
                     "us_median": statistics.median(wall[case.name]),
                     "requests_per_s": 1e6 / us, "cpu_us_min": min(cpu[case.name]),
                     "runs_us": wall[case.name], "redis_commands_per_request": per_request,
                     "redis_round_trips_per_request": trips.get(case.name),
                     # of the logged-in session after the runs: 0 if no request wrote it
                     "last_seen_after_login_s": seen[touch] if logged else None})
    for row in rows:
        base = next(r for r in rows if not r["logged_in"]
                    and r["touch_interval_s"] == row["touch_interval_s"])
        row["vs_anonymous"] = row["requests_per_s"] / base["requests_per_s"]
        row["cpu_vs_anonymous"] = base["cpu_us_min"] / row["cpu_us_min"]
    return rows


async def count_requests(target: Target, cases: Sequence[hotpath.Case]) -> dict[str, float]:
    """Round trips per request of each case on one Redis node: the same requests (the
    sessions are in the same Redis) sent to an app on a counting manager of the same
    ``touch_interval``, COUNTED times each after one to warm up. {} for other drivers."""
    found: dict[str, float] = {}
    if not target.ports or target.cluster:
        return found
    for touch in (60.0, 0.0):
        async with counting(target, {"touch_interval": touch}) as count:
            assert count is not None  # a Redis target
            other, tally = count
            connection = hotpath.Connection(app_of(other))
            await connection.open()
            try:
                for case in cases:
                    if not case.name.endswith(f"@{touch:g}"):
                        continue
                    await connection.send(case.raw)
                    each = Tally(tally.meter, tally.round_trips)
                    for _ in range(COUNTED):
                        await each.begin()
                        response = await connection.send(case.raw)
                        await each.end()
                        if hotpath.body(response) != "theme=dark":
                            raise RuntimeError(f"{target.name} {case.name} (counted) "
                                               f"answered {response[:80]!r}")
                    trips = each.result().round_trips
                    assert trips is not None  # a single node counts them
                    found[case.name] = trips
            finally:
                await connection.close()
    return found


# -- running it all ------------------------------------------------------------------------------


async def has_index(target: Target) -> str | None:
    """None if the driver keeps a user index, else why it is skipped."""
    manager = target.manager()
    try:
        await manager.user_sessions(f"probe-{os.getpid()}")
    except SessionError as exc:
        return f"no user index: {exc}"
    finally:
        await manager.close()
    return None


async def run(targets: list[Target], opts: argparse.Namespace
              ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    results: dict[str, list[dict[str, Any]]] = {"login": [], "user_sessions": [],
                                                "requests": []}
    skipped: dict[str, str] = {}
    for target in targets:
        why = await has_index(target)
        if why is not None:
            skipped[target.name] = why
            progress(f"skipping {target.name}: {why}")
            continue
        progress(f"{target.name}: login x {opts.repeat} per case ...")
        results["login"] += await bench_login(target, opts.repeat)
        results["user_sessions"] += await bench_listing(target, opts.sizes, opts.repeat)
        progress(f"{target.name}: read-only requests, {len(REQUEST_CASES)} cases x "
                 f"{opts.http_repeat} x {opts.requests:,} ...")
        results["requests"] += await bench_requests(target, opts.requests, opts.http_repeat)
    return results, skipped


def verdicts(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One line per target that has rows: the value, and met / MISSED by how much."""
    lines = []
    for row in results["user_sessions"]:
        if row["sessions"] == LISTING_TARGET_SIZE:
            p90 = row["p90_ms"]
            verdict = "met" if p90 < LISTING_MS else f"MISSED by {p90 - LISTING_MS:.1f} ms"
            lines.append(f"{row['driver']} user_sessions of {LISTING_TARGET_SIZE:,} sessions "
                         f"< {LISTING_MS:g} ms (p90): {p90:.1f} ms (median "
                         f"{row['median_ms']:.1f} ms), {verdict}")
    for driver in dict.fromkeys(r["driver"] for r in results["user_sessions"]):
        trips = {r["sessions"]: r["redis"]["round_trips"] for r in results["user_sessions"]
                 if r["driver"] == driver and r["redis"] and r["redis"]["round_trips"]
                 is not None}
        if not trips:
            continue
        fixed = len(set(trips.values())) == 1 and max(trips.values()) <= ROUND_TRIPS_MAX
        shown = ", ".join(f"{size:,}: {n:g}" for size, n in trips.items())
        lines.append(f"{driver} user_sessions round trips fixed and <= {ROUND_TRIPS_MAX} "
                     f"whatever the size: {shown}, " + ("met" if fixed else "MISSED"))
    for row in results["requests"]:
        if row["logged_in"] and row["touch_interval_s"] > 0:
            ratio = row["vs_anonymous"]
            verdict = "met" if ratio >= LOGGED_IN_RATIO else \
                f"MISSED by {LOGGED_IN_RATIO - ratio:.2f}x"
            lines.append(f"{row['driver']} logged-in read-only request within the touch "
                         f"interval >= {LOGGED_IN_RATIO}x anonymous: {ratio:.2f}x, {verdict}; "
                         f"by CPU per request {row['cpu_vs_anonymous']:.2f}x")
    return lines


def _redis_cells(counts: Counts | None, cluster: bool) -> list[str]:
    if counts is None:
        return ["—", "—"]
    trips = (f"n/a ({counts.nodes:.3g} nodes)" if cluster else
             "—" if counts.round_trips is None else f"{counts.round_trips:.3g}")
    return [counts.words(), trips]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli_parser("python -m benchmarks.users", __doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: --repeat 5, --requests 100, --http-repeat 3, "
                        "no verdicts")
    parser.add_argument("--drivers", default=",".join(DRIVERS),
                        help=f"comma-separated, of: {', '.join(DRIVERS)} (default: all)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="timed logins per case and user_sessions calls per size "
                        "(default 50)")
    parser.add_argument("--sizes", default="10,100,1000",
                        help="sessions of the listed users (default 10,100,1000)")
    parser.add_argument("--requests", type=int, default=None,
                        help="read-only requests per case and run (default 250)")
    parser.add_argument("--http-repeat", type=int, default=None,
                        help="runs per request case, interleaved; the minimum counts (default 40)")
    parser.add_argument("--pg-dsn", default=os.environ.get("DATABASE_URL", DEFAULT_DSN),
                        help=f"PostgreSQL to use (default $DATABASE_URL or {DEFAULT_DSN})")
    parser.add_argument("--no-json", action="store_true",
                        help="do not write benchmarks/results/users.json")
    opts = parser.parse_args(argv)
    quick = opts.quick
    opts.repeat = opts.repeat or (5 if quick else 50)
    opts.requests = opts.requests or (100 if quick else 250)
    opts.http_repeat = opts.http_repeat or (3 if quick else 40)
    opts.drivers = opts.drivers.split(",")
    unknown = [name for name in opts.drivers if name not in DRIVERS]
    if unknown:
        parser.error(f"unknown drivers {', '.join(unknown)}; choose from {', '.join(DRIVERS)}")
    try:
        opts.sizes = [int(size) for size in opts.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes must be comma-separated numbers, got {opts.sizes!r}")
    if min(opts.repeat, opts.requests, opts.http_repeat, *opts.sizes) < 1:
        parser.error("--repeat, --requests, --http-repeat and --sizes must be at least 1")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the setup line, tables and verdicts; return 0."""
    opts = parse_args(argv)
    started = time.perf_counter()
    facts: dict[str, Any] = {
        "drivers": "/".join(opts.drivers), "quick": opts.quick, "repeat": opts.repeat,
        "sizes": "/".join(map(str, opts.sizes)), "login_base": LOGIN_BASE,
        "requests": opts.requests, "http_repeat": opts.http_repeat,
        "requests_client": "in-process (same process and CPU, no sockets)",
        "lottery": "off", "reported": "median/p90 ms; requests: min of runs",
        "loadavg_1min": f"{os.getloadavg()[0]:.2f}"}
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        for name in opts.drivers:
            if name == "memory":
                targets.append(Target(name, {"driver": "memory"}))
            elif name == "file":
                directory = stack.enter_context(tempfile.TemporaryDirectory(
                    prefix="aiosessmgr-bench-users-"))
                targets.append(Target(name, {"driver": "file", "path": directory}))
                facts["file_fs"] = file_system(os.path.realpath(directory))
            elif name == "redis":
                url, facts["redis"] = stack.enter_context(redis_server())
                facts["redis_py_parser"] = redis_parser()
                port = int(url.rsplit(":", 1)[1].split("/")[0])
                targets.append(Target(name, {"driver": "redis", "url": url}, [port]))
            elif name == "redis-cluster":
                try:
                    ports = stack.enter_context(redis_cluster())
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    skipped[name] = f"could not start a cluster: {exc}"
                    progress(f"skipping {name}: {skipped[name]}")
                    continue
                facts["cluster"] = f"{len(ports)} masters"
                targets.append(Target(name, {"driver": "redis", "cluster": True,
                                             "url": f"redis://127.0.0.1:{ports[0]}/0"},
                                      ports, cluster=True))
            else:
                try:
                    facts["postgres"] = asyncio.run(postgres_version(opts.pg_dsn))
                except Exception as exc:  # ImportError, OSError, asyncpg's errors
                    skipped[name] = (f"PostgreSQL not reachable at {opts.pg_dsn}: "
                                     f"{type(exc).__name__}: {exc}")
                    progress(f"skipping {name}: {skipped[name]}")
                    continue
                prefix = f"bench_users_{os.getpid()}"
                stack.callback(drop_tables_now, opts.pg_dsn, prefix)
                targets.append(Target(name, {"driver": "postgres", "dsn": opts.pg_dsn,
                                             "table": prefix}))
        print("## Sessions of a user")
        print()
        print(setup_line(**facts))
        results, not_indexed = asyncio.run(run(targets, opts))
    skipped.update(not_indexed)
    cluster = {"redis-cluster"}
    print()
    for name, why in skipped.items():
        print(f"- skipped {name}: {why}")
    if skipped:
        print()
    print(f"### login: ms per session.login() + save() into a user with {LOGIN_BASE} "
          "sessions")
    print()
    print(table(["driver", "case", "median ms", "p90 ms", "redis commands", "round trips"],
                [[r["driver"], r["case"], f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}",
                  *_redis_cells(r["_counts"], r["driver"] in cluster)]
                 for r in results["login"]]))
    print()
    print("### user_sessions: ms per manager.user_sessions(user), all sessions live")
    print()
    print(table(["driver", "sessions", "median ms", "p90 ms", "redis commands",
                 "round trips"],
                [[r["driver"], f"{r['sessions']:,}", f"{r['median_ms']:.3f}",
                  f"{r['p90_ms']:.3f}", *_redis_cells(r["_counts"], r["driver"] in cluster)]
                 for r in results["user_sessions"]]))
    print()
    print("### read-only requests: logged-in vs anonymous (in-process, no sockets)")
    print()

    def per_request(row: dict[str, Any]) -> str:
        found = row["redis_commands_per_request"]
        if found is None:
            return "—"
        return ", ".join(f"{name} {n:.2f}" for name, n in sorted(found.items())) or "0"

    def trips(row: dict[str, Any]) -> str:
        found = row["redis_round_trips_per_request"]
        return "—" if found is None else f"{found:.3g}"

    print(table(["driver", "touch_interval", "session", "requests/s", "µs/request (min)",
                 "CPU µs/request (min)", "redis commands/request", "round trips/request",
                 "vs anonymous", "vs anonymous by CPU"],
                [[r["driver"], (f"{r['touch_interval_s']:g} s (every request past it)"
                                if r["touch_interval_s"] == 0 else
                                f"{r['touch_interval_s']:g} s (within it)"),
                  r["case"], f"{r['requests_per_s']:,.0f}", f"{r['us_min']:.1f}",
                  f"{r['cpu_us_min']:.1f}", per_request(r), trips(r),
                  f"{r['vs_anonymous']:.3f}x", f"{r['cpu_vs_anonymous']:.3f}x"]
                 for r in results["requests"]]))
    print()
    facts["loadavg_1min_after"] = f"{os.getloadavg()[0]:.2f}"
    print("Redis commands: INFO commandstats deltas (commands inside scripts included); of "
          f"login and user_sessions per call over {COUNTED} untimed calls, of requests over "
          "the timed runs. Round trips: network writes of a counting redis-py connection in "
          f"an untimed pass ({COUNTED} calls or requests; single node); on a Cluster the "
          "nodes that got commands instead. Requests: the client is in-process, so the CPU "
          "columns (this process, all threads) hold the client's share too; ratios are of "
          "the same run. Load average (1 min) of the machine: "
          f"{facts['loadavg_1min']} before, {facts['loadavg_1min_after']} after.")
    targets_met = [] if opts.quick else verdicts(results)
    print()
    if opts.quick:
        print("quick run: no verdicts")
    for line in targets_met:
        print(f"- {line}")
    for rows in results.values():
        for row in rows:
            row.pop("_counts", None)
    if not opts.no_json:
        path = write_json("users", {
            "setup": facts, "skipped": skipped, **results, "targets": targets_met,
            "verdicts": "quick run: no verdicts" if opts.quick else "see targets"})
        progress(f"wrote {path}")
    progress(f"took {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
