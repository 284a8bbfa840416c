"""Find one field of a request body without consuming the body.

``await find_field(request, "_token")`` reads as much of the body as it needs, then puts
those bytes back at the head of ``request.content`` (``StreamReader.unread_data``): the
handler reads the same request object as if untouched, with ``post()``, ``multipart()``,
``read()``, ``text()``, ``json()`` or by streaming ``request.content``, and gets its own
size limits. Putting the bytes back was chosen over replacing the request's payload with
a replay stream: that needs aiohttp's private ``_payload`` and would cut the handler's
stream off from the connection's flow control, ``total_bytes`` accounting and lingering.

- ``application/x-www-form-urlencoded`` and JSON (``application/json``, ``*+json``): the
  field can be anywhere, so the whole body is read, up to ``request.client_max_size``
  (above it: ``web.HTTPRequestEntityTooLarge``, what the handler's own ``read()`` raises),
  and parsed with the standard library in the request's charset (UTF-8 by default).
- ``multipart/form-data``: parsed part by part with aiohttp's ``MultipartReader``,
  stopping once the field's part is complete (the part reader looks up to 8 KiB past it
  for the boundary, and the connection is read no further ahead of the parser than
  aiohttp's own read buffer), so a form that sends the field before its file fields costs
  a few KiB of its upload, whatever the upload's size. A field after file parts is looked
  for in the first ``MULTIPART_SEARCH_BYTES`` (1 MiB), or ``request.client_max_size``
  bytes if smaller, no further: beyond them the answer is ``NotFound.OUT_OF_REACH``. So
  what is held here per request is bounded, however large the app lets uploads be.
- Only the first ``MAX_FIELDS`` (1,000, aiohttp's default ``client_max_fields``) parts of
  a multipart body, or ``&``-separated fields of an urlencoded one, are looked at: a body
  of many tiny fields costs no more than that. Past them the answer is
  ``NotFound.TOO_MANY_FIELDS``. A nested multipart part (which ``post()`` refuses) ends
  the search: ``NotFound.ABSENT``.

A body that cannot be parsed (no boundary, unknown charset, invalid UTF-8, JSON nested too
deeply, a ``Content-Encoding`` that does not decode, ...) does not hold the field:
``NotFound.ABSENT``, never an exception. Errors of
the connection itself (a client that goes away mid-body) propagate, as in the handler.
A body that an outer middleware already consumed is looked up in what ``request.read()``
and ``request.post()`` cached (a multipart body cached by ``read()`` is parsed from those
bytes, with the same limits).
"""

from __future__ import annotations

import asyncio
import enum
import json
import warnings
from collections.abc import Iterable
from urllib.parse import parse_qsl

from aiohttp import BodyPartReader, MultipartReader, StreamReader, hdrs, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpProcessingError

# a body that does not decode (a Content-Encoding that is not what it says, broken
# chunking): aiohttp puts RequestPayloadError on the stream, or its parser's own error
_UNDECODABLE = (web.RequestPayloadError, HttpProcessingError)

__all__ = ["MAX_FIELDS", "MULTIPART_SEARCH_BYTES", "NotFound", "find_field",
           "multipart_reach"]

#: how many bytes of a multipart body at most are searched (read and held) for a field
MULTIPART_SEARCH_BYTES = 1024**2
#: how many multipart parts or urlencoded fields at most are searched for a field
MAX_FIELDS = 1000


class NotFound(enum.Enum):
    """Why ``find_field`` found no value."""

    #: the body has no such text field (or could not be parsed)
    ABSENT = "absent"
    #: multipart: the field was not within the first multipart_reach() bytes
    OUT_OF_REACH = "out of reach"
    #: the field was not among the first MAX_FIELDS parts or fields
    TOO_MANY_FIELDS = "too many fields"


def multipart_reach(request: web.Request) -> int:
    """How many bytes of *request*'s multipart body ``find_field`` searches at most:
    ``MULTIPART_SEARCH_BYTES``, or ``request.client_max_size`` if smaller (and not 0)."""
    limit = request.client_max_size
    return min(limit, MULTIPART_SEARCH_BYTES) if limit > 0 else MULTIPART_SEARCH_BYTES


