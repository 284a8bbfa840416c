"""The ``cookie`` driver: client-side sessions, the record kept in the browser's cookies.

The record (the same serializer and record layout as every driver) travels in the
session cookie itself, always AES-256-GCM encrypted and authenticated
(:class:`aiosessmgr.codec.AesGcmCipher`: a key derived per salt, rotation through
``previous_keys``), with the cookie's *name* as associated data, so a value copied into
another cookie does not decrypt. The authenticated plaintext is:

.. code-block:: text

    0x01 | idle deadline (8 bytes, epoch seconds, big-endian) | session id (43) | record

The server enforces the deadline (a copied cookie replayed after it is a fresh
session); the absolute lifetime is the record's creation time, enforced as on every
driver. Above one cookie's size (:data:`DEFAULT_CHUNK_SIZE`) the value is split:
``name=<n>.<part 0>`` then ``name.1`` ... ``name.<n-1>`` (base64url has no ``.``, so
one value is never mistaken for a split one); the response that writes fewer chunks
deletes the ones left over. Above ``max_size`` (:data:`DEFAULT_MAX_SIZE`) ``save()``
raises :class:`aiosessmgr.SessionTooLarge`, before any header goes out.

The one driver the middleware knows about: its store is the request's ``Cookie``
header and the response's ``Set-Cookie`` headers. The middleware opens a per-request
jar (:meth:`CookieDriver.begin`, a ``contextvars`` value, so tasks the handler starts
see it); reads decode the header (lazily: a request that never loads its session
decrypts nothing), writes encrypt at once (so an oversized session fails at
``save()``), and the middleware turns the last write into ``Set-Cookie`` headers.
Outside a request there is nothing to read, and a write is a SessionError.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import re
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, Protocol

from ..errors import ConfigError, SessionError, SessionTooLarge
from ..ids import is_valid_session_id
from ..log import logger
from .base import VERSION_SIZE, DriverSpec, SessionDriver, check_options

__all__ = ["DEFAULT_CHUNK_SIZE", "DEFAULT_MAX_SIZE", "MAX_CHUNKS", "MAX_MAX_SIZE", "CookieDriver",
           "CookieJar"]

#: bytes of one cookie's ``name=value``. RFC 6265 (section 6.1) has browsers keep at
#: least 4,096 bytes per cookie, name, value and attributes; Chromium and Firefox count
#: name and value against 4,096. 4,000 leaves room for either way of counting (ASP.NET
#: Core's chunking cookie manager uses 4,050).
DEFAULT_CHUNK_SIZE: Final = 4000
#: bytes the session's cookies may add to the ``Cookie`` header (every ``name=value`` and
#: the ``"; "`` between them). nginx's default ``large_client_header_buffers 4 8k`` and
#: Apache's ``LimitRequestFieldSize 8190`` refuse a request whose ``Cookie`` header line
#: is over 8 KB (400 or 494), as aiohttp's own server does (``max_field_size`` 8,190):
#: 6,144 leaves about 2 KB (2,036 bytes with ``"Cookie: "``) for the app's other cookies.
DEFAULT_MAX_SIZE: Final = 6144
#: the largest ``max_size``: the longest ``Cookie`` header aiohttp's server reads back
#: (``max_field_size`` 8,190 for the header line, ``"Cookie: "`` included). Above it a
#: saved session locks its browser out: every request is a 400 before the app runs,
#: logout included, until the browser drops the cookies.
MAX_MAX_SIZE: Final = 8190 - len("Cookie: ")
#: the most chunks a value is read from (a header claiming more is refused unread)
MAX_CHUNKS: Final = 16
#: a cookie's name and value cannot be larger (Chromium's limit): no chunk_size above it
_BROWSER_LIMIT: Final = 4096

_FORMAT: Final = b"\x01"
_DEADLINE: Final = struct.Struct(">Q")
_ID_SIZE: Final = 43
_HEAD: Final = 1 + _DEADLINE.size + _ID_SIZE
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]+")
_CHUNK_SUFFIX: Final = re.compile(r"[1-9][0-9]?")
#: values verified recently, kept with what they hold (at most this many, this long):
#: about 4 MB at most; the deadline is still checked on every request
_OPENED_IDS: Final = 2048
_OPENED_SIZE: Final = 1024


class _Foreign(ValueError):
    """A cookie value not of our shape (not base64url, no valid chunk count, not a payload
    of the cipher's format)."""


class Cipher(Protocol):
    """What the driver encrypts with (:class:`aiosessmgr.codec.AesGcmCipher`)."""

    def encrypt(self, plaintext: bytes, associated: bytes) -> bytes: ...
    def decrypt(self, payload: bytes, associated: bytes) -> tuple[bytes, bool]: ...
    def recognizes(self, payload: bytes) -> bool: ...


#: (Cookie header, name) -> that name's values, in header order (``cookies.cookie_values``)
Values = Callable[[str, str], list[str]]
#: (Cookie header, prefix) -> the names starting with it (``cookies.cookie_names``)
Names = Callable[[str, str], list[str]]


class CookieJar:
    """One request's client-side records: what its ``Cookie`` header held, what it wrote.

    Made by :meth:`CookieDriver.begin`; ``outgoing`` is the ``[(name, value)]`` of the
    last record written (for ``written_id``), ``sent`` the names of ours the request
    carried (their deletion when the session ends or shrinks).
    """

    __slots__ = ("closed", "decoded", "header", "ids", "outgoing", "records", "sent",
                 "written_id")

    def __init__(self, header: str) -> None:
        self.header = header
        self.decoded = False
        #: session ids the cookie named, in header order (expired ones included)
        self.ids: list[str] = []
        #: session id -> record, for the live ones and what this request wrote
        self.records: dict[str, bytes] = {}
        self.sent: list[str] = []
        self.written_id: str | None = None
        self.outgoing: list[tuple[str, str]] = []
        #: the response's headers are decided: a later write cannot reach the browser
        self.closed = False


class CookieDriver(SessionDriver):
    """Client-side sessions: each record lives, encrypted, in the session's own cookies.

    Built by the manager from ``{"driver": "cookie", "lifetime": minutes}`` and the
    ``encryption`` section's key (required: a ConfigError without one); options
    ``max_size`` and ``chunk_size`` (bytes, see :data:`DEFAULT_MAX_SIZE`,
    :data:`DEFAULT_CHUNK_SIZE`). What cannot hold client-side: no server-side
    invalidation (a copy of a cookie stays valid until its deadline), concurrent requests
    are last-response-wins, and there is no index of a user's sessions.
    """

    #: each request has its own store (its cookies): the runtime remembers no record
    #: written for one request as the base of another's save
    per_request: ClassVar[bool] = True
    expires_itself: ClassVar[bool] = True

    def __init__(self, cookie_name: str, cipher: Cipher, values: Values, names: Names, *,
                 max_size: int = DEFAULT_MAX_SIZE, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 clock: Callable[[], float] = time.time) -> None:
        for label, value, low in (("max_size", max_size, 256), ("chunk_size", chunk_size, 256)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"cookie driver {label} must be a whole number of bytes "
                                  f">= {low}, got {value!r}")
        if max_size > MAX_MAX_SIZE:
            raise ConfigError(
                f"cookie driver max_size must be at most {MAX_MAX_SIZE:,} bytes, got "
                f"{max_size:,}: aiohttp's server (max_field_size 8,190), nginx and Apache "
                "refuse a longer Cookie header with a 400 before the app runs, so the "
                "browser holding it could not even log out")
        if chunk_size > _BROWSER_LIMIT:
            raise ConfigError(f"cookie driver chunk_size must be at most {_BROWSER_LIMIT} "
                              f"(browsers drop larger cookies), got {chunk_size}")
        if max_size > MAX_CHUNKS * (chunk_size - len(cookie_name) - 4):
            raise ConfigError(f"cookie driver max_size {max_size} needs more than {MAX_CHUNKS} "
                              f"cookies of chunk_size {chunk_size}: lower max_size or raise "
                              "chunk_size")
        self.cookie_name = cookie_name
        self.max_size = max_size
        self.chunk_size = chunk_size
        self._cipher = cipher
        # the header is parsed as aiohttp's parser reads it (aiosessmgr.cookies), passed in
        # so that drivers import nothing of the web layer
        self._values = values
        self._names = names
        self._clock = clock
        self._associated = cookie_name.encode()
        # value (base64url text) -> (id, deadline, record) of values that verified
        self._opened: dict[str, tuple[str, float, bytes]] = {}
        self._prefix = cookie_name + "."
        self._jar: contextvars.ContextVar[CookieJar | None] = contextvars.ContextVar(
            f"aiosessmgr_cookie_jar_{cookie_name}", default=None)

    @classmethod
    def from_config(cls, config: DriverSpec, *, cookie_name: str, cipher: Cipher,
                    values: Values, names: Names,
                    clock: Callable[[], float] = time.time) -> CookieDriver:
        """Build from a driver config; the manager passes the cookie name, the cipher and
        the header parsing."""
        check_options(config, ("max_size", "chunk_size"))
        options: Mapping[str, Any] = config.options
        return cls(cookie_name, cipher, values, names,
                   max_size=options.get("max_size", DEFAULT_MAX_SIZE),
                   chunk_size=options.get("chunk_size", DEFAULT_CHUNK_SIZE), clock=clock)

    # -- the request's jar (the middleware's side) -------------------------------------------

    def begin(self, header: str) -> contextvars.Token[CookieJar | None]:
        """Open the jar of a request whose ``Cookie`` header is *header*; pass the token
        to :meth:`end` when the request is over."""
        return self._jar.set(CookieJar(header))

    def end(self, token: contextvars.Token[CookieJar | None]) -> None:
        """Close the jar :meth:`begin` opened."""
        self._jar.reset(token)

    def jar(self) -> CookieJar | None:
        """The current request's jar, or None outside a request."""
        return self._jar.get()

    def cookie_ids(self) -> list[str]:
        """The session ids the current request's cookies name, decoding them once."""
        jar = self._jar.get()
        if jar is None:
            return []
        if not jar.decoded:
            self._decode(jar)
        return jar.ids

    def _decode(self, jar: CookieJar) -> None:
        jar.decoded = True
        header, name = jar.header, self.cookie_name
        values = self._values(header, name) if header else []
        if not values:
            return
        # the chunk cookies it carries, to delete those a shorter record leaves over; only
        # name.1 ... name.15: an app's own "name.theme" is not ours to delete
        jar.sent = [name, *(chunk for chunk in self._names(header, self._prefix)
                            if _CHUNK_SUFFIX.fullmatch(chunk[len(self._prefix):])
                            and int(chunk[len(self._prefix):]) < MAX_CHUNKS)]
        refused = foreign = None
        now = self._clock()
        for value in values[:3]:
            try:
                session_id, deadline, record = self._open(value, header)
            except _Foreign as exc:
                foreign = foreign or str(exc)
                continue
            except ValueError as exc:
                refused = refused or str(exc)
                continue
            if session_id in jar.ids:
                continue
            jar.ids.append(session_id)
            if deadline > now:
                jar.records[session_id] = record
        if jar.records:
            return
        if refused is not None:  # shaped like ours, and does not verify: tampered, or a lost key
            logger.warning("discarding a session cookie %r that does not verify: %s",
                           name, refused)
        elif foreign is not None:  # another system's value (aiohttp-session's, before a move)
            logger.info("ignoring a cookie %r that is not a client-side session: %s",
                        name, foreign)

    def _open(self, value: str, header: str) -> tuple[str, float, bytes]:
        """(id, deadline, record) of one cookie value; ValueError if it is not ours."""
        count, dot, first = value.partition(".")
        if not dot:
            text = value
        else:
            if not count.isdigit() or not 1 < int(count) <= MAX_CHUNKS:
                raise _Foreign("malformed chunk count")
            parts = [first]
            for i in range(1, int(count)):
                found = self._values(header, f"{self._prefix}{i}")
                if not found:
                    raise ValueError(f"chunk {i} of {count} is missing")
                parts.append(found[0])
            text = "".join(parts)
        opened = self._opened.get(text)
        if opened is not None:
            return opened
        if not _BASE64URL.fullmatch(text):
            raise _Foreign("not base64url")
        try:
            payload = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError) as exc:
            raise _Foreign("not base64url") from exc
        if not self._cipher.recognizes(payload):  # base64url, but not sealed by us
            raise _Foreign("not an aes-256-gcm payload")
        plain, _ = self._cipher.decrypt(payload, self._associated)  # DecodeError: ValueError
        if len(plain) <= _HEAD + VERSION_SIZE or plain[:1] != _FORMAT:
            raise ValueError("unknown layout")
        session_id = plain[1 + _DEADLINE.size:_HEAD].decode("ascii", "replace")
        if not is_valid_session_id(session_id):
            raise ValueError("malformed session id")
        opened = session_id, float(_DEADLINE.unpack_from(plain, 1)[0]), plain[_HEAD:]
        if len(text) <= _OPENED_SIZE:
            # a browser sends the same value until a response changes it: verified once
            if len(self._opened) >= _OPENED_IDS:
                del self._opened[next(iter(self._opened))]  # the oldest
            self._opened[text] = opened
        return opened

    def _seal(self, session_id: str, payload: bytes, ttl: int) -> list[tuple[str, str]]:
        deadline = _DEADLINE.pack(int(self._clock()) + ttl)
        sealed = self._cipher.encrypt(_FORMAT + deadline + session_id.encode() + payload,
                                      self._associated)
        text = base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")
        name, size = self.cookie_name, self.chunk_size
        pairs = [(name, text)] if len(name) + 1 + len(text) <= size else self._split(text)
        total = sum(len(n) + 1 + len(v) for n, v in pairs) + 2 * (len(pairs) - 1)
        if total > self.max_size or len(pairs) > MAX_CHUNKS:
            raise SessionTooLarge(total, self.max_size, setting="the cookie driver's max_size",
                                  what="the session's cookie data")
        return pairs

    def _split(self, text: str) -> list[tuple[str, str]]:
        name, size = self.cookie_name, self.chunk_size
        count = 2
        while True:
            pairs, rest = [], text
            room = size - len(name) - 2 - len(str(count))
            pairs.append((name, f"{count}.{rest[:room]}"))
            rest = rest[room:]
            i = 1
            while rest:
                chunk_name = f"{self._prefix}{i}"
                room = size - len(chunk_name) - 1
                pairs.append((chunk_name, rest[:room]))
                rest, i = rest[room:], i + 1
            if len(pairs) == count:
                return pairs
            if len(pairs) > MAX_CHUNKS:
                return pairs  # refused by the caller: too many chunks
            count = len(pairs)

    # -- the driver contract -------------------------------------------------------------------

    def _current(self) -> CookieJar:
        jar = self._jar.get()
        if jar is None:
            raise SessionError(
                "the cookie driver keeps sessions in the response's cookies: it saves only "
                "inside a request of an app set up with aiosessmgr.setup(app, manager), as "
                "the manager's default driver")
        if not jar.decoded:
            self._decode(jar)
        return jar

    async def read(self, session_id: str) -> bytes | None:
        """The record the request's cookies hold for *session_id* (None: absent, expired)."""
        jar = self._jar.get()
        if jar is None:
            return None
        if not jar.decoded:
            self._decode(jar)
        return jar.records.get(session_id)

    async def write(self, session_id: str, payload: bytes, ttl: int) -> None:
        """Seal *payload* into the response's cookies; SessionTooLarge above ``max_size``."""
        jar = self._current()
        pairs = self._seal(session_id, payload, ttl)
        if jar.closed:
            logger.warning("a client-side session changed after its response's headers went "
                           "out (a streamed response): the change cannot reach the browser")
        jar.records[session_id] = payload
        jar.written_id, jar.outgoing = session_id, pairs

    async def compare_and_set(self, session_id: str, payload: bytes, ttl: int,
                              expected: bytes | None) -> bool:
        """Write if the request's record of *session_id* still has version *expected*.

        Only tasks of one request share a jar: two requests never see each other's writes
        (last response wins, in the browser).
        """
        jar = self._current()
        current = jar.records.get(session_id)
        if (current is None) != (expected is None) or (
                current is not None and current[:VERSION_SIZE] != expected):
            return False
        await self.write(session_id, payload, ttl)
        return True

    async def destroy(self, session_id: str) -> None:
        """Forget the record in this request; the middleware deletes the cookies."""
        jar = self._jar.get()
        if jar is None:
            return
        jar.records.pop(session_id, None)
        if jar.written_id == session_id:
            jar.written_id, jar.outgoing = None, []

    async def gc(self, max_lifetime: int) -> int:
        """Nothing to collect: expired cookies are refused when they come back. Returns 0."""
        return 0
