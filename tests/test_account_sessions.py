"""examples/account_sessions.py over HTTP: two devices (two cookie jars) of one user.

Each test serves one app and talks to it with independent clients, each with its own
cookie jar and User-Agent, as two browsers of the same user would.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from aiosessmgr import SessionManager
from examples import account_sessions

from .redis_server import free_port
from .stores import ROOT, store_entry, wait_for_port

Client = TestClient[web.Request, web.Application]
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
ClientFactory = Callable[..., Awaitable[Client]]

COOKIE_NAME = "app_session"
TOKEN_RE = re.compile(r'<input type="hidden" name="_token" value="([A-Za-z0-9_-]+)">')
DEVICE_RE = re.compile(
    r'<li class="device" data-handle="([^"]*)" data-current="(true|false)" '
    r'data-last-seen="(\d+)" data-created-at="(\d+)"><span class="agent">(.*?)</span>'
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
PHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Mobile/15E148 Safari/604.1"


@dataclass(frozen=True)
class Listed:
    """One device as the devices page shows it (the agent as it appears in the HTML)."""

    handle: str
    current: bool
    last_seen: str
    created_at: str
    agent_html: str


def hidden_token(text: str) -> str:
    """The CSRF token of the first form on the page *text*."""
    match = TOKEN_RE.search(text)
    assert match is not None, text
    return match.group(1)


def listed(text: str) -> list[Listed]:
    """The devices listed on a devices page, in page order."""
    return [Listed(h, c == "true", seen, created, agent)
            for h, c, seen, created, agent in DEVICE_RE.findall(text)]


def session_id(client: Client) -> str | None:
    """The session cookie in the client's jar, or None."""
    morsel = client.session.cookie_jar.filter_cookies(client.make_url("/")).get(COOKIE_NAME)
    return None if morsel is None else morsel.value


