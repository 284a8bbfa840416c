"""Turning session data into bytes and back: serializers and the AES-256-GCM cipher.

``Codec`` = serializer, then (optionally) encryption. Encrypted payloads are:

.. code-block:: text

    0x01 | key id (4 bytes) | nonce (12 bytes) | ciphertext + tag (16 bytes)

with the session id as associated data, so a payload copied under another id does
not decrypt. Plain payloads are ``0x00 | serialized bytes``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .config import EncryptionConfig, Secret, Serializer
from .errors import SerializationError

__all__ = [
    "AesGcmCipher",
    "Codec",
    "DecodeError",
    "JsonSerializer",
    "MsgpackSerializer",
    "OrmsgpackSerializer",
    "make_serializer",
]

_PLAIN = b"\x00"
_AES_GCM_V1 = b"\x01"
_KEY_ID_SIZE = 4
_NONCE_SIZE = 12
_DATETIME_EXT = 1


class DecodeError(ValueError):
    """A stored payload could not be decrypted or decoded (internal; never reaches users)."""


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        # ISO text keeps the exact offset and microseconds; msgpack's own timestamp
        # type would turn every datetime into UTC.
        return msgpack.ExtType(_DATETIME_EXT, obj.isoformat().encode("ascii"))
    raise TypeError(f"cannot serialize object of type {type(obj).__name__}")


def _msgpack_ext_hook(code: int, data: bytes) -> Any:
    if code == _DATETIME_EXT:
        return datetime.fromisoformat(data.decode("ascii"))
    return msgpack.ExtType(code, data)


class MsgpackSerializer:
    """The default: compact, fast, and round-trips bytes and (aware) datetimes.

    Tuples come back as lists, as in JSON.
    """

    def serialize(self, data: dict[str, Any]) -> bytes:
        """Encode with msgpack (bin type for bytes, ext type 1 for datetimes)."""
        return msgpack.packb(data, default=_msgpack_default, use_bin_type=True)  # type: ignore[no-any-return]

    def deserialize(self, payload: bytes) -> dict[str, Any]:
        """Decode msgpack produced by :meth:`serialize`."""
        value = msgpack.unpackb(
            payload, raw=False, ext_hook=_msgpack_ext_hook, strict_map_key=False
        )
        if not isinstance(value, dict):
            raise ValueError("session payload is not a mapping")
        return value


class OrmsgpackSerializer:
    """msgpack through ormsgpack (Rust): the same bytes as :class:`MsgpackSerializer`.

    Chosen automatically for ``"msgpack"`` when ormsgpack is installed
    (``pip install aiosessmgr[fast]``): encoding is about 4x and decoding about 2x faster
    on a typical session (``python -m benchmarks.serializers``). Types that ormsgpack
    would accept but msgpack would not (dataclasses, enums, UUIDs) are refused, so
    switching implementations never changes what a session can hold or its bytes.
    """

    def __init__(self) -> None:
        import ormsgpack

        self._packb = ormsgpack.packb
        self._unpackb = ormsgpack.unpackb
        self._ext = ormsgpack.Ext
        self._pack_options = (
            ormsgpack.OPT_PASSTHROUGH_DATETIME | ormsgpack.OPT_NON_STR_KEYS
            | ormsgpack.OPT_PASSTHROUGH_DATACLASS | ormsgpack.OPT_PASSTHROUGH_UUID
            | ormsgpack.OPT_PASSTHROUGH_ENUM | ormsgpack.OPT_PASSTHROUGH_BIG_INT
        )
        self._unpack_options = ormsgpack.OPT_NON_STR_KEYS

    def _default(self, obj: Any) -> Any:
        if isinstance(obj, datetime):
            return self._ext(_DATETIME_EXT, obj.isoformat().encode("ascii"))
        raise TypeError(f"cannot serialize object of type {type(obj).__name__}")

    def serialize(self, data: dict[str, Any]) -> bytes:
        """Encode exactly as MsgpackSerializer does."""
        payload: bytes = self._packb(data, default=self._default, option=self._pack_options)
        return payload

    def deserialize(self, payload: bytes) -> dict[str, Any]:
        """Decode msgpack produced by either implementation."""
        value = self._unpackb(payload, ext_hook=_msgpack_ext_hook,
                              option=self._unpack_options)
        if not isinstance(value, dict):
            raise ValueError("session payload is not a mapping")
        return value


class JsonSerializer:
    """JSON, for stores that other languages read; only JSON types (no bytes, datetimes)."""

    def serialize(self, data: dict[str, Any]) -> bytes:
        """Encode as compact UTF-8 JSON."""
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode()

    def deserialize(self, payload: bytes) -> dict[str, Any]:
        """Decode JSON produced by :meth:`serialize`."""
        value = json.loads(payload)
        if not isinstance(value, dict):
            raise ValueError("session payload is not a mapping")
        return value


def make_serializer(spec: str | Serializer) -> Serializer:
    """Resolve the ``serializer`` config value to an object.

    ``"msgpack"`` is the format: ormsgpack when installed (faster, same bytes), else
    msgpack-python.
    """
    if spec == "msgpack":
        try:
            return OrmsgpackSerializer()
        except ImportError:
            return MsgpackSerializer()
    if spec == "json":
        return JsonSerializer()
    assert not isinstance(spec, str)
    return spec


def _key_id(key: Secret) -> bytes:
    return hashlib.sha256(b"aiosessmgr key id" + key.reveal()).digest()[:_KEY_ID_SIZE]


class AesGcmCipher:
    """AES-256-GCM with a 96-bit random nonce per message and key rotation.

    New payloads use the first key; every key decrypts. ``decrypt`` also says whether
    the payload was written under an older key, so the caller can re-encrypt it.
    """

    def __init__(self, key: Secret, previous_keys: Sequence[Secret] = ()) -> None:
        self._key_id = _key_id(key)
        self._aead = AESGCM(key.reveal())
        self._keys = {self._key_id: self._aead}
        for old in previous_keys:
            self._keys.setdefault(_key_id(old), AESGCM(old.reveal()))

    def encrypt(self, plaintext: bytes, associated: bytes) -> bytes:
        """Encrypt under the current key, binding *associated* (the session id)."""
        nonce = os.urandom(_NONCE_SIZE)
        return (_AES_GCM_V1 + self._key_id + nonce
                + self._aead.encrypt(nonce, plaintext, associated))

    def decrypt(self, payload: bytes, associated: bytes) -> tuple[bytes, bool]:
        """Return (plaintext, written_with_old_key); raise DecodeError if it does not verify."""
        head = 1 + _KEY_ID_SIZE + _NONCE_SIZE
        if len(payload) < head + 16 or payload[:1] != _AES_GCM_V1:
            raise DecodeError("not an aes-256-gcm payload")
        key_id = payload[1:1 + _KEY_ID_SIZE]
        aead = self._keys.get(key_id)
        if aead is None:
            raise DecodeError("payload was encrypted with an unknown key")
        try:
            plain = aead.decrypt(payload[1 + _KEY_ID_SIZE:head], payload[head:], associated)
        except InvalidTag as exc:
            raise DecodeError("payload does not verify (tampered, or another session's)") from exc
        return plain, key_id != self._key_id


class Codec:
    """Serializer plus optional cipher: session mapping <-> payload bytes."""

    def __init__(self, serializer: Serializer, cipher: AesGcmCipher | None = None) -> None:
        self.serializer = serializer
        self.cipher = cipher

    @classmethod
    def from_config(cls, serializer: str | Serializer, encryption: EncryptionConfig) -> Codec:
        """Build the codec a SessionConfig describes."""
        cipher = None
        if encryption.enabled and encryption.key is not None:
            cipher = AesGcmCipher(encryption.key, encryption.previous_keys)
        return cls(make_serializer(serializer), cipher)

    def encode(self, session_id: str, data: dict[str, Any]) -> bytes:
        """Serialize (naming the offending key on failure), then encrypt if enabled."""
        try:
            body = self.serializer.serialize(data)
        except Exception as exc:
            raise _explain(self.serializer, data, exc) from exc
        if self.cipher is None:
            return _PLAIN + body
        return self.cipher.encrypt(body, session_id.encode())

    def decode(self, session_id: str, payload: bytes) -> tuple[dict[str, Any], bool]:
        """Return (mapping, stale_key); raise DecodeError for anything unreadable."""
        stale = False
        if self.cipher is not None:
            body, stale = self.cipher.decrypt(payload, session_id.encode())
        elif payload[:1] == _PLAIN:
            body = payload[1:]
        else:
            raise DecodeError("payload is encrypted or unknown, and encryption is off")
        try:
            return self.serializer.deserialize(body), stale
        except Exception as exc:
            raise DecodeError(f"payload does not deserialize: {exc}") from exc


def _explain(serializer: Serializer, data: dict[str, Any], exc: Exception) -> SerializationError:
    """Find which session key holds the value the serializer rejected."""
    values = data.get("d", data)
    if isinstance(values, dict):
        for key, value in values.items():
            try:
                serializer.serialize({key: value})
            except Exception:
                culprit = _first_unsupported(serializer, value)
                return SerializationError(
                    f"cannot serialize session key {key!r}: value of type "
                    f"{type(culprit).__name__} is not supported by "
                    f"{type(serializer).__name__} ({exc})"
                )
    return SerializationError(f"cannot serialize session data: {exc}")


def _first_unsupported(serializer: Serializer, value: Any) -> Any:
    """Descend into containers to the innermost value the serializer rejects."""
    children: list[Any] = []
    if isinstance(value, dict):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, (list, tuple)):
        children = list(value)
    for child in children:
        try:
            serializer.serialize({"v": child})
        except Exception:
            return _first_unsupported(serializer, child)
    return value
