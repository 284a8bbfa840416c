"""aiosessmgr.compat: one aiohttp-session app, run on aiohttp-session and on aiosessmgr."""

from __future__ import annotations

import inspect
import re
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
from typing import Any, cast

import aiohttp_session
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp_session.cookie_storage import EncryptedCookieStorage

import aiosessmgr
from aiosessmgr import DriverError, MemoryDriver, SessionError, SessionManager, SessionStore, compat
from aiosessmgr.compat import CompatSession

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]
COOKIE = "AIOHTTP_SESSION"  # aiohttp-session's default name, kept by the migrated app

MANAGER_CONFIG: dict[str, Any] = {
    "default": "memory",
    "drivers": {"memory": {"driver": "memory", "lifetime": 120}},
    "cookie": {"name": COOKIE},
    "lottery": (0, 100),
}


# -- the app, written once against aiohttp-session's API ---------------------------------


def make_app(sessions: Any, storage: Any) -> web.Application:
    """An aiohttp-session app; *sessions* provides setup, get_session and new_session."""

    async def index(request: web.Request) -> web.Response:
        session = await sessions.get_session(request)
        created_ok = isinstance(session.created, int) and abs(session.created - time.time()) < 60
        was_empty = session.empty
        session["visits"] = session.get("visits", 0) + 1
        return web.Response(text=f"{session.get('user', 'anonymous')} "
                                 f"visits={session['visits']} new={session.new} "
                                 f"was_empty={was_empty} created_ok={created_ok} "
                                 f"max_age={session.max_age} notice={session.get('notice')}")

    async def login(request: web.Request) -> web.Response:
        form = await request.post()
        session = await sessions.new_session(request)
        session["user"] = str(form["name"])
        raise web.HTTPFound("/")

    async def cart(request: web.Request) -> web.Response:
        session = await sessions.get_session(request)
        if "cart" not in session:
            session["cart"] = []
        session["cart"].append(request.query["item"])  # in place: only changed() saves it
        if "forget_to_mark" not in request.query:
            session.changed()
        return web.Response(text=",".join(session["cart"]))

    async def logout(request: web.Request) -> web.Response:
        session = await sessions.get_session(request)
        session.invalidate()  # not awaited, as in aiohttp-session
        if "notice" in request.query:
            session["notice"] = request.query["notice"]
        if "next" in request.query:
            raise web.HTTPFound(request.query["next"])
        return web.Response(text=f"bye empty={session.empty}")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_post("/login", login)
    app.router.add_get("/cart", cart)
    app.router.add_get("/logout", logout)
    sessions.setup(app, storage)
    return app


# -- the implementations it runs on ------------------------------------------------------


@dataclass
class Impl:
    name: str
    sessions: Any
    storage: Any

    @property
    def manager(self) -> SessionManager | None:
        return self.storage if isinstance(self.storage, SessionManager) else None


def _middleware_only(app: web.Application, manager: SessionManager) -> None:
    app.middlewares.append(compat.session_middleware(manager))


IMPLS = [
    # aiohttp-session keys request storage by strings, which aiohttp now warns about
    pytest.param("aiohttp_session", id="aiohttp-session", marks=pytest.mark.filterwarnings(
        "ignore::aiohttp.web_exceptions.NotAppKeyWarning")),
    pytest.param("compat", id="aiosessmgr.compat"),
    pytest.param("compat_middleware", id="aiosessmgr.compat.session_middleware"),
]


@pytest.fixture(params=IMPLS)
async def impl(request: pytest.FixtureRequest) -> AsyncIterator[Impl]:
    if request.param == "aiohttp_session":
        yield Impl(request.param, aiohttp_session, aiohttp_session.SimpleCookieStorage())
        return
    # the only lines an app changes: the import, and a manager instead of a storage
    manager = SessionManager(MANAGER_CONFIG)
    sessions: ModuleType | SimpleNamespace = compat
    if request.param == "compat_middleware":
        sessions = SimpleNamespace(setup=_middleware_only, get_session=compat.get_session,
                                   new_session=compat.new_session)
    yield Impl(request.param, sessions, manager)
    await manager.close()


def cookie(client: Client) -> str | None:
    for morsel in client.session.cookie_jar:
        if morsel.key == COOKIE:
            return morsel.value
    return None


