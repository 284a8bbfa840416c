"""Finding a form field or JSON key in a request body leaves the body to the handler.

The helpers here (bodies, handlers that read a body one way each) are shared with
tests/test_csrf.py, which runs the same bodies through the CSRF middleware.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import BodyPartReader, ClientResponse, web
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import Handler

from aiosessmgr.body import MAX_FIELDS, MULTIPART_SEARCH_BYTES, NotFound, find_field

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]
Reader = Callable[[web.Request], Awaitable[bytes]]
#: one multipart part: field name, file name (None for a plain field), value
Part = tuple[str, str | None, bytes]

BOUNDARY = "aiosessmgr-test-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
SMALL_FILE = bytes(range(10))
#: 2 MiB, twice aiohttp's default client_max_size
BIG_FILE = bytes(range(256)) * (8 * 1024)


def multipart_body(*parts: Part) -> bytes:
    """The bytes a browser sends for *parts* (files as application/octet-stream)."""
    out = bytearray()
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + value + b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


def described(parts: list[Part]) -> bytes:
    """What the field-reading handlers answer for *parts*: name, file name, size, digest."""
    return json.dumps([[name, filename, len(value), hashlib.sha256(value).hexdigest()]
                       for name, filename, value in parts]).encode()


async def in_pieces(body: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    """*body* as a chunked upload (Transfer-Encoding: chunked), *size* bytes a chunk."""
    for start in range(0, len(body), size):
        yield body[start:start + size]


async def via_multipart(request: web.Request) -> bytes:
    """Stream the parts with request.multipart(), holding only their digests."""
    reader = await request.multipart()
    seen: list[list[Any]] = []
    while (part := await reader.next()) is not None:
        assert isinstance(part, BodyPartReader)
        digest, size = hashlib.sha256(), 0
        while chunk := await part.read_chunk():
            digest.update(chunk)
            size += len(chunk)
        seen.append([part.name, part.filename, size, digest.hexdigest()])
    return json.dumps(seen).encode()


async def via_post(request: web.Request) -> bytes:
    form = await request.post()
    seen: list[Part] = []
    for name, value in form.items():
        if isinstance(value, web.FileField):
            seen.append((name, value.filename, value.file.read()))
        else:
            seen.append((name, None, value.encode() if isinstance(value, str) else bytes(value)))
    return described(seen)


async def via_read(request: web.Request) -> bytes:
    return await request.read()


async def via_text(request: web.Request) -> bytes:
    return (await request.text()).encode()


async def via_json(request: web.Request) -> bytes:
    return json.dumps(await request.json()).encode()


async def via_content(request: web.Request) -> bytes:
    return await request.content.read()


#: each way a handler can read a body
READERS: dict[str, Reader] = {
    "multipart": via_multipart,
    "post": via_post,
    "read": via_read,
    "text": via_text,
    "json": via_json,
    "content": via_content,
}


def echo(reader: Reader) -> Handler:
    """A handler answering what *reader* saw, and whether the body was readable at first."""

    async def handler(request: web.Request) -> web.StreamResponse:
        readable = request.can_read_body and request.body_exists
        return web.Response(body=await reader(request),
                            headers={"X-Body-Readable": str(readable)})

    return handler


def add_readers(app: web.Application) -> None:
    """POST /read/<reader> for every reader in READERS."""
    for name, reader in READERS.items():
        app.router.add_post(f"/read/{name}", echo(reader))


def probe_app(client_max_size: int = 1024**2, earlier: Reader | None = None) -> web.Application:
    """An app whose middleware looks up ``_token`` and reports it in ``X-Found``; an outer
    middleware reads the body first with *earlier*."""

    @web.middleware
    async def outer(request: web.Request, handler: Handler) -> web.StreamResponse:
        if earlier is not None:
            await earlier(request)
        return await handler(request)

    @web.middleware
    async def probe(request: web.Request, handler: Handler) -> web.StreamResponse:
        found = await find_field(request, "_token")
        response = await handler(request)
        response.headers["X-Found"] = json.dumps(found if isinstance(found, str) else found.name)
        return response

    app = web.Application(client_max_size=client_max_size, middlewares=[outer, probe])
    add_readers(app)
    return app


def raw_part(name: str, value: bytes, *headers: str) -> bytes:
    """One multipart part with extra header lines, for the cases multipart_body() can't write."""
    lines = "".join(f"{line}\r\n" for line in
                    (f'Content-Disposition: form-data; name="{name}"', *headers))
    return f"--{BOUNDARY}\r\n{lines}\r\n".encode() + value + b"\r\n"


