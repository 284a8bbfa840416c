"""Memory benchmark: bytes the memory driver holds per idle session, at 100,000 sessions.

Run: ``python -m benchmarks.memory [--sessions N]``. Stores real records (a small
session saved through SessionManager, so id, version, framing and metadata are all
counted) and measures with tracemalloc. "Overhead" is what is held beyond the
serialized session data itself. Target: under 600 bytes of overhead per small session.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tracemalloc
from collections.abc import Sequence
from typing import Any

from aiosessmgr import MemoryDriver, SessionManager

from ._common import progress, setup_line, table, write_json

TARGET_OVERHEAD = 600


async def measure(count: int) -> dict[str, Any]:
    """Save one small session, then store *count* copies of its record under new ids."""
    manager = SessionManager()
    session = await manager.driver()
    session.put({"user_id": 48213, "locale": "en-GB"})
    await session.save()
    driver = manager.get_driver()
    assert isinstance(driver, MemoryDriver)
    template = await driver.read(session.id)
    assert template is not None
    data_size = len(manager.codec.serializer.serialize({"user_id": 48213, "locale": "en-GB"}))
    sources = []
    for _ in range(count):
        s = await manager.driver()
        s.put({"user_id": 48213, "locale": "en-GB"})
        sources.append(s)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for s in sources:
        await s.save()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_session = (after - before) / count
    await manager.close()
    return {"sessions": count, "record_bytes": len(template), "data_bytes": data_size,
            "bytes_per_session": per_session, "overhead_bytes": per_session - data_size}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure, print the table and write benchmarks/results/memory.json."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--sessions", type=int, default=100_000)
    args = parser.parse_args(argv)
    print("## Memory per idle session (memory driver)\n")
    print(setup_line(sessions=args.sessions, session='{"user_id": int, "locale": str}',
                     measured_with="tracemalloc"))
    progress(f"saving {args.sessions:,} sessions")
    row = asyncio.run(measure(args.sessions))
    row["target_met"] = row["overhead_bytes"] < TARGET_OVERHEAD
    print()
    print(table(["sessions", "stored record bytes", "session data bytes", "bytes per session",
                 "overhead bytes", f"overhead < {TARGET_OVERHEAD}"],
                [[row["sessions"], row["record_bytes"], row["data_bytes"],
                  row["bytes_per_session"], row["overhead_bytes"],
                  "yes" if row["target_met"] else "NO"]]))
    write_json("memory", row)
    return row


if __name__ == "__main__":
    main()
