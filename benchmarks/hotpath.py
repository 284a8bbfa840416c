"""In-process cost of one request through aiosessmgr's middleware, in microseconds.

Run ``python -m benchmarks.hotpath`` (``--help`` for options; ``--profile`` adds a
cProfile top 20 of the read-only case). No sockets, no load generator: far steadier than
wrk on a shared machine, and what it finds is the library's own cost. Cases, one aiohttp
app each (the session cases share one):

* ``bare``: the handler alone, no middleware;
* ``noop``: the same handler behind one no-op middleware (what any middleware costs);
* ``session-none``: aiosessmgr's middleware, the handler never touches the session;
* ``session-read``: aiosessmgr's middleware on the memory driver, one stored session, the
  handler reads one value (the read-only path);
* ``session-write``: the same session, the handler increments a counter (one save).

Each case runs on one keep-alive connection without a socket: aiohttp's own request
handler (``AppRunner(app).server``, the protocol factory a listening socket would use) is
fed the bytes of one request at a time through an in-memory transport, and the next is
sent once the response is written. So everything aiohttp does per request is in (HTTP
parsing, routing, its middleware chain, ``on_response_prepare``, header serialization),
and only the kernel's part is left out; the GC lottery is off (GC costs are
``benchmarks.gc``'s), so runs are deterministic. (Calling the middlewares on clones of
``make_mocked_request`` instead leaves out aiohttp's own middleware machinery and
measures a third of the overhead a real server shows.)

Each case runs ``--requests`` requests (20,000) ``--repeat`` times (3), the cases
interleaved; the minimum µs per request is reported (noise only ever adds), the median is
in the JSON. Prints the setup line, a table with the overhead of each case over ``noop``
and writes ``benchmarks/results/hotpath.json``; about 11 s on this machine (``--profile``:
2 s more).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import pstats
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from benchmarks._common import cli_parser, progress, session_handlers, setup_line, table, write_json

CASES = ("bare", "noop", "session-none", "session-read", "session-write")
#: the profile's rows, and the requests profiled at most
TOP = 20
PROFILED = 5000


class Wire(asyncio.Transport):
    """A connection without a socket: keeps what the server writes, wakes the client
    when a response has been written."""

    def __init__(self) -> None:
        super().__init__()
        self.response = b""
        self.waiter: asyncio.Future[None] | None = None
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000),
                "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        chunk = bytes(data)
        if chunk.startswith(b"HTTP/1.1 "):
            self.response = chunk
        else:
            self.response += chunk
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(chunks))


class Connection:
    """One keep-alive connection to *app*'s aiohttp request handler, on a Wire."""

    def __init__(self, app: web.Application) -> None:
        self.runner = web.AppRunner(app, access_log=None)
        self.wire = Wire()

    async def open(self) -> None:
        await self.runner.setup()
        server = self.runner.server
        assert server is not None  # set up above
        self.protocol = server()
        self.protocol.connection_made(self.wire)

    async def send(self, raw: bytes) -> bytes:
        """Send one request; return the response (headers and body) once it is written."""
        self.wire.waiter = asyncio.get_running_loop().create_future()
        self.protocol.data_received(raw)
        await self.wire.waiter
        return self.wire.response

    async def close(self) -> None:
        self.protocol.connection_lost(None)
        await self.runner.cleanup()


@dataclass
class Case:
    """One case: a connection and the bytes of its request."""

    name: str
    connection: Connection
    raw: bytes


def request(path: str, cookie: str | None) -> bytes:
    """The bytes of ``GET path`` as a browser-like client sends them."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1:8080", "User-Agent: hotpath",
             "Accept: */*"] + ([f"Cookie: {cookie}"] if cookie else [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def body(response: bytes) -> str:
    return response.split(b"\r\n\r\n", 1)[1].decode()


@web.middleware
async def noop(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A middleware that does nothing: the floor of any middleware's cost."""
    return await handler(request)


async def reply(request: web.Request) -> web.Response:
    """bare / noop: the response the session handlers build, without a session."""
    return web.Response(text="user=ann")


def session_app(manager: Any) -> web.Application:
    """The app of the session cases: /login, /none, /read, /write."""
    import aiosessmgr

    app = web.Application()
    aiosessmgr.setup(app, manager)
    for path, handler in session_handlers().items():
        app.router.add_get(path, handler)
    app.router.add_get("/none", reply)
    return app


