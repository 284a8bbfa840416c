"""HTTP throughput of session-backed aiohttp apps: read-only and modifying requests.

Run ``python -m benchmarks.http`` (``--help`` for options; ``--quick`` is a smoke run of
about 15 s that prints no target verdicts). In one run it starts its own ``redis-server``
on a free loopback port, then, one at a time, one server process per row (each on its own
port) and drives it with ``wrk`` (or, without wrk on PATH, a load generator in a separate
process). Rows (``--drivers``):

* ``aiohttp``: bare aiohttp, no session (the ceiling);
* ``redis-py``: a raw handler doing one redis-py ``GET`` (read) or ``GET`` + ``SET`` (write);
* ``aiohttp-session``: aiohttp-session's ``RedisStorage``;
* ``aiosessmgr-redis`` / ``aiosessmgr-redis-nopipe``: this library's Redis driver with
  and without auto-pipelining;
* ``aiosessmgr-redis-aes``: the Redis driver with AES-256-GCM at rest;
* ``aiosessmgr-redis-set``: the Redis driver without compare-and-set (saves are a plain
  ``SET``), the baseline for what lossless saves cost;
* ``aiosessmgr-memory`` / ``aiosessmgr-file``: the other built-in drivers;
* ``aiohttp-session-cookie`` / ``aiosessmgr-cookie``: client-side sessions, the record in
  the cookie itself: aiohttp-session's ``EncryptedCookieStorage`` (Fernet: AES-128-CBC +
  HMAC-SHA256, JSON) against this library's ``cookie`` driver (AES-256-GCM, msgpack).
  wrk sends the login's cookie unchanged, so every ``/write`` starts from the login's
  record (the response's new cookie is dropped, as a client that ignores it would): the
  work per request is the same as a browser's (decrypt, change, encrypt, ``Set-Cookie``),
  and there are no lost updates to count (the store is the client).

Every row serves ``/login`` (creates a session), ``/read`` (reads one value) and ``/write``
(increments a counter), plus ``/stats``, the benchmark's own control endpoint. Scenarios:

* ``read`` / ``write``: the load rotates over ``--sessions`` sessions (256) on
  ``--concurrency`` connections (64), so concurrent writes rarely hit one session, as with
  real users. wrk rotates the cookies with a Lua script that builds every request once in
  ``init`` (``wrk.format``) and only hands them out per request: measured on bare aiohttp
  at ~30k req/s, wrk's CPU is the same as plain wrk's (about 40% of a core);
* ``hot-read`` / ``hot-write`` (the rows in HOT_ROWS): one session on all
  ``--hot-concurrency`` connections (32): plain wrk, ``-H 'Cookie: ...'``, no script.

Lost updates: around each write scenario the counters of its sessions are read back and
compared with the ``/write`` responses below 400 that the server sent (counted by an access
logger, which aiohttp asks once per connection, so only the write scenarios' connections
pay for it). ``lost`` = answered - counted; 0 for a lossless store. wrk's own count of 2xx
responses (``wrk_ok`` in the JSON) is lower by the requests in flight when wrk stopped,
which the server still answered and applied.

Honest by construction: each cell shows, as % of one core over the measured window, the
server's CPU (``/proc/<pid>/stat`` before and after), the load generator's
(``getrusage(RUSAGE_CHILDREN)`` before and after its run: the reaped wrk process with all
its threads), redis-server's, and that of other processes of the machine (``/proc/stat``
busy time less interrupt work and less ours). With two or more CPUs the server gets the
first CPU to itself and wrk and redis-server share the others (``taskset``; ``--no-pin``
turns it off); the setup line says which. A cell is flagged ``LOAD-BOUND`` (a WARNING line, and
``"load_bound": true`` in the JSON) when the load generator may be the bottleneck:

* wrk's CPU is at least LOAD_SATURATED (90%) of the cores its threads may use (``-t``);
* or the server used less than SERVER_BUSY (85%) of one core while the CPUs of the load
  side (pinned, the load CPUs: wrk, redis-server and the loopback TCP work they cause;
  unpinned, the whole machine) were at least LOAD_SATURATED busy, and the cell is not
  ``contended``.

Two more flags, for the other ways a cell can mislead:

* ``contended``: other processes of the machine used at least OTHERS (10%) of a core: a
  noisy cell (the machine is shared; even a server that kept its CPU busy then runs
  slower per request, as the vCPUs share the host's cores);
* ``server-idle``: a row that waits for no store (bare aiohttp, the memory driver) was not
  kept busy by the load: on this 2-vCPU VM, wake-ups between the server's CPU and wrk's
  sometimes leave both half idle (neither saturated), so its requests/s is understated,
  while its server CPU per request still holds.

Otherwise a server below SERVER_BUSY is waiting for its store (Redis round trips, file
I/O, the turns of one session's saves): the app's own limit, not flagged. A target verdict
that rests on a flagged cell says it is not conclusive; each verdict also gives the ratio
by server CPU per request, steadier on a shared machine.

Prints the setup line, a Markdown table (requests/s, ratios against the baselines of the
same scenario in the same run, the CPU columns, lost updates, flags), the warnings, one
verdict per target (none for ``--quick``), and writes ``benchmarks/results/http.json``.
The "vs aiohttp-session" column compares with the aiohttp-session row of the same kind of
store: RedisStorage, or EncryptedCookieStorage for the cookie rows.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, DummyCookieJar, TCPConnector, web
from aiohttp.abc import AbstractAccessLogger

from benchmarks._common import (
    cli_parser,
    free_port,
    pinned,
    progress,
    redis_process,
    session_handlers,
    setup_line,
    stop,
    table,
    wait_listening,
    write_json,
)

ROOT = Path(__file__).resolve().parent.parent
#: the rotating scenarios (``--sessions`` sessions) and the hot ones (one session)
SCENARIOS = ("read", "write", "hot-read", "hot-write")
WRITES = ("write", "hot-write")
DEFAULT_ROWS = ("aiohttp", "redis-py", "aiohttp-session", "aiosessmgr-redis",
                "aiosessmgr-redis-nopipe", "aiosessmgr-redis-aes", "aiosessmgr-redis-set",
                "aiosessmgr-memory", "aiosessmgr-file", "aiohttp-session-cookie",
                "aiosessmgr-cookie")
#: rows that also run the hot scenarios (bare aiohttp for the one-cookie baseline)
HOT_ROWS = ("aiohttp", "aiohttp-session", "aiosessmgr-redis", "aiosessmgr-memory",
            "aiosessmgr-file")
#: the rows of ``--quick``: bare, one in-process and one Redis row
QUICK_ROWS = ("aiohttp", "aiosessmgr-memory", "aiosessmgr-redis")
#: seconds; session lifetime everywhere (aiosessmgr's 120 minutes)
TTL = 7200
#: fraction of the cores a load generator may use at or above which it is saturated;
#: also how busy the load side's CPUs (or a pinned server's CPU) count as full
LOAD_SATURATED = 0.90
#: fraction of one core below which the server is not the bottleneck of its cell
SERVER_BUSY = 0.85
#: cores that other processes of the machine may use in a cell before it counts as noisy
OTHERS = 0.10
#: the project's targets: (row, scenario, baseline row, baseline scenario, minimum ratio)
TARGETS = (
    ("aiosessmgr-redis", "read", "aiohttp-session", "read", 1.5),
    ("aiosessmgr-redis", "read", "redis-py", "read", 1.0),
    ("aiosessmgr-redis", "write", "aiohttp-session", "write", 1.5),
    # encryption costs at most 5% on read-only requests
    ("aiosessmgr-redis-aes", "read", "aiosessmgr-redis", "read", 0.95),
    # compare-and-set saves cost at most 5% against plain SET saves
    ("aiosessmgr-redis", "write", "aiosessmgr-redis-set", "write", 0.95),
    ("aiosessmgr-file", "read", "aiosessmgr-memory", "read", 0.5),
    # hot sessions (one cookie on all connections), the one-cookie read path
    ("aiosessmgr-redis", "hot-write", "aiohttp-session", "hot-write", 1.5),
    ("aiosessmgr-redis", "hot-write", "aiosessmgr-redis", "write", 0.8),
    ("aiosessmgr-file", "hot-write", "aiosessmgr-file", "write", 1.0),
    ("aiosessmgr-memory", "hot-read", "aiohttp", "hot-read", 0.80),
    # the cookie driver: client-side sessions at least as fast as aiohttp-session's
    ("aiosessmgr-cookie", "read", "aiohttp-session-cookie", "read", 1.0),
    ("aiosessmgr-cookie", "write", "aiohttp-session-cookie", "write", 1.0),
)


# -- the apps (each runs in its own server process) -----------------------------------------


@dataclass(frozen=True)
class Row:
    """One app under test: how to build it, and which cookie carries its session."""

    name: str
    cookie: str
    build: Callable[[argparse.Namespace], web.Application]
    #: True if /write's body must show a counter that goes up (a functional check), and
    #: /stats the session's counter (lost updates)
    counts: bool = True
    #: False if a request never waits for a store outside the process: then a server
    #: below SERVER_BUSY was not kept busy by the load (flagged ``server-idle``)
    waits: bool = True
    #: True if the record lives in the cookie: wrk resends the login's cookie, so every
    #: /write answers ``n=1`` and must set a new cookie; no lost updates to count
    client_side: bool = False
    #: the aiohttp-session row with the same kind of store (the "vs aiohttp-session" column)
    peer: str = "aiohttp-session"


class Tally(AbstractAccessLogger):
    """Counts the ``/write`` responses a server process sent, for lost updates.

    aiohttp asks a connection's access logger once, when the connection opens, whether it
    is enabled: ``/stats?count=on`` turns counting on before a write scenario's wrk opens
    its connections, so the other scenarios pay nothing for it.
    """

    counting = False
    #: /write handlers entered, /write responses sent, and of those the ones below 400
    started = answered = ok = 0

    @property
    def enabled(self) -> bool:
        return Tally.counting

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request.path == "/write":
            Tally.answered += 1
            if response.status < 400:  # what wrk counts as a success
                Tally.ok += 1


def add_stats(app: web.Application,
              count: Callable[[web.Request], Awaitable[int | None]]) -> None:
    """Add ``/stats``: the counter of the cookie's session (*count*) and Tally's counts.

    ``?count=on`` resets Tally and turns it on; ``?settle=1`` first waits (at most 30 s)
    until every ``/write`` handler that started has answered and nothing moved for 50 ms,
    then turns counting off.
    """

    async def stats(request: web.Request) -> web.Response:
        if request.query.get("count") == "on":
            Tally.counting, Tally.started, Tally.answered, Tally.ok = True, 0, 0, 0
        settled = True
        if request.query.get("settle"):
            loop = asyncio.get_running_loop()
            deadline, last = loop.time() + 30, -1
            while not (Tally.answered >= Tally.started and Tally.answered == last):
                if loop.time() > deadline:
                    settled = False
                    break
                last = Tally.answered
                await asyncio.sleep(0.05)
            Tally.counting = False
        n = await count(request) if request.headers.get("Cookie") else None
        return web.json_response({"n": n, "ok": Tally.ok, "answered": Tally.answered,
                                  "started": Tally.started, "settled": settled})

    app.router.add_get("/stats", stats)


async def no_count(request: web.Request) -> int | None:
    """The counter of an app without sessions: none."""
    return None


def bare_app(opts: argparse.Namespace) -> web.Application:
    """No session at all: the ceiling of this machine and aiohttp."""

    async def login(request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.set_cookie("sid", os.urandom(16).hex())
        return response

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def write(request: web.Request) -> web.Response:
        Tally.started += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/login", login)
    app.router.add_get("/read", ok)
    app.router.add_get("/write", write)
    add_stats(app, no_count)
    return app


def redis_py_app(opts: argparse.Namespace) -> web.Application:
    """A raw handler on redis-py's default pool: one GET per read, GET + SET per write."""
    from redis.asyncio import Redis

    client = Redis.from_url(opts.redis_url)

    async def login(request: web.Request) -> web.Response:
        sid = os.urandom(16).hex()
        await client.set(f"raw:{sid}", json.dumps({"user": "ann", "n": 0}), ex=TTL)
        response = web.Response(text="ok")
        response.set_cookie("sid", sid)
        return response

    async def read(request: web.Request) -> web.Response:
        raw = await client.get(f"raw:{request.cookies['sid']}")
        data = json.loads(raw) if raw is not None else {}
        return web.Response(text=f"user={data.get('user')}")

    async def write(request: web.Request) -> web.Response:
        Tally.started += 1
        key = f"raw:{request.cookies['sid']}"
        raw = await client.get(key)
        data = json.loads(raw) if raw is not None else {"n": 0}
        data["n"] += 1
        await client.set(key, json.dumps(data), ex=TTL)
        return web.Response(text=f"n={data['n']}")

    async def count(request: web.Request) -> int | None:
        raw = await client.get(f"raw:{request.cookies['sid']}")
        return None if raw is None else int(json.loads(raw)["n"])

    async def close(app: web.Application) -> None:
        await client.aclose()

    app = web.Application()
    app.router.add_get("/login", login)
    app.router.add_get("/read", read)
    app.router.add_get("/write", write)
    add_stats(app, count)
    app.on_cleanup.append(close)
    return app


