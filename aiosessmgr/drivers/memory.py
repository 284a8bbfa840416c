"""In-process driver: a dict with per-entry expiry.

For tests and single-process apps. It doubles as the test driver (as httpx's
``MockTransport``): no server, deterministic, and its clock can be injected so
tests control expiry without sleeping. Sessions vanish when the process exits.

Capabilities: SupportsTouch, SupportsCompareAndSet, SupportsLock (within this process,
the only user of the store), SupportsUserIndex and SupportsReadMany (see
:mod:`aiosessmgr.drivers.base`).

GC costs what it removes: besides the main dict, every id sits in one bucket per distinct
ttl, an insertion-ordered dict in which a write or touch moves the id to the end. For one
ttl that order is expiry order, so ``gc()`` pops expired ids off the front of each bucket
and stops at the first live one; live sessions are never looked at.

The user index costs what it removes too. A user's index has one deadline (the latest
``now + ttl`` it was given) and sits in a bucket per ttl the same way, so ``gc()`` pops
the indexes past their deadline off the fronts. A reverse map from session id to the
``(user, handle)`` entries naming it removes those entries the moment their record goes
(``destroy``, passive expiry, ``gc``), looking at nothing else; an index left empty goes
whole. Entries naming an id that never had a record here go with their index's deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from itertools import islice
from typing import ClassVar

from ..locks import LocalLocks
from .base import VERSION_SIZE, DriverSpec, SessionDriver, check_options

__all__ = ["LocalLocks", "MemoryDriver"]  # LocalLocks: re-exported for old imports

#: entries examined between two yields to the event loop during gc()
GC_CHUNK = 5_000

# (expires_at in clock seconds, record, ttl it was written with)
_Entry = tuple[float, bytes, int]


class _UserIndex:
    """One user's index: its entries and its one deadline (and the ttl that set it)."""

    __slots__ = ("deadline", "entries", "ttl")

    def __init__(self, deadline: float, ttl: int) -> None:
        self.deadline = deadline
        self.ttl = ttl
        self.entries: dict[str, str] = {}  # handle -> session id


