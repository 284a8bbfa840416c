"""Writing a session's record: compare-and-set with delta replay, or last writer wins.

Saves of one id in one process take turns (``DriverRuntime.save_turns``), so they never
conflict with each other; a conflict with another process re-reads the record, replays
the request's delta on it and tries again, backing off before each re-read, until
:data:`SAVE_DEADLINE`. A driver without compare-and-set writes last-writer-wins, but
never over an id this process destroyed meanwhile (``DriverRuntime.tombstones``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Final

from .drivers.base import VERSION_SIZE
from .errors import SessionSaveTimeout
from .runtime import DriverRuntime

__all__ = ["SAVE_BACKOFF_MAX", "SAVE_BACKOFF_MIN", "SAVE_DEADLINE", "SAVE_TURN_WAIT", "write"]

#: seconds a save keeps re-reading and replaying its delta while other processes keep
#: winning the compare-and-set (saves of one id within a process take turns instead)
SAVE_DEADLINE: Final = 10.0
#: seconds: the first and the longest jittered pause before a re-read after a conflict
SAVE_BACKOFF_MIN: Final = 0.0005
SAVE_BACKOFF_MAX: Final = 0.05
#: seconds a save waits for its turn behind saves of the same id in this process
SAVE_TURN_WAIT: Final = 10.0

#: () -> (version, record): encode the session's current state under a new version
Encode = Callable[[], tuple[bytes, bytes]]
#: (fresh record or None) -> its version: replay the delta on a record another wrote
Rebase = Callable[[bytes | None], bytes | None]


async def write(rt: DriverRuntime, session_id: str, expected: bytes | None,
                encode: Encode, rebase: Rebase) -> bytes | None:
    """Write the session; return the version written, or None if its record ended.

    *expected* is the version loaded (None: no record yet). Raises SessionSaveTimeout
    (turn or deadline) and DriverError (the store failed).
    """
    version, payload = encode()
    if not rt.can_cas:
        if expected is not None and session_id in rt.tombstones:
            return None  # destroyed while this request ran: last-writer-wins would revive it
        await rt.driver.write(session_id, payload, rt.ttl)
        return version
    turn = await rt.save_turns.acquire_lock(session_id, SAVE_TURN_WAIT, SAVE_TURN_WAIT)
    if turn is None:
        raise SessionSaveTimeout(
            f"session save waited {SAVE_TURN_WAIT:g} s for its turn behind other "
            f"saves of the same session"
        )
    try:
        return await _compare_and_set(rt, session_id, expected, version, payload, encode,
                                      rebase)
    finally:
        await rt.save_turns.release_lock(session_id, turn)


async def _compare_and_set(rt: DriverRuntime, session_id: str, expected: bytes | None,
                           version: bytes, payload: bytes, encode: Encode,
                           rebase: Rebase) -> bytes | None:
    cas = rt.driver.compare_and_set  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    deadline = 0.0
    conflicts = 0
    while True:
        if await cas(session_id, payload, rt.ttl, expected):
            return version
        conflicts += 1
        if conflicts == 1:
            # the first conflict re-reads at once: the winner has just written
            deadline = loop.time() + SAVE_DEADLINE
        else:
            # back off *before* re-reading, never between the re-read and the write:
            # the snapshot the delta is replayed on is then as fresh as it can be
            delay = random.uniform(0, min(SAVE_BACKOFF_MAX,
                                          SAVE_BACKOFF_MIN * (1 << min(conflicts, 16))))
            if loop.time() + delay > deadline:
                raise SessionSaveTimeout(
                    f"could not save session {session_id[:6]}…: other writers kept saving "
                    f"it first for {SAVE_DEADLINE:g} s ({conflicts} attempts)"
                )
            await asyncio.sleep(delay)
        fresh = await rt.driver.read(session_id)
        if fresh is not None and fresh[:VERSION_SIZE] == version:
            # our write landed but its reply was lost (a client that retried):
            # replaying the delta now would apply increments twice
            return version
        if fresh is None and expected is not None:
            return None
        expected = rebase(fresh)
        version, payload = encode()
