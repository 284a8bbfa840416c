"""Serializers and the AES-256-GCM cipher."""

from __future__ import annotations

import array
import collections
import dataclasses
import decimal
import enum
import hashlib
import logging
import math
import reprlib
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from typing import Any, NamedTuple

import msgpack
import ormsgpack
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from aiosessmgr import (
    AesGcmCipher,
    Codec,
    JsonSerializer,
    MsgpackSerializer,
    Secret,
    SerializationError,
    Serializer,
    SessionManager,
)
from aiosessmgr.codec import MAX_NESTING, DecodeError, OrmsgpackSerializer, make_serializer
from aiosessmgr.drivers.base import VERSION_SIZE

KEY = Secret(b"k" * 32)
OLD_KEY = Secret(b"o" * 32)

MSGPACK_PATHS = [
    pytest.param(MsgpackSerializer(), id="msgpack-python"),
    pytest.param(OrmsgpackSerializer(), id="ormsgpack"),
]

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


# -- types the tests put in sessions -------------------------------------------------------

class Colour(enum.Enum):
    RED = 1


class Perm(enum.Flag):
    READ = 1


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2**40


class Mode(enum.StrEnum):
    FAST = "fast"
    SLOW = "slöw"


class Bits(enum.IntFlag):
    A = 1
    B = 4


class Price(float):
    pass


class Name(str):
    pass


class Count(int):
    pass


class Blob(bytes):
    pass


class Items(list[Any]):
    pass


class Mapping(dict[Any, Any]):
    pass


class Moment(datetime):
    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        return "not what is saved"  # the base datetime's ISO text is saved


class Point(NamedTuple):
    x: Any
    y: Any


@dataclasses.dataclass
class Item:
    sku: str