class MemoryDriver(SessionDriver):
    """Keeps records in a dict; atomic by construction (one event loop, no awaits inside).

    ``clock`` returns seconds (default ``time.monotonic``); pass a fake to control expiry.
    With a clock that goes back (a fake one, or an injected wall clock) a bucket may hold a
    live id in front of expired ones: those are collected once it expires (at most one
    lifetime late; a read never returns them), and a live entry is never removed.
    """

    #: the records are this process's own: a ``gc`` run in another process finds none
    process_local: ClassVar[bool] = True

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        # ttl -> {id: expires_at}; each stored id is in the bucket of its entry's ttl
        self._buckets: dict[int, dict[str, float]] = {}
        #: entries (records and user indexes) gc() has looked at, in total: its cost,
        #: observable without timing
        self.gc_examined = 0
        self._locks = LocalLocks()
        self._users: dict[str, _UserIndex] = {}
        # ttl -> {user id: deadline}: each index is in the bucket of the ttl that set it
        self._user_buckets: dict[int, dict[str, float]] = {}
        # session id -> the (user id, handle) entries naming it, exactly those
        self._named: dict[str, set[tuple[str, str]]] = {}

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
        if self._named:
            self._unname_record(session_id)

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
        if entry[2] == ttl and bucket is not None:
            # the hot path, _put inlined: same bucket
            expires = now + ttl
            self._entries[session_id] = (expires, record, ttl)
            bucket.pop(session_id, None)
            bucket[session_id] = expires
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

    async def read_many(self, session_ids: Sequence[str]) -> list[bytes | None]:
        """``read()`` of each id, in order (None: absent or expired)."""
        live = self._live
        return [None if (entry := live(sid)) is None else entry[1] for sid in session_ids]

    # -- the user index (no await inside: each call is atomic) -----------------------------

    async def index_user_session(self, user_id: str, handle: str, session_id: str,
                                 ttl: int, expected: str | None = None) -> bool:
        """Point *handle* at *session_id* in *user_id*'s index, kept *ttl* s from now, if
        it names nothing, *session_id* or *expected*; False (nothing written) if it names
        another id (see ``SupportsUserIndex``)."""
        now = self._clock()
        index = self._user(user_id, now)
        if index is not None and index.entries.get(handle, session_id) not in (session_id,
                                                                               expected):
            return False
        deadline = now + ttl
        if index is None:
            index = self._users[user_id] = _UserIndex(deadline, ttl)
            self._user_buckets.setdefault(ttl, {})[user_id] = deadline
        elif deadline > index.deadline:
            # the latest deadline wins; at the end of its ttl's bucket it is in order
            old = self._user_buckets.get(index.ttl)
            if old is not None:
                old.pop(user_id, None)
            index.deadline, index.ttl = deadline, ttl
            self._user_buckets.setdefault(ttl, {})[user_id] = deadline
        entries = index.entries
        previous = entries.get(handle)
        if previous == session_id:
            return True
        if previous is not None:
            self._unname(previous, user_id, handle)
        entries[handle] = session_id
        named = self._named.get(session_id)
        if named is None:
            self._named[session_id] = {(user_id, handle)}
        else:
            named.add((user_id, handle))
        return True

    async def user_session_index(self, user_id: str) -> dict[str, str]:
        """*user_id*'s entries ``{handle: session id}`` (a copy); ``{}`` if none or expired."""
        index = self._user(user_id, self._clock())
        return {} if index is None else dict(index.entries)

    async def unindex_user_sessions(self, user_id: str, entries: Mapping[str, str]) -> int:
        """Remove each handle of *entries* that still names its given id; how many went."""
        index = self._user(user_id, self._clock())
        if index is None:
            return 0
        stored = index.entries
        removed = 0
        for handle, session_id in entries.items():
            if stored.get(handle) == session_id:
                del stored[handle]
                self._unname(session_id, user_id, handle)
                removed += 1
        if not stored:
            self._drop_user(user_id, index)
        return removed

    def _user(self, user_id: str, now: float) -> _UserIndex | None:
        """The user's index if it is live; one past its deadline is dropped here."""
        index = self._users.get(user_id)
        if index is not None and index.deadline <= now:
            self._drop_user(user_id, index)
            return None
        return index

    def _drop_user(self, user_id: str, index: _UserIndex) -> None:
        del self._users[user_id]
        bucket = self._user_buckets.get(index.ttl)
        if bucket is not None:
            bucket.pop(user_id, None)
        for handle, session_id in index.entries.items():
            self._unname(session_id, user_id, handle)

    def _unname(self, session_id: str, user_id: str, handle: str) -> None:
        """Forget that *handle* of *user_id* names *session_id* (the reverse map only)."""
        named = self._named.get(session_id)
        if named is not None:
            named.discard((user_id, handle))
            if not named:
                del self._named[session_id]

    def _unname_record(self, session_id: str) -> None:
        """The record of *session_id* is gone: remove the entries naming it."""
        named = self._named.pop(session_id, None)
        if named is None:
            return
        for user_id, handle in named:
            index = self._users.get(user_id)
            if index is not None and index.entries.get(handle) == session_id:
                del index.entries[handle]
                if not index.entries:
                    self._drop_user(user_id, index)

    async def gc(self, max_lifetime: int) -> int:
        """Remove expired entries, looking at no live one; return how many went.

        Pops expired ids off the front of each ttl bucket and stops at its first live
        one. Each step looks at most GC_CHUNK entries without awaiting (no iterator is
        held across a yield, so writes, reads and other gc runs may interleave), then
        yields to the loop, so a big run never stalls it. Entries expire by the ttl they
        were written with; *max_lifetime* is not needed: every entry has its own deadline.
        User indexes past their deadline go the same way (not counted in the result);
        the entries naming a removed record went with it.
        """
        removed = 0
        for buckets, collect in ((self._buckets, self._collect_front),
                                 (self._user_buckets, self._collect_users)):
            for ttl, bucket in list(buckets.items()):
                while True:
                    gone, seen, done = collect(bucket, GC_CHUNK)
                    if buckets is self._buckets:
                        removed += gone
                    self.gc_examined += seen
                    if done:
                        break
                    await asyncio.sleep(0)
                current = buckets.get(ttl)
                if current is not None and not current:
                    del buckets[ttl]
                await asyncio.sleep(0)
        return removed

    def _collect_users(self, bucket: dict[str, float], limit: int) -> tuple[int, int, bool]:
        """Drop the user indexes past their deadline off the front of *bucket*, as
        :meth:`_collect_front` does records: (dropped, looked at, done)."""
        now = self._clock()
        expired: list[str] = []
        done = False
        for user_id, deadline in islice(bucket.items(), limit):
            if deadline > now:
                done = True
                break
            expired.append(user_id)
        dropped = 0
        for user_id in expired:
            bucket.pop(user_id, None)
            index = self._users.get(user_id)
            if index is not None and index.deadline <= now:  # re-checked, as for records
                self._drop_user(user_id, index)
                dropped += 1
        return dropped, len(expired) + done, done or len(expired) < limit

    def _collect_front(self, bucket: dict[str, float], limit: int) -> tuple[int, int, bool]:
        """Remove expired ids from the front of *bucket*: (removed, looked at, done)."""
        now = self._clock()
        expired: list[str] = []
        for session_id, expires in islice(bucket.items(), limit):
            if expires > now:  # the first live one: everything behind it is live too
                return self._remove(bucket, expired, now), len(expired) + 1, True
            expired.append(session_id)
        return self._remove(bucket, expired, now), len(expired), len(expired) < limit

    def _remove(self, bucket: dict[str, float], expired: list[str], now: float) -> int:
        entries = self._entries
        removed = 0
        for session_id in expired:
            bucket.pop(session_id, None)  # another gc run may have taken it meanwhile
            entry = entries.get(session_id)
            if entry is not None and entry[0] <= now:  # re-checked against the main dict
                del entries[session_id]
                removed += 1
                if self._named:
                    self._unname_record(session_id)
        return removed
