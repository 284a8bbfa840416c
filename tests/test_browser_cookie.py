"""The ``cookie`` driver in a real browser: what Chromium stores and sends back at the limits.

The driver seals the record into the session cookie and splits it above ``chunk_size``
(``name=<n>.<part 0>``, ``name.1``, ...); ``save()`` refuses more than ``max_size`` bytes of
our ``name=value`` pairs and their ``"; "`` separators. These tests put a session of an exact
size into headless Chromium and check what it keeps (``context.cookies()``), what it sends
back (the ``Cookie`` header the server received) and what the next request reads.

Sizes are not guessed: the app stores *n* characters of random base64url (the serializer
does not compress), and :func:`largest` finds, from the ``Set-Cookie`` headers of a plain
aiohttp client's requests, the largest *n* whose cookies still meet a bound. Each
character more makes the sealed cookie 1 or 2 bytes longer (base64 of the encrypted
record), so that *n*'s cookies land within 3 bytes of the bound and *n* + 1's are over it.

What Chromium does (156, Debian) and what aiohttp does, as pinned here:

- Chromium keeps a cookie whose name and value (without the ``=``) are 4,096 bytes and
  silently drops one of 4,097. The driver counts ``name=value`` against ``chunk_size``
  (at most 4,096), so its largest cookie is 4,095 bytes of name and value: always kept.
- aiohttp's server (``max_field_size`` 8,190 by default) answers 400 to a request whose
  ``Cookie`` header is too long, before any middleware or handler runs: over 8,190 bytes
  of value with its C parser (3.14: it counts a header's name only for the request's
  first header, and Chromium sends ``Host`` first), over 8,182 (the line ``Cookie: ...``
  over 8,190) with its pure-Python one. The driver accepts a ``max_size`` above that: the
  save succeeds, the browser keeps the cookies and sends them, and every later request of
  that browser is refused, logout included (the last test of this module).

Same requirements and skip/fail rules as ``test_browser.py`` (whose constants this module
shares): skipped locally without Chromium or Playwright, a failure under CI (``CI=true``).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import aiohttp
import pytest
from aiohttp import web

from aiosessmgr import ConfigError, SessionManager, get_session, setup

# the module-scoped Chromium and the per-test context, page and app servers of test_browser
from .test_browser import PLAYWRIGHT_MISSING, TIMEOUT_MS
from .test_browser import browser as browser
from .test_browser import context as context
from .test_browser import page as page
from .test_browser import serve as serve

if PLAYWRIGHT_MISSING is None:
    from playwright.async_api import Browser, BrowserContext, Cookie, Page

# every test shares the module's event loop, where the browser lives
pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = secrets.token_bytes(32)
NAME = "app_session"
#: a long name (still a cookie token): it eats into every chunk's 4,096 bytes
LONG_NAME = "app_session_" + "n" * 188
CHUNK_SIZE = 4000  # the driver's defaults
MAX_SIZE = 6144
CHROMIUM_LIMIT = 4096  # bytes of a cookie's name and value, "=" not counted
#: the longest Cookie header value aiohttp's server reads with either of its parsers: the
#: pure-Python one refuses a header line over max_field_size (8,190), "Cookie: " included
AIOHTTP_LIMIT = 8190 - len("Cookie: ")
#: a Cookie header value both parsers refuse (the C parser reads up to 8,190)
AIOHTTP_REFUSES = 9000

Pairs = list[tuple[str, str]]
Serve = Callable[[web.Application], Awaitable[str]]


class Exchange(NamedTuple):
    """A request as the server received it, its status and the Set-Cookie headers sent."""

    path: str
    cookie: str
    status: int
    set_cookies: list[str]


def record_exchanges(app: web.Application) -> list[Exchange]:
    """Record what *app* receives and the Set-Cookie headers it answers with (outermost)."""
    seen: list[Exchange] = []

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        cookie = request.headers.get("Cookie", "")
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            seen.append(Exchange(request.path, cookie, exc.status,
                                 exc.headers.getall("Set-Cookie", [])))
            raise
        except Exception:  # aiohttp answers 500, with no header of ours
            seen.append(Exchange(request.path, cookie, 500, []))
            raise
        seen.append(Exchange(request.path, cookie, response.status,
                             response.headers.getall("Set-Cookie", [])))
        return response

    app.middlewares.insert(0, record)
    return seen


class App(NamedTuple):
    base: str
    seen: list[Exchange]
    name: str


def session_app(name: str = NAME, **driver: int) -> tuple[web.Application, list[Exchange]]:
    """Client-side sessions under cookie *name*, driver options *driver*.

    ``/set?n=N`` stores N random base64url characters and answers them; ``/get`` answers
    what the session holds (empty if nothing); ``/out`` logs out (``invalidate()``). A save
    over ``max_size`` raises SessionTooLarge out of the middleware: aiohttp answers 500, as
    for any value the serializer refuses, and no Set-Cookie goes out.
    """

    async def put(request: web.Request) -> web.Response:
        n = int(request.query["n"])
        blob = secrets.token_urlsafe(n)[:n]
        (await get_session(request))["blob"] = blob
        return web.Response(text=blob)

    async def read(request: web.Request) -> web.Response:
        return web.Response(text=(await get_session(request)).get("blob", ""))

    async def out(request: web.Request) -> web.Response:
        await (await get_session(request)).invalidate()
        return web.Response(text="out")

    app = web.Application()
    app.router.add_get("/set", put)
    app.router.add_get("/get", read)
    app.router.add_get("/out", out)
    seen = record_exchanges(app)
    setup(app, SessionManager({
        "default": "cookie",
        "drivers": {"cookie": {"driver": "cookie", "lifetime": 120, **driver}},
        "cookie": {"name": name, "secure": True, "http_only": True, "same_site": "strict"},
        "encryption": {"key": KEY},
        "lottery": (0, 1),
    }))
    return app, seen


async def start_app(serve: Serve, name: str = NAME, **driver: int) -> App:
    app, seen = session_app(name, **driver)
    return App(await serve(app), seen, name)


# -- reading Set-Cookie headers ------------------------------------------------------------------


def is_deletion(header: str) -> bool:
    return "max-age=0" in header.lower().replace(" ", "")


def set_pairs(headers: list[str]) -> Pairs:
    """The (name, value) of the cookies *headers* set (deletions left out), in order."""
    pairs = []
    for header in headers:
        if not is_deletion(header):
            name, _, value = header.split(";", 1)[0].partition("=")
            pairs.append((name.strip(), value.strip()))
    return pairs


def deleted_names(headers: list[str]) -> list[str]:
    return [h.split("=", 1)[0].strip() for h in headers if is_deletion(h)]


def pair_size(name: str, value: str) -> int:
    """The bytes of ``name=value``, as the driver counts them against ``chunk_size``."""
    return len(name) + 1 + len(value)


def total_size(pairs: Pairs) -> int:
    """The bytes *pairs* add to a Cookie header, as the driver counts them against max_size."""
    return sum(pair_size(n, v) for n, v in pairs) + 2 * (len(pairs) - 1)


def chunk_names(name: str, count: int) -> list[str]:
    return [name, *(f"{name}.{i}" for i in range(1, count))]


async def measure(base: str, n: int) -> Pairs | None:
    """The cookies a new session of *n* characters is written to; None if the save fails."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client, \
            client.get(f"{base}/set", params={"n": str(n)}) as response:
        if response.status != 200:
            return None
        return set_pairs(response.headers.getall("Set-Cookie", []))