async def find_field(request: web.Request, name: str) -> str | NotFound:
    """The text value of form field or JSON key *name*, leaving the body to the handler.

    The first field of that name counts; a file, a non-text part or a JSON value that is
    not a string is no value. Raises ``web.HTTPRequestEntityTooLarge`` for an urlencoded
    or JSON body over ``request.client_max_size`` bytes.
    """
    if not request.body_exists:
        return NotFound.ABSENT
    content_type = request.content_type
    # consumed before us (say, by an outer middleware): read() and post() answer from cache
    consumed = request.content.at_eof()
    if content_type == "multipart/form-data":
        if not consumed:
            return await _from_multipart(request, name)
        # read() cached the bytes (post() cannot parse them again then), or post() the form
        cached = await request.read()
        return await (_from_cached_multipart(request, cached, name) if cached
                      else _from_posted(request, name))
    is_json = content_type == "application/json" or content_type.endswith("+json")
    if not is_json and content_type != "application/x-www-form-urlencoded":
        return NotFound.ABSENT
    try:
        body = await (request.read() if consumed else _read_whole(request))
    except _UNDECODABLE:
        return NotFound.ABSENT
    charset = request.charset or "utf-8"
    return _from_json(body, charset, name) if is_json else _from_urlencoded(body, charset, name)


def _put_back(stream: StreamReader, chunks: Iterable[bytes]) -> None:
    """Return *chunks* (in reading order) to the head of *stream*."""
    with warnings.catch_warnings():
        # unread_data() is deprecated but present in every aiohttp 3.x, and aiohttp's own
        # multipart reader relies on it: the one way to give bytes back to the same stream
        warnings.simplefilter("ignore", DeprecationWarning)
        for chunk in reversed(list(chunks)):
            stream.unread_data(chunk)


async def _read_whole(request: web.Request) -> bytes:
    """The whole body, also left in ``request.content``; 413 above client_max_size."""
    stream, limit = request.content, request.client_max_size
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await stream.readany():
            chunks.append(chunk)
            size += len(chunk)
            if limit and size > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
    except BaseException:
        _put_back(stream, chunks)
        raise
    body = b"".join(chunks)
    _put_back(stream, [body])  # one buffer, not the chunks and their join
    return body


def _from_urlencoded(body: bytes, charset: str, name: str) -> str | NotFound:
    try:
        # decoded as request.post() does: the text first, then the percent-escapes; only
        # the first MAX_FIELDS fields are parsed (split() stops there, in C)
        fields = body.rstrip().decode(charset).split("&", MAX_FIELDS)
        pairs = parse_qsl("&".join(fields[:MAX_FIELDS]), keep_blank_values=True,
                          encoding=charset)
    except (LookupError, ValueError):
        return NotFound.ABSENT
    found = next((value for key, value in pairs if key == name), NotFound.ABSENT)
    if found is NotFound.ABSENT and len(fields) > MAX_FIELDS:
        return NotFound.TOO_MANY_FIELDS
    return found


def _from_json(body: bytes, charset: str, name: str) -> str | NotFound:
    try:
        document = json.loads(body.decode(charset))  # as request.json(): text(), then loads
    except (LookupError, ValueError, RecursionError):
        return NotFound.ABSENT
    value = document.get(name) if isinstance(document, dict) else None
    return value if isinstance(value, str) else NotFound.ABSENT


async def _from_posted(request: web.Request, name: str) -> str | NotFound:
    try:
        value = (await request.post()).get(name)
    except ValueError:  # the stream is gone and post() had not parsed it before
        return NotFound.ABSENT
    return value if isinstance(value, str) else NotFound.ABSENT