def _canon(value: Any, *, exact: bool) -> Any:
    """A comparable form: exact=True says what a loaded value is (exact types only);
    exact=False says what an accepted value must load as (subclasses as their base)."""
    if exact:
        assert type(value) in (dict, list, str, int, float, bool, type(None), bytes,
                               datetime), type(value)
    if isinstance(value, dict):
        return ("dict", tuple((_canon(k, exact=exact), _canon(v, exact=exact))
                              for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_canon(v, exact=exact) for v in value))
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", int(value))
    if isinstance(value, float):
        return ("float", float.hex(value))  # nan and -0.0 compare too
    if isinstance(value, str):
        return ("str", str.__str__(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ("bytes", bytes(value))
    if isinstance(value, datetime):
        return ("datetime", datetime.isoformat(value))
    assert value is None, type(value)
    return ("none", None)


def _record(value: Any, key: str = "k") -> dict[str, Any]:
    return {"d": {key: value}, "m": {"c": 1.5}}


def _error(serializer: Serializer, record: dict[str, Any]) -> str:
    with pytest.raises(SerializationError) as info:
        Codec(serializer).encode("sid", record)
    return str(info.value)


def _encode(serializer: Serializer, record: dict[str, Any]) -> bytes:
    """The serializer's bytes, behind the one-byte marker of an untagged plain payload."""
    payload = Codec(serializer).encode("sid", record)
    assert payload[:1] == b"\x03"  # marker, then an 8-byte tag of the id
    return b"\x00" + payload[9:]


def _decode(serializer: Serializer, payload: bytes) -> dict[str, Any]:
    return Codec(serializer).decode("sid", b"\x00" + payload)[0]


# -- basics ---------------------------------------------------------------------------------

@pytest.mark.parametrize("serializer", MSGPACK_PATHS)
def test_msgpack_round_trips_every_supported_type(serializer: Serializer) -> None:
    back = serializer.deserialize(serializer.serialize(VALUES))
    assert back == VALUES
    assert back["offset"].utcoffset() == timedelta(hours=5, minutes=30)
    assert isinstance(back["bytes"], bytes)


@pytest.mark.parametrize("serializer", MSGPACK_PATHS)
@pytest.mark.parametrize("offset", [
    timedelta(microseconds=1), -timedelta(seconds=1, microseconds=5),
    timedelta(hours=23, minutes=59, seconds=59, microseconds=999999)])
def test_utc_offsets_with_a_fraction_of_a_second_load_back_exactly(
        serializer: Serializer, offset: timedelta) -> None:
    # isoformat writes "+00:00:00.000001"; Python 3.11's fromisoformat reads it as UTC
    moment = datetime(2000, 1, 1, 12, 30, tzinfo=timezone(offset))
    back = serializer.deserialize(serializer.serialize({"at": moment}))["at"]
    assert back == moment and back.utcoffset() == offset


def test_json_round_trips_json_types() -> None:
    serializer = JsonSerializer()
    data = {k: v for k, v in VALUES.items() if k not in ("bytes", "utc", "offset")}
    assert serializer.deserialize(serializer.serialize(data)) == data


@pytest.mark.parametrize(
    ("serializer", "value", "type_name"),
    [
        pytest.param(MsgpackSerializer(), {1, 2}, "set", id="msgpack-set"),
        pytest.param(OrmsgpackSerializer(), {1, 2}, "set", id="ormsgpack-set"),
        pytest.param(MsgpackSerializer(), {"a": [object()]}, "object", id="msgpack-nested"),
        pytest.param(OrmsgpackSerializer(), {"a": [object()]}, "object",
                     id="ormsgpack-nested"),
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


def test_custom_serializer_errors_still_name_the_key() -> None:
    class Strict:
        def serialize(self, data: dict[str, Any]) -> bytes:
            if any(isinstance(v, set) for v in data.get("d", data).values()):
                raise TypeError("no sets")
            return repr(data).encode()

        def deserialize(self, payload: bytes) -> dict[str, Any]:
            raise NotImplementedError

    with pytest.raises(SerializationError, match=r"session key 'bad'.*type set"):
        Codec(Strict()).encode("sid", {"d": {"ok": 1, "bad": {1}}, "m": {}})


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


def _legacy_payload(key: Secret, plaintext: bytes, associated: bytes) -> bytes:
    """A 0.1 payload, built from its documented layout: the configured key used directly."""
    key_id = hashlib.sha256(b"aiosessmgr key id" + key.reveal()).digest()[:4]
    nonce = b"\x07" * 12
    return b"\x01" + key_id + nonce + AESGCM(key.reveal()).encrypt(nonce, plaintext, associated)


def test_cipher_key_is_derived_per_salt_with_hkdf() -> None:
    # NIST SP 800-38D section 8.3: at most 2**32 random-nonce encryptions under one key.
    # The configured key never encrypts; each payload's key is HKDF-SHA256 of it and the
    # payload's salt (RFC 5869), recomputed here from the documented layout.
    payload = AesGcmCipher(KEY).encrypt(b"data", b"sid")
    assert payload[:1] == b"\x02"
    key_id, salt = payload[1:5], payload[5:21]
    nonce, sealed = payload[21:33], payload[33:]
    derived = HKDF(algorithm=SHA256(), length=32, salt=salt,
                   info=b"aiosessmgr record key v2" + key_id).derive(KEY.reveal())
    assert AESGCM(derived).decrypt(nonce, sealed, b"sid") == b"data"
    with pytest.raises(InvalidTag):
        AESGCM(KEY.reveal()).decrypt(nonce, sealed, b"sid")


def test_cipher_draws_a_new_salt_before_a_derived_key_is_used_too_often() -> None:
    class Small(AesGcmCipher):
        MESSAGES_PER_KEY = 3  # the real bound is 2**20; a small one shows the rule

    cipher = Small(KEY)
    uses = collections.Counter(cipher.encrypt(b"x", b"sid")[5:21] for _ in range(10))
    assert sorted(uses.values()) == [1, 3, 3, 3]
    assert AesGcmCipher.MESSAGES_PER_KEY == 2**20
    # 2**20 per derived key: even 4,096 workers forked with one salt stay under 2**32
    assert 4096 * AesGcmCipher.MESSAGES_PER_KEY <= 2**32
    fresh = AesGcmCipher(KEY)
    assert fresh.encrypt(b"x", b"sid")[5:21] != AesGcmCipher(KEY).encrypt(b"x", b"sid")[5:21]


def test_cipher_reads_01_payloads_and_asks_for_reencryption() -> None:
    legacy = _legacy_payload(KEY, b"data", b"sid")
    assert AesGcmCipher(KEY).decrypt(legacy, b"sid") == (b"data", True)
    assert AesGcmCipher(KEY, [OLD_KEY]).decrypt(_legacy_payload(OLD_KEY, b"d", b"sid"),
                                               b"sid") == (b"d", True)
    with pytest.raises(DecodeError):
        AesGcmCipher(KEY).decrypt(legacy, b"other-sid")
    for cut in (1, 5, 17, 32, 33, 48):
        with pytest.raises(DecodeError):
            AesGcmCipher(KEY).decrypt(AesGcmCipher(KEY).encrypt(b"", b"sid")[:cut], b"sid")


def test_plain_payloads_are_tagged_with_their_session_id() -> None:
    codec = Codec(MsgpackSerializer())
    payload = codec.encode("sid-a", {"a": 1})
    assert payload[:1] == b"\x03"
    assert payload[1:9] == hashlib.sha256(b"aiosessmgr plain record" + b"sid-a").digest()[:8]
    assert codec.decode("sid-a", payload) == ({"a": 1}, False)
    # handed back under another id (a proxy or connection out of step): refused
    with pytest.raises(DecodeError, match="another session id"):
        codec.decode("sid-b", payload)
    # 0.1's untagged plain payloads still load, and are to be rewritten with the tag
    assert codec.decode("sid-b", b"\x00" + payload[9:]) == ({"a": 1}, True)


def test_codec_refuses_plain_payload_when_encryption_is_on() -> None:
    plain = Codec(MsgpackSerializer()).encode("sid", {"a": 1})
    with pytest.raises(DecodeError):
        Codec(MsgpackSerializer(), AesGcmCipher(KEY)).decode("sid", plain)


def test_msgpack_format_prefers_ormsgpack_when_installed() -> None:
    assert isinstance(make_serializer("msgpack"), OrmsgpackSerializer)


# -- the accepted set: same bytes on both paths, loads back normalized ---------------------

fixed_offsets = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59),
                              max_value=timedelta(hours=23, minutes=59)).map(timezone)
naive_or_aware = st.datetimes(timezones=st.none() | st.timezones() | fixed_offsets)


def _moment(value: datetime) -> Moment:
    return Moment(value.year, value.month, value.day, value.hour, value.minute,
                  value.second, value.microsecond, tzinfo=value.tzinfo, fold=value.fold)


accepted_scalars: st.SearchStrategy[Any] = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text() | st.binary() | naive_or_aware
    | st.sampled_from([*Level, *Mode, *Bits, Bits.A | Bits.B])
    | st.floats().map(Price) | st.text().map(Name) | st.integers(-(2**63), 2**64 - 1).map(Count)
    | st.binary().map(Blob) | st.binary().map(bytearray) | st.binary().map(lambda b: memoryview(b))
    | naive_or_aware.map(_moment)
    | st.lists(st.integers(0, 2**31 - 1), max_size=3).map(lambda v: memoryview(array.array("i", v)))
)
# keys both paths write and load alike; datetime keys use fixed offsets, the form they load
# as (two zoneinfo wall times in one DST gap are distinct keys but the same instant)
accepted_keys = (
    st.text() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.booleans() | st.none()
    | st.binary() | st.datetimes(timezones=st.none() | fixed_offsets)
    | st.sampled_from([*Level, *Mode, *Bits]) | st.text().map(Name)
    | st.integers(-(2**63), 2**64 - 1).map(Count) | st.floats().map(Price)
    | st.binary().map(Blob) | st.binary().map(lambda b: memoryview(bytes(b)))
)
accepted_values = st.recursive(
    accepted_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple)
        | st.lists(inner, max_size=4).map(Items) | st.builds(Point, inner, inner)
        | st.dictionaries(accepted_keys, inner, max_size=4)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4)
        | st.dictionaries(accepted_keys, inner, max_size=3).map(collections.OrderedDict)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3).map(Mapping)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3).map(
            lambda d: collections.defaultdict(list, d))
    ),
    max_leaves=16,
)