def aiohttp_session_app(opts: argparse.Namespace) -> web.Application:
    """aiohttp-session's RedisStorage, the reference point: what aiohttp apps use today."""
    from aiohttp_session.redis_storage import RedisStorage
    from redis.asyncio import Redis

    client = Redis.from_url(opts.redis_url)

    async def close(app: web.Application) -> None:
        await client.aclose()

    app = _aiohttp_session_handlers(RedisStorage(client, max_age=TTL))
    app.on_cleanup.append(close)
    return app


def aiohttp_session_cookie_app(opts: argparse.Namespace) -> web.Application:
    """aiohttp-session's EncryptedCookieStorage (Fernet), the cookie driver's reference."""
    from aiohttp_session.cookie_storage import EncryptedCookieStorage

    # the same 32 bytes as BENCH_KEY; Fernet splits them into signing and encryption keys
    return _aiohttp_session_handlers(EncryptedCookieStorage(
        base64.b64decode(BENCH_KEY), max_age=TTL))


def _aiohttp_session_handlers(storage: Any) -> web.Application:
    """An app on aiohttp-session's *storage* with the benchmark's handlers."""
    import aiohttp_session

    async def login(request: web.Request) -> web.Response:
        session = await aiohttp_session.new_session(request)
        session["user"] = "ann"
        session["n"] = 0
        return web.Response(text="ok")

    async def read(request: web.Request) -> web.Response:
        session = await aiohttp_session.get_session(request)
        return web.Response(text=f"user={session.get('user')}")

    async def write(request: web.Request) -> web.Response:
        Tally.started += 1
        session = await aiohttp_session.get_session(request)
        session["n"] = session.get("n", 0) + 1
        return web.Response(text=f"n={session['n']}")

    async def count(request: web.Request) -> int | None:
        session = await aiohttp_session.get_session(request)
        value = session.get("n")
        return value if isinstance(value, int) else None

    app = web.Application()
    aiohttp_session.setup(app, storage)
    app.router.add_get("/login", login)
    app.router.add_get("/read", read)
    app.router.add_get("/write", write)
    add_stats(app, count)
    return app


