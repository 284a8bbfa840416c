"""The public API is exactly what __all__ lists; anything else is internal."""

from __future__ import annotations

import aiosessmgr


def test_all_is_sorted_and_complete() -> None:
    exported = aiosessmgr.__all__
    assert exported == sorted(exported)
    public = {name for name in dir(aiosessmgr) if not name.startswith("_")}
    modules = {"body", "codec", "compat", "config", "cookies", "csrf", "drivers", "errors",
               "events", "manager", "session", "web",
               "annotations"}  # submodules, and the __future__ import
    assert public - modules - set(exported) == set()
    for name in exported:
        assert hasattr(aiosessmgr, name), name


def test_pinned_public_names() -> None:
    assert aiosessmgr.__all__ == [
        "AesGcmCipher",
        "AiosessmgrError",
        "Codec",
        "ConfigError",
        "CookieConfig",
        "DriverConfig",
        "DriverError",
        "DriverFactory",
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
        "SessionEvent",
        "SessionEvents",
        "SessionLockTimeout",
        "SessionManager",
        "SessionSaveTimeout",
        "SessionStore",
        "StoreContext",
        "SupportsCompareAndSet",
        "SupportsLock",
        "SupportsTouch",
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


def test_error_hierarchy() -> None:
    for cls in (aiosessmgr.ConfigError, aiosessmgr.SerializationError, aiosessmgr.DriverError,
                aiosessmgr.SessionError, aiosessmgr.SessionLockTimeout,
                aiosessmgr.SessionSaveTimeout):
        assert issubclass(cls, aiosessmgr.AiosessmgrError)
    assert issubclass(aiosessmgr.SessionLockTimeout, aiosessmgr.SessionError)
    assert issubclass(aiosessmgr.SessionSaveTimeout, aiosessmgr.SessionError)