async def build(manager: Any) -> tuple[dict[str, Case], list[Connection]]:
    """The cases (the session ones share one connection) and the connections to close."""
    bare = web.Application()
    bare.router.add_get("/read", reply)
    plain = web.Application(middlewares=[noop])
    plain.router.add_get("/read", reply)
    connections = [Connection(app) for app in (bare, plain, session_app(manager))]
    for connection in connections:
        await connection.open()
    sessions = connections[2]
    login = await sessions.send(request("/login", None))
    jar: SimpleCookie = SimpleCookie()
    for line in login.split(b"\r\n\r\n", 1)[0].decode().split("\r\n"):
        if line.lower().startswith("set-cookie:"):
            jar.load(line.split(":", 1)[1].strip())
    name = manager.config.cookie.name
    if name not in jar:
        raise RuntimeError(f"/login set no {name} cookie")
    cookie = f"{name}={jar[name].value}"
    cases = {
        "bare": Case("bare", connections[0], request("/read", cookie)),
        "noop": Case("noop", connections[1], request("/read", cookie)),
        "session-none": Case("session-none", sessions, request("/none", cookie)),
        "session-read": Case("session-read", sessions, request("/read", cookie)),
        "session-write": Case("session-write", sessions, request("/write", cookie)),
    }
    return cases, connections


async def timed(case: Case, requests: int) -> float:
    """Seconds for *requests* requests of *case*, one after another."""
    gc.collect()
    send, raw = case.connection.send, case.raw
    started = time.perf_counter()
    for _ in range(requests):
        await send(raw)
    return time.perf_counter() - started


async def check(cases: dict[str, Case], writes: int) -> None:
    """Every case answered 200, and the session cases really read and wrote."""
    for case in cases.values():
        response = await case.connection.send(case.raw)
        if not response.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"{case.name} answered {response[:40]!r}")
    got = body(await cases["session-read"].connection.send(cases["session-read"].raw))
    if got != "user=ann":
        raise RuntimeError(f"session-read answered {got!r}")
    got = body(await cases["session-write"].connection.send(cases["session-write"].raw))
    if got != f"n={writes + 2}":  # the writes measured, check()'s first one, and this one
        raise RuntimeError(f"session-write answered {got!r} after {writes + 1} writes")


def where(key: tuple[str, int, str]) -> str:
    """``file:line(function)``, the path shortened to the package or the stdlib."""
    path, line, func = key
    if path == "~":
        return func  # a builtin
    parts = Path(path).parts
    for anchor in ("aiosessmgr", "aiohttp", "benchmarks", "asyncio", "multidict", "yarl"):
        if anchor in parts:
            path = "/".join(parts[parts.index(anchor):])
            break
    else:
        path = Path(path).name
    return f"{path}:{line}({func})"


def ours(key: tuple[str, int, str], stats: dict[Any, Any]) -> bool:
    """True for aiosessmgr's functions, and for others mostly called by them (a decoder,
    a regex, a clock)."""
    if f"{os.sep}aiosessmgr{os.sep}" in key[0]:
        return True
    callers = stats[key][4]
    mine = sum(c[3] for k, c in callers.items() if f"{os.sep}aiosessmgr{os.sep}" in k[0])
    total = sum(c[3] for c in callers.values())
    return bool(total) and mine / total >= 0.5