@settings(max_examples=400, deadline=None, database=None)
@given(data=st.dictionaries(st.text(), accepted_values, max_size=4))
def test_accepted_values_write_the_same_bytes_and_load_back_normalized(
        data: dict[str, Any]) -> None:
    record = {"d": data, "m": {"c": 1.5, "f": [["k"], []]}}
    reference, fast = MsgpackSerializer(), OrmsgpackSerializer()
    payload = _encode(reference, record)
    assert _encode(fast, record) == payload
    expected = _canon(record, exact=False)
    for loader in (reference, fast):
        assert _canon(_decode(loader, payload[1:]), exact=True) == expected


def test_subclasses_are_saved_as_their_base_type() -> None:
    ordered = collections.OrderedDict(a=1, b=2)
    ordered.move_to_end("a")
    data = {"level": Level.HIGH, "mode": Mode.SLOW, "price": Price(1.5), "name": Name("x"),
            "point": Point(1, Point(2, 3)), "ordered": ordered, "items": Items([Count(3)]),
            "moment": _moment(datetime(2026, 1, 1, tzinfo=UTC)), "blob": Blob(b"b"),
            "keys": {Level.LOW: 1, Mode.FAST: 2, Name("n"): 3, Price(0.5): 4, Blob(b"k"): 5}}
    expected = {"level": 2**40, "mode": "slöw", "price": 1.5, "name": "x",
                "point": [1, [2, 3]], "ordered": {"b": 2, "a": 1}, "items": [3],
                "moment": datetime(2026, 1, 1, tzinfo=UTC), "blob": b"b",
                "keys": {1: 1, "fast": 2, "n": 3, 0.5: 4, b"k": 5}}
    payload = _encode(MsgpackSerializer(), _record(data))
    assert _encode(OrmsgpackSerializer(), _record(data)) == payload
    for loader in (MsgpackSerializer(), OrmsgpackSerializer()):
        loaded = _decode(loader, payload[1:])["d"]["k"]
        assert _canon(loaded, exact=True) == _canon(expected, exact=True)
        assert list(loaded["ordered"]) == ["b", "a"]  # the order the OrderedDict iterates


