"""HTTP throughput of session-backed aiohttp apps: read-only and modifying requests.

Run ``python -m benchmarks.http`` (``--help`` for options). In one run it starts its own
``redis-server`` on a free loopback port, then, one at a time, one server process per
row (each on its own port) and drives it with ``wrk`` (or, without wrk on PATH, a
load generator in a separate process). Rows (``--drivers``):

* ``aiohttp``: bare aiohttp, no session (the ceiling);
* ``redis-py``: a raw handler doing one redis-py ``GET`` (read) or ``GET`` + ``SET`` (write);
* ``aiohttp-session``: aiohttp-session's ``RedisStorage``;
* ``aiosessmgr-redis`` / ``aiosessmgr-redis-nopipe``: this library's Redis driver with
  and without auto-pipelining;
* ``aiosessmgr-redis-aes``: the Redis driver with AES-256-GCM at rest;
* ``aiosessmgr-redis-set``: the Redis driver without compare-and-set (saves are a plain
  ``SET``), the baseline for what lossless saves cost;
* ``aiosessmgr-memory`` / ``aiosessmgr-file``: the other built-in drivers.

Every row serves ``/login`` (creates a session), ``/read`` (reads one value) and
``/write`` (increments a counter). The load rotates over ``--sessions`` sessions, so
concurrent writes rarely hit one session, as with real users. Prints the setup line and
a Markdown table with requests/s and ratios against the baselines of the same run, and
writes ``benchmarks/results/http.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from benchmarks._common import (
    free_port,
    progress,
    redis_server,
    setup_line,
    stop,
    table,
    wait_listening,
    write_json,
)

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("read", "write")
DEFAULT_ROWS = ("aiohttp", "redis-py", "aiohttp-session", "aiosessmgr-redis",
                "aiosessmgr-redis-nopipe", "aiosessmgr-redis-aes", "aiosessmgr-redis-set",
                "aiosessmgr-memory", "aiosessmgr-file")
#: seconds; session lifetime everywhere (aiosessmgr's 120 minutes)
TTL = 7200
#: the issue's targets: (row, scenario, baseline, minimum ratio)
TARGETS = (
    ("aiosessmgr-redis", "read", "aiohttp-session", 1.5),
    ("aiosessmgr-redis", "read", "redis-py", 1.0),
    ("aiosessmgr-redis", "write", "aiohttp-session", 1.5),
    # encryption costs at most 5% on read-only requests
    ("aiosessmgr-redis-aes", "read", "aiosessmgr-redis", 0.95),
    # compare-and-set saves cost at most 5% against plain SET saves
    ("aiosessmgr-redis", "write", "aiosessmgr-redis-set", 0.95),
    ("aiosessmgr-memory", "read", "aiohttp", 0.85),
    ("aiosessmgr-file", "read", "aiosessmgr-memory", 0.5),
)


# -- the apps (each runs in its own server process) -----------------------------------------


@dataclass(frozen=True)
class Row:
    """One app under test: how to build it, and which cookie carries its session."""

    name: str
    cookie: str
    build: Callable[[argparse.Namespace], web.Application]
    #: True if /write's body must show a counter that goes up (a functional check)
    counts: bool = True


def bare_app(opts: argparse.Namespace) -> web.Application:
    """No session at all: the ceiling of this machine and aiohttp."""

    async def login(request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.set_cookie("sid", os.urandom(16).hex())
        return response

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/login", login)
    app.router.add_get("/read", ok)
    app.router.add_get("/write", ok)
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
        key = f"raw:{request.cookies['sid']}"
        raw = await client.get(key)
        data = json.loads(raw) if raw is not None else {"n": 0}
        data["n"] += 1
        await client.set(key, json.dumps(data), ex=TTL)
        return web.Response(text=f"n={data['n']}")

    async def close(app: web.Application) -> None:
        await client.aclose()

    app = web.Application()
    app.router.add_get("/login", login)
    app.router.add_get("/read", read)
    app.router.add_get("/write", write)
    app.on_cleanup.append(close)
    return app


def aiohttp_session_app(opts: argparse.Namespace) -> web.Application:
    """aiohttp-session's RedisStorage, the reference point of issue 4."""
    import aiohttp_session
    from aiohttp_session.redis_storage import RedisStorage
    from redis.asyncio import Redis

    client = Redis.from_url(opts.redis_url)

    async def login(request: web.Request) -> web.Response:
        session = await aiohttp_session.new_session(request)
        session["user"] = "ann"
        session["n"] = 0
        return web.Response(text="ok")

    async def read(request: web.Request) -> web.Response:
        session = await aiohttp_session.get_session(request)
        return web.Response(text=f"user={session.get('user')}")

    async def write(request: web.Request) -> web.Response:
        session = await aiohttp_session.get_session(request)
        session["n"] = session.get("n", 0) + 1
        return web.Response(text=f"n={session['n']}")

    async def close(app: web.Application) -> None:
        await client.aclose()

    app = web.Application()
    aiohttp_session.setup(app, RedisStorage(client, max_age=TTL))
    app.router.add_get("/login", login)
    app.router.add_get("/read", read)
    app.router.add_get("/write", write)
    app.on_cleanup.append(close)
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

        async def login(request: web.Request) -> web.Response:
            session = await aiosessmgr.get_session(request)
            session.put({"user": "ann", "n": 0})
            return web.Response(text="ok")

        async def read(request: web.Request) -> web.Response:
            session = await aiosessmgr.get_session(request)
            return web.Response(text=f"user={session.get('user')}")

        async def write(request: web.Request) -> web.Response:
            session = await aiosessmgr.get_session(request)
            return web.Response(text=f"n={session.increment('n')}")

        app = web.Application()
        aiosessmgr.setup(app, manager)
        app.router.add_get("/login", login)
        app.router.add_get("/read", read)
        app.router.add_get("/write", write)
        return app

    return build


