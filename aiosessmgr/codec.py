"""Turning session data into bytes and back: serializers and the AES-256-GCM cipher.

``Codec`` = serializer, then (optionally) encryption. Encrypted payloads are:

.. code-block:: text

    0x01 | key id (4 bytes) | nonce (12 bytes) | ciphertext + tag (16 bytes)

with the session id as associated data, so a payload copied under another id does
not decrypt. Plain payloads are ``0x00 | serialized bytes``.

The serializers (what the ``"msgpack"`` and ``"json"`` formats hold) are in
:mod:`aiosessmgr.serializers`; their names are re-exported here for old imports.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import SerializationError
from .record import DecodeError
from .serializers import (
    MAX_NESTING,
    JsonSerializer,
    MsgpackSerializer,
    OrmsgpackSerializer,
    Serializer,
    explain_refusal,
    make_serializer,
)

if TYPE_CHECKING:
    from .config import EncryptionConfig

__all__ = [
    "MAX_NESTING",
    "AesGcmCipher",
    "Codec",
    "DecodeError",
    "JsonSerializer",
    "MsgpackSerializer",
    "OrmsgpackSerializer",
    "Secret",
    "make_serializer",
]

_PLAIN = b"\x00"
_AES_GCM_V1 = b"\x01"
_KEY_ID_SIZE = 4
_NONCE_SIZE = 12
class Secret:
    """Key material whose ``repr`` never shows the bytes (so keys stay out of logs)."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        """Return the raw key bytes."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


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
        except SerializationError:
            raise
        except Exception as exc:
            raise explain_refusal(self.serializer, data, exc) from exc
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