CLOSE = f"--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize(
    ("content_type", "body", "reader", "found"),
    [
        pytest.param(MULTIPART, multipart_body(("_token", None, b"A"), ("f", "f.bin", SMALL_FILE)),
                     "read", "A", id="multipart-token-first"),
        pytest.param(MULTIPART, multipart_body(("f", "f.bin", SMALL_FILE), ("_token", None, b"A")),
                     "multipart", "A", id="multipart-token-last"),
        pytest.param(MULTIPART, multipart_body(("_token", None, b"A"), ("_token", None, b"B")),
                     "post", "A", id="multipart-first-of-two"),
        pytest.param(MULTIPART, raw_part("_token", b"QQ==", "Content-Transfer-Encoding: base64")
                     + CLOSE, "read", "A", id="multipart-base64-part"),
        pytest.param(MULTIPART, raw_part("_token", "café".encode("latin-1"),
                                         "Content-Type: text/plain; charset=latin-1") + CLOSE,
                     "read", "café", id="multipart-part-charset"),
        pytest.param(FORM, b"a=1&_token=A&_token=B", "content", "A", id="form-first-of-two"),
        pytest.param(f"{FORM}; charset=latin-1", b"_token=caf%E9", "read", "café",
                     id="form-charset"),
        pytest.param(JSON, b'{"a": [1, 2], "_token": "A"}', "content", "A", id="json"),
        # of two JSON keys the last, as json.loads (request.json()) reads them
        pytest.param(JSON, b'{"_token": "A", "_token": "B"}', "json", "B",
                     id="json-last-of-two"),
        pytest.param("application/vnd.api+json", b'{"_token": "A"}', "json", "A",
                     id="json-suffix"),
    ],
)
async def test_finds_the_field_and_leaves_the_body(
        aiohttp_client: ClientFactory, content_type: str, body: bytes, reader: str,
        found: str) -> None:
    client = await aiohttp_client(probe_app())
    response = await client.post(f"/read/{reader}", data=body,
                                 headers={"Content-Type": content_type})
    assert response.status == 200
    assert response.headers["X-Found"] == json.dumps(found)
    assert response.headers["X-Body-Readable"] == "True"
    if reader in ("read", "content"):
        assert await response.read() == body


async def test_chunked_upload_is_left_whole(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(probe_app())
    body = multipart_body(("f", "f.bin", BIG_FILE[:100_000]), ("_token", None, b"A"))
    response = await client.post("/read/read", data=in_pieces(body),
                                 headers={"Content-Type": MULTIPART})
    assert response.headers["X-Found"] == json.dumps("A")
    assert await response.read() == body


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param(MULTIPART, multipart_body(("_token", "t.txt", b"A")), id="token-is-a-file"),
        pytest.param(MULTIPART, raw_part("_token", b"A", "Content-Type: application/octet-stream")
                     + CLOSE, id="token-part-not-text"),
        pytest.param("multipart/form-data", multipart_body(("_token", None, b"A")),
                     id="multipart-no-boundary"),
        pytest.param(MULTIPART, multipart_body(("_token", None, b"A"))[:-30],
                     id="multipart-truncated"),
        pytest.param(MULTIPART, raw_part("_token", b"A", "Content-Type: text/plain; charset=nope")
                     + CLOSE, id="multipart-unknown-charset"),
        pytest.param(MULTIPART, b"not multipart at all", id="multipart-garbage"),
        pytest.param(FORM, b"", id="form-empty"),
        pytest.param(f"{FORM}; charset=nope", b"_token=A", id="form-unknown-charset"),
        pytest.param(FORM, b"_token=A&x=\xff\xfe", id="form-invalid-utf8"),
        pytest.param(JSON, b'["_token", "A"]', id="json-list"),
        pytest.param(JSON, b'{"_token": 1}', id="json-not-a-string"),
        pytest.param(JSON, b'{"_token": "\xff"}', id="json-invalid-utf8"),
        pytest.param(JSON, b"[" * 100_000, id="json-too-deep"),
        pytest.param("text/plain", b"_token=A", id="other-content-type"),
    ],
)
async def test_absent(aiohttp_client: ClientFactory, content_type: str, body: bytes) -> None:
    client = await aiohttp_client(probe_app())
    response = await client.post("/read/content", data=body,
                                 headers={"Content-Type": content_type})
    assert response.status == 200
    assert response.headers["X-Found"] == json.dumps(NotFound.ABSENT.name)
    assert await response.read() == body


