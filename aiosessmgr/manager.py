"""SessionManager: named drivers, the session factory, garbage collection and events."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from . import users
from .codec import Codec
from .config import BUILTIN_DRIVERS, KEY_HELP, DriverConfig, SessionConfig
from .drivers.base import SessionDriver
from .errors import ConfigError
from .events import EventRegistry, Listener, SessionEventInfo, SessionEvents
from .ids import is_valid_handle
from .log import logger
from .runtime import DriverRuntime
from .session import Session, SessionStore
from .users import UserSession

__all__ = ["DriverFactory", "SessionManager"]


#: builds a driver from its config section; what ``extend`` registers
DriverFactory = Callable[[DriverConfig], SessionDriver]


def _builtin_factory(kind: str) -> DriverFactory:
    # imported on demand so that an app on the memory driver never imports redis
    if kind == "memory":
        from .drivers.memory import MemoryDriver

        return MemoryDriver.from_config
    if kind == "file":
        from .drivers.file import FileDriver

        return FileDriver.from_config
    from .drivers.redis import RedisDriver

    return RedisDriver.from_config


class SessionManager:
    """Owns the configured drivers and hands out sessions.

    Usage::

        manager = SessionManager({
            "default": "memory",
            "drivers": {"memory": {"driver": "memory", "lifetime": 120}},
        })
        session = await manager.driver()          # a new, started session
        session.put("user_id", 42)
        await session.save()
        same = await manager.load(session.id)     # load it again by id
        await manager.close()

    In an aiohttp app, pass the manager to ``aiosessmgr.setup(app, manager)`` instead
    of calling these yourself.
    """

    def __init__(
        self,
        config: SessionConfig | Mapping[str, Any] | None = None,
        *,
        store_class: type[SessionStore] = Session,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = SessionConfig.coerce(config)
        # wall clock (seconds) for created/last-write times; tests pass a fake one
        self.clock = clock
        if not (isinstance(store_class, type) and issubclass(store_class, SessionStore)):
            raise ConfigError("store_class must be a subclass of aiosessmgr.SessionStore")
        self.store_class = store_class
        self.events = EventRegistry()
        self.codec = Codec.from_config(self.config.serializer, self.config.encryption)
        self._factories: dict[str, DriverFactory] = {}
        self._runtimes: dict[str, DriverRuntime] = {}
        self._gc_tasks: dict[str, asyncio.Task[int]] = {}
        # driver name -> event loop time (monotonic seconds) when its last GC run ended
        self._gc_ended: dict[str, float] = {}
        # built-in drivers are built now, so a bad path or URL fails at construction
        for name, cfg in self.config.drivers.items():
            if cfg.driver in BUILTIN_DRIVERS:
                self.runtime(name)

    # -- drivers ---------------------------------------------------------------------------

    def extend(self, name: str, factory: DriverFactory) -> None:
        """Register a custom driver type: ``factory(driver_config) -> SessionDriver``.

        Config entries with ``"driver": name`` use it; ``manager.driver(name)`` works
        even without a config entry (default lifetime, no options).
        """
        if not callable(factory):
            raise ConfigError(f"extend({name!r}, ...) needs a callable factory")
        if name in self._runtimes:
            raise ConfigError(f"driver {name!r} is already in use; extend() it before first use")
        self._factories[name] = factory

    @property
    def default(self) -> str:
        """The name of the default driver."""
        return self.config.default

    def runtime(self, name: str | None = None) -> DriverRuntime:
        """The driver named *name* (default: the default driver) with what sessions need.

        Built on first use; raises ConfigError for a name neither configured nor extended.
        """
        key = name or self.config.default
        rt = self._runtimes.get(key)
        if rt is None:
            rt = self._runtimes[key] = self._build(key)
        return rt

    def context(self, name: str | None = None) -> DriverRuntime:
        """Deprecated alias of :meth:`runtime` (the name before 0.2)."""
        warnings.warn("SessionManager.context() is deprecated; use runtime()",
                      DeprecationWarning, stacklevel=2)
        return self.runtime(name)

    def get_driver(self, name: str | None = None) -> SessionDriver:
        """The driver instance behind *name* (built on first use)."""
        return self.runtime(name).driver

    def _build(self, name: str) -> DriverRuntime:
        cfg = self.config.drivers.get(name)
        if cfg is None:
            if name not in self._factories:
                raise ConfigError(
                    f"unknown driver {name!r}; configured: "
                    f"{', '.join(sorted(self.config.drivers))}"
                    + (f"; extended: {', '.join(sorted(self._factories))}"
                       if self._factories else "")
                )
            cfg = DriverConfig(driver=name, lifetime=self.config.lifetime)
        factory = self._factories.get(cfg.driver)
        if factory is None and cfg.driver not in BUILTIN_DRIVERS:
            raise ConfigError(
                f"driver type {cfg.driver!r} of {name!r} is not registered; built-in: "
                f"{', '.join(BUILTIN_DRIVERS)}; register others with "
                f"manager.extend({cfg.driver!r}, factory)"
            )
        codec = self.codec
        if factory is None and cfg.driver == "cookie":
            # it needs the manager's cookie name, key and clock; it seals the whole record
            # (cookie name as associated data), so the record is not encrypted twice
            driver: SessionDriver = self._cookie_driver(name, cfg)
            codec = Codec(self.codec.serializer)
        else:
            driver = (factory or _builtin_factory(cfg.driver))(cfg)
        if not isinstance(driver, SessionDriver):
            raise ConfigError(
                f"the factory for {cfg.driver!r} returned {type(driver).__name__}, "
                "not a SessionDriver"
            )
        absolute = self.config.absolute_lifetime
        return DriverRuntime(name=name, driver=driver, codec=codec, events=self.events,
                            ttl=cfg.ttl, clock=self.clock,
                            absolute_ttl=None if absolute is None else absolute * 60,
                            max_record_size=self.config.max_record_size,
                            users=self.config.users)

    def _cookie_driver(self, name: str, cfg: DriverConfig) -> SessionDriver:
        from .codec import AesGcmCipher
        from .cookies import cookie_names, cookie_values
        from .drivers.cookie import CookieDriver

        encryption = self.config.encryption
        if encryption.key is None:
            raise ConfigError(
                "the cookie driver keeps each session in the browser, always encrypted: it "
                "needs the encryption section's key, e.g. \"encryption\": {\"key\": KEY}; "
                + KEY_HELP)
        if self.config.users.max_sessions is not None and name == self.config.default:
            raise ConfigError(
                "users.max_sessions cannot be enforced on the cookie driver: the sessions "
                "live in the browsers, and nothing on the server knows a user's sessions")
        return CookieDriver.from_config(
            cfg, cookie_name=self.config.cookie.name,
            cipher=AesGcmCipher(encryption.key, encryption.previous_keys),
            values=cookie_values, names=cookie_names, clock=self.clock)

    # -- sessions --------------------------------------------------------------------------

    def session(self, session_id: str | None = None, name: str | None = None) -> SessionStore:
        """An unstarted session for *session_id* (from a cookie); no store access yet."""
        return self.store_class(self.runtime(name), session_id)

    async def driver(self, name: str | None = None) -> SessionStore:
        """Start and return a new session on driver *name* (default driver if None)."""
        session = self.session(None, name)
        await session.start()
        return session

    async def load(self, session_id: str, name: str | None = None) -> SessionStore:
        """Load the session *session_id*; an unknown or malformed id gives a new session."""
        session = self.session(session_id, name)
        await session.start()
        return session

    async def destroy(self, session_id: str, name: str | None = None) -> None:
        """Remove a stored session by id (for example from an admin "log out everywhere")."""
        await self.runtime(name).destroy(session_id)
        self.events.emit(SessionEventInfo(SessionEvents.DESTROYED, session_id))

    # -- the sessions of a user ------------------------------------------------------------

    async def user_sessions(self, user_id: str | int,
                            name: str | None = None) -> list[UserSession]:
        """The live sessions of *user_id* on driver *name*, most recently active first.

        A "where you are logged in" page. Expired and destroyed sessions are never listed
        (each entry of the index is checked against its record). Raises SessionError if the
        driver keeps no index (the message names the methods to implement),
        TypeError/ValueError for a bad *user_id*, DriverError if the store fails.
        """
        rt = self.runtime(name)
        return [info for info, _ in await users.listing(rt, users.user_key(user_id))]

    async def end_user_sessions(self, user_id: str | int, keep: str | None = None,
                                name: str | None = None) -> int:
        """End every session of *user_id* except the one whose handle is *keep*.

        "Log out other devices" (``keep=session.handle``); ``keep=None`` ends all of them
        (after a password change, OWASP's session management advice); the request's own
        session among them then saves nothing more, and ``session.logout()`` also gives it
        a fresh cookie. What ends is what is stored: a ``login()`` of this request not yet
        saved comes after the end and stands (a fresh session). Returns how many ended
        (two calls at once may both count one); DESTROYED fires for each. Requests in
        flight on them save nothing. Errors as for :meth:`user_sessions`, and ValueError
        if *keep* is not a handle's shape.
        """
        rt, key = self.runtime(name), users.user_key(user_id)
        if keep is not None and not is_valid_handle(keep):
            # a typo must not log the caller out too: only a real handle, or None for all
            raise ValueError("keep must be a session's handle (session.handle) or None")
        return await users.end(rt, key, keep=keep)

    async def end_user_session(self, user_id: str | int, handle: str,
                               name: str | None = None) -> bool:
        """End the session of *user_id* whose handle is *handle* (a device's "Log out").

        False if the user has no live session of that handle (a malformed one included).
        Errors as for :meth:`user_sessions`.
        """
        rt, key = self.runtime(name), users.user_key(user_id)
        users.index_of(rt)
        if not is_valid_handle(handle):
            return False
        return await users.end(rt, key, handles={handle}) > 0

    # -- events ----------------------------------------------------------------------------

    def on(self, event: SessionEvents, listener: Listener) -> None:
        """Call *listener* (sync or async) with a SessionEventInfo whenever *event* happens."""
        self.events.on(event, listener)

    def off(self, event: SessionEvents, listener: Listener | None = None) -> None:
        """Stop calling *listener* (or every listener) for *event*."""
        self.events.off(event, listener)

    # -- garbage collection ----------------------------------------------------------------

    async def gc(self, name: str | None = None) -> dict[str, int]:
        """Collect expired sessions on *name*, or on every configured driver if None.

        Returns the number removed per driver name. Never throttled; a run's end (even a
        failed one) starts the driver's ``lottery_interval``.
        """
        names = [name] if name else list(self.config.drivers)
        result: dict[str, int] = {}
        for driver_name in names:
            ctx = self.runtime(driver_name)
            try:
                result[driver_name] = await ctx.driver.gc(ctx.ttl)
            finally:
                self._gc_ended[driver_name] = asyncio.get_running_loop().time()
        return result

    def schedule_gc(self, name: str | None = None) -> bool:
        """Start GC of driver *name* in the background unless one is already running.

        Errors are logged, never raised. Returns True if a run was started.
        """
        key = name or self.config.default
        running = self._gc_tasks.get(key)
        if running is not None and not running.done():
            return False
        task = asyncio.get_running_loop().create_task(self._gc_logged(key))
        self._gc_tasks[key] = task
        return True

    def lottery_gc(self, name: str | None = None) -> bool:
        """What a GC lottery hit calls: :meth:`schedule_gc`, unless the driver's last GC run
        in this process ended less than ``lottery_interval`` seconds ago (event loop time).

        Returns True if a run was started.
        """
        key = name or self.config.default
        ended = self._gc_ended.get(key)
        if ended is not None and (asyncio.get_running_loop().time() - ended
                                  < self.config.lottery_seconds(self.runtime(key).ttl)):
            return False
        return self.schedule_gc(key)

    async def _gc_logged(self, name: str) -> int:
        try:
            removed = (await self.gc(name))[name]
        except Exception:
            logger.exception("session garbage collection on driver %r failed", name)
            return 0
        logger.debug("session GC on driver %r removed %d sessions", name, removed)
        return removed

    async def wait_gc(self) -> None:
        """Wait for background GC runs to finish (used at shutdown and in tests)."""
        tasks = [t for t in self._gc_tasks.values() if not t.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop background GC, let async listeners finish, and close every driver."""
        for task in self._gc_tasks.values():
            task.cancel()
        await self.wait_gc()
        await self.events.drain()
        contexts, self._runtimes = list(self._runtimes.values()), {}
        for ctx in contexts:
            try:
                await ctx.driver.close()
            except Exception:
                logger.exception("closing session driver %r failed", ctx.name)
