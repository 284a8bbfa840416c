"""The user index of the Redis driver: one hash per user, ``{handle: session id}``.

A user's index is the hash ``prefix + "user:{" + tag + "}"``, where the tag is the user
id escaped by :func:`user_tag` (percent-encoding of everything but letters, digits and
``_.-~@+``; the empty id is ``%``): never empty, no brace, no space or quote, and a
different tag for every id. Its braces are the key's hash tag, so on a Cluster the whole
index of a user is one key in one slot, and every command on it (one each) touches that
slot alone. It never equals a key of a session of the same prefix: those have ``{``
right after the prefix (``prefix{id}``, ``prefix{id}:lock``), this one ``u``.

Every command is one atomic step in Redis: adding is a Lua script (a compare-and-set:
``HSET`` unless the handle names another id, then ``PEXPIRE`` to the larger of the key's
``PTTL`` and the ttl, so an index is never cut shorter than a session it names still
needs), removing is a Lua script that deletes a
field only if it still holds the given id, and reading is a Lua script that answers
``HGETALL``: a script's reply reaches the driver as Redis sent it, where redis-py's own
``HGETALL`` callback pairs up whatever came (an integer 0, a nil, an array of odd
length all become ``{}`` unseen). Scripts are sent with ``EVALSHA``, and once more with
``EVAL`` if the node does not know them (a restart, ``SCRIPT FLUSH``), under one deadline.

A key of another type under an index's name is someone else's value: it reads as an
empty index, adding to or removing from it does nothing, and each logs a WARNING; the
key is left as it is. Entries that cannot be ours (a field that is no handle, a value
that is no session id) are left out of a read and logged. User ids are personal data:
logs and errors show at most the first characters of the tag (see ``replies``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar
from urllib.parse import quote, unquote

from redis.exceptions import NoScriptError, ResponseError

from ...errors import DriverError
from ...ids import is_valid_handle, is_valid_session_id
from . import replies
from .batching import Command
from .lock import is_wrongtype

__all__ = ["INDEX_SCRIPT", "INDEX_SHA", "READ_SCRIPT", "READ_SHA", "UNINDEX_SCRIPT",
           "UNINDEX_SHA", "UserIndex", "user_id_of", "user_tag"]

logger = logging.getLogger("aiosessmgr")

# KEYS[1] the user's index; ARGV: handle, session id, milliseconds to keep the index at
# least, the id the session moves from ("" if none). A compare-and-set: written only if
# the handle names nothing, this id (a refresh) or the id moved from; answers 1 if
# written, 0 if the handle names another id (then nothing is written). HGET first: on a
# key of another type it fails (WRONGTYPE) before anything is written. A PTTL of -1 (no
# expiry: a key just created) is below any ttl, so an index always expires.
INDEX_SCRIPT: Final = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and current ~= ARGV[2] and current ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local keep = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < keep then redis.call('PEXPIRE', KEYS[1], keep) end
return 1
"""
INDEX_SHA: Final = hashlib.sha1(INDEX_SCRIPT.encode()).hexdigest()

# KEYS[1] the user's index; ARGV: handle, session id, handle, session id... Deletes each
# handle that still names its id; answers how many it deleted. Redis deletes the key
# with its last field.
UNINDEX_SCRIPT: Final = """
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return removed
"""
UNINDEX_SHA: Final = hashlib.sha1(UNINDEX_SCRIPT.encode()).hexdigest()

# KEYS[1] the user's index: its fields and values, flat, as Redis answers HGETALL
READ_SCRIPT: Final = """
return redis.call('HGETALL', KEYS[1])
"""
READ_SHA: Final = hashlib.sha1(READ_SCRIPT.encode()).hexdigest()

#: characters of a user id kept as they are in its tag (besides letters, digits, _.-~)
_SAFE: Final = "@+"
#: the tag of the empty user id: no other tag is a lone "%" (each "%" starts an escape)
_EMPTY: Final = "%"

_T = TypeVar("_T")
Send = Callable[[Command], Awaitable[Any]]
Failure = Callable[[str, BaseException, replies.Ids], Awaitable[DriverError]]


def user_tag(user_id: str) -> str:
    """The hash tag of *user_id*'s index key: printable ASCII, never empty, no ``{``,
    ``}``, space, quote or unescaped ``%``, and a different one for each user id (see
    :func:`user_id_of`)."""
    if not user_id:
        return _EMPTY
    # surrogatepass: even a lone surrogate (no printable character) gets its own tag
    return quote(user_id, safe=_SAFE, errors="surrogatepass")