# -- outside the set: refused on both paths, naming key, path and type ---------------------

def _nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


_loop: list[Any] = []
_loop.append(_loop)

REFUSED: list[Any] = [
    pytest.param({1, 2}, "has type set", id="set"),
    pytest.param(frozenset([1]), "has type frozenset", id="frozenset"),
    pytest.param(date(2026, 1, 1), "has type datetime.date", id="date"),
    pytest.param(time(12, 0), "has type datetime.time", id="time"),
    pytest.param(timedelta(1), "has type datetime.timedelta", id="timedelta"),
    pytest.param(decimal.Decimal("1.5"), "has type decimal.Decimal", id="decimal"),
    pytest.param(uuid.UUID(int=1), "has type uuid.UUID", id="uuid"),
    pytest.param(Colour.RED, f"has type {__name__}.Colour", id="enum"),
    pytest.param(Perm.READ, f"has type {__name__}.Perm", id="flag"),
    pytest.param(Item("a"), f"has type {__name__}.Item", id="dataclass"),
    pytest.param(1j, "has type complex", id="complex"),
    pytest.param(object(), "has type object", id="object"),
    pytest.param(range(3), "has type range", id="range"),
    pytest.param(array.array("b", b"x"), "has type array.array", id="array"),
    pytest.param(msgpack.ExtType(5, b"x"), "has type msgpack.ext.ExtType", id="ext-type"),
    pytest.param(msgpack.ExtType(1, b"2026-01-01"), "has type msgpack.ext.ExtType",
                 id="ext-type-1"),
    pytest.param(msgpack.Timestamp(1, 0), "has type msgpack.ext.Timestamp", id="timestamp"),
    pytest.param(ormsgpack.Ext(5, b"x"), "has type ormsgpack.Ext", id="ormsgpack-ext"),
    pytest.param(2**64, "is an int outside -2**63 to 2**64-1", id="int-too-big"),
    pytest.param(-(2**63) - 1, "is an int outside", id="int-too-small"),
    pytest.param(Level.HIGH * 2**30, "is an int outside", id="int-subclass-too-big"),
    pytest.param("ok\ud800", "is a str with a lone surrogate at index 2", id="surrogate"),
    pytest.param(Name("\udc80"), "is a str with a lone surrogate", id="surrogate-subclass"),
    pytest.param(memoryview(b"abcd")[::2], "is a memoryview that is not C-contiguous",
                 id="memoryview-strided"),
    pytest.param({(1, 2): "x"}, "has the key (1, 2) of type tuple", id="tuple-key"),
    pytest.param({frozenset(): 1}, "has the key frozenset() of type frozenset",
                 id="frozenset-key"),
    pytest.param({Colour.RED: 1}, "of type tests.test_codec.Colour", id="enum-key"),
    pytest.param({date(2026, 1, 1): 1}, "of type datetime.date", id="date-key"),
    pytest.param({uuid.UUID(int=1): 1}, "of type uuid.UUID", id="uuid-key"),
    pytest.param({msgpack.Timestamp(1, 0): 1}, "of type msgpack.ext.Timestamp",
                 id="timestamp-key"),
    pytest.param({2**64: 1}, "has an int key outside", id="int-key-too-big"),
    pytest.param({"\ud800": 1}, "has a str key with a lone surrogate", id="surrogate-key"),
    pytest.param({memoryview(b"abcd")[::2].toreadonly(): 1},
                 "has a memoryview key that is not C-contiguous", id="memoryview-key-strided"),
    pytest.param(_nested(MAX_NESTING + 1), f"more than {MAX_NESTING} lists/dicts deep",
                 id="too-deep"),
    pytest.param(_loop, "(or contains itself)", id="contains-itself"),
]


@pytest.mark.parametrize(("value", "problem"), REFUSED)
def test_msgpack_refuses_values_outside_the_set_on_both_paths(value: Any,
                                                              problem: str) -> None:
    messages = {_error(s, _record(value, "cart")) for s in (MsgpackSerializer(),
                                                            OrmsgpackSerializer())}
    assert len(messages) == 1, messages  # word for word the same on both paths
    message = messages.pop()
    assert message.startswith("cannot serialize session key 'cart': cart"), message
    assert problem in message


