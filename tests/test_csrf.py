"""CSRF protection through a real server."""

from __future__ import annotations

import asyncio
import functools
import gzip
import io
import json
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import aiohttp.http_parser
import aiohttp.web_protocol
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import Handler, Middleware
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiosessmgr import (
    SessionManager,
    csrf_exempt,
    csrf_middleware,
    csrf_token,
    get_session,
    setup,
)
from aiosessmgr.body import MAX_FIELDS, MULTIPART_SEARCH_BYTES
from aiosessmgr.csrf import mask_token, verify_token

from .test_body import (
    BIG_FILE,
    BOUNDARY,
    FORM,
    JSON,
    MULTIPART,
    SMALL_FILE,
    Part,
    add_readers,
    described,
    echo,
    in_pieces,
    multipart_body,
    via_content,
    via_multipart,
)

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]


def make_app(client_max_size: int = 1024**2) -> web.Application:
    manager = SessionManager({"lottery": (0, 1)})

    async def form(request: web.Request) -> web.Response:
        return web.Response(text=await csrf_token(request))

    async def secret(request: web.Request) -> web.Response:
        return web.Response(text=(await get_session(request)).token)

    async def submit(request: web.Request) -> web.Response:
        return web.Response(text="accepted")

    @csrf_exempt
    async def hook(request: web.Request) -> web.Response:
        return web.Response(text="hooked")

    async def login(request: web.Request) -> web.Response:
        await (await get_session(request)).regenerate()
        return web.Response(text="in")

    async def anything(request: web.Request) -> web.Response:
        return web.Response(text=f"reached by {request.method}")

    app = web.Application(client_max_size=client_max_size)
    app.router.add_get("/form", form)
    app.router.add_get("/secret", secret)
    app.router.add_post("/submit", submit)
    app.router.add_put("/submit", submit)
    app.router.add_post("/hook", hook)
    app.router.add_post("/webhooks/github", submit)
    app.router.add_post("/login", login)
    app.router.add_route("*", "/any", anything)
    add_readers(app)
    setup(app, manager)
    app.middlewares.append(csrf_middleware(
        manager, exempt=["/webhooks/*"], trusted_origins=["https://app.example"]))
    return app


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> Client:
    client = await aiohttp_client(make_app())
    await client.get("/form")  # the visitor got a page with a form: session + secret exist
    return client


async def token(client: Client) -> str:
    return await (await client.get("/form")).text()


async def test_masked_tokens_differ_per_response_and_all_verify(client: Client) -> None:
    secret = await (await client.get("/secret")).text()
    tokens = {await token(client) for _ in range(5)}
    assert len(tokens) == 5
    assert all(verify_token(secret, t) for t in tokens)
    assert not verify_token(secret, mask_token("another-secret-value-entirely-xx"))


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        pytest.param({}, 403, "CSRF token missing", id="missing"),
        pytest.param({"headers": {"X-CSRF-Token": "wrong"}}, 403, "CSRF token mismatch",
                     id="wrong"),
        pytest.param({"headers": {"X-CSRF-Token": mask_token("A" * 43)}}, 403,
                     "CSRF token mismatch", id="masked-other-secret"),
        pytest.param({"headers": {"X-CSRF-Token": "GOOD", "Sec-Fetch-Site": "cross-site"}},
                     403, "cross-site", id="cross-site"),
        pytest.param({"headers": {"X-CSRF-Token": "GOOD", "Origin": "https://evil.example"}},
                     403, "origin is not allowed", id="foreign-origin"),
        pytest.param({"headers": {"X-CSRF-Token": "GOOD", "Origin": "https://app.example"}},
                     200, "accepted", id="trusted-origin"),
        pytest.param({"headers": {"X-CSRF-Token": "GOOD", "Sec-Fetch-Site": "same-origin"}},
                     200, "accepted", id="masked-valid-header"),
        pytest.param({"headers": {"X-CSRF-Token": "SECRET"}}, 200, "accepted",
                     id="unmasked-valid"),
        pytest.param({"data": {"_token": "GOOD", "name": "x"}}, 200, "accepted",
                     id="form-field"),
        pytest.param({"json": {"_token": "GOOD"}}, 200, "accepted", id="json-body"),
        pytest.param({"json": ["not", "a", "mapping"]}, 403, "missing", id="json-list"),
        pytest.param({"data": b"{broken json", "headers": {"Content-Type": "application/json"}},
                     403, "missing", id="json-broken"),
    ],
)
async def test_submissions(client: Client, kwargs: dict[str, Any], status: int,
                           reason: str) -> None:
    good = await token(client)
    secret = await (await client.get("/secret")).text()

    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return {"GOOD": good, "SECRET": secret}.get(value, value) if isinstance(value,
                                                                                str) else value

    response = await client.post("/submit", **fill(kwargs))
    assert response.status == status
    assert reason in await response.text()


async def test_own_origin_is_allowed(client: Client) -> None:
    own = str(client.make_url("/")).rstrip("/")
    response = await client.put("/submit", headers={"X-CSRF-Token": await token(client),
                                                    "Origin": own})
    assert response.status == 200


async def test_exempt_routes(client: Client) -> None:
    assert await (await client.post("/hook")).text() == "hooked"
    assert await (await client.post("/webhooks/github")).text() == "accepted"
    assert (await client.post("/submit")).status == 403  # the same request, not exempt


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE"])
async def test_safe_methods_are_not_checked(client: Client, method: str) -> None:
    """The safe methods of RFC 9110, section 9.2.1, and only they, need no token."""
    response = await client.request(method, "/any", headers={
        "Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"})
    assert response.status == 200
    assert await response.text() == ("" if method == "HEAD" else f"reached by {method}")


