"""Turning session data into bytes and back: serializers and the AES-256-GCM cipher.

``Codec`` = serializer, then (optionally) encryption. Encrypted payloads are:

.. code-block:: text

    0x02 | key id (4 bytes) | salt (16 bytes) | nonce (12 bytes) | ciphertext + tag (16 bytes)

with the session id as associated data, so a payload copied under another id does
not decrypt. The AES-256 key of a payload is derived with HKDF-SHA256 (RFC 5869) from
the configured key and the payload's salt; a process draws a new random salt after
``AesGcmCipher.MESSAGES_PER_KEY`` encryptions, so no derived key is ever used anywhere
near the 2**32 random-nonce encryptions NIST SP 800-38D (section 8.3) allows per key,
whatever the traffic. Payloads of 0.1 (``0x01``, the configured key used directly)
still decrypt and are re-encrypted on their session's next request. Plain payloads are
``0x03 | id tag (8 bytes) | serialized bytes``, the tag a SHA-256 of the session id: not
a secret (anyone who can write the store can compute it), but a record that a store, a
proxy or a connection out of step hands back under another id is refused, not served
to that session. Plain payloads of 0.1 (``0x00 | serialized bytes``, no tag) still load
and are rewritten with the tag on their session's next request.

The serializers (what the ``"msgpack"`` and ``"json"`` formats hold) are in
:mod:`aiosessmgr.serializers`; their names are re-exported here for old imports.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

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

_PLAIN_V1 = b"\x00"  # 0.1: no id tag; read, never written
_PLAIN = b"\x03"
_ID_TAG_SIZE = 8
_AES_GCM_V1 = b"\x01"  # 0.1: the configured key itself; decrypted, never written
_AES_GCM_V2 = b"\x02"  # a key derived per salt with HKDF-SHA256
_KEY_ID_SIZE = 4
_SALT_SIZE = 16
_NONCE_SIZE = 12
_TAG_SIZE = 16
_HKDF_INFO = b"aiosessmgr record key v2"
_DERIVED_CACHE = 256  # derived keys kept for decrypting: one per salt seen recently


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


@functools.lru_cache(maxsize=4096)
def _id_tag(session_id: str) -> bytes:
    # cached: every read of a plain record checks it, and a tag is not a secret (the
    # record carries it in the clear); 4,096 tags are about 0.5 MB
    return hashlib.sha256(b"aiosessmgr plain record" + session_id.encode()).digest()[
        :_ID_TAG_SIZE]


def _key_id(key: Secret) -> bytes:
    return hashlib.sha256(b"aiosessmgr key id" + key.reveal()).digest()[:_KEY_ID_SIZE]


class AesGcmCipher:
    """AES-256-GCM under keys derived per salt (HKDF-SHA256), with key rotation.

    Each payload carries a random 128-bit salt; its AES-256 key is
    ``HKDF-SHA256(configured key, salt, info)`` and its nonce is 96 random bits. One
    derived key encrypts at most :attr:`MESSAGES_PER_KEY` payloads before this object
    draws a new salt, so the NIST SP 800-38D bound of 2**32 random-nonce encryptions per
    key is never approached (even by many forked workers sharing one salt), while the
    derivation costs one HKDF per million saves. Decryption derives the key of the
    payload's salt (recent ones are cached). New payloads use the first key; every key
    decrypts. ``decrypt`` also says whether the payload was written under an older key
    or the 0.1 format, so the caller can re-encrypt it.
    """

    MESSAGES_PER_KEY = 1 << 20
    """Encryptions under one derived key before a new salt is drawn."""

    def __init__(self, key: Secret, previous_keys: Sequence[Secret] = ()) -> None:
        self._key_id = _key_id(key)
        self._master = {self._key_id: key}
        for old in previous_keys:
            self._master.setdefault(_key_id(old), old)
        self._legacy = {kid: AESGCM(k.reveal()) for kid, k in self._master.items()}
        self._derived: dict[bytes, AESGCM] = {}
        self._head = b""
        self._aead = self._legacy[self._key_id]  # replaced by _new_salt() at once
        self._left = 0
        self._new_salt()

    def _new_salt(self) -> None:
        salt = os.urandom(_SALT_SIZE)
        self._head = _AES_GCM_V2 + self._key_id + salt
        self._aead = self._derive(self._key_id, salt)
        self._left = self.MESSAGES_PER_KEY

    def _derive(self, key_id: bytes, salt: bytes) -> AESGCM:
        cache_key = key_id + salt
        aead = self._derived.get(cache_key)
        if aead is None:
            kdf = HKDF(algorithm=SHA256(), length=32, salt=salt, info=_HKDF_INFO + key_id)
            aead = AESGCM(kdf.derive(self._master[key_id].reveal()))
            if len(self._derived) >= _DERIVED_CACHE:
                del self._derived[next(iter(self._derived))]  # the oldest entry
            self._derived[cache_key] = aead
        return aead

    def encrypt(self, plaintext: bytes, associated: bytes) -> bytes:
        """Encrypt under the current key, binding *associated* (the session id)."""
        if self._left <= 0:
            self._new_salt()
        self._left -= 1
        nonce = os.urandom(_NONCE_SIZE)
        return self._head + nonce + self._aead.encrypt(nonce, plaintext, associated)

    def recognizes(self, payload: bytes) -> bool:
        """Whether *payload* is of this cipher's format at all (its first byte): False for
        another system's value (an aiohttp-session cookie), which ``decrypt`` refuses too,
        but which is no sign of tampering or of a lost key."""
        return payload[:1] in (_AES_GCM_V2, _AES_GCM_V1)

    def decrypt(self, payload: bytes, associated: bytes) -> tuple[bytes, bool]:
        """Return (plaintext, needs_reencryption); raise DecodeError if it does not verify."""
        marker = payload[:1]
        if marker == _AES_GCM_V2:
            head = 1 + _KEY_ID_SIZE + _SALT_SIZE + _NONCE_SIZE
        elif marker == _AES_GCM_V1:
            head = 1 + _KEY_ID_SIZE + _NONCE_SIZE
        else:
            raise DecodeError("not an aes-256-gcm payload")
        if len(payload) < head + _TAG_SIZE:
            raise DecodeError("truncated aes-256-gcm payload")
        key_id = payload[1:1 + _KEY_ID_SIZE]
        if key_id not in self._master:
            raise DecodeError("payload was encrypted with an unknown key")
        if marker == _AES_GCM_V2:
            aead = self._derive(key_id, payload[1 + _KEY_ID_SIZE:1 + _KEY_ID_SIZE + _SALT_SIZE])
        else:
            aead = self._legacy[key_id]
        try:
            plain = aead.decrypt(payload[head - _NONCE_SIZE:head], payload[head:], associated)
        except InvalidTag as exc:
            raise DecodeError("payload does not verify (tampered, or another session's)") from exc
        return plain, marker != _AES_GCM_V2 or key_id != self._key_id


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
            return _PLAIN + _id_tag(session_id) + body
        return self.cipher.encrypt(body, session_id.encode())

    def decode(self, session_id: str, payload: bytes) -> tuple[dict[str, Any], bool]:
        """Return (mapping, stale_key); raise DecodeError for anything unreadable."""
        stale = False
        if self.cipher is not None:
            body, stale = self.cipher.decrypt(payload, session_id.encode())
        elif payload[:1] == _PLAIN:
            if payload[1:1 + _ID_TAG_SIZE] != _id_tag(session_id):
                raise DecodeError("payload belongs to another session id")
            body = payload[1 + _ID_TAG_SIZE:]
        elif payload[:1] == _PLAIN_V1:
            body, stale = payload[1:], True  # rewritten with its id tag on this request
        else:
            raise DecodeError("payload is encrypted or unknown, and encryption is off")
        try:
            return self.serializer.deserialize(body), stale
        except Exception as exc:
            raise DecodeError(f"payload does not deserialize: {exc}") from exc