class _Valve(BaseProtocol):
    """Flow control of the in-memory copy the multipart parser reads.

    The copy's StreamReader pauses its "protocol" above its high-water mark and resumes
    it once drained; here that opens and shuts the pump, so the pump reads the connection
    no further ahead of the parser than aiohttp's own read buffer would.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.open = asyncio.Event()
        self.open.set()

    @property
    def connected(self) -> bool:
        return True  # no transport of its own; the pump sees the connection's errors

    def pause_reading(self) -> None:
        self._reading_paused = True  # the StreamReader of aiohttp 3.12 reads this flag
        self.open.clear()

    def resume_reading(self, resume_parser: bool = True) -> None:
        self._reading_paused = False
        self.open.set()


def _parser(request: web.Request) -> tuple[StreamReader, _Valve, MultipartReader | None]:
    """An in-memory stream, its valve, and a multipart parser reading it (None: the
    request's boundary is missing or invalid)."""
    loop = asyncio.get_running_loop()
    valve = _Valve(loop)
    # the copy gets the connection stream's limits: same line-length limit for part headers
    copy = StreamReader(valve, request.content.get_read_buffer_limits()[0], loop=loop)
    try:
        return copy, valve, MultipartReader(request.headers, copy)
    except ValueError:
        return copy, valve, None


async def _from_cached_multipart(request: web.Request, body: bytes,
                                 name: str) -> str | NotFound:
    """*name* in a multipart body that read() cached, searched as a streamed one is."""
    room = multipart_reach(request)
    copy, _, parts = _parser(request)
    if parts is None:
        return NotFound.ABSENT
    copy.feed_data(body[:room])
    copy.feed_eof()
    found = await _search_parts(parts, name)
    return NotFound.OUT_OF_REACH if found is NotFound.ABSENT and len(body) > room else found


async def _from_multipart(request: web.Request, name: str) -> str | NotFound:
    stream = request.content
    room = multipart_reach(request)
    copy, valve, parts = _parser(request)
    if parts is None:  # no boundary, or an invalid one
        return NotFound.ABSENT
    taken: list[bytes] = []
    truncated = False
    failure: Exception | None = None

    async def pump() -> None:
        """Copy the connection's chunks to the parser, remembering them, up to *room*."""
        nonlocal room, truncated, failure
        try:
            while True:
                await valve.open.wait()
                chunk = await stream.readany()
                if not chunk:
                    break
                taken.append(chunk)
                if len(chunk) > room:
                    copy.feed_data(chunk[:room])
                    truncated = True
                    break
                copy.feed_data(chunk)
                room -= len(chunk)
        except Exception as exc:  # the connection's error: stop the parser with it
            failure = exc
            copy.set_exception(exc)
            return
        copy.feed_eof()

    pumping = asyncio.create_task(pump())
    try:
        found = await _search_parts(parts, name)
    finally:
        pumping.cancel()
        await asyncio.wait([pumping])  # no read of the stream may be pending on return
        _put_back(stream, taken)
    if found is not NotFound.ABSENT:
        return found
    if failure is not None and not isinstance(failure, _UNDECODABLE):
        raise failure  # the connection's error, as the handler's own read would see it
    return NotFound.OUT_OF_REACH if truncated else NotFound.ABSENT


async def _search_parts(parts: MultipartReader, name: str) -> str | NotFound:
    """_first_text_part(), any parser error meaning no value."""
    try:
        return await _first_text_part(parts, name)
    except Exception:
        # aiohttp's parser raises ValueError, AssertionError, RuntimeError, LineTooLong
        # and more on malformed input, and a part's charset may be unknown: no value
        return NotFound.ABSENT


async def _first_text_part(parts: MultipartReader, name: str) -> str | NotFound:
    """The first part named *name* as ``request.post()`` decodes it, if it is text, and
    among the first MAX_FIELDS parts."""
    for _ in range(MAX_FIELDS):
        part = await parts.next()
        if part is None:
            return NotFound.ABSENT
        if not isinstance(part, BodyPartReader):
            # a nested multipart: post() refuses it, and releasing it would parse all of
            # its parts, uncounted
            return NotFound.ABSENT
        if part.name != name:
            await part.release()
            continue
        content_type = part.headers.get(hdrs.CONTENT_TYPE)
        if part.filename or (content_type is not None and not content_type.startswith("text/")):
            return NotFound.ABSENT
        data = await part.read(decode=True)  # form-data parts are never decompressed
        return data.decode(part.get_charset(default="utf-8"))
    return NotFound.ABSENT if await parts.next() is None else NotFound.TOO_MANY_FIELDS