refused_leaves = st.sampled_from([p.values[0] for p in REFUSED if p.id not in (
    "too-deep", "contains-itself")])
path_steps = st.lists(st.integers(0, 3) | st.text(max_size=3), max_size=4)


def _wrap(steps: list[int | str], leaf: Any, as_tuple: bool) -> Any:
    value = leaf
    for step in reversed(steps):
        if isinstance(step, int):
            items = [*range(step), value, "after"]
            value = tuple(items) if as_tuple else items
        else:
            value = collections.OrderedDict({f"_{step}": 0, step: value})
    return value


@settings(max_examples=150, deadline=None, database=None)
@given(leaf=refused_leaves, steps=path_steps, as_tuple=st.booleans())
def test_refused_value_deep_inside_is_located(leaf: Any, steps: list[int | str],
                                             as_tuple: bool) -> None:
    record = _record(_wrap(steps, leaf, as_tuple), "cart")
    where = "cart" + "".join(f"[{reprlib.repr(step)}]" for step in steps)
    for serializer in (MsgpackSerializer(), OrmsgpackSerializer()):
        message = _error(serializer, record)
        assert message.startswith(f"cannot serialize session key 'cart': {where} "), message


def test_nesting_limit_counts_lists_and_dicts_in_one_value() -> None:
    deepest = _nested(MAX_NESTING - 1, {"a": "b"})  # MAX_NESTING containers
    for serializer in (MsgpackSerializer(), OrmsgpackSerializer(), JsonSerializer()):
        record = _record(deepest)
        assert _decode(serializer, _encode(serializer, record)[1:]) == record
        message = _error(serializer, _record([deepest]))
        assert f"more than {MAX_NESTING} lists/dicts deep" in message


def test_refused_session_key_itself() -> None:
    for serializer in (MsgpackSerializer(), OrmsgpackSerializer()):
        message = _error(serializer, {"d": {(1, 2): 1}, "m": {}})
        assert message.startswith("cannot serialize session data: the session data has the "
                                  "key (1, 2) of type tuple"), message


# -- loading: what neither path reads, and what both read alike ----------------------------

def _payload(data: dict[Any, Any]) -> bytes:
    """Bytes as a foreign or older writer produced them (msgpack-python, no checks)."""
    def default(obj: Any) -> Any:
        assert isinstance(obj, datetime)
        return msgpack.ExtType(1, obj.isoformat().encode())

    return msgpack.packb(data, default=default, use_bin_type=True)  # type: ignore[no-any-return]


UNREADABLE: list[Any] = [
    pytest.param(_payload({"d": {"x": msgpack.ExtType(5, b"x")}}), id="ext-type-5"),
    pytest.param(_payload({"d": {"x": [msgpack.ExtType(127, b"")]}}), id="ext-type-127"),
    pytest.param(_payload({"d": {msgpack.ExtType(5, b"x"): 1}}), id="ext-type-key"),
    pytest.param(_payload({"d": {"x": msgpack.ExtType(1, b"yesterday")}}),
                 id="ext-type-1-not-iso"),
    pytest.param(_payload({"d": {"x": msgpack.ExtType(1, "2026-01-01é".encode())}}),
                 id="ext-type-1-not-ascii"),
    pytest.param(b"\x81\xa1d\x81\xa1x\xd5\xff\x00\x00", id="timestamp-bad-length"),
    pytest.param(b"\x81\xa1d\x81\xa1x\xd7\xff\xff\xff\xff\xfc\x00\x00\x00\x00",
                 id="timestamp-bad-nanoseconds"),
    pytest.param(_payload({"d": {(1, 2): "x"}}), id="array-key"),
    pytest.param(b"\x81\xa1d\x81\x81\x01\x02\x01", id="map-key"),
    pytest.param(b"\x81\xa1d\x81\xa1x\xa2\xff\xfe", id="invalid-utf-8"),
    pytest.param(b"\x92\x01\x02", id="not-a-map"),
    pytest.param(b"\x82\xa1d", id="truncated"),
    pytest.param(b"\x81\xa1d\xdd\x7f\xff\xff\xff", id="array-longer-than-payload"),
    pytest.param(b"", id="empty"),
]


@pytest.mark.parametrize("serializer", MSGPACK_PATHS)
@pytest.mark.parametrize("payload", UNREADABLE)
def test_foreign_payloads_are_unreadable_on_both_paths(serializer: Serializer,
                                                       payload: bytes) -> None:
    with pytest.raises(DecodeError):
        _decode(serializer, payload)