async def replay(client: Client, value: str) -> str:
    """GET / with an old cookie value, as a thief holding it would."""
    client.session.cookie_jar.clear()
    return await (await client.get("/", cookies={COOKIE: value})).text()


async def is_dead(manager: SessionManager, session_id: str) -> bool:
    return await manager.get_driver().read(session_id) is None


def page(user: str, visits: int, new: bool, was_empty: bool, notice: str | None = None) -> str:
    return (f"{user} visits={visits} new={new} was_empty={was_empty} created_ok=True "
            f"max_age=None notice={notice}")


async def test_login_counter_cart_logout(impl: Impl, aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app(impl.sessions, impl.storage))

    assert await (await client.get("/")).text() == page("anonymous", 1, True, True)
    assert await (await client.get("/")).text() == page("anonymous", 2, False, False)
    anonymous = cookie(client)
    assert anonymous is not None

    response = await client.post("/login", data={"name": "alice"})  # redirect followed
    assert await response.text() == page("alice", 1, False, False)
    alice = cookie(client)
    assert alice is not None and alice != anonymous

    carts = [await (await client.get(url)).text() for url in (
        "/cart?item=book", "/cart?item=pen", "/cart?item=lost&forget_to_mark=1",
        "/cart?item=cup")]
    assert carts == ["book", "book,pen", "book,pen,lost", "book,pen,cup"]

    assert await (await client.get("/logout")).text() == "bye empty=True"
    assert await (await client.get("/")).text() == page("anonymous", 1, True, True)

    manager = impl.manager
    if manager is None:
        # aiohttp-session's cookie storage holds the data in the cookie: a copy of the
        # logged-in cookie still logs in after logout. This is what the migration fixes.
        assert await replay(client, alice) == page("alice", 2, False, False)
        return
    # aiosessmgr: new_session destroyed the pre-login record, invalidate the logged-in one
    assert await is_dead(manager, anonymous) and await is_dead(manager, alice)
    assert await replay(client, alice) == page("anonymous", 1, True, True)
    assert await replay(client, anonymous) == page("anonymous", 1, True, True)


async def test_keys_set_after_invalidate_are_kept(impl: Impl,
                                                  aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app(impl.sessions, impl.storage))
    response = await client.post("/login", data={"name": "bob"})
    assert await response.text() == page("bob", 1, False, False)
    bob = cookie(client)
    assert bob is not None

    # invalidate(), then a notice, then a redirect (an HTTPException): the notice survives
    response = await client.get("/logout?notice=goodbye&next=/")
    assert await response.text() == page("anonymous", 1, False, False, notice="goodbye")
    after = cookie(client)
    assert after is not None and after != bob
    if impl.manager is not None:
        assert await is_dead(impl.manager, bob)
        assert not await is_dead(impl.manager, after)


# -- compat-only behaviour ---------------------------------------------------------------


@pytest.fixture
async def manager() -> AsyncIterator[SessionManager]:
    mgr = SessionManager(MANAGER_CONFIG)
    yield mgr
    await mgr.close()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def client_for(aiohttp_client: ClientFactory, manager: SessionManager,
                     **routes: Handler) -> Client:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(f"/{path}", handler)
    compat.setup(app, manager)
    return await aiohttp_client(app)


async def test_adapter_api(manager: SessionManager, aiohttp_client: ClientFactory) -> None:
    seen: dict[str, Any] = {}

    async def first(request: web.Request) -> web.Response:
        session = await compat.get_session(request)
        assert session is await compat.get_session(request)  # one adapter per request
        assert session.store is await aiosessmgr.get_session(request, manager)
        assert isinstance(session, MutableMapping)
        assert session.identity is None and session.new and session.empty
        session.update({"a": 1}, b=2)
        assert session.setdefault("c", 3) == 3 and session.setdefault("c", 4) == 3
        assert session.pop("b") == 2 and session.pop("b", None) is None
        with pytest.raises(KeyError):
            session.pop("b")
        assert dict(session) == {"a": 1, "c": 3} and len(session) == 2 and "a" in session
        del session["c"]
        assert list(session) == ["a"] and list(session.items()) == [("a", 1)]
        assert "CompatSession" in repr(session) and "new:True" in repr(session)
        with pytest.raises(SessionError, match=r"cookie\.max_age"):
            session.max_age = 60
        with pytest.raises(NotImplementedError, match="set_new_identity"):
            session.set_new_identity("chosen")
        seen["store_id"] = session.store.id
        return web.Response(text="ok")

    async def second(request: web.Request) -> web.Response:
        session = await compat.get_session(request)
        assert not session.new and session["a"] == 1
        assert session.identity == seen["store_id"] == cookie(client)
        session.clear()
        assert session.empty and session.identity == seen["store_id"]  # clear keeps the id
        return web.Response(text="ok")

    client = await client_for(aiohttp_client, manager, first=first, second=second)
    assert (await client.get("/first")).status == 200
    assert (await client.get("/second")).status == 200