def _plain_write_redis(config: Any) -> Any:
    """The Redis driver without compare-and-set, so saves are one plain ``SET``."""
    from aiosessmgr import DriverConfig, SessionDriver
    from aiosessmgr.drivers.redis import RedisDriver

    inner = RedisDriver.from_config(DriverConfig("redis", config.lifetime, config.options))

    class PlainWrite(SessionDriver):
        read, write, destroy, gc = inner.read, inner.write, inner.destroy, inner.gc
        read_touch, close = inner.read_touch, inner.close

    return PlainWrite()


#: a fixed benchmark key (the cost of AES-256-GCM does not depend on the key)
BENCH_KEY = "YWlvc2Vzc21nci1iZW5jaG1hcmsta2V5LTMyYnl0ZXM="


def aiosessmgr_app(entry: Callable[[argparse.Namespace], dict[str, Any]],
                   **config: Any) -> Callable[[argparse.Namespace], web.Application]:
    """An aiosessmgr app on the driver config entry that *entry* builds, plus *config*."""

    def build(opts: argparse.Namespace) -> web.Application:
        import aiosessmgr

        manager = aiosessmgr.SessionManager({"drivers": {"main": entry(opts)}, **config})
        manager.extend("redis-plain-write", _plain_write_redis)

        handlers = session_handlers()
        counted = handlers["/write"]

        async def write(request: web.Request) -> web.StreamResponse:
            Tally.started += 1
            response: web.StreamResponse = await counted(request)
            return response

        async def count(request: web.Request) -> int | None:
            session = await aiosessmgr.get_session(request)
            value = session.get("n")
            return value if isinstance(value, int) else None

        app = web.Application()
        aiosessmgr.setup(app, manager)
        app.router.add_get("/login", handlers["/login"])
        app.router.add_get("/read", handlers["/read"])
        app.router.add_get("/write", write)
        add_stats(app, count)
        return app

    return build