@pytest.mark.parametrize("serializer", MSGPACK_PATHS)
@pytest.mark.parametrize("payload", [
    pytest.param(b"\xd6\xff\x00\x00\x00\x01", id="timestamp32"),
    pytest.param(b"\xd7\xff\x00\x00\x00\x00\x00\x00\x00\x01", id="timestamp64"),
    pytest.param(b"\xc7\x0c\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01",
                 id="timestamp96"),
])
def test_foreign_msgpack_timestamp_loads_as_utc_datetime(serializer: Serializer,
                                                         payload: bytes) -> None:
    # msgpack-python cannot be told to refuse ext -1; as a datetime it can be saved again
    value = _decode(serializer, b"\x81\xa1d\x82\xa1x" + payload + payload + b"\x01")["d"]
    moment = datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert value == {"x": moment, moment: 1}
    assert _decode(serializer, _encode(serializer, {"d": value})[1:]) == {"d": value}


def test_trailing_bytes_load_alike_on_both_paths() -> None:
    payload = _payload({"d": {"x": 1}}) + b"\x00"
    # ormsgpack ignores bytes after the record; msgpack-python's path does the same
    assert _decode(MsgpackSerializer(), payload) == {"d": {"x": 1}}
    assert _decode(OrmsgpackSerializer(), payload) == {"d": {"x": 1}}


loose_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
                 | st.text() | st.binary() | st.datetimes(timezones=st.none() | st.timezones()))
iso_or_not = st.datetimes().map(lambda d: d.isoformat().encode()) | st.binary(max_size=3)
foreign = (st.builds(msgpack.ExtType, st.sampled_from([1, 5, 127]), iso_or_not)
           | st.builds(msgpack.Timestamp, st.integers(-(2**34), 2**34),
                       st.integers(0, 10**9 - 1)))
# tuples become array keys; ExtType and Timestamp keys are ext keys
loose_keys = (st.text(max_size=2) | st.text(max_size=2) | loose_scalars
              | st.lists(loose_scalars, max_size=2).map(tuple) | foreign)
