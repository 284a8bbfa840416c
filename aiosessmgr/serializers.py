"""Serializers: session mapping <-> bytes, and the exact set of values each accepts.

The :class:`Serializer` protocol (what a custom ``serializer`` implements) lives here
with the built-in ones. One validation walk runs before either msgpack packer.

What the ``"msgpack"`` format holds
-----------------------------------

The same values, written as the same bytes, whether ormsgpack is installed or not
(:class:`OrmsgpackSerializer` and :class:`MsgpackSerializer` run one validation walk):

- ``None``, ``bool``, ``int`` from -2**63 to 2**64-1, ``float`` (nan and inf too),
  ``str`` (valid UTF-8: no lone surrogates), ``bytes``;
- ``bytearray`` and C-contiguous ``memoryview`` are saved as (and load as) ``bytes``;
- ``datetime``, naive or aware: ext type 1 holding the ISO text, so microseconds and
  the exact UTC offset are kept (a ``zoneinfo`` zone loads as its fixed offset);
- ``list`` and ``tuple`` (both load as ``list``), ``dict``;
- subclasses of int, float, str, bytes, datetime, list, tuple and dict (``IntEnum``,
  ``StrEnum``, namedtuples, ``OrderedDict``, ``defaultdict``...) are saved as their
  base type, as msgpack-python writes them, and load as that base type;
- dict keys: str, int, float, bool, None, bytes and datetime (and their subclasses),
  the key types msgpack-python reads back;
- at most :data:`MAX_NESTING` lists/dicts nested in one session value.

Anything else (a plain ``Enum``, ``date``, ``time``, ``set``, ``Decimal``, ``UUID``,
``msgpack.ExtType``, ``msgpack.Timestamp``, a tuple as a dict key...) raises
:class:`~aiosessmgr.errors.SerializationError` at ``save()``, naming the session key,
where inside it and the type; nothing is stored. On loading, an ext type other than 1
makes the record unreadable (the session layer starts a fresh session); a msgpack
timestamp (ext type -1) written by some other program loads as an aware UTC datetime.
ormsgpack writes and loads records whose dict keys are all exact str, int, float,
bool, None or bytes (nearly every session); any other record goes through
msgpack-python on both paths, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol, runtime_checkable

import msgpack

from .errors import SerializationError
from .record import DATA, META

__all__ = [
    "MAX_NESTING",
    "JsonSerializer",
    "MsgpackSerializer",
    "OrmsgpackSerializer",
    "Serializer",
    "explain_refusal",
    "make_serializer",
]

_DATETIME_EXT = 1
_FRACTIONAL_OFFSET = re.compile(r"([+-])(\d\d):(\d\d):(\d\d)\.(\d{6})$")

MAX_NESTING = 100
"""Most lists/dicts nested in one session value (a flat list is 1), for every built-in
serializer. Far below the libraries' own limits, counting the record's two levels
(ormsgpack 1.13 writes 255 nested containers and reads 1023; msgpack-python 1.2 writes
1025 but reads 1024; Python's json follows the interpreter's recursion limit)."""

# The record wraps each value in two dicts (record.layout): {DATA: {key: value}, META: {...}}.
_RECORD_NESTING = MAX_NESTING + 2
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_NONE = type(None)

_MSGPACK_VALUES = ("None, bool, int (-2**63 to 2**64-1), float, str, bytes, bytearray, "
                   "memoryview, datetime, list, tuple, dict, and subclasses of int, float, "
                   "str, bytes, datetime, list, tuple and dict")
_MSGPACK_KEYS = "str, int, float, bool, None, bytes, datetime"
_JSON_VALUES = ("None, bool, int, finite float, str, list, tuple, dict, and subclasses of "
                "int, float, str, list, tuple and dict")
_JSON_KEYS = "str, int, finite float, bool, None (JSON writes them as strings)"


@runtime_checkable
class Serializer(Protocol):
    """Anything with these two methods can serialize session data (``serializer`` config)."""

    def serialize(self, data: dict[str, Any]) -> bytes:
        """Encode a session mapping to bytes; raise for a value it cannot hold."""

    def deserialize(self, payload: bytes) -> dict[str, Any]:
        """Decode bytes produced by :meth:`serialize`."""


class _Refused(Exception):
    """A value the walk does not accept; the path is collected on the way out."""

    def __init__(self, problem: str, *, at_key: bool = False) -> None:
        super().__init__(problem)
        self.problem = problem
        self.at_key = at_key  # the dict being walked holds the bad key: no segment for it
        self.path: list[Any] = []  # innermost segment first

    def error(self) -> SerializationError:
        """The user-facing error: session key, where inside it, what is wrong."""
        path = self.path[::-1]
        if path[:1] == [DATA] and len(path) >= 2:
            subject, where, rest = f"session key {path[1]!r}", _name(path[1]), path[2:]
        elif path[:1] == [DATA]:
            subject, where, rest = "session data", "the session data", []
        elif path[:1] == [META]:
            subject, where, rest = "session metadata", "m", path[1:]
        elif path:
            subject, where, rest = f"key {path[0]!r}", _name(path[0]), path[1:]
        else:
            subject, where, rest = "session data", "the record", []
        segments = [f"[{reprlib.repr(step)}]" for step in rest]
        if len(segments) > 10:
            segments = [*segments[:6], "...", *segments[-2:]]
        return SerializationError(
            f"cannot serialize {subject}: {where}{''.join(segments)} {self.problem}",
            key=path[1] if path[:1] == [DATA] and len(path) >= 2 else None)


def _name(key: Any) -> str:
    return key if isinstance(key, str) else repr(key)


def _type_name(value: Any) -> str:
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_text(text: str, *, at_key: bool = False) -> None:
    """Refuse a str that has no UTF-8 form (lone surrogates); called for non-ASCII text."""
    try:
        str.encode(text)
    except UnicodeEncodeError as exc:
        what = "has a str key" if at_key else "is a str"
        raise _Refused(f"{what} with a lone surrogate at index {exc.start}, which has no "
                       "UTF-8 form", at_key=at_key) from None


def _check_buffer(view: memoryview) -> None:
    if not view.c_contiguous:
        raise _Refused("is a memoryview that is not C-contiguous, which cannot be "
                       "saved as bytes")


_Walk = Callable[[dict[Any, Any], int], bool]


def _make_walk(serializer: str, plain: frozenset[type], leaf: Callable[[Any], None],
               key: Callable[[Any, dict[Any, Any]], bool]) -> _Walk:
    """Build a validation walk; it is called with the record and depth 1, and returns
    True if some dict key is not an exact str, int, float, bool, None or bytes.

    Exact containers and the exact types in *plain* are handled inline; *leaf* and *key*
    see everything else and raise _Refused for what is not accepted. The fast walks
    leave to the packer the checks every packer makes anyway (UTF-8 text, the int range,
    finite JSON floats, no bytes in JSON): their *plain* holds str, int, float...; when
    the packer fails, the strict walk (*plain* = bool and None: every str, int and str
    key reaches *leaf* / *key*) finds the value and explains it. The path of a refusal
    is collected only while it propagates, so a passing walk pays nothing for it.
    """
    # the strict walk checks every key: no key's type is this new class
    plain_key: type = str if str in plain else type("_NoKey", (), {})
    too_deep = (f"is nested more than {MAX_NESTING} lists/dicts deep in its session value "
                f"(or contains itself); the {serializer} serializer accepts {MAX_NESTING}")

    def walk_dict(value: dict[Any, Any], depth: int) -> bool:
        if depth > _RECORD_NESTING:
            raise _Refused(too_deep)
        other_keys = False
        try:
            for k, v in value.items():
                if type(k) is not plain_key:
                    other_keys = key(k, value) or other_keys
                cls = type(v)
                if cls in plain:
                    continue
                if cls is dict:
                    other_keys = walk_dict(v, depth + 1) or other_keys
                elif cls is list or cls is tuple:
                    other_keys = walk_list(v, depth + 1) or other_keys
                else:
                    other_keys = walk_other(v, depth + 1) or other_keys
        except _Refused as exc:
            if exc.at_key:
                exc.at_key = False
            else:
                exc.path.append(k)
            raise
        return other_keys

    def walk_list(value: Sequence[Any], depth: int) -> bool:
        if depth > _RECORD_NESTING:
            raise _Refused(too_deep)
        other_keys = False
        try:
            for v in value:
                cls = type(v)
                if cls in plain:
                    continue
                if cls is dict:
                    other_keys = walk_dict(v, depth + 1) or other_keys
                elif cls is list or cls is tuple:
                    other_keys = walk_list(v, depth + 1) or other_keys
                else:
                    other_keys = walk_other(v, depth + 1) or other_keys
        except _Refused as exc:
            # the first item that is this very object is the one that failed
            exc.path.append(next((i for i, item in enumerate(value) if item is v), "?"))
            raise
        return other_keys

    def walk_other(value: Any, depth: int) -> bool:
        # subclasses are walked the way the packers iterate them: items() / iteration;
        # ExtType is a namedtuple that msgpack-python writes as an ext type, not a list
        if isinstance(value, dict):
            return walk_dict(value, depth)
        if isinstance(value, (list, tuple)) and not isinstance(value, msgpack.ExtType):
            return walk_list(value, depth)
        leaf(value)
        return False

    return walk_dict


def _msgpack_leaf(value: Any) -> None:
    if isinstance(value, str):
        if not str.isascii(value):
            _check_text(value)
    elif isinstance(value, int):
        if not _INT_MIN <= int.__int__(value) <= _INT_MAX:
            raise _Refused("is an int outside -2**63 to 2**64-1, which the msgpack "
                           "serializer does not accept")
    elif isinstance(value, memoryview):
        _check_buffer(value)
    elif not isinstance(value, (datetime, float, bytes, bytearray)):
        raise _Refused(f"has type {_type_name(value)}, which the msgpack serializer does "
                       f"not accept (accepted: {_MSGPACK_VALUES})")


def _msgpack_key(key: Any, owner: dict[Any, Any]) -> bool:
    cls = type(key)
    if cls is float or cls is bool or cls is _NONE or cls is bytes:
        return False
    if isinstance(key, str):
        if not str.isascii(key):
            _check_text(key, at_key=True)
        return cls is not str
    if isinstance(key, int):
        if not _INT_MIN <= int.__int__(key) <= _INT_MAX:
            raise _Refused("has an int key outside -2**63 to 2**64-1, which the msgpack "
                           "serializer does not accept", at_key=True)
        return cls is not int
    if isinstance(key, memoryview):
        if not key.c_contiguous:
            raise _Refused("has a memoryview key that is not C-contiguous", at_key=True)
        return True
    if isinstance(key, (datetime, float, bytes)):
        return True
    raise _Refused(f"has the key {reprlib.repr(key)} of type {_type_name(key)}, which the "
                   f"msgpack serializer does not accept as a dict key (accepted: "
                   f"{_MSGPACK_KEYS}, and their subclasses)", at_key=True)


def _json_leaf(value: Any) -> None:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Refused(f"is the float {float.__repr__(value)}, which JSON cannot hold")
    elif isinstance(value, str):
        if not str.isascii(value):
            _check_text(value)
    elif isinstance(value, int):
        try:
            int.__repr__(value)
        except ValueError:
            raise _Refused("is an int with more digits than Python writes as text "
                           "(sys.get_int_max_str_digits())") from None
    else:
        raise _Refused(f"has type {_type_name(value)}, which the json serializer does not "
                       f"accept (accepted: {_JSON_VALUES})")


def _json_key(key: Any, owner: dict[Any, Any]) -> bool:
    if isinstance(key, str):
        if not str.isascii(key):
            _check_text(key, at_key=True)
        return False
    if key is True or key is False or key is None:
        text = json.dumps(key)
    elif isinstance(key, float) and math.isfinite(key):
        text = float.__repr__(key)
    elif isinstance(key, int):
        text = int.__repr__(key)
    else:
        raise _Refused(f"has the key {reprlib.repr(key)} of type {_type_name(key)}, which "
                       f"the json serializer does not accept as a dict key (accepted: "
                       f"{_JSON_KEYS})", at_key=True)
    if text in owner:
        raise _Refused(f"has the keys {key!r} and {text!r}, which JSON writes as the same "
                       "key", at_key=True)
    return False


_STRICT: frozenset[type] = frozenset({bool, _NONE})
_MSGPACK_PLAIN: frozenset[type] = frozenset({str, int, float, bool, _NONE, bytes})
_JSON_PLAIN: frozenset[type] = frozenset({str, int, float, bool, _NONE})
_walk_msgpack = _make_walk("msgpack", _MSGPACK_PLAIN, _msgpack_leaf, _msgpack_key)
_explain_msgpack = _make_walk("msgpack", _STRICT, _msgpack_leaf, _msgpack_key)
_walk_json = _make_walk("json", _JSON_PLAIN, _json_leaf, _json_key)
_explain_json = _make_walk("json", _STRICT, _json_leaf, _json_key)


def _check(walk: _Walk, data: dict[str, Any]) -> bool:
    """Run *walk*; raise SerializationError naming the key, path and type it refuses."""
    try:
        if not isinstance(data, dict):
            raise _Refused(f"has type {_type_name(data)}, not dict")
        return walk(data, 1)
    except _Refused as exc:
        raise exc.error() from None


def _packer_failed(explain: _Walk, data: dict[str, Any], exc: Exception,
                   pack: Callable[[dict[str, Any]], Any]) -> SerializationError:
    """The packer refused what the fast walk let through: name it with the strict walk,
    or else find the session key by packing each alone (a datetime whose tzinfo raises,
    say: the value, not its type, is at fault)."""
    _check(explain, data)
    values = data.get(DATA)
    if isinstance(values, dict):
        for key, value in values.items():
            try:
                pack({key: value})
            except Exception as alone:
                return SerializationError(
                    f"cannot serialize session key {key!r}: {type(alone).__name__}: {alone}",
                    key=key)
    return SerializationError(f"cannot serialize session data: {exc}")


def _normalized(obj: Any, ext: Callable[[int, bytes], Any]) -> Any:
    """What both packers write for a value that is not of an exact type (their ``default``).

    Both run with every non-exact type passed through to here (msgpack-python with
    ``strict_types``, ormsgpack with its passthrough options), so a subclass is written
    from the same plain value on both paths: its items() or its iteration, never a mix
    of ``len()`` and iteration that a subclass could make disagree.
    """
    if isinstance(obj, datetime):
        # ISO text keeps the exact offset and microseconds; msgpack's own timestamp
        # type would turn every datetime into UTC. datetime.isoformat, not the object's:
        # a subclass is saved as the datetime it is.
        return ext(_DATETIME_EXT, datetime.isoformat(obj).encode("ascii"))
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, int):
        return int.__int__(obj)
    if isinstance(obj, float):
        return float.__float__(obj)
    if isinstance(obj, dict):
        return dict(obj.items())
    if isinstance(obj, (list, tuple)) and not isinstance(obj, msgpack.ExtType):
        return list(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    raise TypeError(f"cannot serialize object of type {type(obj).__name__}")


def _msgpack_default(obj: Any) -> Any:
    return _normalized(obj, msgpack.ExtType)


def _from_iso(text: str) -> datetime:
    # Python 3.11's fromisoformat drops the fraction of a UTC offset such as
    # "+00:00:00.000001" (isoformat writes it; 3.12 reads it): attach that offset here
    match = _FRACTIONAL_OFFSET.search(text)
    if match is None:
        return datetime.fromisoformat(text)
    sign, hours, minutes, seconds, micros = match.groups()
    offset = timedelta(hours=int(hours), minutes=int(minutes), seconds=int(seconds),
                       microseconds=int(micros))
    naive = datetime.fromisoformat(text[:match.start()])
    return naive.replace(tzinfo=timezone(-offset if sign == "-" else offset))


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _DATETIME_EXT:
        return _from_iso(data.decode("ascii"))
    raise ValueError(f"msgpack ext type {code} is not one this library writes")


def _pack_reference(data: dict[str, Any]) -> bytes:
    return msgpack.packb(data, default=_msgpack_default, use_bin_type=True,  # type: ignore[no-any-return]
                         strict_types=True)


def _unpack_reference(payload: bytes) -> dict[str, Any]:
    # timestamp=3: a msgpack timestamp (ext -1, which this library never writes) loads as
    # an aware UTC datetime, a value that can be saved again; msgpack-python has no
    # option to refuse it.
    try:
        value = msgpack.unpackb(payload, raw=False, ext_hook=_ext_hook,
                                strict_map_key=False, timestamp=3)
    except msgpack.ExtraData as exc:
        # bytes after the record: ormsgpack ignores them, so this path does too (one
        # behaviour whichever library is installed)
        value = exc.unpacked
    if not isinstance(value, dict):
        raise ValueError("session payload is not a mapping")
    return value


class MsgpackSerializer:
    """The default: compact, fast, and round-trips bytes and (aware) datetimes.

    Accepts the values listed in the module docstring; tuples come back as lists,
    subclasses as their base type.
    """

    def serialize(self, data: dict[str, Any]) -> bytes:
        """Encode with msgpack (bin type for bytes, ext type 1 for datetimes).

        Raises SerializationError for a value outside the accepted set.
        """
        _check(_walk_msgpack, data)
        try:
            return _pack_reference(data)
        except Exception as exc:
            raise _packer_failed(_explain_msgpack, data, exc, _pack_reference) from exc

    def deserialize(self, payload: bytes) -> dict[str, Any]:
        """Decode msgpack; raises ValueError (or another error) for anything unreadable."""
        return _unpack_reference(payload)


class OrmsgpackSerializer:
    """msgpack through ormsgpack (Rust): the same values and bytes as MsgpackSerializer.

    Chosen automatically for ``"msgpack"`` when ormsgpack is installed
    (``pip install aiosessmgr[fast]``): decoding is about 1.7x faster on a typical
    session, encoding about 1.3x (the shared validation walk costs more than either
    packer; ``python -m benchmarks.serializers``). The shared walk refuses
    what msgpack-python would not write or could not load; every non-exact type ormsgpack
    meets (subclasses, datetimes) reaches ``default`` and is normalized as msgpack-python
    writes it. Records with a dict key other than exact str, int, float, bool, None or
    bytes are written by msgpack-python, and records ormsgpack does not load with str
    keys only are loaded by msgpack-python, so both paths agree by construction there.
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
            | ormsgpack.OPT_PASSTHROUGH_SUBCLASS
        )

    def _default(self, obj: Any) -> Any:
        """Normalize what the walk accepted and ormsgpack passes through, as msgpack does."""
        return _normalized(obj, self._ext)

    def serialize(self, data: dict[str, Any]) -> bytes:
        """Encode exactly as MsgpackSerializer does; SerializationError as it raises it."""
        try:
            if _check(_walk_msgpack, data):
                # ormsgpack writes a datetime key as ISO text, refuses some subclass keys
                return _pack_reference(data)
            payload: bytes = self._packb(data, default=self._default,
                                         option=self._pack_options)
        except SerializationError:
            raise
        except Exception as exc:
            raise _packer_failed(_explain_msgpack, data, exc, _pack_reference) from exc
        return payload

    def deserialize(self, payload: bytes) -> dict[str, Any]:
        """Decode msgpack produced by either implementation."""
        try:
            # No OPT_NON_STR_KEYS: with it ormsgpack loads an array key as a tuple,
            # which msgpack-python refuses and no serializer here may write again.
            value = self._unpackb(payload, ext_hook=_ext_hook)
        except Exception:
            # other keys, ext types, malformed payloads: msgpack-python decides
            return _unpack_reference(payload)
        if not isinstance(value, dict):
            raise ValueError("session payload is not a mapping")
        return value


