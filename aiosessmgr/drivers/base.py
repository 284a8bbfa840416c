"""The contract every session driver implements.

A driver stores opaque bytes under a session id. It knows nothing of sessions,
serializers, encryption or aiohttp. Units are fixed: ``ttl`` and ``max_lifetime``
are **seconds**.

Required (:class:`SessionDriver`): ``read``, ``write``, ``destroy``, ``gc``,
optionally ``close``. That is all a driver registered with ``manager.extend`` needs.

Optional capabilities, detected once per driver and used when present:

* :class:`SupportsTouch` — ``read_touch(id, ttl)`` reads and extends expiry in one
  operation, so a read-only request never writes the record back.
* :class:`SupportsCompareAndSet` — ``compare_and_set(id, payload, ttl, expected)``
  writes only if the stored record's version is still ``expected``; this is what
  makes concurrent requests on one session lose nothing. The version of a record
  is its first :data:`VERSION_SIZE` bytes; a driver compares those bytes and never
  interprets them. Without it the session falls back to ``write`` (last writer wins).
* :class:`SupportsLock` — ``acquire_lock`` / ``release_lock``: an exclusive per-session
  lock shared by every process using the store, for the opt-in ``session.lock()``.
  Without it the lock only serializes requests within one process.
* :class:`SupportsUserIndex` — ``index_user_session`` / ``user_session_index`` /
  ``unindex_user_sessions``: per user id, an index ``{handle: session id}`` of that
  user's sessions, for ``manager.user_sessions()`` and "log out other devices". Without
  it those raise :class:`aiosessmgr.SessionError` naming these methods.
* :class:`SupportsReadMany` — ``read_many(ids)``: many reads in one operation (one
  statement, one pipeline). Without it the manager sends the reads concurrently.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..keys import check_keys

__all__ = [
    "VERSION_SIZE",
    "DriverSpec",
    "SessionDriver",
    "SupportsCompareAndSet",
    "SupportsLock",
    "SupportsReadMany",
    "SupportsTouch",
    "SupportsUserIndex",
]

#: Every stored record starts with this many bytes of version (see SupportsCompareAndSet).
VERSION_SIZE = 8


class DriverSpec(Protocol):
    """What a driver factory is given: plain values, so drivers never import config.

    :class:`aiosessmgr.DriverConfig` has this shape; a test may pass any object that does.
    """

    @property
    def driver(self) -> str:
        """The driver type name (``"file"``, ``"redis"``, or one registered with extend)."""

    @property
    def ttl(self) -> int:
        """The idle lifetime in whole seconds."""

    @property
    def options(self) -> Mapping[str, Any]:
        """The driver's own keys of its config section (``path``, ``url``, ...)."""


#: keys every driver section has besides the driver's own options
COMMON_KEYS = ("driver", "lifetime")


def check_options(spec: DriverSpec, valid: tuple[str, ...]) -> None:
    """Raise ConfigError naming the valid keys for an option the driver does not know."""
    check_keys(f"drivers option of {spec.driver!r} driver: ", spec.options,
               [*valid, *COMMON_KEYS])