#: methods aiohttp's parsers accept that are not safe: WebDAV (RFC 4918, 3253, 3744, 4791,
#: 5323, 5842), cache purging, UPnP, RFC 2068's LINK, Icecast's SOURCE, the QUERY draft and the
#: usual four
UNSAFE_METHODS = [
    "POST", "PUT", "PATCH", "DELETE",
    "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH",
    "MKCALENDAR", "ACL", "BIND", "REBIND", "UNBIND", "MERGE", "CHECKOUT", "MKACTIVITY",
    "PURGE", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "M-SEARCH", "LINK", "UNLINK", "QUERY",
    "SOURCE",
]


@pytest.mark.parametrize("method", UNSAFE_METHODS)
async def test_unsafe_methods_need_the_token(client: Client, method: str) -> None:
    response = await client.request(method, "/any")
    assert response.status == 403
    assert await response.text() == "403: CSRF token missing"
    response = await client.request(method, "/any", headers={"X-CSRF-Token": await token(client)})
    assert response.status == 200
    # aiohttp 3.14.0's C parser names QUERY "<unknown>": refused all the same, no list needed
    assert await response.text() in (f"reached by {method}", "reached by <unknown>")


@pytest.mark.parametrize("sent", ["BREW", "X-CUSTOM", "brew", "propfind"])
async def test_methods_nobody_listed_need_the_token(
        aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch, sent: str) -> None:
    """Any method at all, served by aiohttp's pure-Python parser (AIOHTTP_NO_EXTENSIONS=1,
    PyPy), which accepts every token as a method and upper-cases it; the C parser answers
    400 to a method it does not know before any middleware runs."""
    monkeypatch.setattr(aiohttp.web_protocol, "HttpRequestParser",
                        aiohttp.http_parser.HttpRequestParserPy)
    client = await aiohttp_client(make_app())
    good = await token(client)
    response = await client.request(sent, "/any")
    assert response.status == 403
    assert await response.text() == "403: CSRF token missing"
    response = await client.request(sent, "/any", headers={"X-CSRF-Token": good})
    assert response.status == 200
    assert await response.text() == f"reached by {sent.upper()}"


async def test_no_session_means_no_valid_token(aiohttp_client: ClientFactory) -> None:
    fresh = await aiohttp_client(make_app())
    forged = mask_token("A" * 43)
    response = await fresh.post("/submit", headers={"X-CSRF-Token": forged})
    assert response.status == 403 and "CSRF token mismatch" in await response.text()


async def test_token_rotates_on_login(client: Client) -> None:
    before = await token(client)
    login = await client.post("/login", headers={"X-CSRF-Token": before})
    assert login.status == 200
    response = await client.post("/submit", headers={"X-CSRF-Token": before})
    assert response.status == 403 and "CSRF token mismatch" in await response.text()
    response = await client.post("/submit", headers={"X-CSRF-Token": await token(client)})
    assert response.status == 200 and await response.text() == "accepted"


#: a body as sent, and what a handler reading it each way answers
Sent = tuple[str, bytes, dict[str, bytes]]


def multipart_sent(parts: list[Part]) -> Sent:
    body = multipart_body(*parts)
    fields = described(parts)
    return MULTIPART, body, {"multipart": fields, "post": fields, "read": body, "content": body}


def form_sent(good: str) -> Sent:
    pairs = [("name", "x y"), ("_token", good), ("note", "é")]
    body = urlencode(pairs).encode()
    fields = described([(name, None, value.encode()) for name, value in pairs])
    return FORM, body, {"post": fields, "read": body, "text": body, "content": body}


def json_sent(good: str) -> Sent:
    document = {"name": "x", "nested": {"a": [1, 2]}, "_token": good}
    body = json.dumps(document, indent=1).encode()
    return JSON, body, {"json": json.dumps(document).encode(), "read": body, "text": body,
                        "content": body}


BODIES: dict[str, Callable[[str], Sent]] = {
    "multipart": lambda good: multipart_sent([
        ("_token", None, good.encode()), ("note", None, b"hello"), ("upload", "u.bin", SMALL_FILE),
    ]),
    "multipart-token-last": lambda good: multipart_sent([
        ("upload", "u.bin", SMALL_FILE), ("_token", None, good.encode()),
    ]),
    "form": form_sent,
    "json": json_sent,
}


@pytest.mark.parametrize(
    ("kind", "reader", "chunked"),
    [
        *(pytest.param("multipart", reader, False, id=f"multipart-{reader}")
          for reader in ("multipart", "post", "read", "content")),
        *(pytest.param("multipart-token-last", reader, False, id=f"multipart-token-last-{reader}")
          for reader in ("multipart", "read")),
        *(pytest.param("multipart", reader, True, id=f"multipart-chunked-{reader}")
          for reader in ("multipart", "read")),
        *(pytest.param("form", reader, False, id=f"form-{reader}")
          for reader in ("post", "read", "text", "content")),
        *(pytest.param("json", reader, False, id=f"json-{reader}")
          for reader in ("json", "read", "text", "content")),
    ],
)
async def test_handler_gets_the_whole_body(client: Client, kind: str, reader: str,
                                           chunked: bool) -> None:
    content_type, body, answers = BODIES[kind](await token(client))
    response = await client.post(f"/read/{reader}", data=in_pieces(body) if chunked else body,
                                 headers={"Content-Type": content_type})
    assert response.status == 200, await response.text()
    assert response.headers["X-Body-Readable"] == "True"
    assert await response.read() == answers[reader]