def _json_dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value this serializer writes")


class JsonSerializer:
    """JSON, for stores that other languages read; only JSON types (no bytes, datetimes).

    Tuples come back as lists; int, float, bool and None dict keys come back as strings
    (JSON has only string keys). NaN and infinities are refused, and so is nesting
    deeper than MAX_NESTING.
    """

    def serialize(self, data: dict[str, Any]) -> bytes:
        """Encode as compact UTF-8 JSON; SerializationError for what JSON cannot hold."""
        _check(_walk_json, data)
        try:
            return _json_dumps(data)
        except Exception as exc:
            raise _packer_failed(_explain_json, data, exc, _json_dumps) from exc

    def deserialize(self, payload: bytes) -> dict[str, Any]:
        """Decode JSON produced by :meth:`serialize` (NaN and Infinity are refused)."""
        value = json.loads(payload, parse_constant=_refuse_constant)
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


def explain_refusal(serializer: Serializer, data: dict[str, Any],
                    exc: Exception) -> SerializationError:
    """Find which session key holds the value a custom serializer rejected."""
    values = data.get(DATA, data)
    if isinstance(values, dict):
        for key, value in values.items():
            try:
                serializer.serialize({key: value})
            except Exception:
                culprit = _first_unsupported(serializer, value)
                return SerializationError(
                    f"cannot serialize session key {key!r}: value of type "
                    f"{type(culprit).__name__} is not supported by "
                    f"{type(serializer).__name__} ({exc})", key=key
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
