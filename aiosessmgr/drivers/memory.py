"""In-process driver: a dict with per-entry expiry.

For tests and single-process apps. It doubles as the test driver (as httpx's
``MockTransport``): no server, deterministic, and its clock can be injected so
tests control expiry without sleeping. Sessions vanish when the process exits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from itertools import islice

from ..locks import LocalLocks
from .base import VERSION_SIZE, DriverSpec, SessionDriver, check_options

__all__ = ["LocalLocks", "MemoryDriver"]  # LocalLocks: re-exported for old imports

#: entries examined between two yields to the event loop during gc()
GC_CHUNK = 5_000


class MemoryDriver(SessionDriver):
    """Keeps records in a dict; atomic by construction (one event loop, no awaits inside).

    ``clock`` returns seconds (default ``time.monotonic``); pass a fake to control expiry.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # id -> (expires_at in clock seconds, record)
        self._entries: dict[str, tuple[float, bytes]] = {}
        self._locks = LocalLocks()

    @classmethod
    def from_config(cls, config: DriverSpec) -> MemoryDriver:
        """Build from a driver config; the memory driver has no options."""
        check_options(config, ())
        return cls()

    def __len__(self) -> int:
        """Number of stored entries, expired ones not yet collected included."""
        return len(self._entries)

    def _live(self, session_id: str) -> tuple[float, bytes] | None:
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            # passive expiry: an expired entry is gone the moment someone looks
            del self._entries[session_id]
            return None
        return entry

    async def read(self, session_id: str) -> bytes | None:
        entry = self._live(session_id)
        return None if entry is None else entry[1]

    async def read_touch(self, session_id: str, ttl: int) -> bytes | None:
        """Read and push expiry to *ttl* seconds from now."""
        entry = self._live(session_id)
        if entry is None:
            return None
        self._entries[session_id] = (self._clock() + ttl, entry[1])
        return entry[1]

    async def write(self, session_id: str, payload: bytes, ttl: int) -> None:
        self._entries[session_id] = (self._clock() + ttl, bytes(payload))

    async def compare_and_set(
        self, session_id: str, payload: bytes, ttl: int, expected: bytes | None
    ) -> bool:
        """Write only if the stored version is *expected* (None: only if absent)."""
        entry = self._live(session_id)
        current = None if entry is None else entry[1][:VERSION_SIZE]
        if current != expected:
            return False
        self._entries[session_id] = (self._clock() + ttl, bytes(payload))
        return True

    async def destroy(self, session_id: str) -> None:
        self._entries.pop(session_id, None)

    async def acquire_lock(self, session_id: str, ttl: float, wait: float) -> str | None:
        """Exclusive per-id lock (this process is the only user of a memory store)."""
        return await self._locks.acquire_lock(session_id, ttl, wait)

    async def release_lock(self, session_id: str, token: str) -> None:
        """Release a lock taken with acquire_lock."""
        await self._locks.release_lock(session_id, token)

    async def gc(self, max_lifetime: int) -> int:
        """Remove expired entries, yielding to the loop every GC_CHUNK entries.

        Entries expire by the ttl they were written with; *max_lifetime* is not
        needed here because every entry carries its own deadline.
        """
        removed = 0
        ids = list(self._entries)
        it = iter(ids)
        while chunk := list(islice(it, GC_CHUNK)):
            now = self._clock()
            entries = self._entries
            for session_id in chunk:
                entry = entries.get(session_id)
                if entry is not None and entry[0] <= now:
                    del entries[session_id]
                    removed += 1
            await asyncio.sleep(0)
        return removed