async def test_max_age_comes_from_the_cookie_config(aiohttp_client: ClientFactory) -> None:
    manager = SessionManager({**MANAGER_CONFIG, "cookie": {"name": COOKIE, "max_age": 3600}})

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=str((await compat.get_session(request)).max_age))

    client = await client_for(aiohttp_client, manager, max_age=handler)
    assert await (await client.get("/max_age")).text() == "3600"


async def test_get_session_after_invalidate_carries_it_out(
        manager: SessionManager, aiohttp_client: ClientFactory) -> None:
    async def login(request: web.Request) -> web.Response:
        (await compat.new_session(request))["user"] = "carol"
        return web.Response(text="ok")

    async def logout(request: web.Request) -> web.Response:
        session = await compat.get_session(request)
        old = session.identity
        session.invalidate()
        assert session.invalidation_pending and session.identity == old and session.empty
        assert await compat.get_session(request) is session
        assert not session.invalidation_pending
        assert session.identity is None and session.store.id != old  # new id, not stored
        assert old is not None and await is_dead(manager, old)
        return web.Response(text="bye")

    client = await client_for(aiohttp_client, manager, login=login, logout=logout)
    await client.get("/login")
    response = await client.get("/logout")
    assert await response.text() == "bye"
    assert COOKIE in response.cookies and response.cookies[COOKIE].value == ""  # deleted


async def test_a_login_after_invalidate_stands(manager: SessionManager,
                                               aiohttp_client: ClientFactory) -> None:
    # invalidate() (deferred) then the store's login(): the invalidation is carried out
    # first, so the session ends up logged in as the new user, under a new id
    async def login(request: web.Request) -> web.Response:
        session = await compat.get_session(request)
        await session.store.login(request.query["user"])
        session["who"] = request.query["user"]
        return web.Response(text="ok")

    async def switch(request: web.Request) -> web.Response:
        session = await compat.get_session(request)
        old = session.store.id
        session.invalidate()
        await session.store.login("bob")
        assert not session.invalidation_pending and await is_dead(manager, old)
        return web.Response(text="ok")

    async def whoami(request: web.Request) -> web.Response:
        session = await compat.get_session(request)
        return web.Response(text=f"{session.store.user_id} {session.get('who')}")

    client = await client_for(aiohttp_client, manager, login=login, switch=switch,
                              whoami=whoami)
    await client.get("/login", params={"user": "ann"})
    assert await (await client.get("/whoami")).text() == "ann ann"
    await client.get("/switch")
    assert await (await client.get("/whoami")).text() == "bob None"  # ann's data gone
    assert len(await manager.user_sessions("bob")) == 1
    assert await manager.user_sessions("ann") == []


async def test_new_session_after_invalidate(manager: SessionManager,
                                            aiohttp_client: ClientFactory) -> None:
    async def login(request: web.Request) -> web.Response:
        (await compat.get_session(request))["user"] = "dave"
        return web.Response(text="ok")

    async def switch(request: web.Request) -> web.Response:
        old = await compat.get_session(request)
        old.invalidate()
        fresh = await compat.new_session(request)
        assert fresh is not old and not old.invalidation_pending
        assert await compat.get_session(request) is fresh
        fresh["user"] = "erin"
        return web.Response(text="ok")

    async def whoami(request: web.Request) -> web.Response:
        return web.Response(text=str((await compat.get_session(request)).get("user")))

    client = await client_for(aiohttp_client, manager, login=login, switch=switch,
                              whoami=whoami)
    await client.get("/login")
    dave = cookie(client)
    assert (await client.get("/switch")).status == 200  # the handler's asserts held
    assert dave is not None and await is_dead(manager, dave)
    assert await (await client.get("/whoami")).text() == "erin"