ROWS: dict[str, Row] = {row.name: row for row in (
    Row("aiohttp", "sid", bare_app, counts=False, waits=False),
    Row("redis-py", "sid", redis_py_app),
    Row("aiohttp-session", "AIOHTTP_SESSION", aiohttp_session_app),
    Row("aiosessmgr-redis", "aiosessmgr_session", aiosessmgr_app(
        lambda o: {"driver": "redis", "lifetime": TTL / 60, "url": o.redis_url})),
    Row("aiosessmgr-redis-nopipe", "aiosessmgr_session", aiosessmgr_app(
        lambda o: {"driver": "redis", "lifetime": TTL / 60, "url": o.redis_url,
                   "pipelining": False})),
    Row("aiosessmgr-redis-aes", "aiosessmgr_session", aiosessmgr_app(
        lambda o: {"driver": "redis", "lifetime": TTL / 60, "url": o.redis_url},
        encryption={"enabled": True, "key": BENCH_KEY})),
    Row("aiosessmgr-redis-set", "aiosessmgr_session", aiosessmgr_app(
        lambda o: {"driver": "redis-plain-write", "lifetime": TTL / 60, "url": o.redis_url})),
    Row("aiosessmgr-memory", "aiosessmgr_session", aiosessmgr_app(
        lambda o: {"driver": "memory", "lifetime": TTL / 60}), waits=False),
    Row("aiosessmgr-file", "aiosessmgr_session", aiosessmgr_app(
        lambda o: {"driver": "file", "lifetime": TTL / 60, "path": o.file_path})),
    Row("aiohttp-session-cookie", "AIOHTTP_SESSION", aiohttp_session_cookie_app, waits=False,
        client_side=True, peer="aiohttp-session-cookie"),
    Row("aiosessmgr-cookie", "aiosessmgr_session", aiosessmgr_app(
        lambda o: {"driver": "cookie", "lifetime": TTL / 60}, encryption={"key": BENCH_KEY}),
        waits=False, client_side=True, peer="aiohttp-session-cookie"),
)}


def serve(opts: argparse.Namespace) -> None:
    """Server-process entry point: run one row's app until SIGTERM."""
    app = ROWS[opts.serve].build(opts)
    # the access log is Tally, enabled only on the connections of write scenarios
    web.run_app(app, host="127.0.0.1", port=opts.port, print=None, handle_signals=True,
                access_log=logging.getLogger("benchmarks.http"), access_log_class=Tally)


# -- processes ----------------------------------------------------------------------------


def flush_redis(url: str) -> None:
    """FLUSHALL, so every row starts on an empty Redis."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), 5) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        assert sock.recv(64).startswith(b"+OK")


@contextlib.contextmanager
def app_server(row: Row, opts: argparse.Namespace) -> Iterator[tuple[int, int]]:
    """Run *row*'s app in its own process on a free port; yield (port, pid)."""
    port = free_port()
    args = [sys.executable, "-m", "benchmarks.http", "--serve", row.name, "--port", str(port),
            "--redis-url", opts.redis_url, "--file-path", opts.file_path]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(pinned(args, opts.pinning.server), cwd=ROOT, env=env)
    try:
        wait_listening(port, process)
        yield port, process.pid
    finally:
        stop(process)


# -- load -----------------------------------------------------------------------------------


