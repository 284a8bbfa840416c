"""The driver contract as a pytest suite: run it against any driver, built-in or your own.

Subclass :class:`DriverContract` in a test module and give it a ``driver`` fixture that
yields a fresh driver (and closes it afterwards). Every test of the contract then runs
against it: ``read``/``write``/``destroy``/``gc``, expiry, and each optional capability
the driver has (``read_touch``, ``compare_and_set``, locks), plus sessions saved through a
real :class:`~aiosessmgr.SessionManager` (concurrent saves merged, a lost reply)::

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
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ClassVar

import pytest

from .drivers.base import (
    VERSION_SIZE,
    SessionDriver,
    SupportsCompareAndSet,
    SupportsLock,
    SupportsTouch,
)
from .ids import new_session_id
from .manager import SessionManager

__all__ = ["CAPABILITIES", "Advance", "DriverContract"]

#: ``advance(seconds)``: make *seconds* pass for the store (see the module docstring)
Advance = Callable[[float], Awaitable[None]]

#: the optional capabilities, each with the methods that make it (for skip reasons)
CAPABILITIES: dict[type, str] = {
    SupportsTouch: "read_touch (SupportsTouch)",
    SupportsCompareAndSet: "compare_and_set (SupportsCompareAndSet)",
    SupportsLock: "acquire_lock/release_lock (SupportsLock)",
}

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

    async def read(self, session_id: str) -> bytes | None:
        return await self.driver.read(session_id)

    async def write(self, session_id: str, payload: bytes, ttl: int) -> None:
        await self.driver.write(session_id, payload, ttl)

    async def destroy(self, session_id: str) -> None:
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


class _LentWithTouch(_Lent):
    """A lent driver that has read_touch too, so sessions use it as they would."""

    async def read_touch(self, session_id: str, ttl: int) -> bytes | None:
        assert isinstance(self.driver, SupportsTouch)
        return await self.driver.read_touch(session_id, ttl)


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

    def new_manager(self, driver: SessionDriver) -> SessionManager:
        """A SessionManager whose default driver is *driver*, with a lifetime of ttl."""
        manager = SessionManager({"default": "contract", "lottery": (0, 1), "drivers": {
            "contract": {"driver": "contract", "lifetime": self.ttl / 60}}})  # minutes
        manager.extend("contract", lambda config: driver)
        return manager

    @contextlib.asynccontextmanager
    async def lent_manager(
        self, driver: SessionDriver
    ) -> AsyncIterator[tuple[SessionManager, _Lent]]:
        """A manager on *driver* with its compare-and-set (skips without it) and touch.

        The manager gets a wrapper (see ``_Lent``), so closing it leaves *driver* open.
        """
        self.require_capability(driver, SupportsCompareAndSet)
        lent = (_LentWithTouch if isinstance(driver, SupportsTouch) else _Lent)(driver)
        manager = self.new_manager(lent)
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

