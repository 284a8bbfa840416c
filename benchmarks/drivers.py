"""Driver throughput: read / write / compare-and-set ops/s, and read-only HTTP requests.

Run ``python -m benchmarks.drivers`` (``--help`` for options). Every driver is built
through ``SessionManager`` from a config entry (see ``driver_entries``), so adding a
driver to the comparison is one entry. Redis is measured on a ``redis-server`` the
benchmark starts on a free port (or on ``--redis-url``; ``--no-redis`` leaves it out).

Operations, each at concurrency 1 and 64 (one session id per concurrent worker):

* ``read``: ``read_touch`` where the driver has it (what a request that only reads
  does), else ``read``;
* ``write``: a plain ``write`` of a 200-byte record;
* ``cas-save``: an uncontended ``compare_and_set`` with the right expected version
  (what ``Session.save()`` does when nobody else wrote).

The HTTP part serves a read-only page (``get_session`` + ``session.get``) from this
process and drives it from a client in a separate process, for the memory and the
file driver; the target is file >= 0.5x memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from aiosessmgr import SessionDriver, SessionManager, get_session, setup
from aiosessmgr.drivers.base import VERSION_SIZE, SupportsCompareAndSet, SupportsTouch
from benchmarks._common import cli_parser, progress, redis_server, setup_line, table, write_json

OPERATIONS = ("read", "write", "cas-save")
CONCURRENCY = (1, 64)
RECORD_SIZE = 200
TTL = 7200


def driver_entries(path: str, redis_url: str | None) -> dict[str, dict[str, Any]]:
    """The drivers to compare, as config entries; memory first (it is the baseline)."""
    entries: dict[str, dict[str, Any]] = {
        "memory": {"driver": "memory"},
        "file": {"driver": "file", "path": path},
    }
    if redis_url is not None:
        entries["redis"] = {"driver": "redis", "url": redis_url}
    return entries


def _record() -> bytes:
    return os.urandom(RECORD_SIZE)


async def _measure(worker: Callable[[int], Awaitable[None]], concurrency: int,
                   seconds: float) -> float:
    """Run *worker* in *concurrency* tasks for *seconds*; return total ops per second."""
    done = [0]
    deadline = time.perf_counter() + seconds

    async def loop(n: int) -> None:
        while time.perf_counter() < deadline:
            await worker(n)
            done[0] += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(n) for n in range(concurrency)))
    return done[0] / (time.perf_counter() - started)


async def bench_driver(driver: SessionDriver, concurrency: int, seconds: float
                       ) -> dict[str, float]:
    """ops/s of each operation on one driver at one concurrency."""
    # valid session ids (43 characters), which the file driver insists on
    ids = [f"bench-{n:037d}" for n in range(concurrency)]
    versions: dict[int, bytes] = {}
    for n, sid in enumerate(ids):
        rec = _record()
        await driver.write(sid, rec, TTL)
        versions[n] = rec[:VERSION_SIZE]

    async def read(n: int) -> None:
        if isinstance(driver, SupportsTouch):
            await driver.read_touch(ids[n], TTL)
        else:
            await driver.read(ids[n])

    async def write(n: int) -> None:
        await driver.write(ids[n], _record(), TTL)

    async def cas_save(n: int) -> None:
        assert isinstance(driver, SupportsCompareAndSet)
        rec = _record()
        if not await driver.compare_and_set(ids[n], rec, TTL, versions[n]):
            raise RuntimeError("uncontended compare_and_set failed")
        versions[n] = rec[:VERSION_SIZE]

    results = {"read": await _measure(read, concurrency, seconds),
               "write": await _measure(write, concurrency, seconds)}
    # the write phase replaced the records: start the CAS chain from what is stored
    for n, sid in enumerate(ids):
        stored = await driver.read(sid)
        assert stored is not None
        versions[n] = stored[:VERSION_SIZE]
    if isinstance(driver, SupportsCompareAndSet):
        results["cas-save"] = await _measure(cas_save, concurrency, seconds)
    for sid in ids:
        await driver.destroy(sid)
    return results


# -- HTTP: a read-only request on each driver ---------------------------------------------------

CLIENT = r"""
import asyncio, sys, time
import aiohttp

async def main() -> None:
    url, cookie, seconds, concurrency = sys.argv[1], sys.argv[2], float(sys.argv[3]), \
        int(sys.argv[4])
    done = 0
    async with aiohttp.ClientSession(cookies={"aiosessmgr_session": cookie}) as client:
        async with client.get(url) as resp:  # warm up, and check the session is there
            assert (await resp.text()) == "user 42", await resp.text()
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with client.get(url) as resp:
                    await resp.read()
                    assert resp.status == 200
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        print(done, time.perf_counter() - started)