async def make_sessions(port: int, row: Row, count: int) -> list[str]:
    """Log in *count* times; return the ``Cookie`` header value of each session."""
    cookies: list[str] = []
    async with ClientSession(timeout=ClientTimeout(total=30),
                             cookie_jar=DummyCookieJar()) as http:
        for _ in range(count):
            async with http.get(f"http://127.0.0.1:{port}/login") as response:
                response.raise_for_status()
                morsel = response.cookies.get(row.cookie)
                if morsel is None:
                    raise RuntimeError(f"{row.name}: /login set no {row.cookie} cookie")
                cookies.append(f"{row.cookie}={morsel.value}")
        # functional check: the app really reads and writes sessions
        headers = {"Cookie": cookies[0]}
        async with http.get(f"http://127.0.0.1:{port}/read", headers=headers) as response:
            body = await response.text()
            if response.status != 200 or (row.counts and body != "user=ann"):
                raise RuntimeError(f"{row.name}: /read answered {response.status} {body!r}")
        if row.counts:
            # client-side: the same cookie twice, so the same record twice (as under wrk)
            for expected in ("n=1", "n=1") if row.client_side else ("n=1", "n=2"):
                async with http.get(f"http://127.0.0.1:{port}/write",
                                    headers=headers) as response:
                    body = await response.text()
                    if body != expected:
                        raise RuntimeError(f"{row.name}: /write answered {body!r}, "
                                           f"expected {expected!r}")
                    if row.client_side and row.cookie not in response.cookies:
                        raise RuntimeError(f"{row.name}: /write set no {row.cookie} cookie")
    return cookies


async def counters(port: int, cookies: list[str], start: bool) -> dict[str, Any]:
    """The sum of the counters of *cookies*' sessions and the server's Tally counts.

    *start*: reset and turn on the Tally first; else first let the server settle (all
    started ``/write`` handlers answered) and turn it off.
    """
    base = f"http://127.0.0.1:{port}/stats"
    async with ClientSession(timeout=ClientTimeout(total=60),
                             cookie_jar=DummyCookieJar()) as http:
        async with http.get(base, params={"count": "on"} if start else {"settle": "1"}
                            ) as response:
            response.raise_for_status()
            control: dict[str, Any] = await response.json()
        limit = asyncio.Semaphore(16)

        async def one(cookie: str) -> int:
            async with limit, http.get(base, headers={"Cookie": cookie}) as response:
                response.raise_for_status()
                value = (await response.json())["n"]
                return int(value) if value is not None else 0

        values = await asyncio.gather(*(one(cookie) for cookie in cookies))
    return {**control, "n": sum(values)}


#: rotates the cookies over requests that ``init`` builds once: per request wrk only
#: hands out a prepared string (no ``wrk.format``, which would cost wrk CPU per request)
WRK_SCRIPT = """
local cookies = {%s}
local requests = {}
local i = 0
init = function(args)
  for n, cookie in ipairs(cookies) do
    requests[n] = wrk.format(nil, nil, {["Cookie"] = cookie})
  end
end
request = function()
  i = i %% #requests + 1
  return requests[i]
end
"""


def run_wrk(url: str, cookies: list[str], concurrency: int, seconds: float,
            opts: argparse.Namespace) -> dict[str, float]:
    """One wrk run: requests/s, requests, 2xx/3xx responses, failures.

    One cookie: plain wrk with ``-H``; several: the rotating WRK_SCRIPT.
    """
    command = ["wrk", f"-t{opts.threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s"]
    script = None
    if len(cookies) == 1:
        command += ["-H", f"Cookie: {cookies[0]}"]
    else:
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
            file.write(WRK_SCRIPT % ", ".join(json.dumps(c) for c in cookies))
        script = file.name
        command += ["-s", script]
    try:
        out = subprocess.run(pinned([*command, url], opts.pinning.load), capture_output=True,
                             text=True, check=True, timeout=seconds + 60).stdout
    finally:
        if script is not None:
            os.unlink(script)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    total = re.search(r"(\d+) requests in", out)
    failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    status_errors = int(failed.group(1)) if failed else 0
    errors = status_errors + (sum(int(n) for n in sock.groups()) if sock else 0)
    requests = float(total.group(1)) if total else 0.0
    return {"rps": float(rate.group(1)), "errors": errors, "requests": requests,
            "ok": requests - status_errors}


async def load_loop(url: str, cookies: list[str], concurrency: int, seconds: float
                    ) -> dict[str, float]:
    """The fallback load generator (runs in its own process): keep-alive GETs."""
    done = errors = 0
    deadline = time.perf_counter() + seconds
    async with ClientSession(connector=TCPConnector(limit=concurrency),
                             cookie_jar=DummyCookieJar()) as http:

        async def worker(n: int) -> None:
            nonlocal done, errors
            i = n
            while time.perf_counter() < deadline:
                async with http.get(url, headers={"Cookie": cookies[i % len(cookies)]}) as r:
                    await r.read()
                    if r.status < 400:
                        done += 1
                    else:
                        errors += 1
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return {"rps": done / (time.perf_counter() - started), "errors": errors,
            "requests": float(done + errors), "ok": float(done)}


