"""Session locks: redis-py's ``Lock`` for each attempt, and one poller per id per process.

:class:`SessionLock` is redis-py's Lock with checked replies: ``SET name token NX PX
ttl`` to take it, Lock's Lua script to release it. Waiting is not Lock's fixed-interval
loop: :class:`Turns` queues the callers of this process that want one id's lock (an
``aiosessmgr.locks.LocalLocks`` per id, first come first served), so only the caller
whose turn it is sends ``SET NX``, on a backoff schedule that belongs to the id, not
to the caller (:meth:`Turns.next_attempt`): the next caller continues it where the one
before gave up. The others wait on an asyncio lock and send nothing. However many
waiters of one id there are, and however fast they come and go, they cost what one
costs: at most one attempt per half LOCK_POLL_MAX seconds once the backoff reached it
(about 27 a second on average, never more than 40), while another process holds the
lock. When this process's holder releases, the backoff starts over and the next
waiter's turn starts at once, after the release.

Another process still gets its share: a waiter there polls at least every
:data:`LOCK_POLL_MAX` seconds, and once this process has passed an id's lock from one
of its waiters to the next for :data:`LOCK_RUN` seconds, the next one first lets it go
for :data:`LOCK_YIELD` seconds (longer than that polling interval) before trying.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from typing import Final

from redis.asyncio.lock import Lock
from redis.exceptions import LockNotOwnedError, NoScriptError, ResponseError

from ...locks import LocalLocks
from . import replies

__all__ = ["LOCK_POLL_MAX", "LOCK_POLL_MIN", "LOCK_RUN", "LOCK_YIELD", "RELEASE_SCRIPT",
           "RELEASE_SHA", "SessionLock", "Turns", "is_wrongtype"]

#: redis-py's Lock release script (deletes the lock only if the token still holds it)
RELEASE_SCRIPT: Final = Lock.LUA_RELEASE_SCRIPT
RELEASE_SHA: Final = hashlib.sha1(RELEASE_SCRIPT.encode()).hexdigest()

#: seconds between attempts at a lock held elsewhere: the first sleep, and the longest
#: (each sleep is drawn between half its delay and its delay, which doubles up to this)
LOCK_POLL_MIN: Final = 0.005
LOCK_POLL_MAX: Final = 0.05
#: seconds this process may keep passing one id's lock between its own waiters before
#: it lets other processes have a go
LOCK_RUN: Final = 0.5
#: seconds the lock is left free then: twice the longest sleep between attempts, so a
#: waiter of another process tries at least once meanwhile
LOCK_YIELD: Final = 2 * LOCK_POLL_MAX


def is_wrongtype(exc: ResponseError) -> bool:
    """True if *exc* says the key holds another type of value (also from inside a script).

    Redis 7 passes a script's WRONGTYPE on as is; Redis 6 wraps it in an ERR reply.
    """
    message = str(exc)
    return message.startswith("WRONGTYPE") or ": WRONGTYPE " in message


class SessionLock(Lock):
    """redis-py's Lock, taken and released the way a session lock must be.

    :meth:`do_acquire` is one attempt, ``SET name token NX PX timeout``, with three
    additions: a SET refused by our own earlier attempt counts as taken (a SET whose
    connection failed after it landed is sent again by redis-py's retry, and the token,
    this acquire's alone, then already holds the key); a key of another type under the
    lock's name is never taken (the attempt answers "not taken" and sets
    :attr:`foreign`); and every reply is checked (:mod:`.replies`), the whole attempt
    (SET and GET, retries included) bounded by :attr:`call_timeout` seconds.
    :meth:`do_release` is Lock's Lua script, its reply checked.
    """

    #: seconds one attempt (SET NX, then GET) may take (the driver sets its own timeout)
    call_timeout: float = 6.0
    #: set once an attempt met a key of another type under the lock's name
    foreign: bool = False

    async def do_acquire(self, token: str | bytes) -> bool:
        """One attempt: True if *token* holds the lock now, False if another value does.

        Raises UnexpectedReply for a reply Redis cannot give, and redis-py's errors.
        """
        ttl_ms = int(self.timeout * 1000) if self.timeout else None
        # one deadline for the attempt, SET and GET (and redis-py's retries) together
        async with asyncio.timeout(self.call_timeout):
            reply = await self.redis.set(self.name, token, nx=True, px=ttl_ms)
            if replies.set_nx("SET NX", reply):
                return True
            try:
                holder = replies.record("GET", await self.redis.get(self.name))
            except ResponseError as exc:
                if not is_wrongtype(exc):
                    raise
                self.foreign = True
                return False
        return holder is not None and holder == token

    async def do_release(self, expected_token: bytes) -> None:
        """Delete the lock if *expected_token* holds it; LockNotOwnedError if it does not.

        Lock's own release script, sent as ``EVALSHA`` of its SHA1 and, if the node does
        not know it, once more as ``EVAL`` (which loads it). Not through Lock's
        ``lua_release``: that ``Script`` object is shared by the whole process and takes
        whatever ``SCRIPT LOAD`` answers for its SHA from then on, so one wrong reply
        (an array, say) would break every later release.
        """
        try:
            reply = await self.redis.execute_command("EVALSHA", RELEASE_SHA, 1, self.name,
                                                     expected_token)
        except NoScriptError:
            reply = await self.redis.execute_command("EVAL", RELEASE_SCRIPT, 1, self.name,
                                                     expected_token)
        if not replies.flag("lock release", reply):
            raise LockNotOwnedError("Cannot release a lock that's no longer owned")


class _Schedule:
    """When one id's next lock attempt is due, whichever of this process's waiters makes it."""

    __slots__ = ("delay", "gap", "last", "next_at")

    def __init__(self) -> None:
        #: seconds: the next sleep is drawn between half this and this
        self.delay: float = LOCK_POLL_MIN
        #: seconds: the shortest time allowed between the last attempt and the next
        self.gap: float = 0.0
        #: loop time of the last attempt, and the one at which the next is due
        self.last: float = 0.0
        self.next_at: float = 0.0


class Turns:
    """The callers of this process waiting for each id's lock: one at a time tries Redis.

    :meth:`wait` queues a caller behind the others of its id (first come, first
    served; a caller that times out or is cancelled leaves the queue without holding
    it up) and gives it a turn token; :meth:`end` passes the turn to the next one. The
    turn is held while polling and while holding the Redis lock. Also tracks how long
    this process has been passing an id's lock between its own waiters (see the module).
    """

    def __init__(self) -> None:
        self._queue = LocalLocks()
        # id -> callers waiting for or holding a turn; the entry goes with the last one
        self._users: dict[str, int] = {}
        # id -> loop time since which this process has held the id's lock without a break
        self._runs: dict[str, float] = {}
        # id -> when its next attempt is due, shared by the callers taking turns at it
        self._schedules: dict[str, _Schedule] = {}

    async def wait(self, session_id: str, wait: float) -> str | None:
        """Wait up to *wait* seconds for the id's turn; a turn token, or None on timeout."""
        self._users[session_id] = self._users.get(session_id, 0) + 1
        try:
            turn = await self._queue.acquire_lock(session_id, 0.0, wait)
        except BaseException:
            self._unuse(session_id)
            raise
        if turn is None:
            self._unuse(session_id)
        return turn

    async def end(self, session_id: str, turn: str) -> None:
        """End *turn* (from :meth:`wait`): the next caller waiting for the id goes on."""
        await self._queue.release_lock(session_id, turn)
        self._unuse(session_id)

    def should_yield(self, session_id: str, now: float) -> bool:
        """True if this process has held the id's lock for LOCK_RUN seconds on end: the
        caller whose turn it is should leave the lock free for LOCK_YIELD seconds."""
        since = self._runs.get(session_id)
        if since is None or now - since < LOCK_RUN:
            return False
        del self._runs[session_id]
        return True

    def next_attempt(self, session_id: str, deadline: float, now: float) -> float | None:
        """Loop time at which the caller whose turn it is should try the id's lock next,
        or None if no attempt is due before its *deadline* (loop time).

        The schedule is the id's, not the caller's: a caller whose turn starts when the
        one before it gave up continues that one's backoff (same delay, same next
        attempt) instead of starting over with an immediate attempt, so however fast
        waiters arrive and leave, one id costs at most one attempt per half
        LOCK_POLL_MAX seconds once the backoff reached it. A caller whose deadline comes
        before the next attempt is due gets a last attempt at its deadline, if that is
        at least the shortest allowed gap after the last one; else none.
        """
        schedule = self._schedules.get(session_id)
        if schedule is None:
            return now
        if schedule.next_at <= deadline:
            return max(schedule.next_at, now)
        if deadline - schedule.last >= schedule.gap:
            return max(deadline, now)
        return None

    def taken(self, session_id: str, now: float) -> None:
        """This process took the id's lock (a run of holders starts, or goes on); the
        backoff starts over (the next caller's turn starts with an attempt)."""
        self._runs.setdefault(session_id, now)
        self._schedules.pop(session_id, None)

    def missed(self, session_id: str, now: float) -> None:
        """An attempt, ending at loop time *now*, found the lock held by someone else:
        this process's run is over, and the next attempt is due after a jittered sleep
        (between half the current delay and the delay, which then doubles up to
        LOCK_POLL_MAX)."""
        self._runs.pop(session_id, None)
        schedule = self._schedules.get(session_id)
        if schedule is None:
            schedule = self._schedules[session_id] = _Schedule()
        schedule.last = now
        schedule.gap = schedule.delay / 2
        schedule.next_at = now + random.uniform(schedule.gap, schedule.delay)
        schedule.delay = min(schedule.delay * 2, LOCK_POLL_MAX)

    def _unuse(self, session_id: str) -> None:
        users = self._users[session_id] - 1
        if users:
            self._users[session_id] = users
        else:
            del self._users[session_id]
            self._runs.pop(session_id, None)
            self._schedules.pop(session_id, None)
