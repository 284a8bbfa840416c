"""GC benchmark: collect 1,000,000 expired memory sessions and 100,000 expired files, and
read-only requests with the GC lottery on vs off at 150,000 live memory sessions.

Run: ``python -m benchmarks.gc [--memory N] [--files N] [--live N] [--requests N]
[--quick]``. Reports the time to collect and the worst event-loop stall seen by a lag probe
(a task sleeping 1 ms in a loop) while GC runs. Targets: no stall above 20 ms (memory) or
50 ms (files).

The lottery case sends ``--requests`` read-only requests through aiosessmgr's middleware in
process (``aiohttp.test_utils.make_mocked_request`` requests, built once and cycled, each
naming one of 200 of the live sessions; the loop yields to other tasks after each request,
as a server does between requests), once with ``lottery`` (2, 100) and once with (0, 1),
``--repeat`` times each, alternating; before every run 1,500 sessions expire, so the
lottery's runs have something to remove. It reports microseconds per request, the ratio
(best "on" over best "off" rate; target >= 0.95) and the worst loop stall during the "on"
runs (target < 20 ms). ``--quick`` is a smoke run: small sizes, and no target verdicts.
"""

from __future__ import annotations

import asyncio
import gc as pygc
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from aiosessmgr import MemoryDriver, SessionManager, get_session, new_session_id, setup
from aiosessmgr.drivers.file import FileDriver

from ._common import cli_parser, progress, setup_line, table, write_json
from ._lag import LagProbe

RECORD = b"v" * 8 + b"\x00" + b"\x82\xa1d\x81\xa4user\xcd\x01\x00\xa1m\x80"
#: worst event-loop stall allowed while a GC run goes on, per case (ms)
TARGET_STALL_MS = {"memory": 20.0, "file": 50.0, "lottery": 20.0}
#: lottery on (2, 100) must keep at least this share of the lottery-off request rate
TARGET_LOTTERY_RATIO = 0.95
#: sessions the requests of the lottery case name (cycled; a mocked request costs ~0.7 ms
#: to build, so not more)
LOTTERY_HOT = 200
#: sessions that expire before each run of the lottery case: about what expires in one
#: default lottery interval (72 s) when 150,000 sessions turn over in a 7,200 s lifetime
LOTTERY_EXPIRING = 1_500


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def memory_gc(count: int) -> dict[str, Any]:
    """Fill the memory driver with *count* sessions, expire them all, collect."""
    clock = _Clock()
    driver = MemoryDriver(clock=clock)
    for _ in range(count):
        await driver.write(new_session_id(), RECORD, 60)
    clock.now = 61.0
    async with LagProbe() as probe:
        start = time.perf_counter()
        removed = await driver.gc(60)
        seconds = time.perf_counter() - start
    return {"case": "memory", "sessions": count, "removed": removed, "seconds": seconds,
            "worst_stall_ms": probe.worst * 1000}


