"""The per-driver runtime sessions share: capabilities, locks, save lines, tombstones."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .codec import Codec
from .commit import CommitQueue
from .config import UsersConfig
from .drivers.base import (
    SessionDriver,
    SupportsCompareAndSet,
    SupportsLock,
    SupportsTouch,
    SupportsUserIndex,
)
from .events import EventRegistry
from .locks import LocalLocks

__all__ = ["DriverRuntime", "Tombstones"]


class Tombstones:
    """Ids this process destroyed or moved, remembered for one session lifetime.

    A slower request that loaded such an id does not write it back on drivers without
    compare-and-set (whose saves cannot notice that a record is gone), and on every
    driver the middleware neither re-sends the cookie of an id moved away under a
    request nor lets a request that arrived before the move decide the cookie.
    The memory is bounded: at most ``limit`` ids, the oldest forgotten first.
    """

    def __init__(self, ttl: float, limit: int = 100_000) -> None:
        self._ttl = ttl
        self._limit = limit
        self._ids: OrderedDict[str, float] = OrderedDict()

    def add(self, session_id: str, now: float) -> None:
        """Remember *session_id* as destroyed at *now*."""
        self._ids[session_id] = now
        self._ids.move_to_end(session_id)
        while self._ids and (len(self._ids) > self._limit
                             or next(iter(self._ids.values())) < now - self._ttl):
            self._ids.popitem(last=False)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._ids

    def since(self, session_id: str) -> float | None:
        """When *session_id* was recorded here (clock seconds), or None."""
        return self._ids.get(session_id)


@dataclass(frozen=True, slots=True)
class DriverRuntime:
    """A named driver at run time: the driver and everything sessions on it share.

    Built once per driver name by the manager (``manager.runtime(name)``): its codec,
    events, lifetime (seconds), clock, detected capabilities, locks, save lines (group
    commit) and tombstones. Called ``StoreContext`` before 0.2 (a deprecated alias remains).
    """

    name: str
    driver: SessionDriver
    codec: Codec
    events: EventRegistry
    #: idle lifetime in seconds
    ttl: int
    #: seconds after creation when a session ends regardless of activity; None: no cap
    absolute_ttl: float | None = None
    #: wall clock in seconds, for the created/last-write timestamps kept in the record
    clock: Callable[[], float] = time.time
    #: bytes: the largest record a save writes (SessionTooLarge above it); None: no limit
    max_record_size: int | None = None
    #: the ``users`` section: device info at login, the session cap, last_seen refresh
    users: UsersConfig = field(default_factory=UsersConfig)
    can_touch: bool = field(init=False)
    can_cas: bool = field(init=False)
    #: the driver keeps an index of each user's sessions (SupportsUserIndex)
    can_index: bool = field(init=False)
    #: the driver's cross-process lock, or process-local locks for drivers without one
    locks: SupportsLock = field(init=False)
    #: saves of one id in this process are written together, so they never conflict with
    #: each other, and the last record written per id (see aiosessmgr.commit)
    commits: CommitQueue = field(init=False, default_factory=CommitQueue)
    #: ids destroyed here, for drivers without compare-and-set (see Tombstones)
    tombstones: Tombstones = field(init=False)
    #: ids a request moved away from (regenerate, invalidate, new_session) or destroyed
    #: here: the middleware leaves their cookie alone in requests that began before
    moved: Tombstones = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "can_touch", isinstance(self.driver, SupportsTouch))
        object.__setattr__(self, "can_cas", isinstance(self.driver, SupportsCompareAndSet))
        object.__setattr__(self, "can_index", isinstance(self.driver, SupportsUserIndex))
        driver = self.driver
        object.__setattr__(self, "locks",
                           driver if isinstance(driver, SupportsLock) else LocalLocks())
        if getattr(driver, "per_request", False) is True:
            # each request has its own store (the cookie driver): a record written for one
            # request is never another's to replay on, so none is remembered
            object.__setattr__(self, "commits", CommitQueue(ids=0))
        object.__setattr__(self, "tombstones", Tombstones(self.ttl))
        object.__setattr__(self, "moved", Tombstones(self.ttl))

    async def destroy(self, session_id: str) -> None:
        """Remove a record and remember its id (see Tombstones)."""
        await self.driver.destroy(session_id)
        self.commits.forget(session_id)
        now = self.clock()
        self.tombstones.add(session_id, now)
        self.moved.add(session_id, now)