async def test_no_body(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(probe_app())
    response = await client.post("/read/read", headers={"Content-Type": FORM})
    assert response.headers["X-Found"] == json.dumps(NotFound.ABSENT.name)
    assert response.headers["X-Body-Readable"] == "False"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param(FORM, b"_token=A&big=" + b"x" * 2000, id="form"),
        pytest.param(JSON, json.dumps({"_token": "A", "big": "x" * 2000}).encode(), id="json"),
    ],
)
async def test_whole_body_over_client_max_size(aiohttp_client: ClientFactory, content_type: str,
                                               body: bytes) -> None:
    client = await aiohttp_client(probe_app(client_max_size=1000))
    response = await client.post("/read/content", data=body,
                                 headers={"Content-Type": content_type})
    assert response.status == 413


def token_reach_body() -> tuple[bytes, int]:
    """A file, the token, a file; and how many bytes complete the token part (to the delimiter
    after it)."""
    body = multipart_body(("a", "a.bin", BIG_FILE[:3000]), ("_token", None, b"A"),
                          ("b", "b.bin", BIG_FILE[:5000]))
    delimiter = f"\r\n--{BOUNDARY}".encode()
    value = body.index(b'name="_token"')
    return body, body.index(delimiter, value) + len(delimiter)


@pytest.mark.parametrize(
    ("slack", "found"),
    [
        pytest.param(0, "A", id="token-part-ends-at-the-limit"),
        pytest.param(-1, NotFound.OUT_OF_REACH.name, id="one-byte-short"),
    ],
)
async def test_multipart_search_stops_at_client_max_size(
        aiohttp_client: ClientFactory, slack: int, found: str) -> None:
    body, reach = token_reach_body()
    client = await aiohttp_client(probe_app(client_max_size=reach + slack))
    response = await client.post("/read/content", data=body, headers={"Content-Type": MULTIPART})
    assert response.headers["X-Found"] == json.dumps(found)
    assert await response.read() == body


def add_gate(app: web.Application) -> asyncio.Event:
    """POST /gated on *app*: sets the event returned, then reads the whole body."""
    started = asyncio.Event()

    async def gated(request: web.Request) -> web.StreamResponse:
        started.set()
        return await echo(via_read)(request)

    app.router.add_post("/gated", gated)
    return started


async def gated_upload(client: Client, started: asyncio.Event, body: bytes,
                       sent_first: int) -> ClientResponse:
    """POST *body* to /gated, sending only its first *sent_first* bytes until the handler
    has started, i.e. until the middleware before it has returned."""

    async def upload() -> AsyncIterator[bytes]:
        yield body[:sent_first]
        # a bound on a deadlock, not on speed: the middleware must pass without the rest
        await asyncio.wait_for(started.wait(), timeout=30)
        async for piece in in_pieces(body[sent_first:], 65536):
            yield piece

    return await client.post("/gated", data=upload(), headers={"Content-Type": MULTIPART})


@pytest.mark.parametrize(
    ("parts", "found"),
    [
        pytest.param([("f", "f.bin", BIG_FILE), ("_token", None, b"A")],
                     NotFound.OUT_OF_REACH.name, id="token-after-the-file"),
        pytest.param([("f", "f.bin", BIG_FILE)], NotFound.OUT_OF_REACH.name, id="no-token"),
    ],
)
async def test_multipart_search_is_bounded_whatever_client_max_size(
        aiohttp_client: ClientFactory, parts: list[Part], found: str) -> None:
    """An app that lets uploads be large (client_max_size 64 MiB) still has a token after a
    file looked for in the first MULTIPART_SEARCH_BYTES only: find_field answers with no
    more of the body than that (and one 64 KiB piece) sent, so what it reads and holds per
    request is bounded. The handler gets the whole body all the same."""
    app = probe_app(client_max_size=64 * 2**20)
    started = add_gate(app)
    client = await aiohttp_client(app)
    body = multipart_body(*parts)
    response = await gated_upload(client, started, body, MULTIPART_SEARCH_BYTES + 65536)
    assert response.status == 200
    assert response.headers["X-Found"] == json.dumps(found)
    assert await response.read() == body


def many_parts(count: int, *, token_at: int | None = None) -> bytes:
    """A multipart body of *count* empty fields, the one at *token_at* (1-based) the token."""
    return multipart_body(*[("_token" if i == token_at else "a", None,
                             b"A" if i == token_at else b"") for i in range(1, count + 1)])


