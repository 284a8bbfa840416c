"""The example apps in a real browser: headless Chromium driven by Playwright.

The HTTP tests (``test_examples_apps.py``) send the headers we write; this module checks
what a browser actually does with our cookies and forms: the attributes Chromium stores,
login and logout through the real forms, and a form auto-submitted from another origin
(Chromium adds ``Origin`` and ``Sec-Fetch-Site`` itself, and applies ``SameSite=Lax``).

Needs Debian's Chromium (``apt-get install chromium``) and the
``playwright`` package (in the ``test`` extra; its own browser download is never used).
Without them the module is skipped locally and fails under CI (``CI=true``).

Each app is served by ``web.AppRunner`` on a free port of 127.0.0.1. One browser, with a new
empty profile under pytest's tmp dir, serves the module; every test gets its own browser
context, so its own empty cookie jar.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import pytest
import pytest_asyncio
from aiohttp import web
from multidict import CIMultiDict

from examples import counter, csrf_form, login

try:
    from playwright.async_api import (
        Browser,
        BrowserContext,
        Cookie,
        Page,
        async_playwright,
        expect,
    )
except ImportError as exc:  # reported by the `browser` fixture: a skip locally, a failure in CI
    PLAYWRIGHT_MISSING: str | None = f"playwright is not importable ({exc})"
else:
    PLAYWRIGHT_MISSING = None

# every test shares the module's event loop, where the browser lives
pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM = Path("/usr/bin/chromium")
INSTALL_HINT = "apt-get install chromium; pip install -e '.[test]'"
# as root on a closed network: no sandbox, and no background connections to Google's hosts
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000  # per navigation, click or assertion; generous for a loaded machine

COOKIE_NAME = "app_session"  # both examples' cookie name
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")  # 256 bits, URL-safe base64 without padding
MASKED_TOKEN = re.compile(r"[A-Za-z0-9_-]{86}")  # 32-byte pad + 32 masked bytes

Serve = Callable[[web.Application], Awaitable[str]]


class Seen(NamedTuple):
    """A request as the server received it, and the status it was answered with."""

    method: str
    path: str
    headers: CIMultiDict[str]
    status: int


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"true", "1", "yes"}


def _require_browser() -> None:
    """Skip (locally) or fail (CI) with the reason when Chromium or Playwright is missing."""
    problems = []
    if PLAYWRIGHT_MISSING is not None:
        problems.append(PLAYWRIGHT_MISSING)
    if not os.access(CHROMIUM, os.X_OK):
        problems.append(f"{CHROMIUM} not found")
    if not problems:
        return
    reason = f"browser test needs Chromium and Playwright: {'; '.join(problems)} ({INSTALL_HINT})"
    if _in_ci():
        pytest.fail(f"CI must run the browser test: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Browser]:
    """Debian's headless Chromium, launched once for the module with a new empty profile."""
    _require_browser()
    # Playwright's driver creates Chromium's --user-data-dir, new and empty, in its TMPDIR
    # (and deletes it on close): point that at pytest's tmp dir for the driver alone
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(tmp_path_factory.mktemp("chromium")))
        playwright = await async_playwright().start()
    try:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            timeout=30_000,
        )
        try:
            yield chromium
        finally:
            await chromium.close()
    finally:
        await playwright.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser context: its own cookie jar and cache."""
    ctx = await browser.new_context()
    ctx.set_default_timeout(TIMEOUT_MS)
    ctx.set_default_navigation_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    try:
        yield ctx
    finally:
        await ctx.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(context: BrowserContext) -> Page:
    return await context.new_page()


@pytest_asyncio.fixture(loop_scope="module")
async def serve() -> AsyncIterator[Serve]:
    """Start apps on free ports of 127.0.0.1; each call returns ``http://127.0.0.1:<port>``."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, shutdown_timeout=5.0)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    try:
        yield start
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def record_requests(app: web.Application) -> list[Seen]:
    """Record every request *app* receives, before any other middleware sees it."""
    seen: list[Seen] = []

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            seen.append(Seen(request.method, request.path, request.headers.copy(), exc.status))
            raise
        seen.append(Seen(request.method, request.path, request.headers.copy(), response.status))
        return response

    app.middlewares.insert(0, record)
    return seen


