"""GC benchmark: collect 1,000,000 expired memory sessions and 100,000 expired files.

Run: ``python -m benchmarks.gc [--memory N] [--files N]``. Reports the time to collect
and the worst event-loop stall seen by a lag probe (a task sleeping 1 ms in a loop)
while GC runs. Target: no stall above 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from aiosessmgr import MemoryDriver, new_session_id
from aiosessmgr.drivers.file import FileDriver

from ._common import progress, setup_line, table, write_json
from ._lag import LagProbe

RECORD = b"v" * 8 + b"\x00" + b"\x82\xa1d\x81\xa4user\xcd\x01\x00\xa1m\x80"
TARGET_STALL_MS = 50.0


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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run both GC cases, print the table and write benchmarks/results/gc.json."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gc")
    parser.add_argument("--memory", type=int, default=1_000_000, help="memory sessions")
    parser.add_argument("--files", type=int, default=100_000, help="session files")
    args = parser.parse_args(argv)
    print("## Garbage collection\n")
    print(setup_line(memory_sessions=args.memory, files=args.files, probe="sleep(1 ms)"))
    progress(f"filling the memory driver with {args.memory:,} sessions")
    rows = [asyncio.run(memory_gc(args.memory)), asyncio.run(file_gc(args.files))]
    for row in rows:
        row["target_met"] = row["worst_stall_ms"] <= TARGET_STALL_MS
    print()
    print(table(["driver", "expired sessions", "removed", "seconds", "worst loop stall ms",
                 f"stall <= {TARGET_STALL_MS:.0f} ms"],
                [[r["case"], r["sessions"], r["removed"], r["seconds"], r["worst_stall_ms"],
                  "yes" if r["target_met"] else "NO"] for r in rows]))
    result = {"rows": rows}
    write_json("gc", result)
    return result


if __name__ == "__main__":
    main()