def many_fields(count: int, *, token_at: int | None = None) -> bytes:
    """An urlencoded body of *count* fields, the one at *token_at* (1-based) the token."""
    return "&".join("_token=A" if i == token_at else "a"
                    for i in range(1, count + 1)).encode()


@pytest.mark.parametrize(
    ("content_type", "body", "found"),
    [
        pytest.param(MULTIPART, many_parts(MAX_FIELDS, token_at=MAX_FIELDS), "A",
                     id="multipart-token-is-the-last-part-searched"),
        pytest.param(MULTIPART, many_parts(MAX_FIELDS + 1, token_at=MAX_FIELDS + 1),
                     NotFound.TOO_MANY_FIELDS.name, id="multipart-token-one-part-too-far"),
        pytest.param(MULTIPART, many_parts(10_000), NotFound.TOO_MANY_FIELDS.name,
                     id="multipart-10000-parts-no-token"),
        pytest.param(MULTIPART, many_parts(MAX_FIELDS), NotFound.ABSENT.name,
                     id="multipart-all-parts-searched-no-token"),
        pytest.param(FORM, many_fields(MAX_FIELDS, token_at=MAX_FIELDS), "A",
                     id="form-token-is-the-last-field-searched"),
        pytest.param(FORM, many_fields(MAX_FIELDS + 1, token_at=MAX_FIELDS + 1),
                     NotFound.TOO_MANY_FIELDS.name, id="form-token-one-field-too-far"),
        pytest.param(FORM, b"a&" * 400_000, NotFound.TOO_MANY_FIELDS.name,
                     id="form-400000-fields-no-token"),
    ],
)
async def test_fields_searched_are_counted(aiohttp_client: ClientFactory, content_type: str,
                                           body: bytes, found: str) -> None:
    """Only the first MAX_FIELDS multipart parts or urlencoded fields are parsed: the token
    as field MAX_FIELDS is found, one field later it is not (and no more of the body's
    fields cost anything)."""
    client = await aiohttp_client(probe_app())
    response = await client.post("/read/read", data=io.BytesIO(body),
                                 headers={"Content-Type": content_type})
    assert response.status == 200
    assert response.headers["X-Found"] == json.dumps(found)
    assert await response.read() == body


TOKEN_FIRST: list[Part] = [("_token", None, b"A"), *[("a", None, b"x")] * 20_000]


@pytest.mark.parametrize(
    ("content_type", "body", "reader", "seen"),
    [
        pytest.param(MULTIPART, multipart_body(*TOKEN_FIRST), "multipart",
                     described(TOKEN_FIRST), id="multipart"),
        pytest.param(FORM, b"_token=A" + b"&a=x" * 20_000, "read",
                     b"_token=A" + b"&a=x" * 20_000, id="form"),
    ],
)
async def test_token_first_of_many_fields(aiohttp_client: ClientFactory, content_type: str,
                                          body: bytes, reader: str, seen: bytes) -> None:
    """The token first, 20,000 fields after it: found, and the handler gets every field."""
    client = await aiohttp_client(probe_app())
    response = await client.post(f"/read/{reader}", data=io.BytesIO(body),
                                 headers={"Content-Type": content_type})
    assert response.headers["X-Found"] == json.dumps("A")
    assert await response.read() == seen


async def test_nested_multipart_ends_the_search(aiohttp_client: ClientFactory) -> None:
    """A multipart/mixed part (which post() refuses) is not opened: its inner parts would
    be parsed uncounted. The token after it is not looked for."""
    inner = b"--INNER\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 5000 + b"--INNER--\r\n"
    body = (raw_part("nested", inner, "Content-Type: multipart/mixed; boundary=INNER")
            + raw_part("_token", b"A") + CLOSE)
    client = await aiohttp_client(probe_app())
    response = await client.post("/read/read", data=io.BytesIO(body),
                                 headers={"Content-Type": MULTIPART})
    assert response.headers["X-Found"] == json.dumps(NotFound.ABSENT.name)
    assert await response.read() == body