def user_id_of(tag: str) -> str:
    """The user id whose :func:`user_tag` is *tag* (the inverse, for tests and tools)."""
    if tag == _EMPTY:
        return ""
    return unquote(tag, errors="surrogatepass")


class UserIndex:
    """The user index operations of one driver, on its prefix, through its commands.

    *send* runs one command the way the driver runs every command (auto-pipelined or
    not, within its timeout), *failure* turns an exception into the driver's
    DriverError (dropping connections that may be out of step), *timeout* (seconds)
    bounds each operation, the NOSCRIPT retry included.
    """

    def __init__(self, prefix: str, send: Send, failure: Failure, timeout: float) -> None:
        self.prefix = prefix
        self._send = send
        self._failure = failure
        self._timeout = timeout

    def key(self, user_id: str) -> str:
        """The Redis key of *user_id*'s index: prefix, ``user:``, the tag in braces."""
        return f"{self.prefix}user:{{{user_tag(user_id)}}}"

    async def add(self, user_id: str, handle: str, session_id: str, ttl: int,
                  expected: str | None = None) -> bool:
        """Point *handle* at *session_id* if it names nothing, that id or *expected*, and
        keep the index at least *ttl* seconds (at least 1) from now, never shorter than it
        was; False if the handle names another id (nothing written). A key of another
        type: logged, True (no other id holds the handle)."""
        keep = max(int(ttl), 1) * 1000
        written = await self._script("user index", INDEX_SCRIPT, INDEX_SHA, user_id,
                                     (handle, session_id, keep, expected or ""),
                                     (session_id,) if expected is None else
                                     (session_id, expected), _count(1), 1)
        return written == 1

    async def entries(self, user_id: str) -> dict[str, str]:
        """``{handle: session id}`` of *user_id*'s index; ``{}`` if there is none."""
        none: list[tuple[bytes, bytes]] = []
        reply = await self._script("user index read", READ_SCRIPT, READ_SHA, user_id,
                                   (), (), replies.pairs, none)
        found: dict[str, str] = {}
        skipped = 0
        for field, value in reply:
            handle, session_id = _text(field), _text(value)
            if is_valid_handle(handle) and is_valid_session_id(session_id):
                found[handle] = session_id
            else:
                skipped += 1
        if skipped:
            logger.warning("redis key %s holds %d entries that are no handle and session "
                           "id of ours: left out, and left as they are", self._shown(user_id),
                           skipped)
        return found

    async def remove(self, user_id: str, entries: Mapping[str, str]) -> int:
        """Delete each handle of *entries* that still names its id; how many were."""
        items = list(entries.items())
        if not items:
            return 0
        args = tuple(text for item in items for text in item)
        return await self._script("user unindex", UNINDEX_SCRIPT, UNINDEX_SHA, user_id,
                                  args, tuple(sid for _, sid in items), _count(len(items)), 0)

    async def _script(self, operation: str, script: str, sha: str, user_id: str,
                      args: tuple[str | int, ...], ids: tuple[str, ...],
                      check: Callable[[str, Any], _T], empty: _T) -> _T:
        """Run *script* on *user_id*'s index; its reply as *check* accepts it. WRONGTYPE
        is logged and answers *empty*, what the script answers for an empty index.

        Every other failure is a DriverError that shows neither the user's tag nor the
        session ids of *ids* whole.
        """
        key = self.key(user_id)
        command: Command = ("EVALSHA", sha, 1, key, *args)
        try:
            # one deadline for the whole operation, the NOSCRIPT retry included
            async with asyncio.timeout(self._timeout):
                try:
                    reply = await self._send(command)
                except NoScriptError:
                    reply = await self._send(("EVAL", script, *command[2:]))
            return check(operation, reply)
        except ResponseError as exc:
            if is_wrongtype(exc):
                logger.warning("redis key %s holds a value of another type (a string, a "
                               "list...), not a user index of ours: treated as empty and "
                               "left as it is", self._shown(user_id))
                return empty
            error: Exception = exc
        except DriverError:
            raise
        except Exception as exc:
            error = exc
        raise await self._failure(operation, error, (user_tag(user_id), *ids))

    def _shown(self, user_id: str) -> str:
        # user ids are personal data: the first characters of the tag, as errors show it
        return f"{self.prefix}user:{{{user_tag(user_id)[:replies.SHOWN]}…}}"


def _count(most: int) -> Callable[[str, Any], int]:
    """The check of a script's reply that is a count from 0 to *most*."""

    def check(command: str, reply: Any) -> int:
        return replies.count(command, reply, most)

    return check


def _text(value: bytes) -> str:
    """*value* as text if it is ASCII (every handle and id is), else "" (no handle)."""
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return ""
