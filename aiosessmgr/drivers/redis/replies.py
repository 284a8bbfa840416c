"""What the Redis driver accepts as a reply, and how it reports failures without an id.

Every reply the driver uses is checked for the one type (and range) its command can
answer; anything else - an integer or an array where a string belongs, a string where
0 or 1 belongs, a nil after ``SET ... EX`` - comes from a server or proxy that is not
behaving as Redis, and becomes :class:`UnexpectedReply`, which the driver turns into a
``DriverError`` (the middleware answers 503). A reply is never converted blindly:
``bytes(200000000)`` would allocate 200 MB because the reply said so.

Failures are reported by :func:`failure`, which never lets a whole session id (nor
the escaped user id in a user index key's hash tag) through:
the ``DriverError`` message, and every exception chained to it (``__cause__`` and
``__context__``, as traceback formatting prints them), show the id as ``abc123…``.
redis-py's own messages can carry a key, and keys contain the id: Cluster errors quote
the command's arguments ("No targets were found to execute ('GETEX', 'session:{…}', ...)
command on"), a reply redis-py cannot parse is quoted in its InvalidResponse, and a
proxy's error reply may echo the key. An error that fails a whole pipeline reaches every
caller of the batch, so the content of every hash tag is abbreviated too.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Final

from redis.exceptions import InvalidResponse

from ...errors import DriverError

__all__ = ["Ids", "RedactedError", "UnexpectedReply", "count", "describe", "failure", "flag",
           "ok", "out_of_step", "pairs", "record", "redact", "scrub", "set_nx", "values"]

#: characters of a session id kept when it is abbreviated (then "…")
SHOWN: Final = 6
#: characters of a redis-py message kept in a DriverError message (the cause has all)
_DETAIL: Final = 300
# a hash tag not abbreviated yet: braces around more than SHOWN characters of a key
_TAG: Final = re.compile(r"\{([^{}\s'\"…]{" + str(SHOWN + 1) + r",})\}")
_TAG_BYTES: Final = re.compile(_TAG.pattern.encode())

#: what a failure must not show whole: one session id, or several (the ids a user index
#: command carries as arguments, a batch of reads)
Ids = str | tuple[str, ...]


def _ids(session_id: Ids) -> tuple[str, ...]:
    """The ids of *session_id* long enough to abbreviate."""
    ids = (session_id,) if isinstance(session_id, str) else session_id
    return tuple(sid for sid in ids if len(sid) > SHOWN)


class UnexpectedReply(Exception):
    """A reply of a type or value the command cannot answer: the server misbehaves.

    The message names the reply's type (and its size or value when that is what is
    wrong), never its content.
    """


class RedactedError(Exception):
    """Stands in, in a chain of causes, for an exception whose text named a session id.

    Used only when a copy of the original exception, with the id abbreviated, cannot
    be made; the message starts with the original's type.
    """


def describe(reply: Any) -> str:
    """The type of *reply* in words ("an integer", "an array of 2"), never its content."""
    if reply is None:
        return "nil"
    if isinstance(reply, bool):
        return "a boolean"
    if isinstance(reply, int):
        return "an integer"
    if isinstance(reply, float):
        return "a double"
    if isinstance(reply, (bytes, str)):
        return f"a string of {len(reply)} bytes"
    if isinstance(reply, BaseException):
        return "an error"
    if isinstance(reply, dict):
        return f"a map of {len(reply)}"
    if isinstance(reply, (list, tuple, set)):
        return f"an array of {len(reply)}"
    return f"a {type(reply).__name__}"


def out_of_step(exc: BaseException) -> bool:
    """True if *exc*, or an exception chained to it, says a connection may be out of step
    with its commands: a reply of the wrong type (:class:`UnexpectedReply`), one redis-py
    could not parse (``InvalidResponse``, or the ``ValueError`` of ``int()`` on a bad
    number), or a pipeline answering the wrong number of replies (``RuntimeError``).
    A stray extra reply shows up like that, on a later command of its connection."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        item = pending.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, (UnexpectedReply, InvalidResponse, ValueError, RuntimeError)):
            return True
        pending += [item.__cause__, item.__context__]
    return False


def record(command: str, reply: Any) -> bytes | None:
    """A GET-like reply: the value, or None for nil. Anything else is UnexpectedReply."""
    if reply is None or type(reply) is bytes:
        return reply
    raise UnexpectedReply(f"{command} answered {describe(reply)}, not a string or nil")


def values(command: str, reply: Any, expected: int) -> list[Any]:
    """An ``MGET`` reply: its list of *expected* values (each checked by the caller). An
    error reply is raised; anything else is UnexpectedReply."""
    if isinstance(reply, BaseException):
        raise reply
    if type(reply) is not list or len(reply) != expected:
        raise UnexpectedReply(f"{command} answered {describe(reply)}, not a list of "
                              f"{expected} values")
    return reply


def ok(command: str, reply: Any) -> None:
    """A ``SET ... EX`` reply, after redis-py's callback: True (``OK``), or UnexpectedReply."""
    if reply is not True:
        raise UnexpectedReply(f"{command} answered {describe(reply)}, not OK")


def set_nx(command: str, reply: Any) -> bool:
    """A ``SET ... NX`` reply after redis-py's callback: True if set, False for nil."""
    if reply is True:
        return True
    if reply is None:
        return False
    raise UnexpectedReply(f"{command} answered {describe(reply)}, not OK or nil")