def run_python_load(url: str, cookies: list[str], concurrency: int, seconds: float,
                    opts: argparse.Namespace) -> dict[str, float]:
    """Run :func:`load_loop` in a separate process (the server must keep its CPU)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as spec:
        json.dump({"url": url, "cookies": cookies, "concurrency": concurrency,
                   "seconds": seconds}, spec)
    try:
        out = subprocess.run(
            pinned([sys.executable, "-m", "benchmarks.http", "--load", spec.name],
                   opts.pinning.load),
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
            text=True, check=True, timeout=seconds + 60).stdout
    finally:
        os.unlink(spec.name)
    result: dict[str, float] = json.loads(out)
    return result


# -- CPU accounting -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pinning:
    """Which CPUs the server and the load side (load generator, redis-server) run on."""

    server: tuple[int, ...] | None = None
    load: tuple[int, ...] | None = None

    def describe(self, generator: str) -> str:
        if self.server is None or self.load is None:
            return "none (all processes on all CPUs)"
        load = ",".join(map(str, self.load))
        return (f"server on CPU {','.join(map(str, self.server))}, {generator} and "
                f"redis-server on CPU {load} (taskset)")


def plan_pinning(enabled: bool) -> Pinning:
    """The server on the first CPU we may use, the load side on the others (if >= 2)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2 or shutil.which("taskset") is None:
        return Pinning()
    return Pinning((cpus[0],), tuple(cpus[1:]))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> dict[int, tuple[int, int, int]]:
    """Per CPU, (busy, total, irq + softirq) clock ticks since boot, from ``/proc/stat``."""
    ticks = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *values = line.split()
            numbers = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            idle = numbers[3] + numbers[4]
            ticks[int(name[3:])] = (sum(numbers) - idle, sum(numbers), numbers[5] + numbers[6])
    return ticks


@dataclass(frozen=True)
class Sample:
    """What the processes of a cell have used so far."""

    at: float
    server: float
    redis: float
    children: float
    ticks: dict[int, tuple[int, int, int]]

    @classmethod
    def take(cls, server_pid: int, redis_pid: int) -> Sample:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(time.perf_counter(), cpu_seconds(server_pid), cpu_seconds(redis_pid),
                   usage.ru_utime + usage.ru_stime, cpu_ticks())


def side(before: Sample, after: Sample, cpus: Sequence[int] | None, ours: float
         ) -> tuple[float, float]:
    """(busy fraction, others' CPU in cores) of *cpus* (None: all) between two samples.

    Others' CPU: busy time less interrupt work and less *ours* (the seconds our processes
    on those CPUs used); clamped at 0 (interrupt work is charged to whichever task it
    interrupts, so this errs towards too little).
    """
    chosen = cpus if cpus is not None else list(after.ticks)
    used, total, interrupts = (sum(after.ticks[c][i] - before.ticks[c][i] for c in chosen)
                               for i in range(3))
    tick = os.sysconf("SC_CLK_TCK")
    others = max(0.0, (used - interrupts) / tick - ours) / (after.at - before.at)
    return (used / total if total else 0.0), others


def usage(before: Sample, after: Sample, opts: argparse.Namespace, waits: bool
          ) -> dict[str, Any]:
    """CPU of the window as % of one core, and the flags (see the module docstring).

    *waits*: the row's requests wait for a store outside the server process.
    """
    wall = after.at - before.at
    pin: Pinning = opts.pinning
    server_s, redis_s = after.server - before.server, after.redis - before.redis
    # the one child reaped in the window: the load generator, all its threads
    load_s = after.children - before.children
    if pin.server is not None:
        load_busy, load_others = side(before, after, pin.load, load_s + redis_s)
        server_busy, server_others = side(before, after, pin.server, server_s)
    else:
        load_busy, load_others = side(before, after, None, server_s + load_s + redis_s)
        server_busy, server_others = load_busy, 0.0
    cell: dict[str, Any] = {
        "server_cpu_pct": 100 * server_s / wall, "load_cpu_pct": 100 * load_s / wall,
        "redis_cpu_pct": 100 * redis_s / wall, "others_cpu_pct": 100 * (load_others
                                                                        + server_others),
        "load_side_busy_pct": 100 * load_busy, "server_side_busy_pct": 100 * server_busy,
    }
    server, load = server_s / wall, load_s / wall
    warnings = []
    # even a server that kept its CPU busy runs slower per request then (the vCPUs share
    # the host's cores): its requests/s and CPU per request are both noisy
    cell["contended"] = load_others + server_others >= OTHERS
    if cell["contended"]:
        warnings.append(f"other processes of the machine used {cell['others_cpu_pct']:.0f}% "
                        f"of a core (the server {100 * server:.0f}%): a noisy cell")
    if load >= LOAD_SATURATED * opts.threads:
        warnings.append(f"the load generator used {100 * load:.0f}% of one core with "
                        f"{opts.threads} thread(s): it may be the bottleneck")
    elif server < SERVER_BUSY and load_busy >= LOAD_SATURATED and not cell["contended"]:
        warnings.append(f"the server used {100 * server:.0f}% of one core while the load "
                        f"side's CPUs were {100 * load_busy:.0f}% busy: the load side may be "
                        "the bottleneck")
    cell["load_bound"] = any("bottleneck" in w for w in warnings)
    cell["server_idle"] = (not waits and server < SERVER_BUSY and not cell["load_bound"]
                           and not cell["contended"])
    if cell["server_idle"]:
        warnings.append(f"the server used {100 * server:.0f}% of one core and waits for no "
                        "store: the load did not keep it busy (requests/s understated; "
                        "server CPU per request still holds)")
    cell["warnings"] = warnings
    return cell