@pytest.mark.parametrize("notice", [pytest.param(False, id="cookie-deleted"),
                                    pytest.param(True, id="new-id-kept")])
async def test_invalidate_before_a_streamed_response(
        manager: SessionManager, aiohttp_client: ClientFactory, notice: bool) -> None:
    async def login(request: web.Request) -> web.Response:
        (await compat.get_session(request))["user"] = "frank"
        return web.Response(text="ok")

    async def stream(request: web.Request) -> web.StreamResponse:
        session = await compat.get_session(request)
        session.invalidate()
        if notice:
            session["notice"] = "bye"
        response = web.StreamResponse()
        await response.prepare(request)  # the cookie is decided here
        await response.write(b"streamed")
        return response

    client = await client_for(aiohttp_client, manager, login=login, stream=stream)
    await client.get("/login")
    old = cookie(client)
    response = await client.get("/stream")
    assert await response.read() == b"streamed"
    assert old is not None and await is_dead(manager, old)
    new = response.cookies[COOKIE].value
    if notice:
        assert new not in ("", old)
        assert (await manager.load(new)).get("notice") == "bye"
    else:
        assert new == ""


async def test_store_failure_while_invalidating_is_503(aiohttp_client: ClientFactory) -> None:
    class FailingDestroy(MemoryDriver):
        async def destroy(self, session_id: str) -> None:
            raise DriverError("store down")

    manager = SessionManager({**MANAGER_CONFIG, "default": "failing",
                              "drivers": {"failing": {"driver": "failing"}}})
    manager.extend("failing", lambda cfg: FailingDestroy())

    async def login(request: web.Request) -> web.Response:
        (await compat.get_session(request))["user"] = "gina"
        return web.Response(text="ok")

    async def logout(request: web.Request) -> web.Response:
        (await compat.get_session(request)).invalidate()
        return web.Response(text="bye")

    client = await client_for(aiohttp_client, manager, login=login, logout=logout)
    assert (await client.get("/login")).status == 200
    response = await client.get("/logout")
    assert response.status == 503 and "session store unavailable" in await response.text()


