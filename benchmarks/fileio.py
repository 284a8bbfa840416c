"""File I/O benchmark: aiofiles versus one thread hop per read (the file driver's choice).

Run: ``python -m benchmarks.fileio [--reads N]``. Reads one 300-byte file N times at
concurrency 1 and 64, (a) with aiofiles, which hops to a thread for each call (open,
read, close), and (b) with a single ``run_in_executor`` hop doing all three. This is
the measurement behind the file driver's I/O design (see aiosessmgr/drivers/file.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ._common import setup_line, table, write_json


def _read_sync(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def _write_sync(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


async def read_one_hop(path: str) -> bytes:
    """Open, read and close in one executor hop."""
    return await asyncio.get_running_loop().run_in_executor(None, _read_sync, path)


async def read_aiofiles(path: str) -> bytes:
    """Open, read and close through aiofiles (a hop per call)."""
    import aiofiles

    async with aiofiles.open(path, "rb") as f:
        data: bytes = await f.read()
        return data


async def _rate(read: Callable[[str], Awaitable[bytes]], path: str, reads: int,
                concurrency: int) -> float:
    left = reads

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await read(path)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return reads / (time.perf_counter() - start)


async def measure(reads: int) -> list[dict[str, Any]]:
    """Reads per second for both methods at concurrency 1 and 64."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "record")
        await asyncio.to_thread(_write_sync, path, os.urandom(300))
        rows = []
        for concurrency in (1, 64):
            hop = await _rate(read_one_hop, path, reads, concurrency)
            try:
                aio: float | None = await _rate(read_aiofiles, path, reads, concurrency)
            except ImportError:
                aio = None
            rows.append({"concurrency": concurrency, "one_hop_per_s": hop,
                         "aiofiles_per_s": aio,
                         "one_hop_vs_aiofiles": None if aio is None else hop / aio})
        return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run, print the table and write benchmarks/results/fileio.json."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fileio")
    parser.add_argument("--reads", type=int, default=5000)
    args = parser.parse_args(argv)
    print("## File reads: aiofiles vs one thread hop\n")
    print(setup_line(reads=args.reads, file_bytes=300))
    rows = asyncio.run(measure(args.reads))
    print()
    print(table(["concurrency", "one hop reads/s", "aiofiles reads/s", "one hop vs aiofiles"],
                [[r["concurrency"], r["one_hop_per_s"],
                  "not installed" if r["aiofiles_per_s"] is None else r["aiofiles_per_s"],
                  "-" if r["one_hop_vs_aiofiles"] is None else r["one_hop_vs_aiofiles"]]
                 for r in rows]))
    result = {"rows": rows}
    write_json("fileio", result)
    return result


if __name__ == "__main__":
    main()
