"""CSRF protection through a real server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

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
    assert (await client.post("/hook")).status == 200
    assert (await client.post("/webhooks/github")).status == 200


async def test_safe_methods_are_not_checked(client: Client) -> None:
    assert (await client.get("/secret", headers={"Sec-Fetch-Site": "cross-site"})).status == 200


async def test_no_session_means_no_valid_token(aiohttp_client: ClientFactory) -> None:
    fresh = await aiohttp_client(make_app())
    forged = mask_token("A" * 43)
    response = await fresh.post("/submit", headers={"X-CSRF-Token": forged})
    assert response.status == 403


async def test_token_rotates_on_login(client: Client) -> None:
    before = await token(client)
    login = await client.post("/login", headers={"X-CSRF-Token": before})
    assert login.status == 200
    response = await client.post("/submit", headers={"X-CSRF-Token": before})
    assert response.status == 403
    response = await client.post("/submit", headers={"X-CSRF-Token": await token(client)})
    assert response.status == 200