async def test_token_first_needs_no_more_of_the_upload(aiohttp_client: ClientFactory) -> None:
    """The handler starts while almost all of the file is still unsent.

    aiohttp's part reader reads 8 KiB chunks and looks past each for the boundary, so it
    needs that much after the token's part to finish it; the client sends 16 KiB of the
    file, then waits for the handler.
    """
    started = asyncio.Event()
    app = probe_app()

    async def start(request: web.Request) -> web.StreamResponse:
        started.set()
        return await echo(via_multipart)(request)

    app.router.add_post("/start", start)
    client = await aiohttp_client(app)
    body = multipart_body(("_token", None, b"A"), ("f", "f.bin", BIG_FILE))
    file_starts = body.index(b"\r\n\r\n", body.index(b'filename="f.bin"')) + 4
    head, rest = body[:file_starts + 16 * 1024], body[file_starts + 16 * 1024:]

    async def upload() -> AsyncIterator[bytes]:
        yield head
        # a bound on a deadlock, not on speed: the handler must start without the rest
        await asyncio.wait_for(started.wait(), timeout=30)
        async for piece in in_pieces(rest, 65536):
            yield piece

    response = await client.post("/start", data=upload(), headers={"Content-Type": MULTIPART})
    assert response.headers["X-Found"] == json.dumps("A")
    assert await response.read() == described([("_token", None, b"A"), ("f", "f.bin", BIG_FILE)])


@pytest.mark.parametrize(
    ("content_type", "body", "earlier", "reader", "found"),
    [
        pytest.param(FORM, b"_token=A", via_read, "post", "A", id="form-read"),
        pytest.param(JSON, b'{"_token": "A"}', via_read, "json", "A", id="json-read"),
        pytest.param(MULTIPART, multipart_body(("_token", None, b"A")), via_post, "post", "A",
                     id="multipart-post"),
        pytest.param(MULTIPART, multipart_body(("_token", None, b"A")), via_read, "read", "A",
                     id="multipart-read"),
        pytest.param(MULTIPART, multipart_body(("f", "f.bin", SMALL_FILE), ("_token", None, b"A")),
                     via_read, "read", "A", id="multipart-read-token-last"),
        pytest.param(MULTIPART, multipart_body(("f", "f.bin", BIG_FILE[:1_500_000]),
                                               ("_token", None, b"A")),
                     via_read, "read", NotFound.OUT_OF_REACH.name,
                     id="multipart-read-out-of-reach"),
        pytest.param(MULTIPART, multipart_body(*[("a", None, b"")] * MAX_FIELDS,
                                               ("_token", None, b"A")),
                     via_read, "read", NotFound.TOO_MANY_FIELDS.name,
                     id="multipart-read-too-many-fields"),
        pytest.param(MULTIPART, multipart_body(("_token", None, b"A")), via_content, "read",
                     NotFound.ABSENT.name, id="multipart-streamed"),
        pytest.param(FORM, b"_token=A", via_content, "read", NotFound.ABSENT.name,
                     id="form-streamed"),
    ],
)
async def test_body_consumed_by_an_outer_middleware(
        aiohttp_client: ClientFactory, content_type: str, body: bytes, earlier: Reader,
        reader: str, found: str) -> None:
    """What read() and post() cached still counts, searched within the same limits as a
    streamed body; a body streamed away is gone for all."""
    client = await aiohttp_client(probe_app(client_max_size=4 * 2**20, earlier=earlier))
    response = await client.post(f"/read/{reader}", data=io.BytesIO(body),
                                 headers={"Content-Type": content_type})
    assert response.status == 200
    assert response.headers["X-Found"] == json.dumps(found)


@pytest.mark.parametrize(
    "content_type",
    [pytest.param(MULTIPART, id="multipart"), pytest.param(FORM, id="form")],
)
async def test_client_gone_mid_body(content_type: str) -> None:
    """find_field fails as the handler's own read() would when the client goes away."""

    async def outcome(read: Callable[[web.Request], Awaitable[object]]) -> str:
        seen: list[str] = []
        done = asyncio.Event()

        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                await read(request)
                seen.append("no error")
            except BaseException as exc:
                seen.append(type(exc).__name__)
                raise
            finally:
                done.set()
            return web.Response()

        app = web.Application()
        app.router.add_post("/", handler)
        # the test server cancels handlers on disconnect; aiohttp's default does not
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            _, writer = await asyncio.open_connection(host, port)
            writer.write(f"POST / HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
                         "Content-Length: 100000\r\n\r\n".encode() + multipart_body()[:20])
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            await asyncio.wait_for(done.wait(), 30)  # a bound on a hang, not on speed
        finally:
            await runner.cleanup()
        return seen[0]

    gone = await outcome(lambda request: find_field(request, "_token"))
    assert gone not in ("no error", "CancelledError")
    assert gone == await outcome(lambda request: request.read())