async def largest(base: str, fits: Callable[[Pairs | None], bool], hi: int = 12_000) -> int:
    """The largest n in [1, hi) whose cookies *fits*; n + 1's do not (sizes grow with n)."""
    lo = 1
    assert fits(await measure(base, lo))
    assert not fits(await measure(base, hi))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(await measure(base, mid)):
            lo = mid
        else:
            hi = mid
    return lo


def one_cookie(pairs: Pairs | None) -> bool:
    return pairs is not None and len(pairs) == 1


def within(limit: int) -> Callable[[Pairs | None], bool]:
    return lambda pairs: pairs is not None and total_size(pairs) <= limit


# -- the browser's side ---------------------------------------------------------------------------


async def ours(context: BrowserContext, app: App) -> list[Cookie]:
    """The session's cookies the browser holds for *app*, by name."""
    prefix = app.name + "."
    found = [c for c in await context.cookies(app.base)
             if c.get("name") == app.name or c.get("name", "").startswith(prefix)]
    return sorted(found, key=lambda c: c.get("name", ""))


def assert_attributes(cookie: Cookie) -> None:
    """The attributes the app configures, as Chromium stored them on one chunk."""
    assert cookie.get("domain") == "127.0.0.1", cookie  # host-only
    assert cookie.get("path") == "/", cookie
    assert cookie.get("secure") is True, cookie  # http://127.0.0.1 is a secure context
    assert cookie.get("httpOnly") is True, cookie
    assert cookie.get("sameSite") == "Strict", cookie
    assert cookie.get("expires") == -1, cookie  # a browser-session cookie (max_age None)