def attacker_app(action: str, fields: Mapping[str, str]) -> web.Application:
    """A page on another origin whose form posts itself to *action* as soon as it loads."""
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
    )
    body = (
        f'<!doctype html><form id="f" method="post" action="{html.escape(action)}">{inputs}'
        '</form><script>document.getElementById("f").submit()</script>'
    )

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    return app


def other_origin(attacker: str, host: str) -> str:
    """The attacker's URL under *host* (the server listens on 127.0.0.1 either way)."""
    return attacker.replace("127.0.0.1", host, 1) + "/"


async def session_cookie(context: BrowserContext, base: str) -> Cookie:
    """The one session cookie the browser would send to *base*."""
    cookies = [c for c in await context.cookies(base) if c.get("name") == COOKIE_NAME]
    assert len(cookies) == 1, await context.cookies()
    return cookies[0]


def assert_example_cookie(cookie: Cookie) -> None:
    """The attributes the examples configure, as Chromium stored them."""
    assert cookie.get("name") == COOKIE_NAME
    assert SESSION_ID.fullmatch(cookie.get("value", "")), cookie
    assert cookie.get("domain") == "127.0.0.1"  # host-only: no Domain attribute was sent
    assert cookie.get("path") == "/"
    assert cookie.get("httpOnly") is True
    assert cookie.get("secure") is False  # plain http in the example; True in production
    assert cookie.get("sameSite") == "Lax"
    assert cookie.get("expires") == -1  # max_age None: a browser-session cookie


async def log_in(page: Page, base: str, username: str = "alice") -> None:
    """Log in through the real form and land on the protected page."""
    await page.goto(f"{base}/login")
    await page.fill('input[name="username"]', username)
    await page.click('button[type="submit"]')
    await expect(page).to_have_url(f"{base}/protected")
    await expect(page.locator("body")).to_contain_text(f"Secret area for {username}")


async def test_counter_keeps_one_session_per_browser_context(
    browser: Browser, page: Page, serve: Serve
) -> None:
    base = await serve(counter.make_app())
    for visit in (1, 2, 3):
        response = await page.goto(f"{base}/")
        assert response is not None and response.status == 200
        await expect(page.locator("body")).to_have_text(f"You have been here {visit} time(s).")
    other = await browser.new_context()
    try:
        fresh = await other.new_page()
        await fresh.goto(f"{base}/", timeout=TIMEOUT_MS)
        await expect(fresh.locator("body")).to_have_text("You have been here 1 time(s).")
    finally:
        await other.close()


async def test_login_sets_a_new_session_id_that_survives_reload(
    context: BrowserContext, page: Page, serve: Serve
) -> None:
    base = await serve(login.make_app())
    response = await page.goto(f"{base}/login")
    assert response is not None and response.status == 200
    before = await session_cookie(context, base)  # the CSRF secret made the session stored
    assert_example_cookie(before)
    # HttpOnly: invisible to the page's scripts
    assert COOKIE_NAME not in await page.evaluate("document.cookie")

    await page.fill('input[name="username"]', "alice")
    await page.click('button[type="submit"]')
    await expect(page).to_have_url(f"{base}/protected")
    await expect(page.locator("body")).to_contain_text("Secret area for alice")

    after = await session_cookie(context, base)
    assert_example_cookie(after)
    assert after.get("value") != before.get("value")  # regenerate() at login: no fixation

    await page.reload()
    await expect(page.locator("body")).to_contain_text("Secret area for alice")
    await page.goto(f"{base}/")
    await expect(page.locator("body")).to_contain_text("Logged in as alice")
    assert (await session_cookie(context, base)).get("value") == after.get("value")


