"""Serializers and the AES-256-GCM cipher."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiosessmgr import (
    AesGcmCipher,
    Codec,
    JsonSerializer,
    MsgpackSerializer,
    Secret,
    SerializationError,
    SessionManager,
)
from aiosessmgr.codec import DecodeError, OrmsgpackSerializer, make_serializer

KEY = Secret(b"k" * 32)
OLD_KEY = Secret(b"o" * 32)

VALUES: dict[str, Any] = {
    "str": "héllo ✓",
    "int": 2**62,
    "neg": -7,
    "float": 3.25,
    "bool": True,
    "none": None,
    "bytes": b"\x00\xffbin",
    "list": [1, "two", [3.0]],
    "dict": {"nested": {"deep": [1, 2]}},
    "utc": datetime(2026, 11, 27, 12, 30, 5, 123456, tzinfo=UTC),
    "offset": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=5, minutes=30))),
}


def test_msgpack_round_trips_every_supported_type() -> None:
    serializer = MsgpackSerializer()
    back = serializer.deserialize(serializer.serialize(VALUES))
    assert back == VALUES
    assert back["offset"].utcoffset() == timedelta(hours=5, minutes=30)
    assert isinstance(back["bytes"], bytes)


def test_json_round_trips_json_types() -> None:
    serializer = JsonSerializer()
    data = {k: v for k, v in VALUES.items() if k not in ("bytes", "utc", "offset")}
    assert serializer.deserialize(serializer.serialize(data)) == data


@pytest.mark.parametrize(
    ("serializer", "value", "type_name"),
    [
        pytest.param(MsgpackSerializer(), {1, 2}, "set", id="msgpack-set"),
        pytest.param(MsgpackSerializer(), {"a": [object()]}, "object", id="msgpack-nested"),
        pytest.param(JsonSerializer(), b"raw", "bytes", id="json-bytes"),
    ],
)
def test_serialization_error_names_key_and_type(serializer: Any, value: Any,
                                                type_name: str) -> None:
    codec = Codec(serializer)
    with pytest.raises(SerializationError) as info:
        codec.encode("id", {"d": {"fine": 1, "cart": value}, "m": {}})
    assert "'cart'" in str(info.value)
    assert f"type {type_name}" in str(info.value)


async def test_serialization_error_surfaces_at_save(manager: SessionManager) -> None:
    session = await manager.driver()
    session.put("ok", 1)
    session.put("bad", {1, 2, 3})  # accepted here...
    with pytest.raises(SerializationError, match=r"'bad'.*set"):
        await session.save()  # ...reported at save(), naming the key


def test_custom_serializer_object() -> None:
    class Upper:
        def serialize(self, data: dict[str, Any]) -> bytes:
            return repr(data).encode()

        def deserialize(self, payload: bytes) -> dict[str, Any]:
            import ast

            value = ast.literal_eval(payload.decode())
            assert isinstance(value, dict)
            return value

    manager = SessionManager({"serializer": Upper()})
    codec = manager.codec
    assert codec.decode("x", codec.encode("x", {"a": 1})) == ({"a": 1}, False)


def test_cipher_binds_session_id_and_detects_tampering() -> None:
    cipher = AesGcmCipher(KEY)
    payload = cipher.encrypt(b"secret data", b"session-a")
    assert b"secret" not in payload
    assert cipher.decrypt(payload, b"session-a") == (b"secret data", False)
    with pytest.raises(DecodeError):
        cipher.decrypt(payload, b"session-b")
    for i in range(len(payload)):
        tampered = bytearray(payload)
        tampered[i] ^= 0x01
        with pytest.raises(DecodeError):
            cipher.decrypt(bytes(tampered), b"session-a")


def test_cipher_rotation() -> None:
    old = AesGcmCipher(OLD_KEY)
    payload = old.encrypt(b"data", b"sid")
    rotated = AesGcmCipher(KEY, [OLD_KEY])
    assert rotated.decrypt(payload, b"sid") == (b"data", True)
    assert rotated.decrypt(rotated.encrypt(b"data", b"sid"), b"sid") == (b"data", False)
    with pytest.raises(DecodeError, match="unknown key"):
        AesGcmCipher(KEY).decrypt(payload, b"sid")


def test_codec_refuses_plain_payload_when_encryption_is_on() -> None:
    plain = Codec(MsgpackSerializer()).encode("sid", {"a": 1})
    with pytest.raises(DecodeError):
        Codec(MsgpackSerializer(), AesGcmCipher(KEY)).decode("sid", plain)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text() | st.binary()
    | st.datetimes(timezones=st.none() | st.timezones()),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, database=None)
@given(value=st.dictionaries(st.text(), msgpack_values, max_size=5))
def test_ormsgpack_writes_the_same_bytes_as_msgpack(value: dict[str, Any]) -> None:
    fast, reference = OrmsgpackSerializer(), MsgpackSerializer()
    payload = reference.serialize(value)
    assert fast.serialize(value) == payload
    assert repr(fast.deserialize(payload)) == repr(reference.deserialize(payload))


def test_msgpack_format_prefers_ormsgpack_when_installed() -> None:
    assert isinstance(make_serializer("msgpack"), OrmsgpackSerializer)


class Colour(enum.Enum):
    RED = 1


@pytest.mark.parametrize("value", [
    pytest.param({1, 2}, id="set"),
    pytest.param(Colour.RED, id="enum"),
    pytest.param(uuid.uuid4(), id="uuid"),
    pytest.param(2**64, id="big-int"),
])
def test_ormsgpack_refuses_what_msgpack_refuses(value: Any) -> None:
    for serializer in (OrmsgpackSerializer(), MsgpackSerializer()):
        with pytest.raises(Exception):  # noqa: B017 - each library raises its own type
            serializer.serialize({"v": value})