ROWS: dict[str, Row] = {row.name: row for row in (
    Row("aiohttp", "sid", bare_app, counts=False),
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
        lambda o: {"driver": "memory", "lifetime": TTL / 60})),
    Row("aiosessmgr-file", "aiosessmgr_session", aiosessmgr_app(
        lambda o: {"driver": "file", "lifetime": TTL / 60, "path": o.file_path})),
)}


def serve(opts: argparse.Namespace) -> None:
    """Server-process entry point: run one row's app until SIGTERM."""
    app = ROWS[opts.serve].build(opts)
    web.run_app(app, host="127.0.0.1", port=opts.port, access_log=None, print=None,
                handle_signals=True)


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
    process = subprocess.Popen(args, cwd=ROOT, env=env)
    try:
        wait_listening(port, process)
        yield port, process.pid
    finally:
        stop(process)


# -- load -----------------------------------------------------------------------------------


async def make_sessions(port: int, row: Row, count: int) -> list[str]:
    """Log in *count* times; return the ``Cookie`` header value of each session."""
    cookies: list[str] = []
    async with ClientSession(timeout=ClientTimeout(total=30)) as http:
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
            for expected in ("n=1", "n=2"):
                async with http.get(f"http://127.0.0.1:{port}/write",
                                    headers=headers) as response:
                    body = await response.text()
                    if body != expected:
                        raise RuntimeError(f"{row.name}: /write answered {body!r}, "
                                           f"expected {expected!r}")
    return cookies


WRK_SCRIPT = """
cookies = {%s}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, {["Cookie"] = cookies[(counter %% #cookies) + 1]})
end
"""


def run_wrk(url: str, cookies: list[str], concurrency: int, seconds: float
            ) -> dict[str, float]:
    """One wrk run (one thread, *concurrency* connections); requests/s and failures."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % ", ".join(json.dumps(c) for c in cookies))
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
             "-s", script.name, url],
            capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    finally:
        os.unlink(script.name)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    total = re.search(r"(\d+) requests in", out)
    failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(failed.group(1)) if failed else 0
    errors += sum(int(n) for n in sock.groups()) if sock else 0
    return {"rps": float(rate.group(1)), "errors": errors,
            "requests": float(total.group(1)) if total else 0.0}


async def load_loop(url: str, cookies: list[str], concurrency: int, seconds: float
                    ) -> dict[str, float]:
    """The fallback load generator (runs in its own process): keep-alive GETs."""
    done = errors = 0
    deadline = time.perf_counter() + seconds
    async with ClientSession(connector=TCPConnector(limit=concurrency)) as http:

        async def worker(n: int) -> None:
            nonlocal done, errors
            i = n
            while time.perf_counter() < deadline:
                async with http.get(url, headers={"Cookie": cookies[i % len(cookies)]}) as r:
                    await r.read()
                    if r.status == 200:
                        done += 1
                    else:
                        errors += 1
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return {"rps": done / (time.perf_counter() - started), "errors": errors,
            "requests": float(done + errors)}


def run_python_load(url: str, cookies: list[str], concurrency: int, seconds: float
                    ) -> dict[str, float]:
    """Run :func:`load_loop` in a separate process (the server must keep its CPU)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as spec:
        json.dump({"url": url, "cookies": cookies, "concurrency": concurrency,
                   "seconds": seconds}, spec)
    try:
        out = subprocess.run([sys.executable, "-m", "benchmarks.http", "--load", spec.name],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             capture_output=True, text=True, check=True,
                             timeout=seconds + 60).stdout
    finally:
        os.unlink(spec.name)
    result: dict[str, float] = json.loads(out)
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(port: int, pid: int, path: str, cookies: list[str], opts: argparse.Namespace
            ) -> dict[str, float]:
    """Warm up, then measure *path* for ``--duration`` seconds, best of ``--repeat`` runs.

    The best run, because other load on the machine only ever makes a run slower.
    """
    url = f"http://127.0.0.1:{port}{path}"
    run = run_wrk if opts.load_generator == "wrk" else run_python_load
    run(url, cookies, opts.concurrency, opts.warmup)
    runs = []
    for _ in range(opts.repeat):
        before = cpu_seconds(pid)
        result = run(url, cookies, opts.concurrency, opts.duration)
        used = cpu_seconds(pid) - before
        # the app server's own CPU per request: steadier than requests/s when the load
        # generator, Redis and the server share two CPUs
        result["cpu_us"] = used / result["requests"] * 1e6 if result["requests"] else 0.0
        runs.append(result)
    best = max(runs, key=lambda r: r["rps"])
    best["cpu_us"] = min(r["cpu_us"] for r in runs if r["cpu_us"]) if any(
        r["cpu_us"] for r in runs) else 0.0
    return best


