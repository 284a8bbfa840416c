"""The public API is exactly what __all__ lists; anything else is internal."""

from __future__ import annotations

import importlib

import pytest

import aiosessmgr


def test_all_is_sorted_and_complete() -> None:
    exported = aiosessmgr.__all__
    assert exported == sorted(exported)
    public = {name for name in dir(aiosessmgr) if not name.startswith("_")}
    modules = {"adoption", "body", "clientside", "codec", "commit", "compat", "config",
               "cookies", "csrf", "data",
               "delta", "deprecation", "drivers", "errors", "events", "ids", "keys", "locks", "log",
               "manager", "record", "renamed", "runtime", "serializers", "session", "testing",
               "web", "users", "locking",
               "annotations"}  # submodules, the deprecation helper, the __future__ import
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


def test_error_hierarchy() -> None:
    for cls in (aiosessmgr.ConfigError, aiosessmgr.SerializationError, aiosessmgr.DriverError,
                aiosessmgr.SessionError, aiosessmgr.SessionLockTimeout,
                aiosessmgr.SessionSaveTimeout, aiosessmgr.SessionTooLarge):
        assert issubclass(cls, aiosessmgr.AiosessmgrError)
    assert issubclass(aiosessmgr.SessionTooLarge, aiosessmgr.SerializationError)
    assert issubclass(aiosessmgr.SessionLockTimeout, aiosessmgr.SessionError)
    assert issubclass(aiosessmgr.SessionSaveTimeout, aiosessmgr.SessionError)


@pytest.mark.parametrize(("module", "old", "new"), [
    ("aiosessmgr", "SessionEvent", "SessionEventInfo"),
    ("aiosessmgr", "StoreContext", "DriverRuntime"),
    ("aiosessmgr.events", "SessionEvent", "SessionEventInfo"),
    ("aiosessmgr.session", "StoreContext", "DriverRuntime"),
])
def test_old_names_still_import_and_warn(module: str, old: str, new: str) -> None:
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; use .*{new}"):
        value = getattr(mod, old)
    assert value is getattr(aiosessmgr, new)
    with pytest.raises(AttributeError):
        _ = mod.NoSuchName


async def test_manager_context_is_a_deprecated_alias_of_runtime() -> None:
    manager = aiosessmgr.SessionManager()
    with pytest.warns(DeprecationWarning, match="use runtime"):
        assert manager.context() is manager.runtime()
    await manager.close()
