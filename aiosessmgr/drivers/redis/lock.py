"""Session locks on redis-py's own ``Lock`` (SET NX PX with a token, Lua release)."""

from __future__ import annotations

import asyncio

from redis.asyncio.lock import Lock
from redis.exceptions import ResponseError

__all__ = ["AcquireAbandoned", "SessionLock", "is_wrongtype"]


class AcquireAbandoned(Exception):
    """Raised inside an acquire whose caller is gone, to end its polling."""


def is_wrongtype(exc: ResponseError) -> bool:
    """True if *exc* says the key holds another type of value (also from inside a script).

    Redis 7 passes a script's WRONGTYPE on as is; Redis 6 wraps it in an ERR reply.
    """
    message = str(exc)
    return message.startswith("WRONGTYPE") or ": WRONGTYPE " in message


class SessionLock(Lock):
    """redis-py's Lock, taken the way a session lock must be.

    ``acquire`` is redis-py's (``SET name token NX PX timeout``, then a ``sleep`` and
    another try until ``blocking_timeout`` runs out), release its Lua script (which
    loads itself again on NOSCRIPT). ``do_acquire`` adds three things:

    * a SET refused by our own earlier attempt counts as taken: a SET whose connection
      failed after it landed is sent again by redis-py's retry, and the token (this
      acquire's alone) then already holds the key;
    * a key of another type under the lock's name is never taken: the attempt answers
      "not taken" and sets :attr:`foreign` (the driver logs it once);
    * every command is bounded by :attr:`call_timeout` seconds, and an acquire whose
      caller was cancelled (:attr:`abandoned`) sends nothing more; :attr:`in_flight`
      tells whether an attempt's SET may be on the wire.
    """

    #: seconds each command of an attempt may take (the driver sets its own timeout)
    call_timeout: float = 6.0
    #: set once an attempt met a key of another type under the lock's name
    foreign: bool = False
    #: set by the driver when the acquiring caller is gone
    abandoned: bool = False
    #: True while an attempt's commands are being sent or answered
    in_flight: bool = False

    async def do_acquire(self, token: str | bytes) -> bool:
        """One attempt: True if *token* holds the lock now, False if another value does."""
        if self.abandoned:
            raise AcquireAbandoned
        self.in_flight = True
        try:
            async with asyncio.timeout(self.call_timeout):
                if await super().do_acquire(token):
                    return True
            try:
                async with asyncio.timeout(self.call_timeout):
                    holder = await self.redis.get(self.name)
            except ResponseError as exc:
                if not is_wrongtype(exc):
                    raise
                self.foreign = True
                holder = None
        finally:
            self.in_flight = False
        if holder is not None and holder == token:
            return True
        if self.abandoned:
            raise AcquireAbandoned
        return False
