"""Session drivers: the contract (``base``) and the built-in stores, one module each."""

from __future__ import annotations

from .base import (
    VERSION_SIZE,
    SessionDriver,
    SupportsCompareAndSet,
    SupportsLock,
    SupportsReadMany,
    SupportsTouch,
    SupportsUserIndex,
)

__all__ = [
    "VERSION_SIZE",
    "SessionDriver",
    "SupportsCompareAndSet",
    "SupportsLock",
    "SupportsReadMany",
    "SupportsTouch",
    "SupportsUserIndex",
]