async def test_logout_ends_the_session_and_the_old_cookie_is_worthless(
    context: BrowserContext, page: Page, serve: Serve
) -> None:
    base = await serve(login.make_app())
    await log_in(page, base)
    old = await session_cookie(context, base)

    await page.click('button[type="submit"]:has-text("Log out")')
    await expect(page).to_have_url(f"{base}/")
    await expect(page.locator("body")).to_contain_text("Not logged in")
    now = [c for c in await context.cookies(base) if c.get("name") == COOKIE_NAME]
    assert all(c.get("value") != old.get("value") for c in now), now

    await page.goto(f"{base}/protected")
    await expect(page).to_have_url(f"{base}/login")

    # replay the logged-in cookie: its record was destroyed, so it grants nothing
    await context.clear_cookies()
    await context.add_cookies([{
        "name": COOKIE_NAME, "value": old.get("value", ""), "url": f"{base}/",
        "httpOnly": True, "sameSite": "Lax",
    }])
    await page.goto(f"{base}/protected")
    await expect(page).to_have_url(f"{base}/login")
    await page.goto(f"{base}/")
    await expect(page.locator("body")).to_contain_text("Not logged in")
    # and the server did not adopt the replayed id for the new session
    assert (await session_cookie(context, base)).get("value") != old.get("value")


async def test_csrf_form_submits_and_masks_the_token_per_page(
    context: BrowserContext, page: Page, serve: Serve
) -> None:
    base = await serve(csrf_form.make_app())
    tokens = []
    for _ in range(2):
        await page.goto(f"{base}/")
        tokens.append(await page.locator('input[name="_token"]').get_attribute("value") or "")
    assert all(MASKED_TOKEN.fullmatch(t) for t in tokens), tokens
    assert tokens[0] != tokens[1]  # same secret, fresh mask on every render (BREACH)
    assert_example_cookie(await session_cookie(context, base))

    await page.fill('input[name="message"]', "hello")
    await page.click('button[type="submit"]')
    await expect(page).to_have_url(f"{base}/submit")
    await expect(page.locator("body")).to_have_text("Thanks: hello")


async def test_csrf_json_api_takes_the_token_from_the_header(
    page: Page, serve: Serve
) -> None:
    base = await serve(csrf_form.make_app())
    await page.goto(f"{base}/")
    results = await page.evaluate(
        """async () => {
            const post = (headers) => fetch("/api/echo", {
                method: "POST", body: JSON.stringify({hello: "world"},),
                headers: {"Content-Type": "application/json", ...headers}});
            const {token} = await (await fetch("/token")).json();
            const ok = await post({"X-CSRF-Token": token});
            const missing = await post({});
            return [ok.status, await ok.json(), missing.status, await missing.text()];
        }"""
    )
    assert results == [200, {"hello": "world"}, 403, "403: CSRF token missing"]


# The attacker's page is served on another port of 127.0.0.1 (same site, other origin:
# Chromium sends the Lax cookie and Origin) or under `localhost` (another site: no cookie,
# Sec-Fetch-Site: cross-site). The middleware checks Sec-Fetch-Site, then Origin.
ATTACKERS = [
    pytest.param("127.0.0.1", "same-site", True, "request origin is not allowed",
                 id="same-site-other-port"),
    pytest.param("localhost", "cross-site", False, "cross-site request refused",
                 id="cross-site-localhost"),
]


