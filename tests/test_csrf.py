"""CSRF protection through a real server."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from aiosessmgr import (
    SessionManager,
    csrf_exempt,
    csrf_middleware,
    csrf_token,
    get_session,
    setup,
)
from aiosessmgr.csrf import mask_token, verify_token

from .test_body import (
    BIG_FILE,
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


def make_app() -> web.Application:
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

    app = web.Application()
    app.router.add_get("/form", form)
    app.router.add_get("/secret", secret)
    app.router.add_post("/submit", submit)
    app.router.add_put("/submit", submit)
    app.router.add_post("/hook", hook)
    app.router.add_post("/webhooks/github", submit)
    app.router.add_post("/login", login)
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


async def test_safe_methods_are_not_checked(client: Client) -> None:
    assert (await client.get("/secret", headers={"Sec-Fetch-Site": "cross-site"})).status == 200


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