loose_values = st.recursive(
    st.one_of(loose_scalars, loose_scalars, loose_scalars, foreign),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(loose_keys, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None, database=None)
@given(data=st.dictionaries(loose_keys, loose_values, max_size=3),
       tail=st.sampled_from([b""] * 6 + [b"\x00", b"\xc1"]),
       cut=st.sampled_from([0] * 6 + [1, 2]))
def test_whatever_loads_loads_alike_and_saves_again(data: dict[Any, Any], tail: bytes,
                                                    cut: int) -> None:
    payload = _payload(data)
    payload = payload[:len(payload) - cut] + tail if cut else payload + tail
    reference, fast = MsgpackSerializer(), OrmsgpackSerializer()
    try:
        loaded: dict[Any, Any] | None = reference.deserialize(payload)
    except msgpack.ExtraData as extra:
        loaded = None
        try:
            trailing: Any = fast.deserialize(payload)
        except Exception:
            pass  # refusing it is as good as what msgpack-python does
        else:  # ormsgpack reads the first object and ignores the rest
            assert _canon(trailing, exact=True) == _canon(extra.unpacked, exact=True)
    except Exception:  # any refusal: the fast path must refuse it too
        loaded = None
        if not tail:
            with pytest.raises(Exception):  # noqa: B017
                fast.deserialize(payload)
    else:
        assert _canon(fast.deserialize(payload), exact=True) == _canon(loaded, exact=True)
    if loaded is not None:
        # a record that loads can always be saved again, the same on both paths
        again = reference.serialize(loaded)
        assert fast.serialize(loaded) == again
        assert _canon(reference.deserialize(again), exact=True) == _canon(loaded, exact=True)


# -- the regressions of issue 11, item 12 ---------------------------------------------------

SAVED_ALIKE: list[Any] = [
    pytest.param(Level.LOW, 1, id="intenum"),
    pytest.param(Mode.FAST, "fast", id="strenum"),
    pytest.param(Price(2.5), 2.5, id="float-subclass"),
    pytest.param(Point(1, "b"), [1, "b"], id="namedtuple"),
    pytest.param({datetime(2026, 1, 1): 1}, {datetime(2026, 1, 1): 1}, id="datetime-key"),
    pytest.param({datetime(2026, 1, 1, tzinfo=UTC): "x"},
                 {datetime(2026, 1, 1, tzinfo=UTC): "x"}, id="aware-datetime-key"),
    pytest.param(_nested(MAX_NESTING), _nested(MAX_NESTING), id="deepest-allowed"),
]


@pytest.mark.parametrize(("value", "loaded"), SAVED_ALIKE)
def test_regression_saved_alike_on_both_paths(value: Any, loaded: Any) -> None:
    payloads = {_encode(s, _record(value)) for s in (MsgpackSerializer(),
                                                     OrmsgpackSerializer())}
    assert len(payloads) == 1
    payload = payloads.pop()
    for loader in (MsgpackSerializer(), OrmsgpackSerializer()):
        back = _decode(loader, payload[1:])["d"]["k"]
        assert _canon(back, exact=True) == _canon(loaded, exact=True)


REFUSED_ALIKE: list[Any] = [
    pytest.param(msgpack.ExtType(5, b"x"), "has type msgpack.ext.ExtType", id="ext-type"),
    pytest.param(msgpack.Timestamp(1, 0), "has type msgpack.ext.Timestamp", id="timestamp"),
    pytest.param({(1, 2): 1}, "has the key (1, 2) of type tuple", id="tuple-key"),
    pytest.param(_nested(300), "lists/dicts deep", id="nested-300"),
    pytest.param(_nested(511), "lists/dicts deep", id="nested-511"),
]


@pytest.mark.parametrize(("value", "problem"), REFUSED_ALIKE)
def test_regression_refused_alike_on_both_paths(value: Any, problem: str) -> None:
    for serializer in (MsgpackSerializer(), OrmsgpackSerializer()):
        assert problem in _error(serializer, _record(value))


STORED_UNREADABLE: list[Any] = [
    pytest.param({"x": msgpack.ExtType(5, b"x")}, id="ext-type"),
    pytest.param({"x": {(1, 2): 1}}, id="tuple-key"),
]


@pytest.mark.parametrize("serializer", MSGPACK_PATHS)
@pytest.mark.parametrize("data", STORED_UNREADABLE)
async def test_regression_stored_record_that_cannot_be_saved_again_is_discarded(
        serializer: Serializer, data: dict[str, Any],
        caplog: pytest.LogCaptureFixture) -> None:
    # records as the old code wrote them: loading them used to succeed, and then every
    # modifying request failed (ormsgpack refused to write them back) or lost them
    manager = SessionManager({"serializer": serializer, "lottery": (0, 1)})
    try:
        session = await manager.driver()
        session.put("x", 1)
        await session.save()
        await manager.get_driver().write(
            session.id, b"v" * VERSION_SIZE + b"\x00" + _payload({"d": data, "m": {}}), 60)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
            loaded = await manager.load(session.id)
        assert loaded.new and loaded.all() == {}
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        loaded.put("y", 2)
        await loaded.save()  # no SerializationError: the bad record is gone
        assert (await manager.load(loaded.id)).all() == {"y": 2}
    finally:
        await manager.close()


# -- json -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "problem"), [
    pytest.param(b"x", "has type bytes", id="bytes"),
    pytest.param(datetime(2026, 1, 1), "has type datetime.datetime", id="datetime"),
    pytest.param([float("nan")], "cart[0] is the float nan, which JSON cannot hold", id="nan"),
    pytest.param({"a": float("-inf")}, "cart['a'] is the float -inf", id="inf"),
    pytest.param(Price("inf"), "is the float inf", id="inf-subclass"),
    pytest.param({1: "a", "1": "b"}, "has the keys 1 and '1', which JSON writes as the same",
                 id="key-collision"),
    pytest.param({True: "a", "true": "b"}, "has the keys True and 'true'",
                 id="bool-key-collision"),
    pytest.param({(1,): 1}, "has the key (1,) of type tuple", id="tuple-key"),
    pytest.param({b"k": 1}, "has the key b'k' of type bytes", id="bytes-key"),
    pytest.param({float("nan"): 1}, "has the key nan of type float", id="nan-key"),
    pytest.param("\ud800", "is a str with a lone surrogate", id="surrogate"),
    pytest.param(Colour.RED, "has type tests.test_codec.Colour", id="enum"),
    pytest.param(_nested(MAX_NESTING + 1), "lists/dicts deep", id="too-deep"),
    pytest.param(_nested(990), "lists/dicts deep", id="deep-enough-to-break-loads"),
])
def test_json_refuses_what_it_cannot_load_back_naming_the_key(value: Any,
                                                               problem: str) -> None:
    message = _error(JsonSerializer(), _record(value, "cart"))
    assert message.startswith("cannot serialize session key 'cart': cart"), message
    assert problem in message


def test_json_keeps_its_semantics() -> None:
    serializer = JsonSerializer()
    record = _record({"t": (1, Point(2, 3)), 1: Level.HIGH, 2.5: Mode.SLOW, None: Price(1.5),
                      False: Items([Name("n")])})
    assert serializer.deserialize(serializer.serialize(record)) == _record(
        {"t": [1, [2, 3]], "1": 2**40, "2.5": "slöw", "null": 1.5, "false": ["n"]})
    assert serializer.deserialize(serializer.serialize(_record(2**100)))["d"]["k"] == 2**100


