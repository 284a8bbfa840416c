"""The opt-in per-session lock: ``session.lock()``, for a read-modify-write that
``increment``/``push`` cannot express.

Mixed into :class:`~aiosessmgr.SessionStore`, which provides what is declared below. The
lock itself is the driver's (``SupportsLock``) or, without one, process-local
(:class:`~aiosessmgr.locks.LocalLocks`), as ``DriverRuntime.locks`` chose.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Self

from .errors import DriverError, SessionLockTimeout
from .log import logger

if TYPE_CHECKING:
    from .runtime import DriverRuntime

__all__ = ["SessionLocking"]


class SessionLocking:
    """``lock()``: hold the session's lock while refreshing, changing and saving it;
    ``refresh()``: re-read the record and replay this request's changes on it."""

    if not TYPE_CHECKING:  # SessionStore's slots hold the state (mypy: declared below)
        __slots__ = ()
    else:
        _rt: DriverRuntime
        _id: str
        _answered_at: float

        @property
        def stored(self) -> bool:
            raise NotImplementedError

        @property
        def ended(self) -> bool:
            raise NotImplementedError

        def _require_started(self) -> None: ...
        def _end(self, sid: str) -> None: ...
        def _rebase(self, raw: bytes | None) -> bytes | None: ...
        async def save(self) -> None: ...

    async def refresh(self) -> None:
        """Re-read the stored record and replay this request's changes on top of it."""
        self._require_started()
        if not self.stored or self.ended:  # only a session whose record this request has
            return
        raw = await self._rt.driver.read(self._id)
        self._answered_at = time.monotonic()
        if raw is None:
            self._end(self._id)
        else:
            self._rebase(raw)

    @asynccontextmanager
    async def lock(self, lock_seconds: float = 10.0, wait_seconds: float = 10.0,
                   *, save: bool = True) -> AsyncIterator[Self]:
        """Hold this session's lock: no other ``lock()`` holder runs meanwhile.

        For a read-modify-write that ``increment``/``push`` cannot express. On entry the
        session is refreshed from the store; on a normal exit it is saved while the
        lock is still held (unless *save* is False: then the caller saves, or not).
        Waiting longer than *wait_seconds* raises :class:`SessionLockTimeout`;
        *lock_seconds* bounds how long a crashed holder can keep the lock (where the
        store needs it, e.g. Redis)::

            async with session.lock():
                session.put("seats", session.get("seats", 0) - 1)
        """
        self._require_started()
        locks, locked_id = self._rt.locks, self._id
        token = await locks.acquire_lock(locked_id, lock_seconds, wait_seconds)
        if token is None:
            raise SessionLockTimeout(
                f"session is locked by another request; gave up after {wait_seconds} s"
            )
        try:
            await self.refresh()
            yield self
            if save:
                await self.save()
        finally:
            try:
                await locks.release_lock(locked_id, token)
            except DriverError as exc:
                # the work is done (or failed on its own): do not hide that behind the
                # release; a lock the store could not release expires by itself
                logger.warning("could not release the lock of session %s…: %s",
                               locked_id[:6], exc)
