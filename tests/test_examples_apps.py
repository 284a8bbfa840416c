"""The example apps under examples/ do what their docstrings say, driven over HTTP."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient

from examples import csrf_form, login

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]

TOKEN_RE = re.compile(r'<input type="hidden" name="_token" value="([A-Za-z0-9_-]+)">')


def hidden_token(page: str) -> str:
    """The CSRF token of the first form on *page*."""
    match = TOKEN_RE.search(page)
    assert match is not None, page
    return match.group(1)


def cookie(client: Client, name: str) -> str | None:
    """The value of cookie *name* in the client's jar, or None."""
    morsel = client.session.cookie_jar.filter_cookies(client.make_url("/")).get(name)
    return None if morsel is None else morsel.value


# -- login.py --------------------------------------------------------------------------------


async def test_login_logout_cycle(aiohttp_client: ClientFactory) -> None:
    manager = login.make_manager()
    client = await aiohttp_client(login.make_app(manager))

    assert "Not logged in" in await (await client.get("/")).text()
    bounced = await client.get("/protected", allow_redirects=False)
    assert bounced.status == 302 and bounced.headers["Location"] == "/login"

    form = await (await client.get("/login")).text()
    assert '<form method="post" action="/login">' in form
    assert '<input type="text" name="username"' in form
    assert '<button type="submit">Log in</button>' in form
    before = cookie(client, "app_session")
    assert before is not None  # the token lives in a session, which now has a cookie

    resp = await client.post("/login", data={"_token": hidden_token(form), "username": "alice"},
                             allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/protected"
    set_cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
    after = cookie(client, "app_session")
    assert after is not None and after != before  # regenerated: the pre-login id is dead
    assert (await manager.load(before)).new

    secret = await (await client.get("/protected")).text()
    assert "Secret area for alice" in secret
    assert "Logged in as alice" in await (await client.get("/")).text()
    assert '<form method="post" action="/logout">' in secret
    assert '<button type="submit">Log out</button>' in secret

    resp = await client.post("/logout", data={"_token": hidden_token(secret)},
                             allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/"
    assert cookie(client, "app_session") is None  # deleted by the response
    assert (await manager.load(after)).new        # and the record is gone
    assert "Not logged in" in await (await client.get("/")).text()
    resp = await client.get("/protected", allow_redirects=False)
    assert resp.status == 302


async def test_login_needs_the_csrf_token(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(login.make_app())
    await client.get("/login")
    resp = await client.post("/login", data={"username": "mallory"}, allow_redirects=False)
    assert resp.status == 403
    assert "Not logged in" in await (await client.get("/")).text()


async def test_logout_needs_the_csrf_token(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(login.make_app())
    form = await (await client.get("/login")).text()
    await client.post("/login", data={"_token": hidden_token(form), "username": "bob"})
    resp = await client.post("/logout", data={"_token": hidden_token(form)})
    # the token of the login form died with the pre-login session (rotated by regenerate)
    assert resp.status == 403
    assert "Logged in as bob" in await (await client.get("/")).text()


async def test_login_escapes_the_user_name(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(login.make_app())
    form = await (await client.get("/login")).text()
    await client.post("/login", data={"_token": hidden_token(form), "username": "<b>x</b>"})
    text = await (await client.get("/protected")).text()
    assert "Secret area for &lt;b&gt;x&lt;/b&gt;" in text and "<b>" not in text


async def test_login_refuses_an_empty_user_name(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(login.make_app())
    form = await (await client.get("/login")).text()
    resp = await client.post("/login", data={"_token": hidden_token(form), "username": "  "},
                             allow_redirects=False)
    assert resp.status == 400
    assert "Not logged in" in await (await client.get("/")).text()


# -- csrf_form.py ----------------------------------------------------------------------------


async def test_csrf_form_round_trip(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(csrf_form.make_app())
    page = await (await client.get("/")).text()
    assert '<form method="post" action="/submit">' in page
    assert '<input type="text" name="message">' in page
    assert '<button type="submit">Send</button>' in page
    again = await (await client.get("/")).text()
    assert hidden_token(page) != hidden_token(again)  # masked afresh on every response

    resp = await client.post("/submit", data={"_token": hidden_token(page),
                                              "message": "hi <there> & bye"})
    assert resp.status == 200
    assert "Thanks: hi &lt;there&gt; &amp; bye" in await resp.text()


async def test_csrf_form_refuses_missing_wrong_and_cross_site(
    aiohttp_client: ClientFactory,
) -> None:
    client = await aiohttp_client(csrf_form.make_app())
    good = hidden_token(await (await client.get("/")).text())
    assert (await client.post("/submit", data={"message": "x"})).status == 403
    # change the first character: the last one of unpadded base64 has ignored bits
    tampered = ("B" if good[0] == "A" else "A") + good[1:]
    assert (await client.post("/submit", data={"_token": tampered,
                                               "message": "x"})).status == 403
    cross = await client.post("/submit", data={"_token": good, "message": "x"},
                              headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status == 403
    foreign = await client.post("/submit", data={"_token": good, "message": "x"},
                                headers={"Origin": "http://evil.example"})
    assert foreign.status == 403
    assert (await client.post("/submit", data={"_token": good, "message": "x"})).status == 200


async def test_csrf_form_token_of_another_session_is_refused(
    aiohttp_client: ClientFactory,
) -> None:
    client = await aiohttp_client(csrf_form.make_app())
    stolen = (await (await client.get("/token")).json())["token"]
    client.session.cookie_jar.clear()  # from here on: another visitor, another session
    await client.get("/")
    resp = await client.post("/submit", data={"_token": stolen, "message": "x"})
    assert resp.status == 403


async def test_csrf_json_api(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(csrf_form.make_app())
    token = (await (await client.get("/token")).json())["token"]
    body = {"hello": ["world", 1, None]}

    resp = await client.post("/api/echo", json=body, headers={"X-CSRF-Token": token})
    assert resp.status == 200 and await resp.json() == body

    assert (await client.post("/api/echo", json=body)).status == 403
    # the header is required: a token in the JSON body passes the middleware, not the API
    assert (await client.post("/api/echo", json={**body, "_token": token})).status == 403
    wrong = await client.post("/api/echo", json=body, headers={"X-CSRF-Token": "x" * 86})
    assert wrong.status == 403
    bad = await client.post("/api/echo", data=b"{not json",
                            headers={"X-CSRF-Token": token, "Content-Type": "application/json"})
    assert bad.status == 400