# -- report ---------------------------------------------------------------------------------


def ratio(results: dict[str, dict[str, dict[str, float]]], row: str, scenario: str,
          baseline: str) -> float | None:
    if row not in results or baseline not in results:
        return None
    return results[row][scenario]["rps"] / results[baseline][scenario]["rps"]


def report(results: dict[str, dict[str, dict[str, float]]]) -> tuple[str, list[str]]:
    """The Markdown table and one line per target."""
    headers = ["app"]
    for scenario in SCENARIOS:
        headers += [f"{scenario} req/s", f"{scenario} vs aiohttp-session",
                    f"{scenario} vs redis-py", f"{scenario} vs bare aiohttp"]
    rows = []
    for name, by_scenario in results.items():
        line: list[Any] = [name]
        for scenario in SCENARIOS:
            cell = by_scenario[scenario]
            rps = f"{cell['rps']:,.0f}" + (f" ({cell['errors']:.0f} errors)"
                                           if cell["errors"] else "")
            line.append(rps)
            for baseline in ("aiohttp-session", "redis-py", "aiohttp"):
                value = ratio(results, name, scenario, baseline)
                line.append("-" if value is None else f"{value:.2f}x")
        rows.append(line)
    cpu_rows = [[name] + [f"{by_scenario[s]['cpu_us']:.1f}" for s in SCENARIOS]
                for name, by_scenario in results.items()]
    cpu_table = table(["app", "read: server CPU us/request", "write: server CPU us/request"],
                      cpu_rows)
    targets = []
    for row, scenario, baseline, minimum in TARGETS:
        value = ratio(results, row, scenario, baseline)
        if value is None:
            continue
        verdict = "met" if value >= minimum else f"MISSED by {minimum - value:.2f}x"
        mine, theirs = results[row][scenario]["cpu_us"], results[baseline][scenario]["cpu_us"]
        capacity = f"; by server CPU per request {theirs / mine:.2f}x" if mine and theirs else ""
        targets.append(f"{row} {scenario} >= {minimum}x {baseline}: {value:.2f}x, {verdict}"
                       f"{capacity}")
    return table(headers, rows) + "\n\n" + cpu_table, targets


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drivers", default=",".join(DEFAULT_ROWS),
                        help=f"comma-separated rows to run, of: {', '.join(ROWS)}")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds measured per row and scenario (default 5)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measured runs per row and scenario; the best counts (default 1)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of unmeasured load first (default 1)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="concurrent keep-alive connections (default 64)")
    parser.add_argument("--sessions", type=int, default=256,
                        help="distinct sessions the load rotates over (default 256)")
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
    unknown = [name for name in opts.drivers.split(",") if name not in ROWS]
    if unknown:
        parser.error(f"unknown rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")
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
    names = opts.drivers.split(",")
    results: dict[str, dict[str, dict[str, float]]] = {}
    with redis_server() as (url, version), \
            tempfile.TemporaryDirectory(prefix="aiosessmgr-bench-files-") as files:
        opts.redis_url, opts.file_path = url, files
        for name in names:
            row = ROWS[name]
            flush_redis(url)
            with app_server(row, opts) as (port, pid):
                cookies = asyncio.run(make_sessions(port, row, opts.sessions))
                results[name] = {}
                for scenario in SCENARIOS:
                    progress(f"{name} {scenario}: {opts.repeat} x {opts.duration:g}s ...")
                    results[name][scenario] = measure(port, pid, f"/{scenario}", cookies,
                                                      opts)
    setup = {"concurrency": opts.concurrency, "duration_s": opts.duration,
             "repeat": opts.repeat, "warmup_s": opts.warmup, "sessions": opts.sessions,
             "load": "wrk -t1" if opts.load_generator == "wrk" else "python (separate process)",
             "redis": version}
    print(setup_line(**setup))
    print()
    text, targets = report(results)
    print(text)
    print()
    for line in targets:
        print(f"- {line}")
    if not opts.no_json:
        path = write_json("http", {"setup": setup, "results": results, "targets": targets})
        progress(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
