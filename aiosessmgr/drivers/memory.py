"""In-process driver: a dict with per-entry expiry.

For tests and single-process apps. It doubles as the test driver (as httpx's
``MockTransport``): no server, deterministic, and its clock can be injected so
tests control expiry without sleeping. Sessions vanish when the process exits.

GC costs what it removes: besides the main dict, every id sits in one bucket per distinct
ttl, an insertion-ordered dict in which a write or touch moves the id to the end. For one
ttl that order is expiry order, so ``gc()`` pops expired ids off the front of each bucket
and stops at the first live one; live sessions are never looked at.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from functools import partial
from itertools import islice

from ..locks import LocalLocks
from .base import VERSION_SIZE, DriverSpec, SessionDriver, check_options

__all__ = ["LocalLocks", "MemoryDriver"]  # LocalLocks: re-exported for old imports

#: entries examined between two yields to the event loop during gc()
GC_CHUNK = 5_000

# (expires_at in clock seconds, record, ttl it was written with)
_Entry = tuple[float, bytes, int]


class MemoryDriver(SessionDriver):
    """Keeps records in a dict; atomic by construction (one event loop, no awaits inside).

    ``clock`` returns seconds (default ``time.monotonic``); pass a fake to control expiry.
    A clock that goes back (a fake one, or an injected wall clock) stays correct: for one
    lifetime after it went back, ``gc()`` scans the buckets whose order it may have upset.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        # ttl -> {id: expires_at}; each stored id is in the bucket of its entry's ttl
        self._buckets: dict[int, dict[str, float]] = {}
        # the highest clock reading a write saw, and that reading when the clock last went
        # back: a bucket may be out of expiry order until the clock passes this + its ttl
        self._high = -math.inf
        self._unsorted_until = -math.inf
        #: entries gc() has looked at, in total: its cost, observable without timing
        self.gc_examined = 0
        self._locks = LocalLocks()

    @classmethod
    def from_config(cls, config: DriverSpec) -> MemoryDriver:
        """Build from a driver config; the memory driver has no options."""
        check_options(config, ())
        return cls()

    def __len__(self) -> int:
        """Number of stored entries, expired ones not yet collected included."""
        return len(self._entries)

    def _live(self, session_id: str) -> _Entry | None:
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            # passive expiry: an expired entry is gone the moment someone looks
            self._drop(session_id, entry)
            return None
        return entry

    def _drop(self, session_id: str, entry: _Entry) -> None:
        del self._entries[session_id]
        bucket = self._buckets.get(entry[2])
        if bucket is not None:
            bucket.pop(session_id, None)

    def _put(self, session_id: str, record: bytes, ttl: int, now: float,
             old: _Entry | None) -> None:
        """Store *record* expiring at now + ttl, at the end of its ttl's bucket."""
        expires = now + ttl
        self._entries[session_id] = (expires, record, ttl)
        buckets = self._buckets
        bucket = buckets.get(ttl)
        if old is not None:
            if old[2] == ttl:
                if bucket is not None:
                    bucket.pop(session_id, None)  # and back in at the end, below
            else:
                previous = buckets.get(old[2])
                if previous is not None:
                    previous.pop(session_id, None)
        if bucket is None:
            bucket = buckets[ttl] = {}
        bucket[session_id] = expires
        if now >= self._high:
            self._high = now
        else:
            self._unsorted_until = self._high

    async def read(self, session_id: str) -> bytes | None:
        entry = self._live(session_id)
        return None if entry is None else entry[1]

    async def read_touch(self, session_id: str, ttl: int) -> bytes | None:
        """Read and push expiry to *ttl* seconds from now."""
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        now = self._clock()
        if entry[0] <= now:
            self._drop(session_id, entry)
            return None
        record = entry[1]
        bucket = self._buckets.get(ttl)
        if entry[2] == ttl and bucket is not None and now >= self._high:
            # the hot path, _put inlined: same bucket, clock not gone back
            expires = now + ttl
            self._entries[session_id] = (expires, record, ttl)
            bucket.pop(session_id, None)
            bucket[session_id] = expires
            self._high = now
        else:
            self._put(session_id, record, ttl, now, entry)
        return record

    async def write(self, session_id: str, payload: bytes, ttl: int) -> None:
        self._put(session_id, bytes(payload), ttl, self._clock(),
                  self._entries.get(session_id))

    async def compare_and_set(
        self, session_id: str, payload: bytes, ttl: int, expected: bytes | None
    ) -> bool:
        """Write only if the stored version is *expected* (None: only if absent)."""
        entry = self._live(session_id)
        current = None if entry is None else entry[1][:VERSION_SIZE]
        if current != expected:
            return False
        self._put(session_id, bytes(payload), ttl, self._clock(), entry)
        return True

    async def destroy(self, session_id: str) -> None:
        entry = self._entries.get(session_id)
        if entry is not None:
            self._drop(session_id, entry)

    async def acquire_lock(self, session_id: str, ttl: float, wait: float) -> str | None:
        """Exclusive per-id lock (this process is the only user of a memory store)."""
        return await self._locks.acquire_lock(session_id, ttl, wait)

    async def release_lock(self, session_id: str, token: str) -> None:
        """Release a lock taken with acquire_lock."""
        await self._locks.release_lock(session_id, token)

    async def gc(self, max_lifetime: int) -> int:
        """Remove expired entries, looking at no live one; return how many went.

        Pops expired ids off the front of each ttl bucket and stops at its first live
        one (after the clock went back: scans that bucket whole, see the class). Yields
        to the loop every GC_CHUNK entries looked at, so a big run never stalls it.
        Entries expire by the ttl they were written with; *max_lifetime* is not needed
        here because every entry carries its own deadline.
        """
        removed = 0
        budget = GC_CHUNK  # entries left to look at before the next yield
        for ttl, bucket in list(self._buckets.items()):
            now = self._clock()
            step: Callable[[int], tuple[int, int, bool]]
            if now < self._unsorted_until + ttl:
                step = partial(self._collect_scan, bucket, iter(list(bucket)))
            elif (bucket and self._buckets.get(ttl) is bucket
                  and next(reversed(bucket.values())) <= now):
                # all of it expired: a fresh bucket takes new writes, and the old one is
                # emptied without taking each id off it (nothing else touches it now)
                self._buckets[ttl] = {}
                step = partial(self._collect_detached, iter(bucket.items()))
            else:
                step = partial(self._collect_front, bucket)
            done = False
            while not done:
                gone, seen, done = step(budget)
                removed += gone
                self.gc_examined += seen
                budget -= seen
                if budget <= 0:
                    await asyncio.sleep(0)
                    budget = GC_CHUNK
            current = self._buckets.get(ttl)
            if current is not None and not current:
                del self._buckets[ttl]
        return removed

    def _collect_front(self, bucket: dict[str, float], limit: int) -> tuple[int, int, bool]:
        """Remove expired ids from the front of *bucket*: (removed, looked at, done)."""
        now = self._clock()
        expired: list[str] = []
        for session_id, expires in islice(bucket.items(), limit):
            if expires > now:  # the first live one: everything behind it is live too
                return self._remove(bucket, expired, now), len(expired) + 1, True
            expired.append(session_id)
        return self._remove(bucket, expired, now), len(expired), len(expired) < limit

    def _collect_scan(self, bucket: dict[str, float], ids: Iterator[str],
                      limit: int) -> tuple[int, int, bool]:
        """Remove expired ids among the next *limit* of *ids*: (removed, looked at, done)."""
        now = self._clock()
        chunk = list(islice(ids, limit))
        expired = [session_id for session_id in chunk
                   if (expires := bucket.get(session_id)) is not None and expires <= now]
        return self._remove(bucket, expired, now), len(chunk), len(chunk) < limit

    def _collect_detached(self, items: Iterator[tuple[str, float]],
                          limit: int) -> tuple[int, int, bool]:
        """Remove the next *limit* ids of a detached, wholly expired bucket, except those
        written again since (their entry no longer holds the bucket's deadline object)."""
        entries = self._entries
        removed = seen = 0
        for session_id, expires in islice(items, limit):
            seen += 1
            entry = entries.get(session_id)
            if entry is not None and entry[0] is expires:
                del entries[session_id]
                removed += 1
        return removed, seen, seen < limit

    def _remove(self, bucket: dict[str, float], expired: list[str], now: float) -> int:
        entries = self._entries
        removed = 0
        for session_id in expired:
            del bucket[session_id]
            entry = entries.get(session_id)
            if entry is not None and entry[0] <= now:  # re-checked against the main dict
                del entries[session_id]
                removed += 1
        return removed
