"""Memory benchmark: bytes the memory driver holds per idle session, at 100,000 sessions.

Run: ``python -m benchmarks.memory [--sessions N]``. Stores copies of a real record (a
small session saved through SessionManager, so version, framing and metadata are all
counted) under fresh ids in a memory driver, and measures what the driver holds with
tracemalloc. "Overhead" is everything beyond the serialized session data itself: the id,
the version, the metadata, the dict entry and expiry. Target: under 600 bytes per small
idle session.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Sequence
from typing import Any

from aiosessmgr import MemoryDriver, SessionManager, new_session_id

from ._common import cli_parser, progress, setup_line, table, write_json

TARGET_OVERHEAD = 600


async def measure(count: int) -> dict[str, Any]:
    """Store *count* copies of a real small session record under fresh ids; bytes each."""
    manager = SessionManager()
    session = await manager.driver()
    data = {"user_id": 48213, "locale": "en-GB"}
    session.put(data)
    await session.save()
    template = await manager.get_driver().read(session.id)
    assert template is not None
    await manager.close()
    data_size = len(manager.codec.serializer.serialize(data))
    driver = MemoryDriver()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(count):
        # a fresh id and a private copy of the record, as real sessions have
        await driver.write(new_session_id(), template[:-1] + template[-1:], 7200)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_session = (after - before) / count
    return {"sessions": count, "record_bytes": len(template), "data_bytes": data_size,
            "bytes_per_session": per_session, "overhead_bytes": per_session - data_size}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure, print the table and write benchmarks/results/memory.json."""
    parser = cli_parser("python -m benchmarks.memory", __doc__)
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
