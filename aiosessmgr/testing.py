"""The driver contract as a pytest suite: run it against any driver, built-in or your own.

Subclass :class:`DriverContract` in a test module and give it a ``driver`` fixture that
yields a fresh driver (and closes it afterwards). Every test of the contract then runs
against it: ``read``/``write``/``destroy``/``gc``, expiry, and each optional capability
the driver has (``read_touch``, ``compare_and_set``, locks, the user index,
``read_many``), plus sessions saved through a real :class:`~aiosessmgr.SessionManager`
(concurrent saves merged, a lost reply, logins listed and ended)::

    from collections.abc import AsyncIterator

    import pytest
    import pytest_asyncio

    from aiosessmgr import SessionDriver, SupportsCompareAndSet
    from aiosessmgr.testing import Advance, DriverContract

    class TestMyDriver(DriverContract):
        capabilities = frozenset({SupportsCompareAndSet})  # optional: pin what it has

        @pytest.fixture
        def now(self) -> list[float]:
            return [0.0]

        @pytest_asyncio.fixture
        async def driver(self, now: list[float]) -> AsyncIterator[SessionDriver]:
            driver = MyDriver(clock=lambda: now[0])  # your driver (here on a fake clock)
            yield driver
            await driver.close()

        @pytest.fixture
        def advance(self, now: list[float]) -> Advance:  # optional: runs the expiry tests
            async def advance(seconds: float) -> None:
                now[0] += seconds
            return advance

Requirements and rules:

* pytest and pytest-asyncio: the tests are marked ``asyncio``, so they run in its strict
  and auto modes alike (an async fixture of yours needs ``@pytest_asyncio.fixture`` in
  strict mode). Importing this module imports pytest, so only test code imports it;
  ``import aiosessmgr`` never does.
* **Time.** Tests never sleep to let records expire. ``advance(seconds)`` must make that
  much time pass for the store: move an injected clock (the memory driver), or move every
  stored deadline back (``UPDATE ... SET expires_at = expires_at - interval``, a file's
  mtime with ``os.utime``, Redis ``PEXPIRE`` with the key's ``PTTL`` minus the time). The
  checks leave at least a fifth of :attr:`DriverContract.ttl` of margin, so the store's
  own clock moving meanwhile does not matter. Without an ``advance`` fixture the expiry tests skip.
* **ttl.** Every write passes :attr:`DriverContract.ttl` seconds (60 by default), as the
  manager passes the driver's one lifetime; a driver that applies a configured lifetime
  instead (the file driver) is built with it.
* **Capabilities** are detected with ``isinstance`` on the runtime protocols of
  :mod:`aiosessmgr.drivers.base`. A test of a capability the driver lacks is skipped with
  a reason naming it, never passed. Set ``capabilities`` to the protocols your driver
  implements and the suite also fails if the detected set differs (a method renamed by
  mistake would otherwise turn its tests into skips).
* Ids are :func:`aiosessmgr.new_session_id` values, records start with a
  :data:`~aiosessmgr.drivers.base.VERSION_SIZE`-byte version, each test uses ids of its
  own; the driver's store may be shared between tests.

Longer than 600 lines: it is one suite, so that a driver's author subclasses one class.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar

import pytest

from .drivers.base import (
    VERSION_SIZE,
    SessionDriver,
    SupportsCompareAndSet,
    SupportsLock,
    SupportsReadMany,
    SupportsTouch,
    SupportsUserIndex,
)
from .events import SessionEvents
from .ids import new_handle, new_session_id
from .manager import SessionManager
from .session import SessionStore

__all__ = ["CAPABILITIES", "Advance", "DriverContract"]

#: ``advance(seconds)``: make *seconds* pass for the store (see the module docstring)
Advance = Callable[[float], Awaitable[None]]

#: the optional capabilities, each with the methods that make it (for skip reasons)
CAPABILITIES: dict[type, str] = {
    SupportsTouch: "read_touch (SupportsTouch)",
    SupportsCompareAndSet: "compare_and_set (SupportsCompareAndSet)",
    SupportsLock: "acquire_lock/release_lock (SupportsLock)",
    SupportsUserIndex: "index_user_session/user_session_index/unindex_user_sessions "
                       "(SupportsUserIndex)",
    SupportsReadMany: "read_many (SupportsReadMany)",
}

#: user ids every index must keep apart (each one's entries only its own)
USER_IDS = ["42", "4", "42 ", " 42", "../x", "..", "{}", "}{", "a}b{c", "{", "%7B", "user:1",
            "user", "ü🙂", "x" * 256, "a" * 43, "session:", "*", "?", "[ab]", "a b", "\\"]

#: payloads every driver must store and return byte for byte
PAYLOADS = [
    pytest.param(bytes(range(256)) * 4, id="every-byte"),
    pytest.param(b"\x00" * 9, id="nul-bytes"),
    pytest.param(b"\x00\x01\x02\x03\x04\x05\x06\x07\r\n$-1\r\n*3\r\n'\";--", id="lookalikes"),
    pytest.param(b"\xff" * VERSION_SIZE + bytes(1 << 20), id="one-mebibyte"),
]


def version(n: int) -> bytes:
    """The *n*-th test version: VERSION_SIZE bytes."""
    return n.to_bytes(VERSION_SIZE, "big")


def record(n: int, body: bytes = b"record") -> bytes:
    """A record with version *n* and *body*."""
    return version(n) + body


class _Plain(SessionDriver):
    """The test's driver lent to a manager with the required methods only; ``close()``
    leaves it open (its fixture closes it)."""

    def __init__(self, driver: SessionDriver) -> None:
        self.driver = driver
        #: awaited (once) before the next destroy(): a test's way into the middle of a race
        self.before_destroy: Callable[[], Awaitable[None]] | None = None

    async def read(self, session_id: str) -> bytes | None:
        return await self.driver.read(session_id)

    async def write(self, session_id: str, payload: bytes, ttl: int) -> None:
        await self.driver.write(session_id, payload, ttl)

    async def destroy(self, session_id: str) -> None:
        hook, self.before_destroy = self.before_destroy, None
        if hook is not None:
            await hook()
        await self.driver.destroy(session_id)

    async def gc(self, max_lifetime: int) -> int:
        return await self.driver.gc(max_lifetime)


class _Lent(_Plain):
    """A lent driver with compare-and-set.

    ``lose_next_reply``: the next compare-and-set that writes is sent again, as by a
    client whose first reply was lost, and the caller gets the retry's answer.
    """

    def __init__(self, driver: SessionDriver) -> None:
        assert isinstance(driver, SupportsCompareAndSet)
        super().__init__(driver)
        self._cas: SupportsCompareAndSet = driver
        self.lose_next_reply = False
        self.retry_answers: list[bool] = []

    async def compare_and_set(
        self, session_id: str, payload: bytes, ttl: int, expected: bytes | None
    ) -> bool:
        written = await self._cas.compare_and_set(session_id, payload, ttl, expected)
        if written and self.lose_next_reply:
            self.lose_next_reply = False
            retried = await self._cas.compare_and_set(session_id, payload, ttl, expected)
            self.retry_answers.append(retried)
            return retried
        return written


class _Touch(_Lent):
    """A lent driver that has read_touch too, so sessions use it as they would."""

    async def read_touch(self, session_id: str, ttl: int) -> bytes | None:
        assert isinstance(self.driver, SupportsTouch)
        return await self.driver.read_touch(session_id, ttl)


class _Index(_Lent):
    """A lent driver that has the user index too."""

    async def index_user_session(self, user_id: str, handle: str, session_id: str,
                                 ttl: int, expected: str | None = None) -> bool:
        assert isinstance(self.driver, SupportsUserIndex)
        return await self.driver.index_user_session(user_id, handle, session_id, ttl,
                                                    expected)

    async def user_session_index(self, user_id: str) -> dict[str, str]:
        assert isinstance(self.driver, SupportsUserIndex)
        return await self.driver.user_session_index(user_id)

    async def unindex_user_sessions(self, user_id: str, entries: Mapping[str, str]) -> int:
        assert isinstance(self.driver, SupportsUserIndex)
        return await self.driver.unindex_user_sessions(user_id, entries)


class _ReadMany(_Lent):
    """A lent driver that has read_many too."""

    async def read_many(self, session_ids: Sequence[str]) -> list[bytes | None]:
        assert isinstance(self.driver, SupportsReadMany)
        return await self.driver.read_many(session_ids)


def _lend(driver: SessionDriver) -> _Lent:
    """A _Lent wrapper of *driver* with the same optional capabilities it has."""
    bases = tuple(cls for cls, proto in ((_Touch, SupportsTouch), (_Index, SupportsUserIndex),
                                         (_ReadMany, SupportsReadMany))
                  if isinstance(driver, proto)) or (_Lent,)
    lent: _Lent = types.new_class("_LentDriver", bases)(driver)
    return lent


def _request(agent: str = "Contract/1.0", remote: str = "192.0.2.7") -> Any:
    """What login() reads from an aiohttp request: headers and remote."""
    return types.SimpleNamespace(headers={"User-Agent": agent}, remote=remote)


@pytest.mark.asyncio
class DriverContract:
    """The contract every :class:`~aiosessmgr.SessionDriver` keeps, as pytest tests.

    Subclass it as ``Test...``, define the ``driver`` fixture, and optionally the
    ``advance`` fixture and the class attributes below. See the module docstring.
    """

    #: seconds passed as ``ttl`` to every write (and as ``max_lifetime`` to ``gc``)
    ttl: ClassVar[int] = 60
    #: the optional protocols the driver implements, checked exactly; None: not pinned
    capabilities: ClassVar[frozenset[type] | None] = None
    #: sessions saved at once on one id by the concurrent-save tests
    concurrency: ClassVar[int] = 100

    @pytest.fixture
    def driver(self) -> SessionDriver:
        """Override: the driver under test, new for each test (yield it, then close it)."""
        raise NotImplementedError(f"{type(self).__name__} must define a `driver` fixture")

    @pytest.fixture
    def advance(self) -> Advance | None:
        """Override to run the expiry tests: an async ``advance(seconds)``, or None."""
        return None

    # -- helpers ---------------------------------------------------------------------------

    def require_capability(self, driver: SessionDriver, capability: type) -> None:
        """Skip unless *driver* has *capability*; fail if it was declared but is missing."""
        if isinstance(driver, capability):
            return
        name = CAPABILITIES[capability]
        if self.capabilities is not None and capability in self.capabilities:
            pytest.fail(f"{type(driver).__name__} is declared to have {name}, but "
                        f"isinstance(driver, {capability.__name__}) is False")
        pytest.skip(f"{type(driver).__name__} has no {name}")

    def require_clock(self, advance: Advance | None) -> Advance:
        """The advance hook, or skip: expiry cannot be tested without moving time."""
        if advance is None:
            pytest.skip(f"expiry: {type(self).__name__} defines no `advance` fixture, so "
                        "time cannot be moved for the store")
        return advance

    def seconds(self, fraction: float) -> float:
        """*fraction* of the ttl, in seconds."""
        return self.ttl * fraction

    def new_manager(self, driver: SessionDriver, users: Mapping[str, Any] | None = None,
                    clock: Callable[[], float] | None = None) -> SessionManager:
        """A SessionManager whose default driver is *driver*, with a lifetime of ttl.

        *users*: its ``users`` config section; *clock*: its wall clock (default time.time).
        """
        config: dict[str, Any] = {"default": "contract", "lottery": (0, 1), "drivers": {
            "contract": {"driver": "contract", "lifetime": self.ttl / 60}}}  # minutes
        if users is not None:
            config["users"] = users
        manager = (SessionManager(config) if clock is None
                   else SessionManager(config, clock=clock))
        manager.extend("contract", lambda config: driver)
        return manager

    @contextlib.asynccontextmanager
    async def lent_manager(
        self, driver: SessionDriver, users: Mapping[str, Any] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> AsyncIterator[tuple[SessionManager, _Lent]]:
        """A manager on *driver* with its compare-and-set (skips without it), touch, user
        index and read_many.

        The manager gets a wrapper (see ``_Lent``), so closing it leaves *driver* open.
        """
        self.require_capability(driver, SupportsCompareAndSet)
        lent = _lend(driver)
        manager = self.new_manager(lent, users, clock)
        try:
            yield manager, lent
        finally:
            await manager.close()

    # -- the required methods --------------------------------------------------------------

    async def test_is_a_session_driver(self, driver: SessionDriver) -> None:
        assert isinstance(driver, SessionDriver)

    async def test_capabilities_are_the_declared_ones(self, driver: SessionDriver) -> None:
        if self.capabilities is None:
            pytest.skip("capabilities: the class does not declare `capabilities`")
        found = {cap for cap in CAPABILITIES if isinstance(driver, cap)}
        assert found == set(self.capabilities), (
            f"detected {sorted(CAPABILITIES[c] for c in found)}, declared "
            f"{sorted(CAPABILITIES[c] for c in self.capabilities)}")

    async def test_read_of_an_unknown_id_is_none(self, driver: SessionDriver) -> None:
        assert await driver.read(new_session_id()) is None

    async def test_write_then_read_round_trips(self, driver: SessionDriver) -> None:
        sid = new_session_id()
        await driver.write(sid, record(1, b"first"), self.ttl)
        assert await driver.read(sid) == record(1, b"first")
        await driver.write(sid, record(2, b"second, longer than the first"), self.ttl)
        assert await driver.read(sid) == record(2, b"second, longer than the first")
        await driver.write(sid, record(3), self.ttl)  # shorter: nothing of the old one left
        assert await driver.read(sid) == record(3)

    @pytest.mark.parametrize("payload", PAYLOADS)
    async def test_payloads_are_stored_byte_for_byte(self, driver: SessionDriver,
                                                     payload: bytes) -> None:
        sid = new_session_id()
        await driver.write(sid, payload, self.ttl)
        assert await driver.read(sid) == payload
        if isinstance(driver, SupportsCompareAndSet):
            assert await driver.compare_and_set(sid, payload[::-1], self.ttl,
                                                payload[:VERSION_SIZE])
            assert await driver.read(sid) == payload[::-1]
        if isinstance(driver, SupportsTouch):
            assert await driver.read_touch(sid, self.ttl) == await driver.read(sid)

    async def test_ids_are_independent(self, driver: SessionDriver) -> None:
        one, two = new_session_id(), new_session_id()
        await driver.write(one, record(1), self.ttl)
        await driver.write(two, record(2), self.ttl)
        await driver.destroy(one)
        assert await driver.read(one) is None
        assert await driver.read(two) == record(2)

    async def test_destroy_removes_and_tolerates_absence(self, driver: SessionDriver) -> None:
        sid = new_session_id()
        await driver.destroy(sid)  # never written: no error
        await driver.write(sid, record(1), self.ttl)
        await driver.destroy(sid)
        assert await driver.read(sid) is None
        await driver.destroy(sid)  # twice: no error
        await driver.write(sid, record(2), self.ttl)  # and the id can be used again
        assert await driver.read(sid) == record(2)

    async def test_concurrent_writes_and_reads_are_atomic(self, driver: SessionDriver) -> None:
        sid = new_session_id()
        size = 256 * 1024
        records = [record(n, bytes([n]) * size) for n in range(12)]
        await driver.write(sid, records[0], self.ttl)
        results = await asyncio.gather(*(
            driver.write(sid, rec, self.ttl) if i % 2 else driver.read(sid)
            for i, rec in enumerate(records * 2)))
        reads = [result for i, result in enumerate(results) if i % 2 == 0]
        # a read sees one whole record, never a mix of two or a partly written one
        assert all(read in records for read in reads)
        assert await driver.read(sid) in records

    async def test_sessions_round_trip_through_a_manager(self, driver: SessionDriver) -> None:
        # the required methods alone carry sessions (saves are last-writer-wins then)
        manager = self.new_manager(_Plain(driver))
        try:
            session = await manager.driver()
            session.put({"user": "ann", "cart": [1, 2]})
            await session.save()
            loaded = await manager.load(session.id)
            assert loaded.all() == {"user": "ann", "cart": [1, 2]}
            loaded.increment("visits")
            await loaded.save()
            assert (await manager.load(session.id)).get("visits") == 1
            await manager.destroy(session.id)
            assert await driver.read(session.id) is None
        finally:
            await manager.close()

    # -- expiry ----------------------------------------------------------------------------

    async def test_a_record_expires_after_its_ttl(self, driver: SessionDriver,
                                                  advance: Advance | None) -> None:
        move = self.require_clock(advance)
        sid = new_session_id()
        await driver.write(sid, record(1), self.ttl)
        await move(self.seconds(0.75))
        assert await driver.read(sid) == record(1)
        await move(self.seconds(0.5))
        assert await driver.read(sid) is None

    async def test_a_write_restarts_expiry(self, driver: SessionDriver,
                                           advance: Advance | None) -> None:
        move = self.require_clock(advance)
        sid = new_session_id()
        await driver.write(sid, record(1), self.ttl)
        await move(self.seconds(0.6))
        await driver.write(sid, record(2), self.ttl)
        await move(self.seconds(0.6))
        assert await driver.read(sid) == record(2)
        await move(self.seconds(0.6))
        assert await driver.read(sid) is None

    async def test_gc_leaves_live_records_and_counts_what_it_removed(
            self, driver: SessionDriver, advance: Advance | None) -> None:
        move = self.require_clock(advance)
        old = [new_session_id() for _ in range(3)]
        live = [new_session_id() for _ in range(2)]
        for sid in old:
            await driver.write(sid, record(1), self.ttl)
        await move(self.seconds(0.6))
        for sid in live:
            await driver.write(sid, record(2), self.ttl)
        await move(self.seconds(0.6))
        removed = await driver.gc(self.ttl)
        # either gc removed exactly the expired records, or the store expires records
        # itself and gc has nothing left to do (Redis)
        assert removed in (0, len(old)), removed
        assert [await driver.read(sid) for sid in old] == [None] * len(old)
        assert [await driver.read(sid) for sid in live] == [record(2)] * len(live)
        assert await driver.gc(self.ttl) == 0

    # -- read_touch ------------------------------------------------------------------------

    async def test_read_touch_reads(self, driver: SessionDriver) -> None:
        self.require_capability(driver, SupportsTouch)
        assert isinstance(driver, SupportsTouch)
        sid = new_session_id()
        assert await driver.read_touch(sid, self.ttl) is None
        assert await driver.read(sid) is None  # a touch of nothing creates nothing
        await driver.write(sid, record(1), self.ttl)
        assert await driver.read_touch(sid, self.ttl) == record(1)
        assert await driver.read(sid) == record(1)

    async def test_read_touch_extends_expiry(self, driver: SessionDriver,
                                             advance: Advance | None) -> None:
        self.require_capability(driver, SupportsTouch)
        assert isinstance(driver, SupportsTouch)
        move = self.require_clock(advance)
        sid = new_session_id()
        await driver.write(sid, record(1), self.ttl)
        await move(self.seconds(0.6))
        assert await driver.read_touch(sid, self.ttl) == record(1)
        await move(self.seconds(0.6))  # past the write's expiry, not the touch's
        assert await driver.read(sid) == record(1)
        await move(self.seconds(0.6))
        assert await driver.read(sid) is None

    async def test_read_touch_does_not_revive_an_expired_record(
            self, driver: SessionDriver, advance: Advance | None) -> None:
        self.require_capability(driver, SupportsTouch)
        assert isinstance(driver, SupportsTouch)
        move = self.require_clock(advance)
        sid = new_session_id()
        await driver.write(sid, record(1), self.ttl)
        await move(self.seconds(1.25))
        assert await driver.read_touch(sid, self.ttl) is None
        assert await driver.read(sid) is None

    # -- compare_and_set -------------------------------------------------------------------

    async def test_compare_and_set_none_inserts_only_if_absent(
            self, driver: SessionDriver) -> None:
        self.require_capability(driver, SupportsCompareAndSet)
        assert isinstance(driver, SupportsCompareAndSet)
        sid = new_session_id()
        assert await driver.compare_and_set(sid, record(1), self.ttl, None)
        assert await driver.read(sid) == record(1)
        assert not await driver.compare_and_set(sid, record(2), self.ttl, None)
        assert await driver.read(sid) == record(1)

    async def test_compare_and_set_replaces_only_the_expected_version(
            self, driver: SessionDriver) -> None:
        self.require_capability(driver, SupportsCompareAndSet)
        assert isinstance(driver, SupportsCompareAndSet)
        sid = new_session_id()
        assert not await driver.compare_and_set(sid, record(2), self.ttl, version(1))
        assert await driver.read(sid) is None  # nothing stored: no version matches
        await driver.write(sid, record(1, b"x"), self.ttl)
        assert not await driver.compare_and_set(sid, record(2), self.ttl, version(3))
        # the version is the first VERSION_SIZE bytes, not the whole record
        assert not await driver.compare_and_set(sid, record(2), self.ttl, record(1, b"x"))
        assert await driver.read(sid) == record(1, b"x")
        assert await driver.compare_and_set(sid, record(2, b"y"), self.ttl, version(1))
        assert await driver.read(sid) == record(2, b"y")
        assert not await driver.compare_and_set(sid, record(3), self.ttl, version(1))
        assert await driver.read(sid) == record(2, b"y")

    async def test_compare_and_set_after_destroy(self, driver: SessionDriver) -> None:
        self.require_capability(driver, SupportsCompareAndSet)
        assert isinstance(driver, SupportsCompareAndSet)
        sid = new_session_id()
        await driver.write(sid, record(1), self.ttl)
        await driver.destroy(sid)
        assert not await driver.compare_and_set(sid, record(2), self.ttl, version(1))
        assert await driver.read(sid) is None  # a destroyed record stays destroyed
        assert await driver.compare_and_set(sid, record(3), self.ttl, None)
        assert await driver.read(sid) == record(3)

    async def test_compare_and_set_sees_an_expired_record_as_absent(
            self, driver: SessionDriver, advance: Advance | None) -> None:
        self.require_capability(driver, SupportsCompareAndSet)
        assert isinstance(driver, SupportsCompareAndSet)
        move = self.require_clock(advance)
        sid = new_session_id()
        await driver.write(sid, record(1), self.ttl)
        await move(self.seconds(1.25))
        assert not await driver.compare_and_set(sid, record(2), self.ttl, version(1))
        assert await driver.read(sid) is None
        assert await driver.compare_and_set(sid, record(3), self.ttl, None)
        assert await driver.read(sid) == record(3)

    async def test_compare_and_set_sets_expiry(self, driver: SessionDriver,
                                               advance: Advance | None) -> None:
        self.require_capability(driver, SupportsCompareAndSet)
        assert isinstance(driver, SupportsCompareAndSet)
        move = self.require_clock(advance)
        sid = new_session_id()
        assert await driver.compare_and_set(sid, record(1), self.ttl, None)
        await move(self.seconds(0.6))
        assert await driver.compare_and_set(sid, record(2), self.ttl, version(1))
        await move(self.seconds(0.6))  # past the insert's expiry, not the replace's
        assert await driver.read(sid) == record(2)
        await move(self.seconds(0.6))
        assert await driver.read(sid) is None

    async def test_compare_and_set_has_one_winner(self, driver: SessionDriver) -> None:
        self.require_capability(driver, SupportsCompareAndSet)
        assert isinstance(driver, SupportsCompareAndSet)
        sid, fresh = new_session_id(), new_session_id()
        await driver.write(sid, record(0), self.ttl)
        replaced = await asyncio.gather(*(
            driver.compare_and_set(sid, record(n), self.ttl, version(0))
            for n in range(1, 21)))
        assert replaced.count(True) == 1, replaced
        assert await driver.read(sid) == record(replaced.index(True) + 1)
        inserted = await asyncio.gather(*(
            driver.compare_and_set(fresh, record(n), self.ttl, None) for n in range(20)))
        assert inserted.count(True) == 1, inserted
        assert await driver.read(fresh) == record(inserted.index(True))

    async def test_compare_and_set_retried_after_a_lost_reply_answers_false(
            self, driver: SessionDriver) -> None:
        """A retry of an applied compare-and-set (its reply lost) finds the version moved."""
        self.require_capability(driver, SupportsCompareAndSet)
        assert isinstance(driver, SupportsCompareAndSet)
        sid = new_session_id()
        for expected in (None, version(1)):
            payload = record(1 if expected is None else 2, b"first write")
            assert await driver.compare_and_set(sid, payload, self.ttl, expected)
            # the caller never saw that True and sends the same command again
            assert not await driver.compare_and_set(sid, payload, self.ttl, expected)
            assert await driver.read(sid) == payload

    # -- sessions through a manager: the delta merge on compare-and-set --------------------

    async def test_a_save_whose_reply_was_lost_is_not_replayed(
            self, driver: SessionDriver) -> None:
        async with self.lent_manager(driver) as (manager, lent):
            session = await manager.driver()
            session.increment("n")
            session.push("log", "first")
            await session.save()
            again = await manager.load(session.id)
            again.increment("n")
            again.push("log", "second")
            lent.lose_next_reply = True
            await again.save()
            assert lent.retry_answers == [False]  # the retry ran, and found it written
            stored = await manager.load(session.id)
            assert (stored.get("n"), stored.get("log")) == (2, ["first", "second"])

    async def test_concurrent_saves_on_one_id_lose_nothing(
            self, driver: SessionDriver) -> None:
        # two managers on one driver: saves of one manager are grouped, the two race like
        # two processes, so conflicts are resolved by compare-and-set and a replayed delta
        async with self.lent_manager(driver) as (one, _), self.lent_manager(driver) as (two, _):
            first = await one.driver()
            first.put("base", True)
            await first.save()
            managers = [one, two] * (self.concurrency // 2 + 1)
            sessions = await asyncio.gather(*(
                managers[i].load(first.id) for i in range(self.concurrency)))
            for i, session in enumerate(sessions):
                assert session.get("base") is True
                session.put(f"k{i}", i)
                session.increment("n")
                session.push("log", i)
            sessions[0].forget("base")
            await asyncio.gather(*(session.save() for session in sessions))
            stored = (await two.load(first.id)).all()
        assert stored.pop("n") == self.concurrency
        assert sorted(stored.pop("log")) == list(range(self.concurrency))
        assert stored == {f"k{i}": i for i in range(self.concurrency)}

    # -- locks -----------------------------------------------------------------------------

    async def test_lock_excludes_until_released(self, driver: SessionDriver) -> None:
        self.require_capability(driver, SupportsLock)
        assert isinstance(driver, SupportsLock)
        sid, other = new_session_id(), new_session_id()
        token = await driver.acquire_lock(sid, 30, 0)
        assert isinstance(token, str)
        assert await driver.acquire_lock(sid, 30, 0) is None
        other_token = await driver.acquire_lock(other, 30, 0)  # locks are per id
        assert other_token is not None
        # the lock is advisory: the record stays readable and writable by its holder
        await driver.write(sid, record(1), self.ttl)
        assert await driver.read(sid) == record(1)
        await driver.release_lock(sid, token)
        again = await driver.acquire_lock(sid, 30, 0)
        assert again is not None
        await driver.release_lock(sid, again)
        await driver.release_lock(other, other_token)

    async def test_lock_waiter_gets_the_lock_once_released(self, driver: SessionDriver) -> None:
        self.require_capability(driver, SupportsLock)
        assert isinstance(driver, SupportsLock)
        sid = new_session_id()
        token = await driver.acquire_lock(sid, 30, 0)
        assert token is not None
        waiter = asyncio.ensure_future(driver.acquire_lock(sid, 30, 30))
        try:
            await asyncio.sleep(0.05)
            assert not waiter.done()  # still excluded while the holder holds it
            await driver.release_lock(sid, token)
            second = await waiter
        finally:
            waiter.cancel()
        assert second is not None
        await driver.release_lock(sid, second)

    async def test_release_with_another_token_keeps_the_lock(
            self, driver: SessionDriver) -> None:
        self.require_capability(driver, SupportsLock)
        assert isinstance(driver, SupportsLock)
        sid, unlocked = new_session_id(), new_session_id()
        await driver.release_lock(unlocked, "never-taken")  # no error
        first = await driver.acquire_lock(sid, 30, 0)
        assert first is not None
        await driver.release_lock(sid, first)
        second = await driver.acquire_lock(sid, 30, 0)
        assert second is not None
        # a late release by the first holder, or a wrong token, does not free it
        await driver.release_lock(sid, first)
        await driver.release_lock(sid, "not-a-token")
        assert await driver.acquire_lock(sid, 30, 0) is None
        await driver.release_lock(sid, second)
        third = await driver.acquire_lock(sid, 30, 0)
        assert third is not None
        await driver.release_lock(sid, third)


    # -- the user index ----------------------------------------------------------------------

    def require_index(self, driver: SessionDriver) -> SupportsUserIndex:
        """*driver* as a user index, or skip (fail if it was declared)."""
        self.require_capability(driver, SupportsUserIndex)
        assert isinstance(driver, SupportsUserIndex)
        return driver

    async def test_user_index_of_an_unknown_user_is_empty(self, driver: SessionDriver) -> None:
        index = self.require_index(driver)
        assert await index.user_session_index(f"nobody-{new_handle()}") == {}
        assert await index.unindex_user_sessions(f"nobody-{new_handle()}",
                                                 {new_handle(): new_session_id()}) == 0

    async def test_user_index_maps_handles_and_moves(self, driver: SessionDriver) -> None:
        index = self.require_index(driver)
        user, one, two = f"u-{new_handle()}", new_handle(), new_handle()
        a, b, c = new_session_id(), new_session_id(), new_session_id()
        await index.index_user_session(user, one, a, self.ttl)
        await index.index_user_session(user, two, b, self.ttl)
        assert await index.user_session_index(user) == {one: a, two: b}
        assert await index.index_user_session(user, one, c, self.ttl, a)  # moved from a to c
        assert await index.user_session_index(user) == {one: c, two: b}

    async def test_user_index_keeps_users_apart(self, driver: SessionDriver) -> None:
        index = self.require_index(driver)
        tag = new_handle()[:6]
        users = [f"{user}{tag}" if i % 2 else user for i, user in enumerate(USER_IDS)]
        entries = {user: (new_handle(), new_session_id()) for user in users}
        await asyncio.gather(*(index.index_user_session(user, handle, sid, self.ttl)
                               for user, (handle, sid) in entries.items()))
        try:
            for user, (handle, sid) in entries.items():
                assert await index.user_session_index(user) == {handle: sid}, user
        finally:
            for user, (handle, sid) in entries.items():
                await index.unindex_user_sessions(user, {handle: sid})
        for user in users:
            assert await index.user_session_index(user) == {}, user

    async def test_unindex_removes_only_entries_still_naming_the_id(
            self, driver: SessionDriver) -> None:
        index = self.require_index(driver)
        user, one, two, three = f"u-{new_handle()}", new_handle(), new_handle(), new_handle()
        a, b = new_session_id(), new_session_id()
        await index.index_user_session(user, one, a, self.ttl)
        await index.index_user_session(user, two, b, self.ttl)
        # two names b, not a (it moved); three was never indexed
        removed = await index.unindex_user_sessions(user, {one: a, two: a, three: a})
        assert removed == 1
        assert await index.user_session_index(user) == {two: b}
        assert await index.unindex_user_sessions(user, {}) == 0

    async def test_indexing_is_a_compare_and_set(self, driver: SessionDriver) -> None:
        # a handle is written if it names nothing, the id itself (a refresh) or the id
        # given as moved from; an entry naming any other id stays and the answer is False
        index = self.require_index(driver)
        user, handle, fresh = f"u-{new_handle()}", new_handle(), new_handle()
        old, new, other = new_session_id(), new_session_id(), new_session_id()
        assert await index.index_user_session(user, handle, old, self.ttl) is True
        assert await index.index_user_session(user, handle, old, self.ttl) is True  # refresh
        assert await index.index_user_session(user, handle, new, self.ttl, old) is True
        # a late refresh of the old id, or a second move from it, finds the new id there
        assert await index.index_user_session(user, handle, old, self.ttl) is False
        assert await index.index_user_session(user, handle, other, self.ttl, old) is False
        assert await index.index_user_session(user, handle, other, self.ttl) is False
        assert await index.index_user_session(user, fresh, old, self.ttl, other) is True
        assert await index.user_session_index(user) == {handle: new, fresh: old}

    async def test_of_moves_racing_from_one_id_exactly_one_is_indexed(
            self, driver: SessionDriver) -> None:
        # two requests moving one session (a double-submitted login): one entry, one winner
        index = self.require_index(driver)
        user, handle, old = f"u-{new_handle()}", new_handle(), new_session_id()
        await index.index_user_session(user, handle, old, self.ttl)
        moved = [new_session_id() for _ in range(12)]
        won = await asyncio.gather(
            *(index.index_user_session(user, handle, sid, self.ttl, old) for sid in moved))
        assert won.count(True) == 1, won
        assert await index.user_session_index(user) == {handle: moved[won.index(True)]}
        fresh = f"u-{new_handle()}"  # and from no entry at all (a first login)
        won = await asyncio.gather(
            *(index.index_user_session(fresh, handle, sid, self.ttl) for sid in moved))
        assert won.count(True) == 1, won

    async def test_user_index_calls_of_one_user_are_atomic(self, driver: SessionDriver) -> None:
        index = self.require_index(driver)
        user = f"u-{new_handle()}"
        old = {new_handle(): new_session_id() for _ in range(20)}
        for handle, sid in old.items():
            await index.index_user_session(user, handle, sid, self.ttl)
        new = {new_handle(): new_session_id() for _ in range(40)}
        dropped = dict(list(old.items())[:10])
        results = await asyncio.gather(
            *(index.index_user_session(user, h, sid, self.ttl) for h, sid in new.items()),
            *(index.unindex_user_sessions(user, {h: sid}) for h, sid in dropped.items()))
        assert all(r is True for r in results[:len(new)])
        assert sum(results[len(new):]) == len(dropped)
        kept = {h: sid for h, sid in old.items() if h not in dropped}
        assert await index.user_session_index(user) == {**kept, **new}

    async def test_user_index_lives_at_least_its_ttl(self, driver: SessionDriver,
                                                     advance: Advance | None) -> None:
        index = self.require_index(driver)
        move = self.require_clock(advance)
        user, handle, sid = f"u-{new_handle()}", new_handle(), new_session_id()
        await index.index_user_session(user, handle, sid, self.ttl)
        await move(self.seconds(0.75))
        assert await index.user_session_index(user) == {handle: sid}
        await index.index_user_session(user, handle, sid, self.ttl)  # a refresh
        # a shorter ttl given later never shortens what was promised before
        await index.index_user_session(user, new_handle(), sid, self.ttl // 4)
        await move(self.seconds(0.75))
        assert (await index.user_session_index(user)).get(handle) == sid
        await move(self.seconds(1.5))
        await driver.gc(self.ttl)
        assert await index.user_session_index(user) == {}  # every deadline passed

    async def test_read_many_reads_in_order(self, driver: SessionDriver,
                                            advance: Advance | None) -> None:
        self.require_capability(driver, SupportsReadMany)
        assert isinstance(driver, SupportsReadMany)
        ids = [new_session_id() for _ in range(5)]
        for n, sid in enumerate(ids[:3]):
            await driver.write(sid, record(n), self.ttl)
        assert await driver.read_many([]) == []
        order = [ids[2], ids[3], ids[0], ids[2], ids[4], ids[1]]
        assert await driver.read_many(order) == [record(2), None, record(0), record(2), None,
                                                 record(1)]
        many = [new_session_id() for _ in range(300)]
        for start in range(0, len(many), 50):
            await asyncio.gather(*(driver.write(sid, record(n), self.ttl)
                                   for n, sid in enumerate(many) if start <= n < start + 50))
        assert await driver.read_many(many) == [record(n) for n in range(len(many))]
        if advance is not None:
            await advance(self.seconds(0.5))
            await driver.write(ids[0], record(9), self.ttl)
            await advance(self.seconds(0.75))
            assert await driver.read_many(ids[:3]) == [record(9), None, None]

    # -- the sessions of a user, through a manager -----------------------------------------

    async def _login(self, manager: SessionManager, user: str | int,
                     agent: str = "Contract/1.0") -> SessionStore:
        session = await manager.driver()
        session.request = _request(agent)
        session.put("cart", [1])
        await session.login(user)
        await session.save()  # what the middleware does at the end of the request
        return session

    async def test_login_lists_the_session_with_its_device(self, driver: SessionDriver) -> None:
        self.require_index(driver)
        async with self.lent_manager(driver, {"record_ip": True}) as (manager, _):
            user = f"u-{new_handle()}"
            before = (await manager.user_sessions(user))
            session = await self._login(manager, user, "Firefox/140")
            assert session.user_id == user and session.stored and session.get("cart") == [1]
            [info] = await manager.user_sessions(user)
            assert before == []
            assert info.handle == session.handle and info.handle != session.id
            assert session.id not in repr(info)
            assert (info.user_agent, info.ip) == ("Firefox/140", "192.0.2.7")
            assert info.created_at <= info.last_seen
            loaded = await manager.load(session.id)
            assert (loaded.user_id, loaded.handle) == (user, session.handle)
            await manager.load(session.id)
            assert len(await manager.user_sessions(user)) == 1  # a request adds nothing

    async def test_an_int_user_id_is_stored_as_str(self, driver: SessionDriver) -> None:
        self.require_index(driver)
        async with self.lent_manager(driver) as (manager, _):
            number = int.from_bytes(new_handle().encode()[:6], "big")
            session = await self._login(manager, number)
            assert session.user_id == str(number)
            assert [i.handle for i in await manager.user_sessions(number)] == [session.handle]
            assert [i.handle for i in await manager.user_sessions(str(number))] == [
                session.handle]

    async def test_user_sessions_are_most_recently_active_first(
            self, driver: SessionDriver) -> None:
        self.require_index(driver)
        now = [1_000_000.0]
        async with self.lent_manager(driver, {"touch_interval": 60},
                                     clock=lambda: now[0]) as (manager, _):
            user = f"u-{new_handle()}"
            sessions = []
            for _ in range(3):
                sessions.append(await self._login(manager, user))
                now[0] += 10
            listed = [info.handle for info in await manager.user_sessions(user)]
            assert listed == [s.handle for s in reversed(sessions)]
            now[0] += 5  # within the touch interval: a read-only request writes nothing
            first = await manager.load(sessions[0].id)
            assert not first.modified
            now[0] += 60  # past it: the request refreshes last_seen
            first = await manager.load(sessions[0].id)
            assert first.modified
            await first.save()
            infos = await manager.user_sessions(user)
            assert [i.handle for i in infos] == [sessions[0].handle, sessions[2].handle,
                                                 sessions[1].handle]
            assert infos[0].last_seen == now[0]

    async def test_end_user_sessions_keeps_one_and_fires_destroyed(
            self, driver: SessionDriver) -> None:
        self.require_index(driver)
        async with self.lent_manager(driver) as (manager, _):
            user, other = f"u-{new_handle()}", f"v-{new_handle()}"
            sessions = [await self._login(manager, user) for _ in range(5)]
            theirs = await self._login(manager, other)
            destroyed: list[str] = []
            manager.on(SessionEvents.DESTROYED,
                       lambda event: destroyed.append(event.session_id))
            keep = sessions[2]
            assert await manager.end_user_sessions(user, keep=keep.handle) == 4
            assert sorted(destroyed) == sorted(s.id for s in sessions if s is not keep)
            assert [i.handle for i in await manager.user_sessions(user)] == [keep.handle]
            for session in sessions:
                assert (await driver.read(session.id) is None) == (session is not keep)
            assert [i.handle for i in await manager.user_sessions(other)] == [theirs.handle]
            assert await manager.end_user_sessions(user) == 1
            assert await manager.user_sessions(user) == []
            assert await manager.end_user_sessions(user) == 0

    async def test_end_user_session_ends_one_device(self, driver: SessionDriver) -> None:
        self.require_index(driver)
        async with self.lent_manager(driver) as (manager, _):
            user, other = f"u-{new_handle()}", f"v-{new_handle()}"
            one, two = await self._login(manager, user), await self._login(manager, user)
            theirs = await self._login(manager, other)
            assert not await manager.end_user_session(user, theirs.handle)  # not this user's
            assert not await manager.end_user_session(user, "not a handle")
            assert not await manager.end_user_session(user, one.id)  # an id is no handle
            assert await manager.end_user_session(user, one.handle)
            assert not await manager.end_user_session(user, one.handle)  # already ended
            assert [i.handle for i in await manager.user_sessions(user)] == [two.handle]
            assert await driver.read(one.id) is None
            assert await driver.read(theirs.id) is not None

    async def test_requests_in_flight_resurrect_no_ended_session(
            self, driver: SessionDriver) -> None:
        self.require_index(driver)
        async with self.lent_manager(driver) as (manager, _), \
                self.lent_manager(driver) as (elsewhere, _):
            user = f"u-{new_handle()}"
            sessions = [await self._login(manager, user) for _ in range(6)]
            # requests that loaded their session before the end, in this "process" and
            # in another one, save after it
            flight = [await (manager if i % 2 else elsewhere).load(s.id)
                      for i, s in enumerate(sessions)]
            for i, session in enumerate(flight):
                session.put("late", i)
                session.increment("n")
            assert await manager.end_user_sessions(user) == 6
            await asyncio.gather(*(session.save() for session in flight))
            for session in flight:
                assert session.ended
                assert await driver.read(session.id) is None
            assert await manager.user_sessions(user) == []

    async def test_a_login_after_the_end_starts_afresh_logged_in(
            self, driver: SessionDriver) -> None:
        index = self.require_index(driver)
        async with self.lent_manager(driver) as (manager, _):
            user = f"u-{new_handle()}"
            session = await self._login(manager, user)
            old_handle, stale = session.handle, await self._login(manager, user)
            await manager.destroy(stale.id)  # a stale entry: the next login prunes it
            # a password change: end every session, then log this device in again
            assert await manager.end_user_sessions(user) == 1
            await session.login(user)
            await session.save()
            assert session.stored and session.user_id == user
            assert session.handle != old_handle and session.all() == {}
            assert (await manager.load(session.id)).user_id == user
            assert await index.user_session_index(user) == {session.handle: session.id}

    async def test_a_regenerate_after_the_end_revives_nothing(
            self, driver: SessionDriver) -> None:
        self.require_index(driver)
        async with self.lent_manager(driver) as (manager, _):
            user = f"u-{new_handle()}"
            session = await self._login(manager, user)
            flight = await manager.load(session.id)
            assert await manager.end_user_sessions(user) == 1
            flight.put("late", 1)
            await flight.save()
            assert flight.ended
            await flight.regenerate()  # a new session, empty: the ended one stays ended
            await flight.save()
            again = await manager.load(flight.id)
            assert again.user_id is None and again.all() == {}
            assert await manager.user_sessions(user) == []

    async def test_a_session_moving_while_it_is_ended_is_ended_under_its_new_id(
            self, driver: SessionDriver) -> None:
        index = self.require_index(driver)
        async with self.lent_manager(driver) as (ender, lent), \
                self.lent_manager(driver) as (elsewhere, _):
            user = f"u-{new_handle()}"
            session = await self._login(elsewhere, user)
            moving = await elsewhere.load(session.id)
            old = moving.id

            async def regenerate_first() -> None:
                # the end has listed the old id; the session moves before it is destroyed
                await moving.regenerate()
                await moving.save()

            lent.before_destroy = regenerate_first
            assert await ender.end_user_sessions(user) == 1
            assert moving.id != old and not moving.ended  # the move itself went through
            assert await driver.read(old) is None
            assert await driver.read(moving.id) is None  # ... and was ended there too
            assert await index.user_session_index(user) == {}
            assert await ender.user_sessions(user) == []

    async def test_a_late_refresh_does_not_unindex_a_session_that_moved(
            self, driver: SessionDriver) -> None:
        index = self.require_index(driver)
        now = [3_000_000.0]
        async with self.lent_manager(driver, {"touch_interval": 60},
                                     clock=lambda: now[0]) as (manager, _), \
                self.lent_manager(driver, {"touch_interval": 60},
                                  clock=lambda: now[0]) as (elsewhere, _):
            user = f"u-{new_handle()}"
            session = await self._login(manager, user)
            now[0] += 120
            slow = await manager.load(session.id)  # a read-only request, refresh due
            assert slow.modified
            moving = await elsewhere.load(session.id)  # meanwhile another logs in again
            await moving.login(user)
            await moving.save()
            await slow.save()  # its record is gone: it ends, and leaves the index alone
            assert slow.ended
            assert await index.user_session_index(user) == {moving.handle: moving.id}
            assert [i.handle for i in await manager.user_sessions(user)] == [moving.handle]
            assert await manager.end_user_sessions(user) == 1
            assert await driver.read(moving.id) is None

    async def test_a_destroyed_or_expired_session_is_not_listed(
            self, driver: SessionDriver, advance: Advance | None) -> None:
        index = self.require_index(driver)
        async with self.lent_manager(driver) as (manager, _):
            user = f"u-{new_handle()}"
            gone, stays = await self._login(manager, user), await self._login(manager, user)
            await manager.destroy(gone.id)  # knows nothing of users: the index is stale
            assert [i.handle for i in await manager.user_sessions(user)] == [stays.handle]
            assert gone.handle not in await index.user_session_index(user)  # repaired
            if advance is None:
                return
            await advance(self.seconds(0.5))
            fresh = await self._login(manager, user)
            await advance(self.seconds(0.75))  # stays expired, fresh did not
            assert [i.handle for i in await manager.user_sessions(user)] == [fresh.handle]

    async def test_logout_and_regenerate_keep_the_index_true(
            self, driver: SessionDriver) -> None:
        index = self.require_index(driver)
        async with self.lent_manager(driver) as (manager, _):
            user = f"u-{new_handle()}"
            session = await self._login(manager, user)
            handle, old = session.handle, session.id
            await session.regenerate(destroy=False)  # a logged-in copy would escape: gone
            await session.save()
            assert session.id != old and session.handle == handle
            assert await driver.read(old) is None
            assert await index.user_session_index(user) == {handle: session.id}
            await session.logout()
            assert session.user_id is None and session.handle != handle
            assert await index.user_session_index(user) == {}
            assert await manager.user_sessions(user) == []

    async def test_a_login_as_another_user_moves_the_session(
            self, driver: SessionDriver) -> None:
        index = self.require_index(driver)
        async with self.lent_manager(driver) as (manager, _):
            ann, bob = f"ann-{new_handle()}", f"bob-{new_handle()}"
            session = await self._login(manager, ann)
            first = session.handle
            await session.login(ann)  # again as ann: the same handle, a new id
            await session.save()
            [entry] = (await index.user_session_index(ann)).items()
            assert entry == (first, session.id)
            await session.login(bob)  # as someone else: a new handle
            await session.save()
            assert session.handle != first
            assert [i.handle for i in await manager.user_sessions(bob)] == [session.handle]
            assert await manager.user_sessions(ann) == []
            assert await index.user_session_index(ann) == {}  # the listing repaired it

    async def test_max_sessions_ends_the_least_recently_active(
            self, driver: SessionDriver) -> None:
        self.require_index(driver)
        now = [2_000_000.0]
        async with self.lent_manager(driver, {"max_sessions": 2},
                                     clock=lambda: now[0]) as (manager, _):
            user = f"u-{new_handle()}"
            first, second = await self._login(manager, user), None
            now[0] += 5
            second = await self._login(manager, user)
            now[0] += 5
            touched = await manager.load(first.id)  # first becomes the most recent
            touched.put("seen", True)
            await touched.save()
            now[0] += 5
            third = await self._login(manager, user)
            listed = {i.handle for i in await manager.user_sessions(user)}
            assert listed == {first.handle, third.handle}
            assert await driver.read(second.id) is None

    async def test_logins_racing_an_end_leave_index_and_records_agreeing(
            self, driver: SessionDriver) -> None:
        index = self.require_index(driver)
        async with self.lent_manager(driver) as (manager, _), \
                self.lent_manager(driver) as (elsewhere, _):
            user = f"u-{new_handle()}"
            early = [await self._login(manager, user) for _ in range(4)]
            started = [await (manager if i % 2 else elsewhere).driver() for i in range(8)]

            async def login(session: SessionStore) -> None:
                session.put("x", 1)
                await session.login(user)
                await session.save()

            regenerated = [await elsewhere.load(s.id) for s in early[:2]]

            async def regenerate(session: SessionStore) -> None:
                await session.regenerate()
                await session.save()

            await asyncio.gather(*(login(s) for s in started),
                                 *(regenerate(s) for s in regenerated),
                                 manager.end_user_sessions(user),
                                 manager.end_user_sessions(user))
            live = {}
            for session in [*early, *started, *regenerated]:
                raw = await driver.read(session.id)
                if raw is not None:
                    live[session.handle] = session.id
            listed = await manager.user_sessions(user)
            assert {i.handle for i in listed} == set(live)
            assert await index.user_session_index(user) == live
            assert await manager.end_user_sessions(user) == len(live)
            for session in [*early, *started, *regenerated]:
                assert await driver.read(session.id) is None