def measure(port: int, pid: int, path: str, cookies: list[str], concurrency: int,
            opts: argparse.Namespace, waits: bool = True) -> dict[str, Any]:
    """Warm up, then measure *path* for ``--duration`` seconds, best of ``--repeat`` runs.

    The best run, because other load on the machine only ever makes a run slower; its
    CPU columns come with it. ``wrk_ok`` counts the 2xx/3xx responses of all runs,
    warm-up included (for lost updates).
    """
    url = f"http://127.0.0.1:{port}{path}"
    run = run_wrk if opts.load_generator == "wrk" else run_python_load
    wrk_ok = 0.0
    if opts.warmup > 0:
        wrk_ok += run(url, cookies, concurrency, opts.warmup, opts)["ok"]
    runs: list[dict[str, Any]] = []
    for _ in range(opts.repeat):
        before = Sample.take(pid, opts.redis_pid)
        result: dict[str, Any] = dict(run(url, cookies, concurrency, opts.duration, opts))
        after = Sample.take(pid, opts.redis_pid)
        wrk_ok += result["ok"]
        # the app server's own CPU per request: steadier than requests/s when the load
        # generator, Redis and the server share two CPUs
        used = after.server - before.server
        result["cpu_us"] = used / result["requests"] * 1e6 if result["requests"] else 0.0
        result.update(usage(before, after, opts, waits))
        runs.append(result)
    best = max(runs, key=lambda r: float(r["rps"]))
    best["cpu_us"] = min(r["cpu_us"] for r in runs if r["cpu_us"]) if any(
        r["cpu_us"] for r in runs) else 0.0
    best.update(sessions=len(cookies), connections=concurrency, wrk_ok=wrk_ok)
    return best


# -- report ---------------------------------------------------------------------------------


Results = dict[str, dict[str, dict[str, Any]]]


def ratio(results: Results, row: str, scenario: str, baseline: str,
          baseline_scenario: str | None = None) -> float | None:
    """*row*'s requests/s in *scenario* over *baseline*'s (in the same scenario by default)."""
    theirs = results.get(baseline, {}).get(baseline_scenario or scenario)
    mine = results.get(row, {}).get(scenario)
    if mine is None or theirs is None or not theirs["rps"]:
        return None
    return float(mine["rps"]) / float(theirs["rps"])


def lost_cell(cell: dict[str, Any]) -> str:
    """The ``lost`` column: lost of answered, and a mark if the server did not settle."""
    if "lost" not in cell:
        return "-"
    lost, answered = cell["lost"], cell["answered_ok"]
    text = f"{lost:,}" if not lost else f"{lost:,} of {answered:,} ({lost / answered:.0%})" \
        if answered else f"{lost:,}"
    return text if cell["settled"] else f"{text} (unsettled)"


def report(results: Results, generator: str) -> tuple[str, list[str]]:
    """The Markdown table and the warning lines."""
    headers = ["app", "scenario", "sessions x conns", "req/s", "vs aiohttp-session",
               "vs redis-py", "vs bare aiohttp", "server CPU", f"{generator} CPU",
               "redis CPU", "others CPU", "server CPU µs/req", "lost", "flags"]
    rows: list[list[Any]] = []
    warnings = []
    for name, by_scenario in results.items():
        for scenario, cell in by_scenario.items():
            rps = f"{cell['rps']:,.0f}" + (f" ({cell['errors']:.0f} errors)"
                                           if cell["errors"] else "")
            line: list[Any] = [name, scenario, f"{cell['sessions']} x {cell['connections']}",
                               rps]
            peer = ROWS[name].peer if name in ROWS else "aiohttp-session"
            for baseline in (peer, "redis-py", "aiohttp"):
                value = ratio(results, name, scenario, baseline)
                line.append("-" if value is None else f"{value:.2f}x")
            flags = [flag for key, flag in (("load_bound", "LOAD-BOUND"),
                                            ("contended", "contended"),
                                            ("server_idle", "server-idle")) if cell[key]]
            line += [f"{cell['server_cpu_pct']:.0f}%", f"{cell['load_cpu_pct']:.0f}%",
                     f"{cell['redis_cpu_pct']:.0f}%", f"{cell['others_cpu_pct']:.0f}%",
                     f"{cell['cpu_us']:.1f}",
                     lost_cell(cell), ", ".join(flags) or "-"]
            rows.append(line)
            warnings += [f"WARNING: {name} {scenario}: {w}" for w in cell["warnings"]]
    return table(headers, rows), warnings


