"""The example apps under examples/ do what their docstrings say, driven over HTTP."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from aiosessmgr import ConfigError, SessionEvents
from examples import csrf_form, encryption, events, flash_messages, login, multiple_contexts

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


# -- flash_messages.py -----------------------------------------------------------------------


async def test_flash_message_shows_once_after_the_redirect(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(flash_messages.make_app())
    first = await (await client.get("/")).text()
    assert "Saved!" not in first

    resp = await client.post("/save", data={"_token": hidden_token(first), "note": "milk"},
                             allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/"

    shown = await (await client.get("/")).text()
    assert '<p class="flash">Saved!</p>' in shown and "Your note: milk" in shown
    again = await (await client.get("/")).text()
    assert "Saved!" not in again and "Your note: milk" in again


async def test_flash_survives_the_redirect_when_followed(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(flash_messages.make_app())
    token = hidden_token(await (await client.get("/")).text())
    resp = await client.post("/save", data={"_token": token, "note": "eggs"})
    assert resp.status == 200 and "Saved!" in await resp.text()  # the page after the 303
    assert "Saved!" not in await (await client.get("/")).text()


# -- multiple_contexts.py --------------------------------------------------------------------


def session_files(directory: Path) -> list[str]:
    """Names of the session files in a file-driver directory (not its lock files)."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("sess_"))


def directory_exists(directory: Path) -> bool:
    return directory.exists()


async def test_two_managers_keep_separate_sessions(
    aiohttp_client: ClientFactory, tmp_path: Path,
) -> None:
    app = multiple_contexts.make_app(str(tmp_path))
    client = await aiohttp_client(app)

    assert await (await client.get("/")).text() == "Page views: 1\n"
    first = await client.get("/api/count")
    assert await first.json() == {"calls": 1}
    assert "web_session" not in first.cookies  # the API handler never loaded the web session
    assert await (await client.get("/api/count")).json() == {"calls": 2}
    assert await (await client.get("/")).text() == "Page views: 2\n"

    jar = client.session.cookie_jar
    web_id = jar.filter_cookies(client.make_url("/"))["web_session"].value
    api_cookies = jar.filter_cookies(client.make_url("/api/count"))
    api_id = api_cookies["api_session"].value
    assert web_id != api_id
    assert "api_session" not in jar.filter_cookies(client.make_url("/"))  # path=/api

    # each session lives in its own store: the API one on disk, the web one in memory
    assert session_files(tmp_path) == [f"sess_{api_id}"]
    web_session = await app[multiple_contexts.WEB_MANAGER].load(web_id)
    api_session = await app[multiple_contexts.API_MANAGER].load(api_id)
    assert web_session.all() == {"page_views": 2}
    assert api_session.all() == {"api_calls": 2}
    assert (await app[multiple_contexts.API_MANAGER].load(web_id)).new


async def test_multiple_contexts_removes_its_temp_dir(aiohttp_client: ClientFactory) -> None:
    app = multiple_contexts.make_app()
    client = await aiohttp_client(app)
    await client.get("/api/count")
    directory = Path(app[multiple_contexts.API_MANAGER].config.drivers["api"].options["path"])
    assert len(session_files(directory)) == 1
    await client.close()
    assert not directory_exists(directory)


# -- events.py -------------------------------------------------------------------------------


async def test_events_audit_a_login_logout_cycle(aiohttp_client: ClientFactory) -> None:
    app = events.make_app()
    client = await aiohttp_client(app)
    log = app[events.AUDIT_LOG]

    home = await (await client.get("/")).text()
    anonymous = cookie(client, "events_session")
    assert anonymous is not None
    await client.post("/login", data={"_token": hidden_token(home), "username": "ann"})
    logged_in = cookie(client, "events_session")
    page = await (await client.get("/")).text()
    assert "Logged in as ann" in page
    await client.post("/logout", data={"_token": hidden_token(page)}, allow_redirects=False)
    assert cookie(client, "events_session") is None
    await client.get("/")
    assert logged_in is not None and logged_in != anonymous

    kinds = [entry.event for entry in log]
    E = SessionEvents
    # the visits after the first load a stored session: no STARTED for them; the page
    # after logout starts a new (anonymous) session again
    # (login: the pre-login record is destroyed when the new one is saved)
    assert kinds == [E.STARTED, E.REGENERATED, E.DESTROYED, E.DESTROYED, E.INVALIDATED,
                     E.STARTED]
    started, regenerated, destroyed1, destroyed2, invalidated, _ = log
    assert started.session_id == destroyed1.session_id == regenerated.old_id == anonymous
    assert regenerated.session_id == destroyed2.session_id == invalidated.old_id == logged_in
    assert invalidated.session_id not in (anonymous, logged_in)

    audit = await (await client.get("/audit")).text()
    assert len(log) == 6  # reading the audit log touches no session
    lines = audit.splitlines()
    assert [line.split()[1] for line in lines] == [k.value for k in kinds]
    assert f"regenerated {logged_in[:8]}… (was {anonymous[:8]}…)" in lines[1]
    assert anonymous not in audit  # only id prefixes are logged


# -- encryption.py ---------------------------------------------------------------------------


def record_of(directory: Path, session_id: str) -> bytes:
    """The stored bytes of *session_id* in a file-driver directory."""
    return (directory / f"sess_{session_id}").read_bytes()


async def readable_with(environ: dict[str, str], directory: Path, session_id: str) -> bool:
    """True if a manager with exactly these keys can load the stored session."""
    manager = encryption.make_manager(environ, directory)
    try:
        return not (await manager.load(session_id)).new
    finally:
        await manager.close()


async def test_encryption_keeps_no_plaintext_and_survives_rotation(
    aiohttp_client: ClientFactory, tmp_path: Path,
) -> None:
    old_key, new_key = encryption.new_key(), encryption.new_key()
    before = await aiohttp_client(encryption.make_app({"AIOSESSMGR_KEY": old_key}, tmp_path))
    await before.get("/")
    assert (await (await before.get("/")).text()).startswith("Visits: 2 since ")
    session_id = cookie(before, "enc_session")
    assert session_id is not None
    await before.close()

    record = record_of(tmp_path, session_id)
    assert record[8:9] == b"\x02"  # after the 8-byte version: the aes-256-gcm marker
    for plaintext in (b"visits", b"first_seen", b"UTC", session_id.encode()):
        assert plaintext not in record

    new_only = {"AIOSESSMGR_KEY": new_key}
    assert not await readable_with(new_only, tmp_path, session_id)

    rotated = {"AIOSESSMGR_KEY": new_key, "AIOSESSMGR_PREVIOUS_KEYS": f" {old_key} ,"}
    after = await aiohttp_client(encryption.make_app(rotated, tmp_path))
    resp = await after.get("/peek", headers={"Cookie": f"enc_session={session_id}"})
    assert await resp.text() == "Visits: 2\n"  # written under the old key, still loads
    assert "Set-Cookie" not in resp.headers    # same session, same id
    await after.close()

    # the read-only request re-encrypted the record under the new key
    assert record_of(tmp_path, session_id) != record
    assert await readable_with(new_only, tmp_path, session_id)
    assert not await readable_with({"AIOSESSMGR_KEY": old_key}, tmp_path, session_id)


def test_encryption_without_a_key_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"set AIOSESSMGR_KEY .*secrets\.token_bytes\(32\)"):
        encryption.make_app({}, tmp_path)
