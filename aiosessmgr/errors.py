"""The exceptions aiosessmgr raises.

Every exception derives from :class:`AiosessmgrError`, so one ``except`` catches them all:

.. code-block:: text

    AiosessmgrError
    ├── ConfigError          invalid configuration, raised at construction
    ├── SerializationError   a session value the serializer cannot encode
    ├── DriverError          the store is unreachable, timed out or failed
    └── SessionError         a session operation that cannot be done
        ├── SessionLockTimeout   a session lock could not be taken in time
        └── SessionSaveTimeout   a save kept meeting concurrent writers until its deadline
"""

from __future__ import annotations

__all__ = [
    "AiosessmgrError",
    "ConfigError",
    "DriverError",
    "SerializationError",
    "SessionError",
    "SessionLockTimeout",
    "SessionSaveTimeout",
]


class AiosessmgrError(Exception):
    """Base class of every error raised by aiosessmgr."""


class ConfigError(AiosessmgrError, ValueError):
    """The configuration is invalid; the message names the key and the valid choices."""


class SerializationError(AiosessmgrError, TypeError):
    """A session value cannot be serialized; the message names the key and the type.

    ``key`` is that session key when one is to blame (None for metadata or the whole).
    """

    def __init__(self, message: str, *, key: object = None) -> None:
        super().__init__(message)
        self.key = key


class SessionTooLarge(SerializationError):
    """A session record is larger than ``max_record_size`` (or, on the ``cookie`` driver, its
    cookies are longer than ``max_size``): ``size`` and ``limit`` in bytes.

    Raised by ``save()`` before anything is written, so the stored record is untouched.
    """

    def __init__(self, size: int, limit: int, setting: str = "max_record_size",
                 what: str = "the session record") -> None:
        super().__init__(
            f"{what} is {size:,} bytes, over {setting} ({limit:,} bytes): "
            "store less in the session (large data belongs in a database, keyed by a "
            f"value the session holds), or raise {setting}"
        )
        self.size = size
        self.limit = limit


class DriverError(AiosessmgrError):
    """The session store failed: unreachable, timed out, or an I/O error."""


class SessionError(AiosessmgrError):
    """A session operation cannot be done (wrong value type, session not started, ...)."""


class SessionLockTimeout(SessionError):
    """A session lock was not acquired within its wait time."""


class SessionSaveTimeout(SessionError):
    """A save met concurrent writers of the same session until its deadline (HTTP 503).

    Retrying later succeeds: nothing is wrong with the session or the store.
    """