@pytest.mark.parametrize(("host", "fetch_site", "cookie_sent", "reason"), ATTACKERS)
async def test_form_posted_from_another_origin_is_refused(
    page: Page, serve: Serve, host: str, fetch_site: str, cookie_sent: bool, reason: str
) -> None:
    app = csrf_form.make_app()
    seen = record_requests(app)
    base = await serve(app)
    await page.goto(f"{base}/")
    # even a leaked valid token does not help: the refusal comes before the token check
    leaked = await page.locator('input[name="_token"]').get_attribute("value") or ""
    attacker = await serve(attacker_app(f"{base}/submit", {"_token": leaked,
                                                           "message": "pwned"}))

    async with page.expect_navigation(url=f"{base}/submit") as navigation:
        # the form submits while the page loads: wait only for the attacker page to commit
        await page.goto(other_origin(attacker, host), wait_until="commit")
    response = await navigation.value
    assert response is not None and response.status == 403
    await expect(page.locator("body")).to_have_text(f"403: {reason}")

    posts = [s for s in seen if s.method == "POST"]
    assert [(s.path, s.status) for s in posts] == [("/submit", 403)]
    headers = posts[0].headers
    assert headers.get("Sec-Fetch-Site") == fetch_site
    assert headers.get("Origin") == other_origin(attacker, host).rstrip("/")
    assert (f"{COOKIE_NAME}=" in headers.get("Cookie", "")) is cookie_sent


@pytest.mark.parametrize(("host", "fetch_site", "cookie_sent", "reason"), ATTACKERS)
async def test_logout_posted_from_another_origin_does_not_log_out(
    page: Page, serve: Serve, host: str, fetch_site: str, cookie_sent: bool, reason: str
) -> None:
    app = login.make_app()
    seen = record_requests(app)
    base = await serve(app)
    await log_in(page, base)
    attacker = await serve(attacker_app(f"{base}/logout", {}))

    async with page.expect_navigation(url=f"{base}/logout") as navigation:
        # the form submits while the page loads: wait only for the attacker page to commit
        await page.goto(other_origin(attacker, host), wait_until="commit")
    response = await navigation.value
    assert response is not None and response.status == 403
    await expect(page.locator("body")).to_have_text(f"403: {reason}")
    logout = [s for s in seen if s.path == "/logout"]
    assert [(s.method, s.status) for s in logout] == [("POST", 403)]
    assert logout[0].headers.get("Sec-Fetch-Site") == fetch_site
    assert (f"{COOKIE_NAME}=" in logout[0].headers.get("Cookie", "")) is cookie_sent

    await page.goto(f"{base}/protected")  # still logged in
    await expect(page.locator("body")).to_contain_text("Secret area for alice")


def login_logout_app(cookie: Mapping[str, object]) -> web.Application:
    """/in stores a session under *cookie*'s settings; /out invalidates it (logout)."""
    from aiosessmgr import SessionManager, get_session, setup

    async def sign_in(request: web.Request) -> web.Response:
        (await get_session(request))["user"] = "alice"
        return web.Response(text="in")

    async def sign_out(request: web.Request) -> web.Response:
        await (await get_session(request)).invalidate()
        return web.Response(text="out")

    app = web.Application()
    app.router.add_get("/in", sign_in)
    app.router.add_get("/out", sign_out)
    setup(app, SessionManager({"cookie": dict(cookie), "lottery": (0, 1)}))
    return app


@pytest.mark.parametrize("cookie", [
    pytest.param({"name": "__Host-sid", "secure": True}, id="host-prefix"),
    pytest.param({"name": "__Secure-sid", "secure": True, "same_site": "none"},
                 id="secure-prefix-samesite-none"),
    pytest.param({"name": "sid", "secure": True, "partitioned": True, "same_site": "none"},
                 id="partitioned"),
    pytest.param({"name": "sid", "max_age": 3600}, id="persistent"),
])
async def test_logout_removes_the_cookie_from_the_browser(
    context: BrowserContext, page: Page, serve: Serve, cookie: Mapping[str, object]
) -> None:
    base = await serve(login_logout_app(cookie))
    # Chromium treats http://127.0.0.1 as a secure context: it stores Secure cookies here
    await page.goto(f"{base}/in")
    stored = [c for c in await context.cookies(base) if c.get("name") == cookie["name"]]
    assert len(stored) == 1, await context.cookies()
    assert stored[0].get("secure") is bool(cookie.get("secure"))
    await page.goto(f"{base}/out")
    # a deletion without the cookie's Secure / Partitioned attributes is ignored by browsers
    assert [c for c in await context.cookies(base) if c.get("name") == cookie["name"]] == []