def verdicts(results: Results) -> list[str]:
    """One line per target whose rows ran: the ratio and met / MISSED by how much."""
    lines = []
    for row, scenario, baseline, baseline_scenario, minimum in TARGETS:
        value = ratio(results, row, scenario, baseline, baseline_scenario)
        if value is None:
            continue
        verdict = "met" if value >= minimum else f"MISSED by {minimum - value:.2f}x"
        mine, theirs = results[row][scenario], results[baseline][baseline_scenario]
        if mine["cpu_us"] and theirs["cpu_us"]:
            verdict += f"; by server CPU per request {theirs['cpu_us'] / mine['cpu_us']:.2f}x"
        flagged = [f"{n} {s}" for n, s, c in ((row, scenario, mine),
                                              (baseline, baseline_scenario, theirs))
                   if c["load_bound"] or c["contended"] or c["server_idle"]]
        if flagged:
            verdict += f" (not conclusive: {', '.join(flagged)} flagged)"
        lines.append(f"{row} {scenario} >= {minimum}x {baseline} {baseline_scenario}: "
                     f"{value:.2f}x, {verdict}")
    counted = [(name, scenario, cell) for name, by_scenario in results.items()
               if name.startswith("aiosessmgr") for scenario, cell in by_scenario.items()
               if "lost" in cell]
    if counted:
        bad = [f"{name} {scenario} lost {cell['lost']:,}" + (
            "" if cell["settled"] else " (unsettled)") for name, scenario, cell in counted
            if cell["lost"] or not cell["settled"]]
        lines.append(f"zero lost updates in all {len(counted)} aiosessmgr write cells: "
                     + (f"MISSED: {'; '.join(bad)}" if bad else "met"))
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli_parser("python -m benchmarks.http", __doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (about 15 s): rows " + ", ".join(QUICK_ROWS)
                        + ", 1 s per scenario, 16 sessions, no warm-up, no verdicts")
    parser.add_argument("--drivers", default=None,
                        help=f"comma-separated rows to run, of: {', '.join(ROWS)}")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds measured per row and scenario (default 5; quick 1)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measured runs per row and scenario; the best counts (default 1)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of unmeasured load first (default 1; quick 0)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="concurrent keep-alive connections (default 64)")
    parser.add_argument("--hot-concurrency", type=int, default=32,
                        help="connections of the hot (one-session) scenarios (default 32)")
    parser.add_argument("--sessions", type=int, default=None,
                        help="distinct sessions the load rotates over (default 256; quick 16)")
    parser.add_argument("--threads", type=int, default=1,
                        help="wrk threads (-t, default 1)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the server and the load side to separate CPUs")
    parser.add_argument("--load-generator", choices=("wrk", "python"),
                        default="wrk" if shutil.which("wrk") else "python",
                        help="wrk if on PATH, else a Python client in its own process")
    parser.add_argument("--no-json", action="store_true",
                        help="do not write benchmarks/results/http.json")
    # internal: the server and load-generator processes
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--file-path", default="", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    quick = opts.quick
    if opts.drivers is None:
        opts.drivers = ",".join(QUICK_ROWS if quick else DEFAULT_ROWS)
    if opts.duration is None:
        opts.duration = 1.0 if quick else 5.0
    if opts.warmup is None:
        opts.warmup = 0.0 if quick else 1.0
    if opts.sessions is None:
        opts.sessions = 16 if quick else 256
    if opts.load_generator == "python":
        opts.threads = 1
    unknown = [name for name in opts.drivers.split(",") if name not in ROWS]
    if unknown:
        parser.error(f"unknown rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if opts.sessions < 2:
        parser.error("--sessions must be at least 2 (the hot scenarios use one)")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, internally, one server or load process); return an exit code."""
    opts = parse_args(argv)
    if opts.serve:
        serve(opts)
        return 0
    if opts.load:
        spec = json.loads(Path(opts.load).read_text())
        print(json.dumps(asyncio.run(load_loop(spec["url"], spec["cookies"],
                                               spec["concurrency"], spec["seconds"]))))
        return 0
    started = time.perf_counter()
    names = opts.drivers.split(",")
    opts.pinning = plan_pinning(not opts.no_pin)
    generator = "wrk" if opts.load_generator == "wrk" else "python load"
    results: Results = {}
    with redis_process(opts.pinning.load) as redis, \
            tempfile.TemporaryDirectory(prefix="aiosessmgr-bench-files-") as files:
        opts.redis_url, opts.redis_pid, opts.file_path = redis.url, redis.pid, files
        for name in names:
            row = ROWS[name]
            flush_redis(redis.url)
            with app_server(row, opts) as (port, pid):
                cookies = asyncio.run(make_sessions(port, row, opts.sessions))
                results[name] = {}
                scenarios = SCENARIOS if name in HOT_ROWS else SCENARIOS[:2]
                for scenario in scenarios:
                    hot = scenario.startswith("hot-")
                    used = cookies[:1] if hot else cookies
                    connections = opts.hot_concurrency if hot else opts.concurrency
                    route = "/" + scenario.removeprefix("hot-")
                    progress(f"{name} {scenario}: {opts.repeat} x {opts.duration:g}s, "
                             f"{len(used)} session(s), {connections} connections ...")
                    counting = scenario in WRITES and row.counts and not row.client_side
                    if counting:
                        before = asyncio.run(counters(port, used, start=True))
                    cell = measure(port, pid, route, used, connections, opts, row.waits)
                    if counting:
                        after = asyncio.run(counters(port, used, start=False))
                        counted = after["n"] - before["n"]
                        cell.update(answered_ok=after["ok"], counted=counted,
                                    lost=after["ok"] - counted, settled=after["settled"])
                    results[name][scenario] = cell
    setup = {"concurrency": opts.concurrency, "hot_concurrency": opts.hot_concurrency,
             "duration_s": opts.duration, "repeat": opts.repeat, "warmup_s": opts.warmup,
             "sessions": opts.sessions,
             "load": (f"wrk -t{opts.threads}" if opts.load_generator == "wrk"
                      else "python (separate process)"),
             "pinning": opts.pinning.describe(generator), "redis": redis.version,
             "quick": opts.quick}
    print(setup_line(**setup))
    print()
    text, warnings = report(results, generator)
    print(text)
    print()
    for line in warnings:
        print(line)
    if warnings:
        print()
    targets = [] if opts.quick else verdicts(results)
    if opts.quick:
        print("quick run: no verdicts")
    for line in targets:
        print(f"- {line}")
    if not opts.no_json:
        path = write_json("http", {
            "setup": setup, "results": results, "warnings": warnings, "targets": targets,
            "verdicts": "quick run: no verdicts" if opts.quick else "see targets"})
        progress(f"wrote {path}")
    progress(f"took {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
