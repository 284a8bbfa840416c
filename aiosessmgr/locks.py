"""In-process per-id locks, shared by session save turns and the memory driver.

Exclusive within one process only; a driver with a cross-process lock implements
:class:`aiosessmgr.drivers.base.SupportsLock` itself. Imports nothing of ours.
"""

from __future__ import annotations

import asyncio
import itertools
import random

__all__ = ["Backoff", "LocalLocks"]


class Backoff:
    """Jittered sleeps between lock attempts, doubling from *first* to *cap* seconds.

    *deadline* is on the event loop's clock. :meth:`sleep` answers False, without
    sleeping, once it has passed; the last sleep ends at the deadline, so a last
    attempt comes then. Shared by the file and Redis drivers' lock waits.
    """

    __slots__ = ("_cap", "_delay", "_loop", "deadline")

    def __init__(self, deadline: float, first: float, cap: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.deadline = deadline
        self._delay = first
        self._cap = cap

    def remaining(self) -> float:
        """Seconds left until the deadline (0 once it has passed)."""
        return max(self.deadline - self._loop.time(), 0.0)

    async def sleep(self) -> bool:
        """Sleep before the next attempt; False (no sleep) if the deadline has passed."""
        remaining = self.deadline - self._loop.time()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(remaining, random.uniform(self._delay / 2, self._delay)))
        self._delay = min(self._delay * 2, self._cap)
        return True


class LocalLocks:
    """Per-id asyncio locks: exclusive within this process only (SupportsLock).

    The memory driver's lock, and the session's fallback for drivers without one.
    ``ttl`` is not needed: a holder that fails still releases in its ``finally``. Each
    acquisition gets its own token, and a release with any other token (a late one, of
    an earlier holder) leaves the lock alone, as the driver contract says.
    """

    def __init__(self) -> None:
        # id -> (lock, number of tasks holding or waiting), dropped when unused
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # id -> the token of the task holding its lock
        self._holders: dict[str, str] = {}
        self._tokens = itertools.count(1)

    def _held(self, session_id: str) -> str:
        token = self._holders[session_id] = str(next(self._tokens))
        return token

    async def acquire_lock(self, session_id: str, ttl: float, wait: float) -> str | None:
        """Wait up to *wait* seconds for the id's lock; None on timeout."""
        entry = self._locks.get(session_id)
        if entry is None:
            # nobody holds or waits for this id: take a fresh lock without arming a timer
            lock = asyncio.Lock()
            self._locks[session_id] = (lock, 1)
            await lock.acquire()
            return self._held(session_id)
        lock, users = entry
        self._locks[session_id] = (lock, users + 1)
        try:
            async with asyncio.timeout(wait):
                await lock.acquire()
        except TimeoutError:
            self._unuse(session_id)
            return None
        except BaseException:
            self._unuse(session_id)
            raise
        return self._held(session_id)

    async def release_lock(self, session_id: str, token: str) -> None:
        """Release the id's lock if *token* (from acquire_lock) still holds it."""
        if self._holders.get(session_id) != token:
            return
        del self._holders[session_id]
        self._locks[session_id][0].release()
        self._unuse(session_id)

    def _unuse(self, session_id: str) -> None:
        lock, users = self._locks[session_id]
        if users <= 1:
            del self._locks[session_id]
        else:
            self._locks[session_id] = (lock, users - 1)