def last(app: App, path: str) -> Exchange:
    """The last request to *path* the app received."""
    found = [e for e in app.seen if e.path == path]
    assert found, app.seen
    return found[-1]


def received(exchange: Exchange) -> Pairs:
    """The (name, value) pairs of the Cookie header the server received."""
    pairs = []
    for part in exchange.cookie.split("; ") if exchange.cookie else []:
        name, _, value = part.partition("=")
        pairs.append((name, value))
    return pairs


async def store(page: Page, context: BrowserContext, app: App, n: int) -> tuple[str, Pairs]:
    """``/set?n=N`` in the browser: the blob stored and the cookies it was written to, which
    the browser now holds, every one with the configured attributes."""
    response = await page.goto(f"{app.base}/set?n={n}")
    assert response is not None and response.status == 200
    blob = await response.text()
    assert len(blob) == n
    pairs = set_pairs(last(app, "/set").set_cookies)
    assert [name for name, _ in pairs] == chunk_names(app.name, len(pairs)), pairs
    held = await ours(context, app)
    assert sorted((c.get("name", ""), c.get("value", "")) for c in held) == sorted(pairs)
    for cookie in held:
        assert_attributes(cookie)
    return blob, pairs


async def assert_reads_back(page: Page, app: App, blob: str, pairs: Pairs) -> None:
    """The next request carries exactly *pairs* (and nothing else) and reads *blob*."""
    response = await page.goto(f"{app.base}/get")
    assert response is not None and response.status == 200
    assert await response.text() == blob
    got = last(app, "/get")
    assert sorted(received(got)) == sorted(pairs)
    assert len(got.cookie) == total_size(pairs)  # "a=1; b=2": what the driver counts
    assert got.set_cookies == []  # a read changes no cookie


# -- the tests ------------------------------------------------------------------------------------


async def test_one_cookie_just_under_chunk_size_round_trips(
    context: BrowserContext, page: Page, serve: Serve
) -> None:
    app = await start_app(serve)
    n = await largest(app.base, one_cookie)
    blob, pairs = await store(page, context, app, n)
    assert len(pairs) == 1
    assert CHUNK_SIZE - 3 <= pair_size(*pairs[0]) <= CHUNK_SIZE
    assert "." not in pairs[0][1]  # one cookie: no chunk count
    await assert_reads_back(page, app, blob, pairs)


async def test_one_byte_over_chunk_size_is_two_cookies_and_round_trips(
    context: BrowserContext, page: Page, serve: Serve
) -> None:
    app = await start_app(serve)
    n = await largest(app.base, one_cookie) + 1
    blob, pairs = await store(page, context, app, n)
    assert len(pairs) == 2
    assert pair_size(*pairs[0]) == CHUNK_SIZE  # the first chunk is filled to chunk_size
    assert pairs[0][1].startswith("2.")
    assert pair_size(*pairs[1]) < 20  # the few bytes that did not fit
    await assert_reads_back(page, app, blob, pairs)