async def test_streamed_upload_over_client_max_size(client: Client) -> None:
    """The token comes first: the 2 MiB file streams to the handler, never buffered by us."""
    parts: list[Part] = [("_token", None, (await token(client)).encode()),
                         ("upload", "big.bin", BIG_FILE)]
    response = await client.post("/read/multipart", data=io.BytesIO(multipart_body(*parts)),
                                 headers={"Content-Type": MULTIPART})
    assert response.status == 200, await response.text()
    assert await response.read() == described(parts)


async def test_post_handler_keeps_its_own_size_limit(client: Client) -> None:
    parts: list[Part] = [("_token", None, (await token(client)).encode()),
                         ("upload", "big.bin", BIG_FILE)]
    response = await client.post("/read/post", data=io.BytesIO(multipart_body(*parts)),
                                 headers={"Content-Type": MULTIPART})
    assert response.status == 413


async def test_token_after_a_big_file_is_refused_with_advice(client: Client) -> None:
    parts: list[Part] = [("upload", "big.bin", BIG_FILE),
                         ("_token", None, (await token(client)).encode())]
    response = await client.post("/read/multipart", data=io.BytesIO(multipart_body(*parts)),
                                 headers={"Content-Type": MULTIPART})
    assert response.status == 403
    reason = await response.text()
    assert "X-CSRF-Token header" in reason
    assert "before any file field" in reason


@pytest.mark.parametrize(
    ("content_type", "big"),
    [
        pytest.param(FORM, lambda good: urlencode({"_token": good, "big": "x" * 2**20}),
                     id="form"),
        pytest.param(JSON, lambda good: json.dumps({"_token": good, "big": "x" * 2**20}),
                     id="json"),
    ],
)
async def test_whole_body_over_client_max_size(client: Client, content_type: str,
                                               big: Callable[[str], str]) -> None:
    body = big(await token(client)).encode()
    response = await client.post("/read/content", data=io.BytesIO(body),
                                 headers={"Content-Type": content_type})
    assert response.status == 413


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param("multipart/form-data", multipart_body(("_token", None, b"GOOD")),
                     id="multipart-no-boundary"),
        pytest.param(f"{FORM}; charset=no-such-charset", b"_token=GOOD", id="unknown-charset"),
        pytest.param(FORM, b"_token=GOOD&name=\xff\xfe", id="form-invalid-utf8"),
        pytest.param(JSON, b"[" * 100_000, id="json-too-deep"),
        pytest.param(FORM, b"\x1f\x8b\x08\x00 _token=GOOD not gzip", id="form-corrupt-gzip"),
        pytest.param(JSON, b"\x1f\x8b\x08\x00 not gzip", id="json-corrupt-gzip"),
        pytest.param(f"{MULTIPART}; boundary=BB", b"\x1f\x8b\x08\x00 not gzip",
                     id="multipart-corrupt-gzip"),
        pytest.param(FORM, b"_token=GOOD not deflate", id="form-corrupt-deflate"),
    ],
)
async def test_malformed_body_is_a_missing_token(
        client: Client, caplog: pytest.LogCaptureFixture, content_type: str,
        body: bytes, request: pytest.FixtureRequest) -> None:
    good = (await token(client)).encode()
    headers = {"Content-Type": content_type}
    case = request.node.callspec.id
    if "corrupt" in case:  # a body that does not decode as its Content-Encoding says
        headers["Content-Encoding"] = "deflate" if "deflate" in case else "gzip"
    with caplog.at_level(logging.WARNING):
        response = await client.post("/read/read", data=body.replace(b"GOOD", good),
                                     headers=headers)
    assert response.status == 403
    assert "CSRF token missing" in await response.text()
    assert [r for r in caplog.records if r.name.startswith("aiosessmgr")] == []
    if "corrupt" not in request.node.callspec.id:
        assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    # (a body that does not decode is logged by aiohttp itself when it reads the rest of
    # it after the response, with or without this middleware, as for any handler that
    # does not read it)


@pytest.mark.parametrize(
    ("content_type", "body", "reader", "seen"),
    [
        pytest.param(MULTIPART, multipart_body(("upload", "big.bin", BIG_FILE)), via_multipart,
                     described([("upload", "big.bin", BIG_FILE)]), id="multipart"),
        pytest.param(FORM, b"big=" + BIG_FILE.hex().encode(), via_content,
                     b"big=" + BIG_FILE.hex().encode(), id="form"),
    ],
)
async def test_header_token_leaves_the_body_alone(
        aiohttp_client: ClientFactory, content_type: str, body: bytes,
        reader: Callable[[web.Request], Awaitable[bytes]], seen: bytes) -> None:
    """The handler starts before the body is sent, and streams more than client_max_size."""
    started = asyncio.Event()
    app = make_app()

    async def gated(request: web.Request) -> web.StreamResponse:
        started.set()
        return await echo(reader)(request)

    app.router.add_post("/gated", gated)
    client = await aiohttp_client(app)

    async def upload() -> AsyncIterator[bytes]:
        yield body[:10]  # aiohttp's client sends the request head with the first chunk
        # a bound on a deadlock, not on speed: the handler must start without the body
        await asyncio.wait_for(started.wait(), timeout=30)
        async for piece in in_pieces(body[10:], 65536):
            yield piece

    response = await client.post("/gated", data=upload(), headers={
        "Content-Type": content_type, "X-CSRF-Token": await token(client)})
    assert response.status == 200, await response.text()
    assert await response.read() == seen