@pytest.mark.parametrize("install", ["aiosessmgr.setup", "compat.setup", "outer-middleware"])
async def test_invalidate_is_carried_out_whatever_the_setup_and_middleware_order(
        manager: SessionManager, aiohttp_client: ClientFactory, install: str) -> None:
    async def login(request: web.Request) -> web.Response:
        session = await compat.get_session(request)
        session["user"] = "alice"
        return web.Response(text="in")

    async def logout(request: web.Request) -> web.Response:
        session = await compat.get_session(request)
        session.invalidate()  # synchronous: carried out before the cookie is decided
        return web.Response(text="out")

    @web.middleware
    async def outer(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(request)  # a middleware of the app's own, around ours

    app = web.Application()
    app.router.add_get("/login", login)
    app.router.add_get("/logout", logout)
    if install == "outer-middleware":
        app.middlewares.append(outer)
        compat.setup(app, manager)
        app.middlewares.append(outer)
    elif install == "compat.setup":
        compat.setup(app, manager)
    else:
        aiosessmgr.setup(app, manager)
    assert app.on_response_prepare[0].__module__ == "aiosessmgr.web"  # no signal inserted
    client = await aiohttp_client(app)
    await client.get("/login")
    old_id = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value
    response = await client.get("/logout")
    assert response.status == 200
    assert (await manager.runtime().driver.read(old_id)) is None  # the old record is gone
    assert COOKIE not in client.session.cookie_jar.filter_cookies(client.make_url("/"))


async def test_get_session_needs_a_session_middleware(
        manager: SessionManager, aiohttp_client: ClientFactory) -> None:
    async def handler(request: web.Request) -> web.Response:
        with pytest.raises(SessionError, match=r"no session middleware.*aiosessmgr\.setup"):
            await compat.get_session(request)
        with pytest.raises(SessionError, match=r"no session middleware.*aiosessmgr\.setup"):
            await compat.new_session(request)
        return web.Response(text="refused")

    app = web.Application()
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    assert await (await client.get("/")).text() == "refused"


@pytest.mark.parametrize(("storage", "advice"), [
    pytest.param(aiohttp_session.SimpleCookieStorage(), '"memory" driver', id="simple"),
    pytest.param(EncryptedCookieStorage(b"k" * 32), '"encryption"', id="encrypted"),
])
def test_setup_refuses_an_aiohttp_session_storage(storage: Any, advice: str) -> None:
    for install in (lambda: compat.setup(web.Application(), storage),
                    lambda: compat.session_middleware(storage)):
        with pytest.raises(TypeError, match=r"takes an aiosessmgr\.SessionManager") as info:
            install()
        assert advice in str(info.value) and '"cookie" section' in str(info.value)


def test_setup_refuses_other_objects() -> None:
    with pytest.raises(TypeError, match="not dict"):
        compat.setup(web.Application(), cast(SessionManager, {"default": "memory"}))


def test_created_without_created_at(manager: SessionManager) -> None:
    class Bare:  # a store without the created_at of the default Session
        new, stored, id = True, False, "x"

    session = CompatSession(cast(SessionStore, Bare()), manager)
    assert isinstance(session.created, int) and abs(session.created - time.time()) < 60


async def test_module_docstring_runs() -> None:
    doc = inspect.getdoc(compat) or ""
    blocks = [textwrap.dedent(m.group(1))
              for m in re.finditer(r"::\n\n((?:(?:    .*)?\n)+)", doc + "\n")]
    assert blocks
    manager = SessionManager()
    namespace: dict[str, Any] = {name: getattr(aiosessmgr, name) for name in aiosessmgr.__all__}
    namespace.update(manager=manager, session=await manager.driver())
    exec("from aiohttp import web\napp = web.Application()", namespace)
    try:
        for block in blocks:
            exec(compile(block, "<compat docstring>", "exec"), namespace)
        assert namespace["setup"] is compat.setup
        assert len(namespace["app"].middlewares) == 1
    finally:
        await manager.close()


async def _compat_client(aiohttp_client: ClientFactory, manager: SessionManager,
                         **routes: Handler) -> Any:
    app = web.Application()
    for path, route in routes.items():
        app.router.add_get(f"/{path}", route)
    compat.setup(app, manager)
    return await aiohttp_client(app)


def _cookie_of(client: Any) -> str | None:
    jar = client.session.cookie_jar.filter_cookies(client.make_url("/"))
    return jar[COOKIE].value if COOKIE in jar else None


async def test_invalidate_after_a_stream_was_prepared_is_still_carried_out(
        manager: SessionManager, aiohttp_client: ClientFactory) -> None:
    async def login(request: web.Request) -> web.Response:
        (await compat.get_session(request))["user"] = "alice"
        return web.Response(text="in")

    async def stream_logout(request: web.Request) -> web.StreamResponse:
        session = await compat.get_session(request)
        response = web.StreamResponse()
        await response.prepare(request)  # the cookie is decided: too late to change it
        session.invalidate()  # but the old record must still go
        await response.write(b"bye")
        return response

    client = await _compat_client(aiohttp_client, manager, login=login, logout=stream_logout)
    await client.get("/login")
    old_id = _cookie_of(client)
    assert old_id is not None
    assert (await client.get("/logout")).status == 200
    assert await manager.runtime().driver.read(old_id) is None


async def test_flash_now_and_token_set_after_invalidate_keep_their_meaning(
        manager: SessionManager, aiohttp_client: ClientFactory) -> None:
    async def login(request: web.Request) -> web.Response:
        (await compat.get_session(request))["user"] = "alice"
        return web.Response(text="in")

    async def logout(request: web.Request) -> web.Response:
        session = await compat.get_session(request)
        session.invalidate()
        session.store.flash("status", "logged out")  # shown once, on the next page
        session.store.now("tmp", "this request only")
        token = session.store.token  # the login form of the logout page
        return web.Response(text=token)

    async def page(request: web.Request) -> web.Response:
        session = await compat.get_session(request)
        return web.Response(text=f"{session.get('status')} {session.get('tmp')} "
                                 f"{session.get('user')} {session.store.token}")

    client = await _compat_client(aiohttp_client, manager, login=login, logout=logout,
                                  page=page)
    await client.get("/login")
    token = await (await client.get("/logout")).text()
    assert await (await client.get("/page")).text() == f"logged out None None {token}"
    assert await (await client.get("/page")).text() == f"None None None {token}"