class _ShiftedClock:
    """time.monotonic() plus a shift the benchmark moves forward to expire sessions."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.shift


class _CountingDriver(MemoryDriver):
    """The memory driver, counting GC runs and what they removed."""

    def __init__(self, clock: _ShiftedClock) -> None:
        super().__init__(clock=clock)
        self.clock = clock
        self.runs = 0
        self.removed = 0

    async def gc(self, max_lifetime: int) -> int:
        self.runs += 1
        removed = await super().gc(max_lifetime)
        self.removed += removed
        return removed


async def _read(request: web.Request) -> web.Response:
    session = await get_session(request)
    if session.get("user_id") is None:
        raise RuntimeError("the benchmark's session did not load")
    return web.Response(text=str(session.get("user_id")))


async def _lottery_run(driver: _CountingDriver, sids: list[str], requests: int,
                       lottery: tuple[int, int], interval: float | None) -> dict[str, Any]:
    """*requests* read-only requests through the middleware of a fresh manager on *driver*."""
    # sessions that expired since the last run: something for this run's GC to remove
    for _ in range(LOTTERY_EXPIRING):
        await driver.write(new_session_id(), RECORD, 1)
    driver.clock.shift += 2.0
    manager = SessionManager({"default": "m", "drivers": {"m": {"driver": "bench"}},
                              "lottery": lottery, "lottery_interval": interval})
    manager.extend("bench", lambda cfg: driver)
    app = web.Application()
    setup(app, manager)
    middleware = app.middlewares[-1]
    name = manager.config.cookie.name
    pending = [make_mocked_request("GET", "/read", headers={"Cookie": f"{name}={sid}"},
                                   app=app) for sid in sids]
    cycle = [pending[i % len(pending)] for i in range(requests)]
    runs, removed = driver.runs, driver.removed
    # what exists now is set-up (mocked requests, the store): the interpreter's own cyclic
    # GC need not walk it again and again, and a pass of it would count as our stall
    pygc.collect()
    pygc.freeze()
    try:
        async with LagProbe() as probe:
            start = time.perf_counter()
            for request in cycle:
                await middleware(request, _read)
                await asyncio.sleep(0)  # a server's loop runs other tasks between requests
            seconds = time.perf_counter() - start
            await manager.wait_gc()
    finally:
        pygc.unfreeze()
    await manager.close()
    return {"seconds": seconds, "us_per_request": seconds / requests * 1e6,
            "gc_runs": driver.runs - runs, "gc_removed": driver.removed - removed,
            "worst_stall_ms": probe.worst * 1000}


async def lottery_case(live: int, requests: int, repeat: int,
                       interval: float | None) -> dict[str, Any]:
    """Read-only requests at *live* live sessions with the lottery on (2, 100) vs off."""
    clock = _ShiftedClock()
    driver = _CountingDriver(clock)
    # the sessions requests name are saved through a manager (a record is bound to its
    # id); the others, which only have to be there, get a filler record
    maker = SessionManager({"default": "m", "drivers": {"m": {"driver": "bench"}},
                            "lottery": (0, 1)})
    maker.extend("bench", lambda cfg: driver)
    hot: list[str] = []
    for i in range(min(live, LOTTERY_HOT)):
        session = await maker.driver()
        session.put("user_id", i)
        await session.save()
        hot.append(session.id)
        for _ in range(live // LOTTERY_HOT - 1):
            await driver.write(new_session_id(), RECORD, 7200)
    for _ in range(live - len(driver)):
        await driver.write(new_session_id(), RECORD, 7200)
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for i in range(repeat):
        for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):  # cancels drift
            lottery = (2, 100) if mode == "on" else (0, 1)
            runs[mode].append(await _lottery_run(driver, hot, requests, lottery, interval))
    best = {mode: min(r["seconds"] for r in rows) for mode, rows in runs.items()}
    return {"case": "lottery", "live_sessions": live, "requests": requests, "repeat": repeat,
            "lottery_interval": interval, "runs": runs,
            "us_per_request_off": best["off"] / requests * 1e6,
            "us_per_request_on": best["on"] / requests * 1e6,
            "ratio": best["off"] / best["on"],
            "gc_runs_on": sum(r["gc_runs"] for r in runs["on"]),
            "gc_removed_on": sum(r["gc_removed"] for r in runs["on"]),
            "worst_stall_ms_on": max(r["worst_stall_ms"] for r in runs["on"]),
            "worst_stall_ms_off": max(r["worst_stall_ms"] for r in runs["off"])}


def _make_files(path: str, count: int, prefix: str) -> None:
    old = time.time() - 3600
    for _ in range(count):
        name = os.path.join(path, prefix + new_session_id())
        with open(name, "wb") as f:
            f.write(RECORD)
        os.utime(name, (old, old))


async def file_gc(count: int) -> dict[str, Any]:
    """Create *count* session files an hour old in a temp dir, then collect them."""
    path = tempfile.mkdtemp(prefix="aiosessmgr-gc-bench-")
    try:
        driver = FileDriver(path)
        progress(f"creating {count:,} expired session files in {path}")
        await asyncio.to_thread(_make_files, path, count, driver.prefix)
        async with LagProbe() as probe:
            start = time.perf_counter()
            removed = await driver.gc(60)
            seconds = time.perf_counter() - start
        await driver.close()
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return {"case": "file", "sessions": count, "removed": removed, "seconds": seconds,
            "worst_stall_ms": probe.worst * 1000}


def _verdict(met: bool, quick: bool) -> str:
    return "n/a (quick)" if quick else ("yes" if met else "NO")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the GC cases, print the tables and write benchmarks/results/gc.json."""
    parser = cli_parser("python -m benchmarks.gc", __doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: small sizes (unless given), no target verdicts")
    parser.add_argument("--memory", type=int, help="expired memory sessions (1,000,000)")
    parser.add_argument("--files", type=int, help="expired session files (100,000)")
    parser.add_argument("--live", type=int, help="live sessions of the lottery case (150,000)")
    parser.add_argument("--requests", type=int,
                        help="requests per run of the lottery case (30,000)")
    parser.add_argument("--repeat", type=int, help="runs per lottery mode (5)")
    parser.add_argument("--lottery-interval", type=float, default=None,
                        help="the manager's lottery_interval in seconds (default: its "
                             "default, the lifetime / 100 = 72 s; 0: no minimum)")
    args = parser.parse_args(argv)
    sizes = ({"memory": 20_000, "files": 2_000, "live": 20_000, "requests": 2_000, "repeat": 1}
             if args.quick else
             {"memory": 1_000_000, "files": 100_000, "live": 150_000, "requests": 30_000,
              "repeat": 5})
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    print("## Garbage collection\n")
    print(setup_line(memory_sessions=args.memory, files=args.files, live=args.live,
                     requests=args.requests, repeat=args.repeat,
                     lottery_interval=args.lottery_interval, probe="sleep(1 ms)",
                     quick=args.quick))
    progress(f"filling the memory driver with {args.memory:,} sessions")
    rows = [asyncio.run(memory_gc(args.memory)), asyncio.run(file_gc(args.files))]
    for row in rows:
        row["target_met"] = row["worst_stall_ms"] <= TARGET_STALL_MS[row["case"]]
    print()
    print(table(["driver", "expired sessions", "removed", "seconds", "worst loop stall ms",
                 "stall target ms", "met"],
                [[r["case"], r["sessions"], r["removed"], r["seconds"], r["worst_stall_ms"],
                  TARGET_STALL_MS[r["case"]], _verdict(r["target_met"], args.quick)]
                 for r in rows]))
    progress(f"lottery on vs off: {args.live:,} live sessions, {args.requests:,} requests "
             f"x {args.repeat} per mode")
    lottery = asyncio.run(lottery_case(args.live, args.requests, args.repeat,
                                       args.lottery_interval))
    lottery["ratio_met"] = lottery["ratio"] >= TARGET_LOTTERY_RATIO
    lottery["stall_met"] = lottery["worst_stall_ms_on"] < TARGET_STALL_MS["lottery"]
    print()
    print("Read-only requests through the middleware in process (mocked requests), memory "
          f"driver with {args.live:,} live sessions; best of {args.repeat} runs per mode:\n")
    print(table(["lottery", "µs per request", "GC runs", "removed", "worst loop stall ms"],
                [["(0, 1) off", lottery["us_per_request_off"], 0, 0,
                  lottery["worst_stall_ms_off"]],
                 ["(2, 100) on", lottery["us_per_request_on"], lottery["gc_runs_on"],
                  lottery["gc_removed_on"], lottery["worst_stall_ms_on"]]]))
    print()
    print(table(["target", "measured", "met"],
                [[f"on/off rate >= {TARGET_LOTTERY_RATIO}", lottery["ratio"],
                  _verdict(lottery["ratio_met"], args.quick)],
                 [f"worst stall with lottery on < {TARGET_STALL_MS['lottery']:.0f} ms",
                  lottery["worst_stall_ms_on"], _verdict(lottery["stall_met"], args.quick)]]))
    result = {"rows": rows, "lottery": lottery, "quick": args.quick}
    write_json("gc", result)
    return result


if __name__ == "__main__":
    main()