async def raw(client: Client, head: str, body: bytes = b"") -> tuple[int, str, str]:
    """Send *head* (request line and headers) and *body* to *client*'s server byte for byte,
    as no client library would (they requote targets and drop dot segments); the status,
    Location and body of the answer."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(f"{head}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head_bytes, _, content = answer.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers.get("Location", ""), content.decode()


async def session_cookie(host: str, port: int) -> str:
    """The ``name=value`` of the session cookie a GET /form on a raw connection sets."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET /form HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        await writer.drain()
        head = (await reader.read()).partition(b"\r\n\r\n")[0].decode("latin-1")
    finally:
        writer.close()
        await writer.wait_closed()
    return next(line.split(": ", 1)[1].split(";")[0] for line in head.split("\r\n")
                if line.lower().startswith("set-cookie: aiosessmgr_session="))


def exempt_app(*outer: Middleware, catch_all: bool = True) -> web.Application:
    """The issue's app: ``exempt=["/hooks/*", "/webhooks/**"]`` and ``POST
    /{lang}/account/email``, with routes for the hooks and (optionally) a catch-all, each
    answering its name and what the router matched."""
    manager = SessionManager({"lottery": (0, 1)})

    def answer(name: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(text=f"{name} {json.dumps(dict(request.match_info))}")
        return handler

    app = web.Application(middlewares=outer)
    app.router.add_post("/{lang}/account/email", answer("account"))
    app.router.add_post("/hooks/{name}", answer("hook"))
    app.router.add_post("/webhooks/{provider}/{event}", answer("webhook"))
    if catch_all:
        app.router.add_post("/{tail:.*}", answer("caught"))
    setup(app, manager)
    app.middlewares.append(csrf_middleware(manager, exempt=["/hooks/*", "/webhooks/**"]))
    return app


#: what a foreign, token-less POST to a request target gets: the exempt handler it reached
#: (and what the router matched), or None for a 403
EXEMPTION_CASES = [
    pytest.param("/hooks/x", 'hook {"name": "x"}', id="exempt"),
    pytest.param("/%68ooks/x", 'hook {"name": "x"}', id="encoded-letter-is-the-same-path"),
    pytest.param("/hooks/x;v=1", 'hook {"name": "x;v=1"}', id="params-are-in-the-segment"),
    pytest.param("/webhooks/github/push", 'webhook {"provider": "github", "event": "push"}',
                 id="double-star"),
    pytest.param("/webhooks/github/push/x", None, id="double-star-not-onto-a-catch-all"),
    pytest.param("/hooks%2Fx/account/email", None, id="encoded-slash"),
    pytest.param("/hooks%2fx/account/email", None, id="encoded-slash-lowercase"),
    pytest.param("/hooks%252Fx/account/email", None, id="double-encoded-slash"),
    pytest.param("/hooks/a%2Fb", None, id="encoded-slash-within-the-match"),
    pytest.param("/webhooks/a%2F..%2F..%2Faccount/email", None,
                 id="encoded-slash-under-double-star"),
    pytest.param("/hooks%5Cx/account/email", None, id="encoded-backslash"),
    pytest.param("/hooks/../account/email", None, id="dot-dot"),
    pytest.param("/hooks/%2e%2e/account/email", None, id="encoded-dot-dot"),
    pytest.param("/hooks/%2E%2E/account/email", None, id="encoded-dot-dot-uppercase"),
    pytest.param("/webhooks/x/../../account/email", None, id="dot-dot-under-double-star"),
    pytest.param("/hooks/./x", None, id="dot"),
    pytest.param("/hooks//x", None, id="empty-segment"),
    pytest.param("//hooks/x", None, id="leading-double-slash"),
    pytest.param("/hooks/x/", None, id="trailing-slash"),
    pytest.param("/hooks/", None, id="star-needs-a-segment"),
    pytest.param("/hooks/x/account/email", None, id="star-is-one-segment"),
    pytest.param("/HOOKS/x", None, id="case"),
    pytest.param("/hooksX", None, id="prefix"),
]


async def foreign_post(client: Client, target: str, reached: str | None,
                       host: str = "test") -> None:
    """A token-less POST of *target* from a foreign origin: refused, or (if *reached* is
    the text the exempt handler answers) let through to that handler."""
    status, _, text = await raw(client, f"POST {target} HTTP/1.1\r\nHost: {host}\r\n"
                                        "Origin: https://evil.example\r\nContent-Length: 0")
    if reached is None:
        assert (status, text) == (403, "403: request origin is not allowed")
    else:
        assert (status, text) == (200, reached)


@pytest.mark.parametrize(("target", "reached"), EXEMPTION_CASES)
async def test_exemption_follows_the_router(aiohttp_client: ClientFactory, target: str,
                                            reached: str | None) -> None:
    """An exempt pattern is matched on the path the router matched, never on a decoded one
    in which ``/hooks%2Fx/account/email`` looks like a hook."""
    client = await aiohttp_client(exempt_app())
    await foreign_post(client, target, reached)


@pytest.mark.parametrize(
    ("target", "redirect", "reached"),
    [
        pytest.param("//hooks/x", "/hooks/x", 'hook {"name": "x"}', id="hook"),
        pytest.param("/hooks%2Fx//account/email", "/hooks%2Fx/account/email", None,
                     id="encoded-slash"),
    ],
)
async def test_exemption_behind_normalize_path_middleware(
        aiohttp_client: ClientFactory, target: str, redirect: str, reached: str | None) -> None:
    """aiohttp's normalize_path_middleware redirects (308) to the merged path, which is then
    checked as any request is."""
    app = exempt_app(web.normalize_path_middleware(merge_slashes=True, append_slash=True),
                     catch_all=False)
    client = await aiohttp_client(app)
    head = "HTTP/1.1\r\nHost: test\r\nOrigin: https://evil.example\r\nContent-Length: 0"
    assert (await raw(client, f"POST {target} {head}"))[:2] == (308, redirect)
    status, _, text = await raw(client, f"POST {redirect} {head}")
    if reached is None:
        assert (status, text) == (403, "403: request origin is not allowed")
    else:
        assert (status, text) == (200, reached)


def test_exempt_patterns_are_absolute_paths() -> None:
    with pytest.raises(ValueError, match="'hooks/\\*' must start with '/'"):
        csrf_middleware(exempt=["hooks/*"])


@pytest.mark.parametrize(
    ("content_type", "sent"),
    [
        pytest.param(FORM, b"name=x&_tok", id="form"),
        pytest.param(JSON, b'{"name": "x", "_tok', id="json"),
        pytest.param(MULTIPART, multipart_body(("name", None, b"x"))[:60], id="multipart"),
    ],
)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_body_cut_short_is_a_missing_token(
        caplog: pytest.LogCaptureFixture, content_type: str, sent: bytes, framing: str) -> None:
    """A client that sends less than its Content-Length (or than its chunks) and goes away:
    403, one access-log line, no traceback. A real server without handler cancellation
    (aiohttp's default; the test server cancels handlers on disconnect)."""
    answers: list[str] = []
    done = asyncio.Event()

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            answers.append(f"{exc.status} {exc.text}")
            raise
        except BaseException as exc:
            answers.append(type(exc).__name__)
            raise
        else:
            answers.append(f"{response.status} reached the handler")
        finally:
            done.set()
        return response

    async def form(request: web.Request) -> web.Response:
        return web.Response(text=await csrf_token(request))

    manager = SessionManager({"lottery": (0, 1)})
    app = web.Application(middlewares=[record])
    add_readers(app)
    app.router.add_get("/form", form)
    setup(app, manager)
    app.middlewares.append(csrf_middleware(manager))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        cookie = await session_cookie(host, port)  # a new session's body is not read at all
        answers.clear()
        done.clear()
        if framing == "chunked":
            framed = b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % 1000 + sent
        else:
            framed = b"Content-Length: 100000\r\n\r\n" + sent
        with caplog.at_level(logging.INFO):
            _, writer = await asyncio.open_connection(host, port)
            writer.write(f"POST /read/read HTTP/1.1\r\nHost: test\r\nCookie: {cookie}\r\n"
                         f"Content-Type: {content_type}\r\n".encode() + framed)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            await asyncio.wait_for(done.wait(), 30)  # a bound on a hang, not on speed
    finally:
        await runner.cleanup()
    assert answers == ["403 403: CSRF token missing"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [r for r in caplog.records if r.exc_info] == []


def compressed(encoding: str, body: bytes) -> bytes:
    return gzip.compress(body) if encoding == "gzip" else zlib.compress(body)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize(
    ("kind", "reader"),
    [*(pytest.param("form", reader, id=f"form-{reader}") for reader in ("post", "read")),
     *(pytest.param("json", reader, id=f"json-{reader}") for reader in ("json", "content"))],
)
async def test_handler_gets_a_compressed_body_whole(client: Client, encoding: str, kind: str,
                                                    reader: str) -> None:
    """The token found in a gzip or deflate body: the handler still reads it all, decoded."""
    content_type, body, answers = BODIES[kind](await token(client))
    response = await client.post(f"/read/{reader}", data=compressed(encoding, body),
                                 headers={"Content-Type": content_type,
                                          "Content-Encoding": encoding})
    assert response.status == 200, await response.text()
    assert await response.read() == answers[reader]


class Garbler:
    """The CSRF app on a real server with a visitor who holds a session, on a loop of its
    own: hypothesis runs many examples in one test, and each is one request."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

        async def start() -> Client:
            client = TestClient(TestServer(make_app()))
            await client.start_server()
            await client.get("/form")
            return client

        self.client = self.loop.run_until_complete(start())

    def post(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        async def go() -> tuple[int, str]:
            response = await self.client.post("/any", data=body, headers=headers)
            return response.status, await response.text()

        return self.loop.run_until_complete(go())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture(scope="module")
def garbler() -> Iterator[Garbler]:
    harness = Garbler()
    yield harness
    harness.close()


#: well-formed bodies of every kind the middleware parses, to be cut and spliced
SEEDS = [
    urlencode({"name": "x", "note": "é", "_token_": "no"}).encode(),
    json.dumps({"name": "x", "nested": {"a": [1, 2.5, None]}, "_tok": "no"}).encode(),
    multipart_body(("name", None, b"x"), ("f", "f.bin", SMALL_FILE)),
    multipart_body(("_token", "t.txt", b"a file, not a field")),
    b"[" * 5000,  # past the json module's recursion limit
    b'{"a": ' + b"9" * 5000 + b"}",  # past int()'s 4300 digits
]
CONTENT_TYPES = [FORM, JSON, "application/vnd.api+json", MULTIPART, "multipart/form-data",
                 "multipart/form-data; boundary=", 'multipart/form-data; boundary="a b"',
                 f"multipart/mixed; boundary={BOUNDARY}", "text/plain", "application/x"]
CHARSETS = ["utf-8", "latin-1", "utf-16", "utf-32", "cp1252", "nope", "rot13", "idna",
            "punycode", "unicode_escape", "base64", "undefined", ""]
HEADER_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                    exclude_characters='"\\;'), max_size=12)


@st.composite
def garbled_bodies(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(st.one_of(st.sampled_from(SEEDS), st.binary(max_size=2000))))
    for _ in range(draw(st.integers(0, 4))):
        start = draw(st.integers(0, len(body)))
        end = draw(st.integers(start, min(len(body), start + 64)))
        body[start:end] = draw(st.one_of(
            st.binary(max_size=16), st.sampled_from([b"\r\n", b"\r\n\r\n", f"--{BOUNDARY}".encode(),
                                                     b"\xff\xfe", b"%", b"%ff", b"\\ud800"])))
    return bytes(body[:draw(st.integers(0, len(body)))])


@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(body=garbled_bodies(), content_type=st.sampled_from(CONTENT_TYPES),
       charset=st.one_of(st.none(), st.sampled_from(CHARSETS), HEADER_TEXT),
       encoding=st.sampled_from([None, "gzip", "deflate"]))
def test_garbled_bodies_without_a_token_are_403(
        garbler: Garbler, caplog: pytest.LogCaptureFixture, body: bytes, content_type: str,
        charset: str | None, encoding: str | None) -> None:
    """Whatever the body, its type and charset, plain or compressed: 403 with a reason, the
    handler never reached, no 5xx, and nothing logged at WARNING or above.

    (A body that does not decode as its Content-Encoding says is not generated: aiohttp
    3.14.5 answers it 400 itself, or logs it after the response, or past one read's worth
    of it never answers at all, with or without any middleware. The cases that it answers
    are in test_malformed_body_is_a_missing_token.)
    """
    caplog.clear()
    headers = {"Content-Type": content_type + (f"; charset={charset}" if charset is not None
                                               else "")}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
        body = compressed(encoding, body)
    with caplog.at_level(logging.WARNING):
        status, text = garbler.post(headers, body)
    assert status == 403, text
    assert text in ("403: CSRF token missing", "403: CSRF token mismatch")
    assert [r.getMessage() for r in caplog.records] == []


def route_app(exempt: list[str]) -> web.Application:
    """Plain, variable and catch-all routes, a sub-app under ``/hooks/sub`` and a domain
    sub-app, each handler answering its name; ``exempt`` patterns as given."""
    manager = SessionManager({"lottery": (0, 1)})

    def answer(name: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(text=name)
        return handler

    app = web.Application()
    for path, name in [("/hooks/payment", "payment"), ("/api/{name}", "api"),
                       ("/files/{tail:.*}", "files"), ("/{lang}/account/email", "account"),
                       ("/{lang}/{page}", "langpage")]:
        app.router.add_post(path, answer(name))
    sub = web.Application()
    sub.router.add_post("/x", answer("sub-x"))
    sub.router.add_post("/{any:.*}", answer("sub-any"))
    app.add_subapp("/hooks/sub/", sub)
    admin = web.Application()
    admin.router.add_post("/hooks/{name}", answer("admin-hook"))
    admin.router.add_post("/own-auth", csrf_exempt(answer("admin-own-auth")))
    app.add_domain("admin.example", admin)
    setup(app, manager)
    app.middlewares.append(csrf_middleware(manager, exempt=exempt))
    return app


@pytest.mark.parametrize(
    ("exempt", "target", "reached"),
    [
        # the findings: a pattern exempted whatever route the path reached
        pytest.param("/hooks/**", "/hooks/account/email", None, id="double-star-onto-a-variable"),
        pytest.param("/hooks/*", "/hooks/account", None, id="star-onto-a-variable"),
        pytest.param("/api/n*", "/api/name", None, id="partial-glob-onto-a-variable"),
        pytest.param("/nowhere/**", "/nowhere/a/b", None, id="no-route-404"),
        # a pattern the route is under
        pytest.param("/hooks/*", "/hooks/payment", "payment", id="literal-route"),
        pytest.param("/*/account/email", "/hooks/account/email", "account",
                     id="star-covers-the-variable"),
        pytest.param("/api/*", "/api/name", "api", id="star-covers-a-variable-route"),
        pytest.param("/files/**", "/files/a/b", "files", id="double-star-covers-a-tail"),
        pytest.param("/files/*", "/files/a/b", None, id="the-path-must-match-too"),
        pytest.param("/hooks/**", "/hooks/sub/x", "sub-x", id="sub-app-prefix-included"),
        pytest.param("/hooks/sub/x", "/hooks/sub/x", "sub-x", id="sub-app-route-literally"),
        pytest.param("/hooks/**", "/hooks/sub/a/b", "sub-any", id="sub-app-variable-route"),
        pytest.param("/hooks/sub/*", "/hooks/sub/a", "sub-any", id="sub-app-star-on-variable"),
    ],
)
async def test_pattern_exempts_only_routes_under_it(
        aiohttp_client: ClientFactory, exempt: str, target: str, reached: str | None) -> None:
    """A foreign, token-less POST passes a pattern only if the route the router matched is
    under it too: a ``{variable}`` segment only under ``*`` or ``**``."""
    client = await aiohttp_client(route_app([exempt]))
    await foreign_post(client, target, reached)


@pytest.mark.parametrize(
    ("host", "target", "reached"),
    [
        pytest.param("admin.example", "/hooks/x", None, id="domain-route-under-the-pattern"),
        pytest.param("admin.example", "/own-auth", "admin-own-auth", id="domain-csrf-exempt"),
        pytest.param("test", "/hooks/payment", "payment", id="main-app-still-exempt"),
    ],
)
async def test_patterns_never_exempt_a_domain_sub_app(
        aiohttp_client: ClientFactory, host: str, target: str, reached: str | None) -> None:
    """``exempt=["/hooks/*"]`` does not reach the routes of an ``add_domain()`` sub-app (a
    path pattern names no host); ``@csrf_exempt`` there does."""
    client = await aiohttp_client(route_app(["/hooks/*"]))
    await foreign_post(client, target, reached, host)


class ExemptView(web.View):
    async def post(self) -> web.StreamResponse:
        return web.Response(text="exempt view")


csrf_exempt(ExemptView)


class SubclassOfExemptView(ExemptView):
    """Not marked itself."""

    async def post(self) -> web.StreamResponse:
        return web.Response(text="subclass")


class MethodExemptView(web.View):
    @csrf_exempt
    async def post(self) -> web.StreamResponse:
        return web.Response(text="exempt method")

    async def put(self) -> web.StreamResponse:
        return web.Response(text="unmarked method")


class InheritsExemptMethod(MethodExemptView):
    """Serves POST with its base's exempt post(), which it did not mark."""


class Proxy:
    """A handler object delegating attribute access, as RPC dispatchers do."""

    def __init__(self, target: Handler) -> None:
        self._target = target

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        return await self._target(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name, lambda *args: None)


class Handlers:
    @csrf_exempt
    async def hook(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="bound method")


def marker_app() -> web.Application:
    manager = SessionManager({"lottery": (0, 1)})

    async def plain(request: web.Request) -> web.StreamResponse:
        return web.Response(text="plain")

    async def truthy(request: web.Request) -> web.StreamResponse:
        return web.Response(text="truthy attribute")

    setattr(truthy, "__aiosessmgr_csrf_exempt__", True)  # noqa: B010 - not csrf_exempt()'s
    app = web.Application()
    app.router.add_view("/exempt-view", ExemptView)
    app.router.add_view("/subclass", SubclassOfExemptView)
    app.router.add_view("/method", MethodExemptView)
    app.router.add_view("/inherits", InheritsExemptMethod)
    app.router.add_post("/proxy", Proxy(plain))
    app.router.add_post("/truthy", truthy)
    app.router.add_post("/partial", csrf_exempt(functools.partial(plain)))
    app.router.add_post("/bound", Handlers().hook)
    setup(app, manager)
    app.middlewares.append(csrf_middleware(manager))
    return app


@pytest.mark.parametrize(
    ("method", "path", "reached"),
    [
        pytest.param("POST", "/exempt-view", "exempt view", id="marked-view"),
        pytest.param("POST", "/subclass", None, id="subclass-of-a-marked-view"),
        pytest.param("POST", "/method", "exempt method", id="marked-view-method"),
        pytest.param("PUT", "/method", None, id="unmarked-method-of-the-view"),
        pytest.param("POST", "/inherits", None, id="inherited-marked-method"),
        pytest.param("POST", "/proxy", None, id="getattr-answers-anything"),
        pytest.param("POST", "/truthy", None, id="truthy-attribute-not-the-marker"),
        pytest.param("POST", "/partial", "plain", id="marked-partial"),
        pytest.param("POST", "/bound", "bound method", id="bound-method-of-a-marked-function"),
    ],
)
async def test_csrf_exempt_marks_only_what_it_was_put_on(
        aiohttp_client: ClientFactory, method: str, path: str, reached: str | None) -> None:
    """The mark is looked up on the handler itself (its own ``__dict__``), for the exact
    value csrf_exempt() puts there: never inherited, never a ``__getattr__``'s answer."""
    client = await aiohttp_client(marker_app())
    response = await client.request(method, path, headers={"Origin": "https://evil.example"})
    if reached is None:
        assert (response.status, await response.text()) == (
            403, "403: request origin is not allowed")
    else:
        assert (response.status, await response.text()) == (200, reached)


def test_csrf_exempt_refuses_a_bound_method() -> None:
    with pytest.raises(TypeError, match="decorate the function in the class body"):
        csrf_exempt(Handlers().hook)


async def raw_answer(client: Client, head: bytes, sent: bytes) -> tuple[int, str, bool]:
    """Send *head* and the first bytes of a body, *sent*, and wait for the answer without
    sending more: its status, body and whether it sets a cookie. Fails if no answer comes
    (a bound on a hang, not on speed): the server waits for the rest of the body."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head + sent)
        await writer.drain()
        head_bytes = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
        lines = head_bytes.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        text = await reader.readexactly(int(headers["Content-Length"]))
    finally:
        writer.close()
    return (int(lines[0].split()[1]), text.decode(),
            any(name.lower() == "set-cookie" for name in headers))


def upload_head(path: str, size: int, cookie: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {MULTIPART}\r\n"
            f"Content-Length: {size}\r\n{cookie}\r\n").encode()


@pytest.mark.parametrize("cookie", [
    pytest.param("", id="no-cookie"),
    pytest.param("Cookie: aiosessmgr_session=" + "A" * 43 + "\r\n", id="no-such-session"),
])
async def test_new_session_is_refused_before_the_body(aiohttp_client: ClientFactory,
                                                      cookie: str) -> None:
    """No session, no secret, no token can match: 403 with 1 KiB of a 4 MiB upload sent
    (and none of it read), no session made for it."""
    client = await aiohttp_client(make_app())
    body = multipart_body(("upload", "big.bin", BIG_FILE + BIG_FILE))
    status, text, sets_cookie = await raw_answer(client, upload_head("/read/multipart",
                                                                     len(body), cookie),
                                                 body[:1024])
    assert status == 403
    assert text == ("403: CSRF token mismatch: the session is new (no cookie, or it expired)"
                    " and holds no token")
    assert not sets_cookie


async def test_a_session_without_a_token_is_refused_before_the_body(
        aiohttp_client: ClientFactory) -> None:
    """A stored session that never made a token cannot match one either: 403 with 1 KiB
    of a 4 MiB upload sent, and no token made for it."""
    app = make_app()

    async def remember(request: web.Request) -> web.Response:
        (await get_session(request))["seen"] = True  # stored, no token asked for
        return web.Response(text="ok")

    app.router.add_get("/remember", remember)
    client = await aiohttp_client(app)
    await client.get("/remember")
    cookie = "".join(f"Cookie: {c.key}={c.value}\r\n" for c in client.session.cookie_jar)
    assert cookie
    body = multipart_body(("upload", "big.bin", BIG_FILE + BIG_FILE))
    status, text, sets_cookie = await raw_answer(
        client, upload_head("/read/multipart", len(body), cookie), body[:1024])
    assert status == 403
    assert text == "403: CSRF token mismatch: the session holds no token (no page asked for one)"
    assert not sets_cookie


async def test_token_after_a_file_is_searched_for_in_one_mib_only(
        aiohttp_client: ClientFactory) -> None:
    """However large client_max_size (64 MiB here), a token after a file is looked for in the
    first MULTIPART_SEARCH_BYTES: the 403 comes with no more than that (and one 64 KiB
    piece) of the upload sent."""
    client = await aiohttp_client(make_app(client_max_size=64 * 2**20))
    good = await token(client)
    cookie = "".join(f"Cookie: {c.key}={c.value}\r\n" for c in client.session.cookie_jar)
    body = multipart_body(("upload", "big.bin", BIG_FILE), ("_token", None, good.encode()))
    status, text, _ = await raw_answer(client, upload_head("/read/multipart", len(body), cookie),
                                       body[:MULTIPART_SEARCH_BYTES + 65536])
    assert status == 403
    assert text.startswith(f"403: CSRF token not within the first {MULTIPART_SEARCH_BYTES}"
                           " bytes of the multipart body: send it in the X-CSRF-Token header")


@pytest.mark.parametrize(
    ("content_type", "build"),
    [
        pytest.param(MULTIPART, lambda fields: multipart_body(
            *[(name, None, value.encode()) for name, value in fields]), id="multipart"),
        pytest.param(FORM, urlencode, id="form"),
    ],
)
async def test_fields_past_the_limit_are_not_searched(
        client: Client, content_type: str,
        build: Callable[[list[tuple[str, str]]], bytes | str]) -> None:
    """The token as field MAX_FIELDS + 1 is not looked for: 403 with advice; as field
    MAX_FIELDS it is found."""
    good = await token(client)
    for position, status in [(MAX_FIELDS, 200), (MAX_FIELDS + 1, 403)]:
        fields = [("a", "")] * (position - 1) + [("_token", good)]
        body = build(fields)
        response = await client.post("/read/read", data=io.BytesIO(
            body.encode() if isinstance(body, str) else body),
            headers={"Content-Type": content_type})
        assert response.status == status
        if status == 403:
            assert await response.text() == (
                f"403: CSRF token not among the first {MAX_FIELDS} fields: send it in the"
                " X-CSRF-Token header or before other fields")


async def test_token_first_then_many_parts(client: Client) -> None:
    """The token first and 20,000 parts after it: the handler streams every one."""
    parts: list[Part] = [("_token", None, (await token(client)).encode()),
                         *[("a", None, b"")] * 20_000]
    response = await client.post("/read/multipart", data=io.BytesIO(multipart_body(*parts)),
                                 headers={"Content-Type": MULTIPART})
    assert response.status == 200
    assert await response.read() == described(parts)


async def test_multipart_read_by_an_outer_middleware(aiohttp_client: ClientFactory) -> None:
    """An outer middleware read() the body (to check a signature, say): the token in the
    multipart form it cached counts."""

    @web.middleware
    async def outer(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST":
            await request.read()
        return await handler(request)

    app = make_app()
    app.middlewares.insert(0, outer)
    client = await aiohttp_client(app)
    parts: list[Part] = [("upload", "u.bin", SMALL_FILE),
                         ("_token", None, (await token(client)).encode())]
    body = multipart_body(*parts)
    response = await client.post("/read/read", data=body, headers={"Content-Type": MULTIPART})
    assert response.status == 200, await response.text()
    assert await response.read() == body