@pytest.mark.parametrize("payload", [
    pytest.param(b'{"d":{"x":NaN}}', id="nan"),
    pytest.param(b'{"d":{"x":[-Infinity]}}', id="infinity"),
    pytest.param(b'[1]', id="not-an-object"),
])
def test_json_refuses_payloads_it_would_not_write(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        _decode(JsonSerializer(), payload)


# -- the fast walk and the packers refuse exactly what the strict walk refuses -------------

mixed_values = st.recursive(
    accepted_scalars | refused_leaves | st.sampled_from(["\ud800", 2**64, float("nan")]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        accepted_keys | st.sampled_from([(1, 2), "\udc80", 2**64, Colour.RED]), inner,
        max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, database=None)
@given(data=st.dictionaries(st.text(max_size=3), mixed_values, max_size=3))
def test_both_paths_accept_and_refuse_alike(data: dict[str, Any]) -> None:
    outcomes = []
    for serializer in (MsgpackSerializer(), OrmsgpackSerializer()):
        try:
            outcomes.append(_encode(serializer, _record(data)))
        except SerializationError as exc:
            outcomes.append(str(exc).encode())
            assert str(exc).startswith("cannot serialize session key 'k': k"), exc
    assert outcomes[0] == outcomes[1]


def test_strict_walk_explains_what_the_packer_refused() -> None:
    # the fast walk leaves UTF-8, int range and finite floats to the packers; the message
    # still names the place
    for serializer in (MsgpackSerializer(), OrmsgpackSerializer(), JsonSerializer()):
        message = _error(serializer, _record({"a": [1, "x\ud800"]}, "cart"))
        assert message.startswith("cannot serialize session key 'cart': cart['a'][1] is a "
                                  "str with a lone surrogate at index 1"), message
    for serializer in (MsgpackSerializer(), OrmsgpackSerializer()):
        message = _error(serializer, _record({"n": [0, 2**64]}, "cart"))
        assert message.startswith("cannot serialize session key 'cart': cart['n'][1] is an "
                                  "int outside -2**63 to 2**64-1"), message
    message = _error(JsonSerializer(), _record([1.0, float("nan")], "cart"))
    assert message.startswith("cannot serialize session key 'cart': cart[1] is the float "
                              "nan"), message
    assert math.isnan(MsgpackSerializer().deserialize(  # msgpack holds nan; JSON does not
        MsgpackSerializer().serialize({"x": float("nan")}))["x"])


# -- found by an outside test: subclasses that disagree with themselves; errors with a key ----


class HidingDict(dict[str, Any]):
    """items() shows fewer entries than len() counts."""

    def items(self) -> Any:
        return [(k, v) for k, v in super().items() if k != "hidden"]


class ShortList(list[Any]):
    """Iteration yields fewer items than len() counts."""

    def __iter__(self) -> Any:
        return iter(super().__getitem__(slice(0, 1)))


class LongLen(list[Any]):
    def __len__(self) -> int:
        return 99


@pytest.mark.parametrize("value", [
    pytest.param(HidingDict(shown=1, hidden=2), id="dict-items-hide-a-key"),
    pytest.param(ShortList([1, 2, 3]), id="list-iterates-fewer"),
    pytest.param(LongLen([1, 2]), id="list-len-lies"),
])
def test_odd_subclasses_save_what_they_iterate_alike_and_load_back(value: Any) -> None:
    record = {"d": {"v": value}}
    outputs = [_encode(serializer, record) for serializer in
               (MsgpackSerializer(), OrmsgpackSerializer())]
    assert outputs[0] == outputs[1]  # both paths write from the same plain value
    for serializer in (MsgpackSerializer(), OrmsgpackSerializer()):
        loaded = _decode(serializer, outputs[0][1:])["d"]["v"]
        plain = dict(value.items()) if isinstance(value, dict) else list(iter(value))
        assert loaded == plain


class Broken(tzinfo):
    def utcoffset(self, dt: Any) -> Any:
        raise RuntimeError("the zone database is gone")

    def dst(self, dt: Any) -> Any:
        return None

    def tzname(self, dt: Any) -> Any:
        return "broken"


@pytest.mark.parametrize("serializer", MSGPACK_PATHS)
def test_a_value_that_fails_while_packing_is_named_by_its_key(serializer: Serializer) -> None:
    record = {"d": {"ok": 1, "when": datetime(2026, 1, 1, tzinfo=Broken())}}
    with pytest.raises(SerializationError) as info:
        _encode(serializer, record)
    assert "'when'" in str(info.value) and info.value.key == "when"
