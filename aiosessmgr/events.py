"""Session lifecycle events and the listener registry.

Listeners may be plain functions or coroutine functions; both receive one
:class:`SessionEventInfo`. Plain listeners run inline; coroutine listeners run as
background tasks so they never delay a response. A listener that raises is
logged on the ``aiosessmgr`` logger and affects nothing else.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .deprecation import renamed
from .log import abbreviate, logger

if TYPE_CHECKING:
    from .session import SessionStore

__all__ = ["EventRegistry", "Listener", "SessionEventInfo", "SessionEvents"]



class SessionEvents(enum.StrEnum):
    """What can happen to a session."""

    #: a session was started (loaded or new); ``session`` is set
    STARTED = "started"
    #: the id changed, data kept; ``old_id`` and ``session_id`` (the new one) are set
    REGENERATED = "regenerated"
    #: the data was cleared and the id changed; ``old_id`` and ``session_id`` are set
    INVALIDATED = "invalidated"
    #: a stored record was removed; ``session_id`` is the removed id
    DESTROYED = "destroyed"
    #: the session was written to its store
    SAVED = "saved"
    #: a cookie named a session the store no longer has (idle expiry, GC, or never issued),
    #: or one past ``absolute_lifetime``, whose record this removes (no DESTROYED then)
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class SessionEventInfo:
    """What a listener receives: the event type, the session id, and context where it applies.

    Called ``SessionEvent`` before 0.2 (one letter from the ``SessionEvents`` enum); that
    name remains as a deprecated alias for one release.
    """

    type: SessionEvents
    session_id: str
    session: SessionStore | None = None
    old_id: str | None = None

    def __repr__(self) -> str:
        # ids abbreviated, as everywhere in logs: an event is often logged whole
        old = "" if self.old_id is None else f", old_id={abbreviate(self.old_id)!r}"
        return (f"SessionEventInfo(type={self.type}, "
                f"session_id={abbreviate(self.session_id)!r}{old})")


Listener = Callable[[SessionEventInfo], "Awaitable[Any] | Any"]


class EventRegistry:
    """Listeners per event type; ``emit`` never raises and never awaits a listener."""

    def __init__(self) -> None:
        self._listeners: dict[SessionEvents, list[Listener]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def on(self, event: SessionEvents, listener: Listener) -> None:
        """Call *listener* for every *event*."""
        self._listeners.setdefault(SessionEvents(event), []).append(listener)

    def off(self, event: SessionEvents, listener: Listener | None = None) -> None:
        """Remove *listener* (or every listener) for *event*; unknown listeners are ignored."""
        listeners = self._listeners.get(SessionEvents(event))
        if not listeners:
            return
        if listener is None:
            listeners.clear()
        elif listener in listeners:
            listeners.remove(listener)

    def has_listeners(self, event: SessionEvents) -> bool:
        """True if anything listens for *event* (lets callers skip building the event)."""
        return bool(self._listeners.get(event))

    def emit(self, event: SessionEventInfo) -> None:
        """Deliver *event*: sync listeners now, async ones as background tasks."""
        for listener in tuple(self._listeners.get(event.type, ())):
            try:
                result = listener(event)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
            except Exception:
                logger.exception("session event listener %r failed on %s", listener,
                                 event.type.value)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("async session event listener failed", exc_info=task.exception())

    async def drain(self, seconds: float = 5.0) -> None:
        """Wait (at most *seconds*) for async listeners still running."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=seconds)


# names before 0.2, kept for one release
__getattr__ = renamed("aiosessmgr.events", {
    "SessionEvent": ("aiosessmgr.SessionEventInfo", lambda: SessionEventInfo),
})