async def test_just_under_max_size_round_trips(
    context: BrowserContext, page: Page, serve: Serve
) -> None:
    app = await start_app(serve)
    n = await largest(app.base, within(MAX_SIZE))
    blob, pairs = await store(page, context, app, n)
    assert len(pairs) == 2
    assert MAX_SIZE - 3 <= total_size(pairs) <= MAX_SIZE
    assert pair_size(*pairs[0]) == CHUNK_SIZE
    await assert_reads_back(page, app, blob, pairs)


async def test_shrinking_to_one_cookie_deletes_the_stale_chunk(
    context: BrowserContext, page: Page, serve: Serve
) -> None:
    app = await start_app(serve)
    single = await largest(app.base, one_cookie)
    _, two = await store(page, context, app, single + 500)
    assert len(two) == 2

    blob, one = await store(page, context, app, 100)
    assert len(one) == 1
    headers = last(app, "/set").set_cookies
    assert deleted_names(headers) == [f"{app.name}.1"]
    # a deletion names every attribute of the cookie it deletes, or browsers ignore it
    deletion = next(h for h in headers if is_deletion(h)).lower()
    assert all(a in deletion for a in ("path=/", "secure", "httponly", "samesite=strict"))
    # store() checked the browser holds exactly the one cookie written: `.1` is gone
    assert [c.get("name") for c in await ours(context, app)] == [app.name]
    await assert_reads_back(page, app, blob, one)


@pytest.mark.parametrize(("before", "chunks"), [(100, 1), (3500, 2)],
                         ids=["from-one-cookie", "from-two-cookies"])
async def test_over_max_size_fails_and_the_browser_keeps_the_previous_session(
    context: BrowserContext, page: Page, serve: Serve, before: int, chunks: int
) -> None:
    app = await start_app(serve)
    too_large = await largest(app.base, within(MAX_SIZE)) + 1  # one byte more: refused
    blob, pairs = await store(page, context, app, before)
    assert len(pairs) == chunks
    held = await ours(context, app)

    response = await page.goto(f"{app.base}/set?n={too_large}")
    assert response is not None and response.status == 500  # SessionTooLarge at save()
    refused = last(app, "/set")
    assert (refused.status, refused.set_cookies) == (500, [])
    assert sorted(received(refused)) == sorted(pairs)
    assert await ours(context, app) == held  # not one chunk touched
    await assert_reads_back(page, app, blob, pairs)


@pytest.mark.parametrize(("name_size", "stored"), [
    (4095, True), (4096, True), (4097, False)], ids=["4095", "4096", "4097"])
@pytest.mark.parametrize("name", ["s", LONG_NAME], ids=["short-name", "long-name"])
async def test_chromium_keeps_4096_bytes_of_name_and_value_and_drops_more(
    context: BrowserContext, page: Page, serve: Serve, name: str, name_size: int, stored: bool
) -> None:
    """Raw Set-Cookie headers, without the driver: Chromium's own limit, "=" not counted."""
    value = "v" * (name_size - len(name))

    async def set_raw(request: web.Request) -> web.Response:
        response = web.Response(text="set")
        response.headers.add("Set-Cookie", f"{name}={value}; Path=/; Secure; HttpOnly; "
                                           "SameSite=Strict")
        return response

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("Cookie", ""))

    raw = web.Application()
    raw.router.add_get("/set", set_raw)
    raw.router.add_get("/echo", echo)
    base = await serve(raw)
    await page.goto(f"{base}/set")
    held = [(c.get("name"), c.get("value")) for c in await context.cookies(base)]
    assert held == ([(name, value)] if stored else [])  # dropped: the response was still 200
    response = await page.goto(f"{base}/echo")
    assert response is not None
    assert await response.text() == (f"{name}={value}" if stored else "")


async def test_chunk_size_above_4096_is_refused() -> None:
    with pytest.raises(ConfigError, match="chunk_size must be at most 4096"):
        session_app(chunk_size=CHROMIUM_LIMIT + 1)