class SessionDriver(ABC):
    """Stores session records (bytes) by id, with expiry in seconds.

    Implementations must make ``write`` atomic: a concurrent ``read`` sees the old
    record or the new one, never a mix. Errors talking to the store are raised as
    :class:`aiosessmgr.DriverError` (``raise DriverError(...) from exc``); a record that
    is missing, expired or unreadable is ``None``, not an error.
    """

    #: True when the store drops expired records by itself (Redis's ``EX``, a browser's
    #: cookie expiry), so :meth:`gc` never has anything to remove; ``python -m aiosessmgr
    #: gc`` then says so instead of "removed 0". False (the default) for custom drivers.
    expires_itself: ClassVar[bool] = False
    #: True when the records live only in the memory of the process that wrote them (the
    #: memory driver): another process, such as ``python -m aiosessmgr gc`` run from cron,
    #: sees an empty store, so its :meth:`gc` has nothing to remove there (the serving
    #: process's lottery collects them) and ``gc`` says so. False (the default) for a
    #: store that processes share.
    process_local: ClassVar[bool] = False

    @abstractmethod
    async def read(self, session_id: str) -> bytes | None:
        """Return the record stored under *session_id*, or None if absent or expired."""

    @abstractmethod
    async def write(self, session_id: str, payload: bytes, ttl: int) -> None:
        """Store *payload* under *session_id*, replacing it atomically; expire after *ttl* s."""

    @abstractmethod
    async def destroy(self, session_id: str) -> None:
        """Remove the record (no error if it does not exist)."""

    @abstractmethod
    async def gc(self, max_lifetime: int) -> int:
        """Remove records idle for more than *max_lifetime* seconds; return how many."""

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Release connections and files; called once by ``SessionManager.close()``."""


@runtime_checkable
class SupportsTouch(Protocol):
    """A driver that can read a record and extend its expiry in one operation."""

    async def read_touch(self, session_id: str, ttl: int) -> bytes | None:
        """Like ``read``, and if found, make it expire *ttl* seconds from now."""


@runtime_checkable
class SupportsCompareAndSet(Protocol):
    """A driver with an atomic conditional write, the basis of lossless concurrent saves."""

    async def compare_and_set(
        self, session_id: str, payload: bytes, ttl: int, expected: bytes | None
    ) -> bool:
        """Write *payload* only if the stored version equals *expected*; True if written.

        ``expected=None`` means "only if no record exists". The version of a record is
        ``record[:VERSION_SIZE]``. The check and the write must be one atomic step with
        respect to every other writer of that id (other tasks, processes or hosts that
        share the store).
        """


@runtime_checkable
class SupportsLock(Protocol):
    """A driver that can hold an exclusive lock per session id across processes."""

    async def acquire_lock(self, session_id: str, ttl: float, wait: float) -> str | None:
        """Take the lock within *wait* seconds; return a release token, or None on timeout.

        The lock frees itself after *ttl* seconds if its holder dies without releasing it
        (where the store cannot tie the lock to the holder's lifetime).
        """

    async def release_lock(self, session_id: str, token: str) -> None:
        """Release the lock if *token* still holds it."""


@runtime_checkable
class SupportsUserIndex(Protocol):
    """A driver that keeps, per user id, an index of that user's sessions.

    The index of a user maps a *handle* (a public name of one session, 22 URL-safe
    characters) to the id of the record it currently names. It is a hint, not the truth:
    the record names its user, and the manager checks every entry against its record
    (stale entries are removed with :meth:`unindex_user_sessions`). What a driver must
    guarantee: each method is atomic with respect to every other index call for the same
    user, from any task, process or host sharing the store (on Redis Cluster: one hash
    slot per user, no cross-slot command). *user_id* is any string of 1 to 256 printable
    characters (it never reaches a path or key unescaped); *session_id* is always a valid
    id. Store failures are :class:`aiosessmgr.DriverError`. ``gc()`` should also remove
    entries whose record is gone where that costs no more than what it removes.
    """

    async def index_user_session(self, user_id: str, handle: str, session_id: str,
                                 ttl: int, expected: str | None = None) -> bool:
        """Point *handle* at *session_id* in *user_id*'s index: a compare-and-set.

        Written only if the handle names nothing (or an expired entry), *session_id*
        already (a refresh), or *expected* (the id the session moves from, at a login or
        regenerate); an entry naming any other id stays as it is and the answer is False.
        Of two requests moving one session to new ids, so only the first is indexed, and
        a late refresh never points a moved session's handle back at its old id. True
        otherwise (a key of another type where the index should be, logged and left alone,
        counts as True: no other id holds the handle).

        A written entry is then kept at least *ttl* seconds from now (a deadline never
        shortened). A driver may keep one deadline per user instead, the latest, and drop
        the whole index once it has passed; by the next ``gc()`` at the latest, an entry
        past its deadline is gone.
        """

    async def user_session_index(self, user_id: str) -> dict[str, str]:
        """The entries of *user_id*'s index, ``{handle: session id}``; ``{}`` if none."""

    async def unindex_user_sessions(self, user_id: str, entries: Mapping[str, str]) -> int:
        """Remove each handle of *entries* that still names the session id given for it.

        An entry that names another id by now (the session moved to a new id) stays.
        Returns how many entries were removed.
        """


@runtime_checkable
class SupportsReadMany(Protocol):
    """A driver that reads many records in one operation (a statement, a pipeline)."""

    async def read_many(self, session_ids: Sequence[str]) -> list[bytes | None]:
        """``read()`` of each id, in the order given (None: absent or expired)."""