def count(command: str, reply: Any, most: int) -> int:
    """An integer reply from 0 to *most* (how many entries a script removed); any other
    reply is UnexpectedReply."""
    if type(reply) is int and 0 <= reply <= most:
        return reply
    what = f"the integer {reply}" if type(reply) is int else describe(reply)
    raise UnexpectedReply(f"{command} answered {what}, not a count from 0 to {most}")


def pairs(command: str, reply: Any) -> list[tuple[bytes, bytes]]:
    """A flat array of field, value, field, value... strings (a script's ``HGETALL``) as
    pairs; an array of odd length or holding anything but strings is UnexpectedReply."""
    if type(reply) is not list or len(reply) % 2:
        raise UnexpectedReply(f"{command} answered {describe(reply)}, not an array of "
                              "field and value pairs")
    for item in reply:
        if type(item) is not bytes:
            raise UnexpectedReply(f"{command} answered an array holding {describe(item)}, "
                                  "not only strings")
    return list(zip(reply[::2], reply[1::2], strict=True))


def flag(command: str, reply: Any) -> bool:
    """A reply of 0 or 1 (our scripts' answer, ``DEL`` of one key) as a bool; any other
    reply is UnexpectedReply."""
    if type(reply) is int and reply in (0, 1):
        return bool(reply)
    what = f"the integer {reply}" if type(reply) is int else describe(reply)
    raise UnexpectedReply(f"{command} answered {what}, not 0 or 1")


def redact(value: Any, session_id: Ids) -> Any:
    """*value* with session ids abbreviated: every whole *session_id* (or each of a tuple
    of them), and the content of every hash tag (``{...}`` of more than SHOWN characters:
    each key of ours has its id, or its user's escaped id, in one, and a failure of a whole
    pipeline names the keys of other sessions too).

    Works on str, bytes, and lists or tuples of them; other values are returned as is.
    """
    if isinstance(value, str):
        for sid in _ids(session_id):
            value = value.replace(sid, sid[:SHOWN] + "…")
        return _TAG.sub(lambda tag: "{" + tag[1][:SHOWN] + "…}", value)
    if isinstance(value, bytes):
        for sid in _ids(session_id):
            value = value.replace(sid.encode(), (sid[:SHOWN] + "…").encode())
        return _TAG_BYTES.sub(lambda tag: b"{" + tag[1][:SHOWN] + "…}".encode(), value)
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item, session_id) for item in value)
    return value


def _shows_an_id(text: str, session_id: Ids) -> bool:
    return (any(sid in text for sid in _ids(session_id))
            or _TAG.search(text) is not None)


def _own_text(exc: BaseException) -> str:
    """Everything of *exc* itself that traceback formatting or logging may print."""
    parts = [str(exc), repr(exc.args)]
    parts.extend(repr(value) for value in vars(exc).values()
                 if isinstance(value, (str, bytes, list, tuple)))
    return " ".join(parts)


def _names(exc: BaseException | None, session_id: Ids, seen: set[int]) -> bool:
    """True if *exc* or anything chained to it shows the whole *session_id*."""
    if exc is None or id(exc) in seen:
        return False
    seen.add(id(exc))
    return (_shows_an_id(_own_text(exc), session_id)
            or _names(exc.__cause__, session_id, seen)
            or _names(exc.__context__, session_id, seen))


def scrub(exc: BaseException, session_id: Ids) -> BaseException:
    """*exc* itself if nothing in its chain shows a whole session id (see :func:`redact`);
    else a copy of the chain, same types and tracebacks, with ids abbreviated everywhere."""
    if not _names(exc, session_id, set()):
        return exc
    return _scrubbed(exc, session_id, {})


def _scrubbed(exc: BaseException, session_id: Ids, done: dict[int, BaseException]
              ) -> BaseException:
    if id(exc) in done:
        return done[id(exc)]
    try:
        clean = copy.copy(exc)
        clean.args = redact(exc.args, session_id)
        for name, value in vars(exc).items():
            setattr(clean, name, redact(value, session_id))
    except Exception:
        clean = None
    if (clean is None or type(clean) is not type(exc)
            or _shows_an_id(_own_text(clean), session_id)):
        clean = RedactedError(f"{type(exc).__module__}.{type(exc).__qualname__}: "
                              f"{redact(str(exc), session_id)}")
    done[id(exc)] = clean
    cause = exc.__cause__
    context = exc.__context__
    clean.__cause__ = None if cause is None else _scrubbed(cause, session_id, done)
    clean.__context__ = None if context is None else _scrubbed(context, session_id, done)
    clean.__suppress_context__ = exc.__suppress_context__
    return clean.with_traceback(exc.__traceback__)


def failure(operation: str, exc: BaseException, session_id: Ids,
            timeout: float) -> DriverError:
    """The DriverError for *exc*, a failure of *operation* on *session_id*'s keys (or on
    the keys, or with the arguments, of a tuple of ids).

    Its message and its chained cause show the id abbreviated (see the module). Raise
    it outside any ``except`` block, or the original would be chained as its context.
    """
    if isinstance(exc, UnexpectedReply):
        message = f"redis {operation}: unexpected reply: {exc}"
    elif isinstance(exc, TimeoutError):
        message = f"redis {operation} got no answer within {timeout:g}s"
    else:
        detail = redact(str(exc), session_id)
        if len(detail) > _DETAIL:
            # some redis-py messages embed a whole client repr; the cause keeps all of it
            detail = detail[:_DETAIL] + "…"
        message = f"redis {operation} failed: {type(exc).__name__}: {detail}"
    error = DriverError(message)
    error.__cause__ = scrub(exc, session_id)
    return error