asyncio.run(main())
"""


async def _read_only(request: web.Request) -> web.Response:
    session = await get_session(request)
    return web.Response(text=f"user {session.get('user_id')}")


async def bench_http(entry: dict[str, Any], seconds: float, concurrency: int
                     ) -> dict[str, float]:
    """Read-only requests served from this process, driven by a client process.

    Returns requests/s and the server's CPU time per request (this process, all its
    threads): with two CPUs the client may be the bottleneck, and CPU per request is
    the server's own cost regardless.
    """
    manager = SessionManager({"default": "d", "drivers": {"d": entry}, "lottery": (0, 1)})
    session = await manager.driver()
    session.put("user_id", 42)
    await session.save()
    app = web.Application()
    app.router.add_get("/", _read_only)
    setup(app, manager)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        cpu = time.process_time()
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, f"http://127.0.0.1:{port}/", session.id,
            str(seconds), str(concurrency), stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await client.communicate()
        cpu = time.process_time() - cpu
        if client.returncode != 0:
            raise RuntimeError(f"HTTP client failed with exit code {client.returncode}")
        count, elapsed = out.split()
        return {"requests_per_s": int(count) / float(elapsed),
                "server_cpu_us_per_request": cpu / int(count) * 1e6}
    finally:
        await runner.cleanup()  # closes the manager too (setup registered it)


# -- running it all -----------------------------------------------------------------------------


def file_system(path: str) -> str:
    """The type of the file system holding *path* (from /proc/mounts; Linux only)."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and path.startswith(fields[1]) and len(fields[1]) > len(best):
                best, kind = fields[1], fields[2]
    return kind


async def run(seconds: float, http_seconds: float, http_concurrency: int,
              redis_url: str | None, base: str | None = None) -> dict[str, Any]:
    """Measure everything; returns the rows for the tables and the JSON file."""
    directory = tempfile.mkdtemp(prefix="aiosessmgr-bench-", dir=base)
    rows: list[dict[str, Any]] = []
    try:
        for name, entry in driver_entries(directory, redis_url).items():
            try:
                manager = SessionManager({"default": name, "drivers": {name: entry}})
                driver = manager.get_driver()
                await driver.read("probe-" + "0" * 37)  # fail early if the store is not there
            except Exception as exc:
                progress(f"skipping {name}: {type(exc).__name__}: {exc}")
                continue
            try:
                for concurrency in CONCURRENCY:
                    progress(f"{name}: concurrency {concurrency}")
                    for op, rate in (await bench_driver(driver, concurrency, seconds)).items():
                        rows.append({"driver": name, "operation": op,
                                     "concurrency": concurrency, "ops_per_s": rate})
            finally:
                await manager.close()
        http: list[dict[str, Any]] = []
        for name in ("memory", "file"):
            progress(f"http: read-only requests on {name}")
            measured = await bench_http(driver_entries(directory, None)[name], http_seconds,
                                        http_concurrency)
            http.append({"driver": name, **measured})
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    memory = {(r["operation"], r["concurrency"]): r["ops_per_s"]
              for r in rows if r["driver"] == "memory"}
    for r in rows:
        r["vs_memory"] = r["ops_per_s"] / memory[(r["operation"], r["concurrency"])]
    for h in http:
        h["vs_memory"] = h["requests_per_s"] / http[0]["requests_per_s"]
        # capacity: requests per second of server CPU, relative to memory
        h["capacity_vs_memory"] = (http[0]["server_cpu_us_per_request"]
                                   / h["server_cpu_us_per_request"])
    return {"drivers": rows, "http": http}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the setup line and tables, write results/drivers.json."""
    parser = cli_parser("python -m benchmarks.drivers", __doc__)
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="duration of each driver measurement (default 1)")
    parser.add_argument("--http-seconds", type=float, default=3.0,
                        help="duration of each HTTP measurement (default 3)")
    parser.add_argument("--http-concurrency", type=int, default=16,
                        help="concurrent HTTP requests (default 16)")
    parser.add_argument("--redis-url", help="measure redis on this server (default: start a "
                                            "redis-server on a free port)")
    parser.add_argument("--no-redis", action="store_true", help="leave the redis driver out")
    parser.add_argument("--path", help="directory in which the file driver's sessions go "
                                       "(default: the system temp directory)")
    parser.add_argument("--no-json", action="store_true", help="do not write the JSON file")
    args = parser.parse_args(argv)
    facts = {"record_bytes": RECORD_SIZE, "seconds_per_cell": args.seconds,
             "concurrency": "/".join(map(str, CONCURRENCY)),
             "http_seconds": args.http_seconds, "http_concurrency": args.http_concurrency,
             "file_fs": file_system(os.path.realpath(args.path or tempfile.gettempdir()))}
    with contextlib.ExitStack() as stack:
        redis_url = args.redis_url
        if redis_url is None and not args.no_redis:
            # our own throwaway server: a benchmark never writes into someone's Redis
            redis_url, facts["redis"] = stack.enter_context(redis_server())
        print(setup_line(**facts))
        results = asyncio.run(run(args.seconds, args.http_seconds, args.http_concurrency,
                                  redis_url, args.path))
    print()
    print(table(["driver", "operation", "concurrency", "ops/s", "vs memory"],
                [[r["driver"], r["operation"], r["concurrency"], r["ops_per_s"],
                  f"{r['vs_memory']:.2f}x"] for r in results["drivers"]]))
    print()
    print(table(["driver", "read-only HTTP requests/s", "vs memory",
                 "server CPU us/request", "capacity vs memory"],
                [[h["driver"], h["requests_per_s"], f"{h['vs_memory']:.2f}x",
                  h["server_cpu_us_per_request"], f"{h['capacity_vs_memory']:.2f}x"]
                 for h in results["http"]]))
    if not args.no_json:
        path = write_json("drivers", {"setup": facts, **results})
        progress(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