@pytest.fixture(params=["memory", "file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The driver entry of the app's manager: every built-in driver with a user index."""
    return store_entry(str(request.param), request, tmp_path)


@pytest.fixture
async def manager(store: dict[str, Any]) -> AsyncIterator[SessionManager]:
    mgr = account_sessions.make_manager(store)
    yield mgr
    await mgr.close()


@pytest.fixture
async def server(aiohttp_server: ServerFactory, manager: SessionManager) -> TestServer:
    return await aiohttp_server(account_sessions.make_app(manager))


@pytest.fixture
def device(aiohttp_client: ClientFactory, server: TestServer) -> Callable[[str], Awaitable[Client]]:
    """A new client of the one server: its own cookie jar, sending *user_agent*."""

    async def make(user_agent: str) -> Client:
        return await aiohttp_client(server, headers={"User-Agent": user_agent})

    return make


async def log_in(client: Client, user: str) -> str:
    """Log *client* in as *user* through the form; the devices page it lands on."""
    form = await client.get("/login")
    assert form.status == 200
    resp = await client.post("/login", data={"_token": hidden_token(await form.text()),
                                             "username": user}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/devices"
    return await devices_page(client)


async def devices_page(client: Client) -> str:
    resp = await client.get("/devices", allow_redirects=False)
    assert resp.status == 200, resp.status
    return await resp.text()


async def is_logged_out(client: Client) -> bool:
    """True if the client's next request is sent to the login form."""
    resp = await client.get("/devices", allow_redirects=False)
    return resp.status == 302 and resp.headers["Location"] == "/login"


# -- listing --------------------------------------------------------------------------------


async def test_devices_page_lists_both_devices_and_marks_this_one(
    device: Callable[[str], Awaitable[Client]], manager: SessionManager,
) -> None:
    laptop, phone = await device(FIREFOX), await device(PHONE)
    await log_in(laptop, "alice")
    await log_in(phone, "alice")

    infos = await manager.user_sessions("alice")
    assert sorted(i.user_agent or "" for i in infos) == sorted([FIREFOX, PHONE])
    for client, mine in ((laptop, FIREFOX), (phone, PHONE)):
        text = await devices_page(client)
        shown = listed(text)
        # the manager's listing, in its order (most recently active first), all escaped
        assert [(d.handle, d.agent_html, d.last_seen, d.created_at) for d in shown] == [
            (i.handle, html.escape(i.user_agent or ""), f"{i.last_seen:.0f}",
             f"{i.created_at:.0f}") for i in await manager.user_sessions("alice")]
        assert [d.agent_html for d in shown if d.current] == [html.escape(mine)]
        assert text.count("(this device)") == 1
        assert '<span class="count">2</span> devices' in text
        assert "Log out other devices" in text
        # handles, never ids: neither session's id appears in the page
        for other in (laptop, phone):
            sid = session_id(other)
            assert sid is not None and sid not in text

    assert [d for d in listed(await devices_page(laptop)) if d.current] != \
        [d for d in listed(await devices_page(phone)) if d.current]


async def test_not_logged_in_sees_the_login_form(
    device: Callable[[str], Awaitable[Client]],
) -> None:
    client = await device(FIREFOX)
    assert await is_logged_out(client)
    home = await client.get("/", allow_redirects=False)
    assert home.status == 302 and home.headers["Location"] == "/login"
    form = await (await client.get("/login")).text()
    assert '<form method="post" action="/login">' in form
    token = hidden_token(form)
    for path in ("/devices/logout-others", "/devices/logout"):
        resp = await client.post(path, data={"_token": token, "handle": "x"},
                                 allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/login"
    resp = await client.post("/login", data={"_token": token, "username": "  "})
    assert resp.status == 400


# -- ending sessions ------------------------------------------------------------------------


async def test_log_out_other_devices_ends_the_others_only(
    device: Callable[[str], Awaitable[Client]], manager: SessionManager,
) -> None:
    laptop, phone, tablet = await device(FIREFOX), await device(PHONE), await device("Tablet")
    bob = await device("Bob's browser")
    await log_in(laptop, "alice")
    await log_in(phone, "alice")
    await log_in(tablet, "alice")
    await log_in(bob, "bob")
    phone_sid = session_id(phone)
    assert len(listed(await devices_page(laptop))) == 3

    page = await devices_page(laptop)
    resp = await laptop.post("/devices/logout-others", data={"_token": hidden_token(page)},
                             allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/devices"

    assert await is_logged_out(phone) and await is_logged_out(tablet)
    assert phone_sid is not None and (await manager.load(phone_sid)).new  # record destroyed
    after = listed(await devices_page(laptop))
    assert [(d.agent_html, d.current) for d in after] == [(html.escape(FIREFOX), True)]
    assert [i.user_agent for i in await manager.user_sessions("alice")] == [FIREFOX]
    # another user's sessions are not touched
    assert [i.user_agent for i in await manager.user_sessions("bob")] == ["Bob's browser"]
    assert not await is_logged_out(bob)

    # the ended device gets the login form and can log in again
    assert len(listed(await log_in(phone, "alice"))) == 2


async def test_log_out_one_device_by_its_handle(
    device: Callable[[str], Awaitable[Client]], manager: SessionManager,
) -> None:
    laptop, phone = await device(FIREFOX), await device(PHONE)
    await log_in(laptop, "alice")
    await log_in(phone, "alice")
    page = await devices_page(laptop)
    theirs = [d.handle for d in listed(page) if not d.current]
    assert len(theirs) == 1

    resp = await laptop.post("/devices/logout", data={"_token": hidden_token(page),
                                                      "handle": theirs[0]},
                             allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/devices"
    assert await is_logged_out(phone)
    assert [d.current for d in listed(await devices_page(laptop))] == [True]

    # the same handle again: already ended, nothing to do
    page = await devices_page(laptop)
    again = await laptop.post("/devices/logout", data={"_token": hidden_token(page),
                                                       "handle": theirs[0]})
    assert again.status == 404

    # this device's own "Log out": session.logout(), back to the login form
    page = await devices_page(laptop)
    mine = [d.handle for d in listed(page) if d.current]
    old_sid = session_id(laptop)
    resp = await laptop.post("/devices/logout", data={"_token": hidden_token(page),
                                                      "handle": mine[0]},
                             allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/login"
    assert await is_logged_out(laptop)
    assert old_sid is not None and (await manager.load(old_sid)).new
    assert await manager.user_sessions("alice") == []


async def test_log_out_button(
    device: Callable[[str], Awaitable[Client]], manager: SessionManager,
) -> None:
    laptop, phone = await device(FIREFOX), await device(PHONE)
    await log_in(laptop, "alice")
    await log_in(phone, "alice")
    page = await devices_page(laptop)
    assert '<form method="post" action="/logout">' in page
    resp = await laptop.post("/logout", data={"_token": hidden_token(page)},
                             allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/login"
    assert session_id(laptop) is None  # the cookie was deleted
    assert await is_logged_out(laptop)
    assert not await is_logged_out(phone)
    assert [i.user_agent for i in await manager.user_sessions("alice")] == [PHONE]


async def test_a_handle_of_another_user_ends_nothing(
    device: Callable[[str], Awaitable[Client]], manager: SessionManager,
) -> None:
    mallory, bob = await device("Mallory"), await device("Bob's browser")
    await log_in(bob, "bob")
    page = await log_in(mallory, "mallory")
    bob_handle = (await manager.user_sessions("bob"))[0].handle
    for handle in (bob_handle, "not-a-handle", "", "x" * 1000):
        resp = await mallory.post("/devices/logout", data={"_token": hidden_token(page),
                                                           "handle": handle})
        assert resp.status == 404, handle
        assert "That device is not logged in" in await resp.text()
    assert [i.handle for i in await manager.user_sessions("bob")] == [bob_handle]
    assert not await is_logged_out(bob)
    assert not await is_logged_out(mallory)


# -- CSRF and escaping ----------------------------------------------------------------------


async def test_every_form_needs_the_csrf_token(
    device: Callable[[str], Awaitable[Client]], manager: SessionManager,
) -> None:
    laptop, phone = await device(FIREFOX), await device(PHONE)
    login_form = await (await laptop.get("/login")).text()
    pre_login = hidden_token(login_form)
    await log_in(laptop, "alice")
    phone_page = await log_in(phone, "alice")
    page = await devices_page(laptop)
    good = hidden_token(page)
    theirs = next(d.handle for d in listed(page) if not d.current)
    tampered = ("B" if good[0] == "A" else "A") + good[1:]
    bad_tokens: list[dict[str, str]] = [
        {},                                  # missing
        {"_token": tampered},                # invalid
        {"_token": pre_login},               # rotated away by login
        {"_token": hidden_token(phone_page)},  # another session's
    ]
    for path in ("/devices/logout-others", "/devices/logout", "/logout"):
        for token in bad_tokens:
            resp = await laptop.post(path, data={**token, "handle": theirs},
                                     allow_redirects=False)
            assert resp.status == 403, (path, token)
    cross = await laptop.post("/devices/logout-others", data={"_token": good},
                              headers={"Origin": "http://evil.example"})
    assert cross.status == 403
    assert not await is_logged_out(laptop) and not await is_logged_out(phone)
    assert len(await manager.user_sessions("alice")) == 2
    # and the good token works
    resp = await laptop.post("/devices/logout-others", data={"_token": good},
                             allow_redirects=False)
    assert resp.status == 303 and await is_logged_out(phone)


async def test_a_hostile_user_agent_is_escaped(
    device: Callable[[str], Awaitable[Client]],
) -> None:
    hostile = '<script>alert("pwned")</script><img src=x onerror=\'alert(1)\'>&amp;'
    laptop, evil = await device(FIREFOX), await device(hostile)
    await log_in(laptop, "alice")
    await log_in(evil, "alice")
    for client in (laptop, evil):
        text = await devices_page(client)
        assert "<script>" not in text and "<img" not in text
        assert html.escape(hostile) in text
        assert sorted(d.agent_html for d in listed(text)) == sorted(
            [html.escape(FIREFOX), html.escape(hostile)])


async def test_a_hostile_user_name_is_escaped(
    device: Callable[[str], Awaitable[Client]],
) -> None:
    client = await device(FIREFOX)
    text = await log_in(client, '<b onclick="x">eve</b>')
    assert '<b onclick' not in text
    assert '<span class="user">&lt;b onclick=&quot;x&quot;&gt;eve&lt;/b&gt;</span>' in text


@pytest.mark.parametrize(("seconds", "words"), [
    (0, "just now"), (59.9, "just now"), (60, "1 minute ago"), (119, "1 minute ago"),
    (120, "2 minutes ago"), (3600, "1 hour ago"), (86399, "23 hours ago"),
    (86400, "1 day ago"), (10 * 86400, "10 days ago"),
])
def test_last_seen_in_words(seconds: float, words: str) -> None:
    assert account_sessions.ago(seconds) == words
    assert account_sessions.when(1_700_000_000, 1_700_000_000 + seconds) == \
        f"2023-11-14 22:13:20 UTC ({words})"


# -- running it -----------------------------------------------------------------------------


def test_main_serves_on_the_given_host_and_port() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.account_sessions", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=10) as resp:
            assert resp.status == 200
            assert '<form method="post" action="/login">' in resp.read().decode()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert f"http://127.0.0.1:{port}" in out.decode()  # run_app prints where it serves