async def test_chunk_size_4096_with_a_long_name_fits_chromium(
    context: BrowserContext, page: Page, serve: Serve
) -> None:
    """The largest chunk the driver allows: 4,096 bytes of name=value, 4,095 of name and
    value, one byte under what Chromium keeps; each chunk carries every attribute."""
    app = await start_app(serve, LONG_NAME, chunk_size=CHROMIUM_LIMIT, max_size=AIOHTTP_LIMIT)
    single = await largest(app.base, one_cookie)
    blob, pairs = await store(page, context, app, single)
    assert CHROMIUM_LIMIT - 3 <= pair_size(*pairs[0]) <= CHROMIUM_LIMIT
    await assert_reads_back(page, app, blob, pairs)

    n = await largest(app.base, within(AIOHTTP_LIMIT))
    blob, pairs = await store(page, context, app, n)
    assert [pair_size(*p) for p in pairs][:-1] == [CHROMIUM_LIMIT] * (len(pairs) - 1)
    assert len(pairs) == 2
    assert all(len(name) + len(value) == CHROMIUM_LIMIT - 1 for name, value in pairs[:-1])
    assert AIOHTTP_LIMIT - 3 <= total_size(pairs) <= AIOHTTP_LIMIT
    await assert_reads_back(page, app, blob, pairs)  # store() checked every chunk's attributes


@pytest.mark.parametrize(("max_size", "chunks"), [
    pytest.param(MAX_SIZE, 2, id="two-chunks-default-max-size"),
    pytest.param(AIOHTTP_LIMIT, 3, id="three-chunks"),
])
async def test_logout_deletes_every_chunk(
    context: BrowserContext, page: Page, serve: Serve, max_size: int, chunks: int
) -> None:
    app = await start_app(serve, max_size=max_size)
    n = await largest(app.base, within(max_size))
    _, pairs = await store(page, context, app, n)
    assert len(pairs) == chunks

    response = await page.goto(f"{app.base}/out")
    assert response is not None and response.status == 200
    out = last(app, "/out")
    assert sorted(received(out)) == sorted(pairs)
    assert set_pairs(out.set_cookies) == []  # the new session is empty: nothing stored
    assert sorted(deleted_names(out.set_cookies)) == sorted(name for name, _ in pairs)
    assert await ours(context, app) == []
    response = await page.goto(f"{app.base}/get")
    assert response is not None and await response.text() == ""
    assert last(app, "/get").cookie == ""


async def test_the_largest_max_size_fits_what_aiohttp_reads_back(
    browser: Browser, serve: Serve
) -> None:
    """The largest max_size the driver accepts is what aiohttp's server reads back.

    Cookies that make a Cookie header of 8,182 bytes work with either parser. Above it
    (9,000 here, before the cap) the session was saved (200), kept by Chromium and sent,
    and aiohttp refused every later request with 400 before the app ran: the session could
    not be read, changed or logged out of until the browser dropped the cookies. So a
    max_size above 8,182 is a ConfigError.
    """
    with pytest.raises(ConfigError, match="8,182"):
        SessionManager({"default": "c", "drivers": {"c": {"driver": "cookie",
                                                          "max_size": AIOHTTP_REFUSES}},
                        "encryption": {"key": KEY}})
    app = await start_app(serve, max_size=AIOHTTP_LIMIT)
    n = await largest(app.base, within(AIOHTTP_LIMIT), hi=2 * AIOHTTP_REFUSES)
    ctx = await browser.new_context()
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        page = await ctx.new_page()
        _, pairs = await store(page, ctx, app, n)
        statuses = []
        for path in ("/get", "/out"):
            response = await page.goto(f"{app.base}{path}")
            assert response is not None
            statuses.append(response.status)
        result = (total_size(pairs), len(pairs), statuses, len(await ours(ctx, app)))
    finally:
        await ctx.close()
    assert AIOHTTP_LIMIT - 3 <= result[0] <= AIOHTTP_LIMIT, result
    assert result[1:] == (3, [200, 200], 0), result  # read, then logged out: no cookie left
