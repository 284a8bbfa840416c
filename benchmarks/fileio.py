"""File I/O benchmark: what a file-driver read costs, and why it is one hop.

Run: ``python -m benchmarks.fileio [--reads N] [--max-workers N]``. Reads one 200-byte
session N times at concurrency 1 and 64 in four ways, all but the memory driver on one
``ThreadPoolExecutor`` of ``--max-workers`` threads (the file driver's default size):

* ``driver``: ``FileDriver.read_touch``, what a read-only request does (one
  ``aiofiles.os.wrap`` hop to the driver's own pool: open with ``O_NOFOLLOW``, fstat,
  read, close, touch when due);
* ``one hop``: the same open/read/close as one function through ``aiofiles.os.wrap``
  with ``executor=pool``, without the driver around it;
* ``aiofiles.open``: ``aiofiles.open`` / ``read`` / ``close`` with ``executor=pool``,
  one hop per call (three per read);
* ``memory``: ``MemoryDriver.read_touch``, the baseline of the driver's ">= 0.5x memory"
  target (met at the HTTP level; see ``benchmarks.drivers`` and ``benchmarks.http``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiofiles
import aiofiles.os

from aiosessmgr import MemoryDriver
from aiosessmgr.drivers.file import DEFAULT_MAX_WORKERS, FileDriver

from ._common import cli_parser, setup_line, table, write_json

RECORD_SIZE = 200
TTL = 7200
METHODS = ("driver", "one hop", "aiofiles.open", "memory")


def _read_sync(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


async def _rate(read: Callable[[], Awaitable[Any]], reads: int, concurrency: int) -> float:
    left = reads

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await read()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return reads / (time.perf_counter() - start)


async def measure(reads: int, max_workers: int) -> list[dict[str, Any]]:
    """Reads per second of each method at concurrency 1 and 64."""
    with tempfile.TemporaryDirectory() as directory, \
            ThreadPoolExecutor(max_workers, thread_name_prefix="bench-fileio") as pool:
        driver = FileDriver(directory, ttl=TTL, max_workers=max_workers)
        memory = MemoryDriver()
        sid, payload = secrets.token_urlsafe(32), os.urandom(RECORD_SIZE)
        await driver.write(sid, payload, TTL)
        await memory.write(sid, payload, TTL)
        path = os.path.join(directory, f"sess_{sid}")
        one_hop = aiofiles.os.wrap(_read_sync)

        async def hop() -> bytes:
            data: bytes = await one_hop(path, executor=pool)
            return data

        async def per_call() -> bytes:
            f = await aiofiles.open(path, "rb", executor=pool)
            try:
                data: bytes = await f.read()
            finally:
                await f.close()  # not ``async with``: that closes in the default executor
            return data

        methods: dict[str, Callable[[], Awaitable[Any]]] = {
            "driver": lambda: driver.read_touch(sid, TTL),
            "one hop": hop,
            "aiofiles.open": per_call,
            "memory": lambda: memory.read_touch(sid, TTL),
        }
        rows = []
        try:
            for concurrency in (1, 64):
                rates = {name: await _rate(read, reads, concurrency)
                         for name, read in methods.items()}
                rows.append({"concurrency": concurrency,
                             **{f"{name}_per_s": rate for name, rate in rates.items()},
                             "driver_vs_memory": rates["driver"] / rates["memory"],
                             "one_hop_vs_aiofiles_open": rates["one hop"]
                             / rates["aiofiles.open"]})
        finally:
            await driver.close()
        return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run, print the table and write benchmarks/results/fileio.json."""
    parser = cli_parser("python -m benchmarks.fileio", __doc__)
    parser.add_argument("--reads", type=int, default=5000)
    parser.add_argument("--max-workers", type=int, default=DEFAULT_MAX_WORKERS,
                        help=f"threads in the pool (default {DEFAULT_MAX_WORKERS}, the "
                             f"file driver's default)")
    args = parser.parse_args(argv)
    print("## File reads: the file driver, one aiofiles hop, aiofiles.open, memory\n")
    print(setup_line(reads=args.reads, file_bytes=RECORD_SIZE, max_workers=args.max_workers))
    rows = asyncio.run(measure(args.reads, args.max_workers))
    print()
    print(table(["concurrency", *(f"{m} reads/s" for m in METHODS), "driver vs memory",
                 "one hop vs aiofiles.open"],
                [[r["concurrency"], *(r[f"{m}_per_s"] for m in METHODS),
                  f"{r['driver_vs_memory']:.2f}x", f"{r['one_hop_vs_aiofiles_open']:.2f}x"]
                 for r in rows]))
    result = {"setup": {"reads": args.reads, "file_bytes": RECORD_SIZE,
                        "max_workers": args.max_workers}, "rows": rows}
    write_json("fileio", result)
    return result


if __name__ == "__main__":
    main()
