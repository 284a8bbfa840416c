"""The stored record: a version prefix, then the encoded ``{"d": data, "m": meta}``.

.. code-block:: text

    version (VERSION_SIZE random bytes) | codec payload of {"d": {...}, "m": {...}}

Drivers compare the version and never look further (``drivers.base``); the codec
turns the mapping into bytes and back; this module alone knows the layout and what
valid metadata looks like. Metadata keys: ``c`` created, ``t`` last write, ``s``
cookie last sent (epoch seconds), ``k`` CSRF token, ``f`` ``{flashed key: token}``;
for a session bound to a user (``login``): ``u`` user id, ``h`` handle, ``l`` login,
``v`` user index last refreshed (epoch seconds), ``a`` user agent, ``i`` IP address.
"""

from __future__ import annotations

import math
import os
from typing import Any, Final, Protocol

from .drivers.base import VERSION_SIZE

__all__ = ["DATA", "META", "VERSION_SIZE", "DecodeError", "decode", "encode", "layout",
           "new_version", "parse"]

#: the record's two top-level keys: the session's data and its metadata
DATA: Final = "d"
META: Final = "m"

_SCALARS: Final = (str, int, float, bool, type(None))
_TIMES: Final = frozenset({"c", "t", "s", "l", "v"})
_STRINGS: Final = frozenset({"k", "u", "h", "a", "i"})


class DecodeError(ValueError):
    """A stored payload could not be decrypted or decoded (internal; never reaches users)."""


class _Codec(Protocol):
    def encode(self, session_id: str, data: dict[str, Any]) -> bytes: ...
    def decode(self, session_id: str, payload: bytes) -> tuple[dict[str, Any], bool]: ...


def encode(codec: _Codec, session_id: str, data: dict[str, Any],
           meta: dict[str, Any]) -> tuple[bytes, bytes]:
    """(version, record) for *data* and *meta* under a new version; SerializationError."""
    version = new_version()
    return version, version + codec.encode(session_id, layout(data, meta))


def decode(codec: _Codec, session_id: str,
           raw: bytes) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """(data, meta, stale key) of a stored record; DecodeError if it is unreadable."""
    if len(raw) <= VERSION_SIZE:
        raise DecodeError("record is truncated")
    mapping, stale = codec.decode(session_id, raw[VERSION_SIZE:])
    data, meta = parse(mapping)
    return data, meta, stale


def new_version() -> bytes:
    """A fresh random version for the next write (VERSION_SIZE bytes)."""
    return os.urandom(VERSION_SIZE)


def layout(data: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The mapping the codec encodes for *data* and *meta*."""
    return {DATA: data, META: meta}


def parse(record: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(data, meta) of a decoded record; DecodeError if it is not of the session shape.

    Records written by aiosessmgr 0.1 (flash data as ``[new keys, old keys]``) are read
    with every flashed key still unread.
    """
    if not isinstance(record, dict):
        raise DecodeError("record does not have the session shape")
    data, meta = record.get(DATA), record.get(META, {})
    if not isinstance(data, dict) or not isinstance(meta, dict) or not valid_meta(meta):
        raise DecodeError("record does not have the session shape")
    if isinstance(meta.get("f"), list):
        meta["f"] = {key: "0" for part in meta["f"] for key in part}
    return data, meta


def valid_meta(meta: dict[str, Any]) -> bool:
    """Reject stored metadata of the wrong shape (a hostile or foreign payload).

    Times are finite numbers, the token and user binding strs, flash data a {str: str}
    map; keys we do not
    know (a later version's) may hold scalars only, so metadata always saves again.
    One pass over the entries: this runs on every read.
    """
    for name, value in meta.items():
        kind = type(value)
        if name in _TIMES:
            if kind is float:
                if value - value != 0.0:  # inf or nan
                    return False
            elif kind is not int and (isinstance(value, bool)  # bool is not a time
                                      or not isinstance(value, (int, float))
                                      or (isinstance(value, float) and not math.isfinite(value))):
                return False
        elif name in _STRINGS:
            if not isinstance(value, str):
                return False
        elif name == "f":
            if not _valid_flash(value):
                return False
        elif not isinstance(value, _SCALARS) or (isinstance(value, float)
                                                 and not math.isfinite(value)):
            return False
    return True


def _valid_flash(flash: Any) -> bool:
    if isinstance(flash, dict):
        return all(isinstance(k, str) and isinstance(v, str) for k, v in flash.items())
    # aiosessmgr 0.1: [new keys, old keys]
    return (isinstance(flash, list) and len(flash) == 2
            and all(isinstance(part, list) and all(isinstance(k, str) for k in part)
                    for part in flash))