async def profiled(case: Case, requests: int) -> tuple[float, list[dict[str, Any]]]:
    """cProfile of *requests* requests of *case*: (µs per request under the profiler, the
    top TOP of aiosessmgr's functions by cumulative time)."""
    send, raw = case.connection.send, case.raw
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    for _ in range(requests):
        await send(raw)
    profile.disable()
    elapsed = time.perf_counter() - started
    stats: dict[Any, Any] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    rows = sorted((item for item in stats.items() if ours(item[0], stats)),
                  key=lambda item: -item[1][3])
    return elapsed / requests * 1e6, [
        {"function": where(key), "calls_per_request": nc / requests,
         "tottime_us": tt / requests * 1e6, "cumtime_us": ct / requests * 1e6}
        for key, (_cc, nc, tt, ct, _callers) in rows[:TOP]]


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    import aiosessmgr

    manager = aiosessmgr.SessionManager({
        "default": "memory",
        "drivers": {"memory": {"driver": "memory", "lifetime": 120}},
        "lottery": (0, 100),
    })
    cases, connections = await build(manager)
    try:
        warmup = min(1000, opts.requests)
        for case in cases.values():  # caches, first-call costs
            await timed(case, warmup)
        runs: dict[str, list[float]] = {name: [] for name in CASES}
        for _ in range(opts.repeat):
            for name in CASES:  # interleaved, so a slow moment hits every case alike
                seconds = await timed(cases[name], opts.requests)
                runs[name].append(seconds / opts.requests * 1e6)
        await check(cases, warmup + opts.repeat * opts.requests)
        profile: tuple[float, list[dict[str, Any]]] = (0.0, [])
        if opts.profile:
            count = min(opts.requests, PROFILED)
            progress(f"profiling session-read: {count:,} requests ...")
            profile = await profiled(cases["session-read"], count)
    finally:
        for connection in connections:
            await connection.close()
    return {"runs_us": runs, "profiled_us": profile[0], "profile": profile[1]}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli_parser("python -m benchmarks.hotpath", __doc__)
    parser.add_argument("--requests", type=int, default=20_000,
                        help="requests per case and run (default 20,000)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per case; the minimum counts (default 3)")
    parser.add_argument("--profile", action="store_true",
                        help=f"also print a cProfile top {TOP} of session-read "
                        f"(at most {PROFILED:,} requests)")
    parser.add_argument("--no-json", action="store_true",
                        help="do not write benchmarks/results/hotpath.json")
    opts = parser.parse_args(argv)
    if opts.requests < 1 or opts.repeat < 1:
        parser.error("--requests and --repeat must be at least 1")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print its tables; return 0."""
    opts = parse_args(argv)
    started = time.perf_counter()
    progress(f"hotpath: {len(CASES)} cases x {opts.repeat} x {opts.requests:,} requests ...")
    measured = asyncio.run(run(opts))
    runs: dict[str, list[float]] = measured["runs_us"]
    cases: dict[str, dict[str, Any]] = {
        name: {"us_min": min(values), "us_median": statistics.median(values),
               "runs_us": values} for name, values in runs.items()}
    noop_us, bare_us = cases["noop"]["us_min"], cases["bare"]["us_min"]
    setup = {"requests": opts.requests, "repeat": opts.repeat, "driver": "memory",
             "lottery": "off", "reported": "min of repeats"}
    print("## Hot path (in-process, no sockets)")
    print()
    print(setup_line(**setup))
    print()
    rows = [[name, f"{c['us_min']:.2f}", f"{c['us_median']:.2f}",
             f"{c['us_min'] - bare_us:+.2f}", f"{c['us_min'] - noop_us:+.2f}"]
            for name, c in cases.items()]
    print(table(["case", "µs/request (min)", "µs/request (median)", "vs bare µs",
                 "vs noop µs"], rows))
    overhead = {name: cases[name]["us_min"] - noop_us
                for name in ("session-none", "session-read", "session-write")}
    print()
    print(f"session middleware over the no-op one: {overhead['session-read']:.2f} µs per "
          f"read-only request ({overhead['session-none']:.2f} µs when the handler never "
          f"touches the session, {overhead['session-write']:.2f} µs per write); a no-op "
          f"middleware itself costs {noop_us - bare_us:.2f} µs")
    profile: list[dict[str, Any]] = measured["profile"]
    if profile:
        print()
        print(f"### cProfile of session-read: aiosessmgr's top {TOP} by cumulative time")
        print()
        print(f"µs per request with the profiler's overhead: a request took "
              f"{measured['profiled_us']:.1f} µs under cProfile, "
              f"{cases['session-read']['us_min']:.1f} µs without; functions of other "
              "packages are listed when aiosessmgr calls them for most of their time.")
        print()
        print(table(["function", "calls/request", "own µs", "cumulative µs"],
                    [[p["function"], f"{p['calls_per_request']:.2f}", f"{p['tottime_us']:.2f}",
                      f"{p['cumtime_us']:.2f}"] for p in profile]))
    if not opts.no_json:
        path = write_json("hotpath", {"setup": setup, "cases": cases,
                                      "overhead_vs_noop_us": overhead,
                                      "noop_vs_bare_us": noop_us - bare_us,
                                      "profiled_us": measured["profiled_us"],
                                      "profile": profile})
        progress(f"wrote {path}")
    progress(f"took {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
