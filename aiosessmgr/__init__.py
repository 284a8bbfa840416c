"""aiosessmgr: fully async sessions for aiohttp, safe under concurrent requests.

Quick start::

    from aiohttp import web
    import aiosessmgr

    async def handler(request: web.Request) -> web.Response:
        session = await aiosessmgr.get_session(request)
        visits = session.increment("visits")
        return web.Response(text=f"visit {visits}")

    app = web.Application()
    aiosessmgr.setup(app, aiosessmgr.SessionManager({"default": "memory",
                                                     "drivers": {"memory": {"driver": "memory"}}}))
"""

from __future__ import annotations

from .codec import AesGcmCipher, Codec, JsonSerializer, MsgpackSerializer
from .config import (
    CookieConfig,
    DriverConfig,
    EncryptionConfig,
    Secret,
    Serializer,
    SessionConfig,
    UsersConfig,
)
from .csrf import csrf_exempt, csrf_middleware, csrf_token
from .deprecation import renamed
from .drivers.base import (
    SessionDriver,
    SupportsCompareAndSet,
    SupportsLock,
    SupportsReadMany,
    SupportsTouch,
    SupportsUserIndex,
)
from .drivers.memory import MemoryDriver
from .errors import (
    AiosessmgrError,
    ConfigError,
    DriverError,
    SerializationError,
    SessionError,
    SessionLockTimeout,
    SessionSaveTimeout,
    SessionTooLarge,
)
from .events import SessionEventInfo, SessionEvents
from .ids import is_valid_session_id, new_session_id
from .manager import DriverFactory, SessionManager
from .runtime import DriverRuntime
from .session import Session, SessionStore, State
from .users import UserSession
from .web import get_session, new_session, session_lock, session_middleware, setup

__version__ = "0.2.0"

__all__ = [
    "AesGcmCipher",
    "AiosessmgrError",
    "Codec",
    "ConfigError",
    "CookieConfig",
    "DriverConfig",
    "DriverError",
    "DriverFactory",
    "DriverRuntime",
    "EncryptionConfig",
    "JsonSerializer",
    "MemoryDriver",
    "MsgpackSerializer",
    "Secret",
    "SerializationError",
    "Serializer",
    "Session",
    "SessionConfig",
    "SessionDriver",
    "SessionError",
    "SessionEventInfo",
    "SessionEvents",
    "SessionLockTimeout",
    "SessionManager",
    "SessionSaveTimeout",
    "SessionStore",
    "SessionTooLarge",
    "State",
    "SupportsCompareAndSet",
    "SupportsLock",
    "SupportsReadMany",
    "SupportsTouch",
    "SupportsUserIndex",
    "UserSession",
    "UsersConfig",
    "__version__",
    "csrf_exempt",
    "csrf_middleware",
    "csrf_token",
    "get_session",
    "is_valid_session_id",
    "new_session",
    "new_session_id",
    "session_lock",
    "session_middleware",
    "setup",
]

# names before 0.2, kept for one release
__getattr__ = renamed("aiosessmgr", {
    "SessionEvent": ("aiosessmgr.SessionEventInfo", lambda: SessionEventInfo),
    "StoreContext": ("aiosessmgr.DriverRuntime", lambda: DriverRuntime),
})
