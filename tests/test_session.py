"""Session: the data API, change tracking, flash data, regenerate/invalidate, merging saves."""

from __future__ import annotations

import asyncio

import pytest

from aiosessmgr import (
    Session,
    SessionError,
    SessionManager,
    is_valid_session_id,
    new_session_id,
)
from aiosessmgr.drivers.base import VERSION_SIZE


async def stored(manager: SessionManager, **data: object) -> Session:
    session = await manager.driver()
    session.put(dict(data))
    await session.save()
    assert isinstance(session, Session)
    return session


def test_ids_are_256_bit_and_url_safe() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_valid_session_id(i) and len(i) == 43 for i in ids)
    for bad in ["", "x" * 42, "x" * 44, "../" + "x" * 40, "é" * 43, "x" * 42 + "=", None, 5]:
        assert not is_valid_session_id(bad)


async def test_mapping_protocol(manager: SessionManager) -> None:
    s = await manager.driver()
    s["a"] = 1
    s["b"] = 2
    assert s["a"] == 1 and "a" in s and "z" not in s
    assert len(s) == 2 and sorted(s) == ["a", "b"]
    del s["a"]
    assert "a" not in s
    with pytest.raises(KeyError):
        _ = s["a"]
    with pytest.raises(KeyError):
        del s["a"]
    assert s.setdefault("c", 3) == 3 and s.pop("c") == 3
    s.update({"d": 4})
    s.clear()
    assert len(s) == 0 and s.modified


async def test_data_api(manager: SessionManager) -> None:
    s = await manager.driver()
    assert not s.modified
    assert s.get("x") is None and s.get("x", 5) == 5
    s.put("x", 1)
    s.put({"y": 2, "z": None})
    assert s.modified
    assert s.has("x", "y") and not s.has("z") and not s.has("nope")
    assert s.exists("z") and s.exists("x", "z") and not s.exists("x", "nope")
    assert s.missing("nope", "other") and not s.missing("nope", "x")
    assert s.all() == {"x": 1, "y": 2, "z": None}
    assert s.only("x", "nope") == {"x": 1}
    assert s.except_("x", "z") == {"y": 2}
    assert s.pull("y") == 2 and "y" not in s
    assert s.pull("y", "gone") == "gone"
    s.forget("x", "never")
    assert s.all() == {"z": None}
    s.flush()
    assert s.all() == {}


async def test_increment_decrement_push(manager: SessionManager) -> None:
    s = await manager.driver()
    assert s.increment("n") == 1
    assert s.increment("n", 5) == 6
    assert s.decrement("n") == 5
    assert s.decrement("n", 2.5) == 2.5
    s.push("items", "a")
    s.push("items", {"b": 1})
    assert s["items"] == ["a", {"b": 1}]
    s.put("text", "hi")
    with pytest.raises(SessionError, match="cannot increment 'text'"):
        s.increment("text")
    with pytest.raises(SessionError, match="cannot push onto 'text'"):
        s.push("text", 1)
    await s.save()
    again = await manager.load(s.id)
    assert again.all() == {"n": 2.5, "items": ["a", {"b": 1}], "text": "hi"}


async def test_save_round_trip_and_unchanged_save_writes_nothing(
        manager: SessionManager) -> None:
    s = await stored(manager, user=42)
    driver = manager.get_driver()
    before = await driver.read(s.id)
    loaded = await manager.load(s.id)
    assert not loaded.new and loaded.get("user") == 42 and loaded.stored
    await loaded.save()
    assert await driver.read(s.id) == before  # same bytes: nothing was written


async def test_new_empty_session_is_not_stored(manager: SessionManager) -> None:
    s = await manager.driver()
    await s.save()
    assert not s.stored
    assert await manager.get_driver().read(s.id) is None


async def test_unknown_or_malformed_id_gets_a_new_id(manager: SessionManager) -> None:
    unknown = new_session_id()
    s = await manager.load(unknown)
    assert s.new and s.id != unknown
    s2 = await manager.load("../../etc/passwd")
    assert s2.new and is_valid_session_id(s2.id)


async def test_flash_data_lives_exactly_one_more_request(manager: SessionManager) -> None:
    s = await manager.driver()
    s.flash("status", "saved")
    s.now("only_now", 1)
    assert s.get("status") == "saved" and s.get("only_now") == 1
    await s.save()
    r2 = await manager.load(s.id)
    assert r2.get("status") == "saved" and "only_now" not in r2
    await r2.save()
    r3 = await manager.load(s.id)
    assert "status" not in r3


async def test_reflash_and_keep(manager: SessionManager) -> None:
    s = await manager.driver()
    s.flash("a", 1)
    s.flash("b", 2)
    await s.save()
    r2 = await manager.load(s.id)
    r2.keep("a")
    await r2.save()
    r3 = await manager.load(s.id)
    assert r3.get("a") == 1 and "b" not in r3
    r3.reflash()
    await r3.save()
    r4 = await manager.load(s.id)
    assert r4.get("a") == 1
    await r4.save()
    assert "a" not in await manager.load(s.id)


async def test_regenerate_keeps_data_and_kills_old_id(manager: SessionManager) -> None:
    s = await stored(manager, user=1)
    old_id, old_token = s.id, s.token
    await s.regenerate()
    assert s.id != old_id and s.get("user") == 1 and s.token != old_token
    await s.save()
    assert (await manager.load(s.id)).get("user") == 1
    assert (await manager.load(old_id)).new


async def test_regenerate_without_destroy_keeps_old_record(manager: SessionManager) -> None:
    s = await stored(manager, user=1)
    old_id = s.id
    await s.regenerate(destroy=False)
    await s.save()
    assert (await manager.load(old_id)).get("user") == 1


async def test_invalidate_clears_data_and_kills_old_id(manager: SessionManager) -> None:
    s = await stored(manager, user=1)
    old_id = s.id
    await s.invalidate()
    assert s.id != old_id and s.all() == {}
    await s.save()
    assert not s.stored  # nothing left to store
    assert (await manager.load(old_id)).new


async def test_methods_need_a_started_session(manager: SessionManager) -> None:
    s = manager.session()
    with pytest.raises(SessionError, match="not started"):
        await s.regenerate()
    await s.save()  # an unstarted session has nothing to save


async def test_token_is_stable_and_stored(manager: SessionManager) -> None:
    s = await manager.driver()
    token = s.token
    assert token == s.token and s.modified
    await s.save()
    assert s.stored  # a session holding only a CSRF token is worth storing
    assert (await manager.load(s.id)).token == token
    assert s.regenerate_token() != token


async def test_concurrent_saves_merge_their_deltas(manager: SessionManager) -> None:
    base = await stored(manager, keep="me", gone="soon", n=0, items=[])
    a = await manager.load(base.id)
    b = await manager.load(base.id)
    a.put("from_a", 1)
    a.increment("n")
    a.push("items", "a")
    b.put("from_b", 2)
    b.increment("n", 10)
    b.push("items", "b")
    b.forget("gone")
    await a.save()
    await b.save()  # conflicts with a: re-reads and replays its own delta
    final = (await manager.load(base.id)).all()
    assert final == {"keep": "me", "n": 11, "items": ["a", "b"], "from_a": 1, "from_b": 2}


async def test_many_concurrent_increments_are_all_counted(manager: SessionManager) -> None:
    base = await stored(manager, n=0)

    async def bump() -> None:
        s = await manager.load(base.id)
        await asyncio.sleep(0.001)
        s.increment("n")
        await s.save()

    await asyncio.gather(*(bump() for _ in range(50)))
    assert (await manager.load(base.id)).get("n") == 50


async def test_flush_then_set_wins_over_concurrent_keys(manager: SessionManager) -> None:
    base = await stored(manager, a=1)
    x = await manager.load(base.id)
    y = await manager.load(base.id)
    y.put("b", 2)
    await y.save()
    x.flush()
    x.put("c", 3)
    await x.save()
    assert (await manager.load(base.id)).all() == {"c": 3}


async def test_destroyed_session_is_not_written_back(manager: SessionManager) -> None:
    base = await stored(manager, user=1)
    slow = await manager.load(base.id)
    logout = await manager.load(base.id)
    await logout.invalidate()
    slow.put("late", True)
    await slow.save()
    assert not slow.stored
    assert await manager.get_driver().read(base.id) is None


async def test_corrupt_record_gives_fresh_session_and_one_warning(
        manager: SessionManager, caplog: pytest.LogCaptureFixture) -> None:
    s = await stored(manager, user=1)
    for bad in [b"", b"12345678", b"12345678\x00garbage", b"12345678\x01" + b"x" * 40,
                b"12345678\x00\x81\xa1d\x05"]:
        await manager.get_driver().write(s.id, bad, 60)
        caplog.clear()
        loaded = await manager.load(s.id)
        assert loaded.new and loaded.id != s.id and loaded.all() == {}
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1, bad


async def test_version_prefix_changes_on_every_save(manager: SessionManager) -> None:
    s = await stored(manager, a=1)
    v1 = (await manager.get_driver().read(s.id) or b"")[:VERSION_SIZE]
    s.put("a", 2)
    await s.save()
    v2 = (await manager.get_driver().read(s.id) or b"")[:VERSION_SIZE]
    assert v1 != v2 and len(v1) == VERSION_SIZE


async def test_custom_store_class() -> None:
    class Audited(Session):
        saves = 0

        async def save(self) -> None:
            type(self).saves += 1
            await super().save()

    manager = SessionManager(store_class=Audited)
    s = await manager.driver()
    assert isinstance(s, Audited)
    s.put("a", 1)
    await s.save()
    assert Audited.saves == 1
    await manager.close()


async def test_cas_whose_reply_was_lost_is_not_replayed() -> None:
    """A compare-and-set that landed but reported failure (a retried command whose first
    reply was lost) must not replay increments a second time."""
    from aiosessmgr import MemoryDriver

    class LostReply(MemoryDriver):
        lose_next = False

        async def compare_and_set(self, session_id: str, payload: bytes, ttl: int,
                                  expected: bytes | None) -> bool:
            written = await super().compare_and_set(session_id, payload, ttl, expected)
            if self.lose_next:
                self.lose_next = False
                return False  # it was written; the caller just never heard
            return written

    driver = LostReply()
    manager = SessionManager({"default": "l", "drivers": {"l": {"driver": "lost"}}})
    manager.extend("lost", lambda cfg: driver)
    s = await manager.driver()
    s.increment("n")
    await s.save()
    again = await manager.load(s.id)
    again.increment("n")
    driver.lose_next = True
    await again.save()
    assert (await manager.load(s.id))["n"] == 2
    await manager.close()


async def test_drivers_without_cas_do_not_revive_a_destroyed_session() -> None:
    """Last-writer-wins drivers get an in-process tombstone for one lifetime."""
    from aiosessmgr import MemoryDriver

    class NoCas(MemoryDriver):
        compare_and_set = None  # type: ignore[assignment]

    driver = NoCas()
    manager = SessionManager({"default": "n", "drivers": {"n": {"driver": "nocas"}}})
    manager.extend("nocas", lambda cfg: driver)
    assert not manager.context().can_cas
    s = await manager.driver()
    s["user"] = 1
    await s.save()
    slow = await manager.load(s.id)
    logout = await manager.load(s.id)
    await logout.invalidate()
    slow["late"] = True
    await slow.save()
    assert await driver.read(s.id) is None
    await manager.close()


def test_tombstones_are_bounded_and_expire() -> None:
    from aiosessmgr.session import Tombstones

    stones = Tombstones(ttl=10, limit=3)
    for i in range(5):
        stones.add(f"id{i}", now=100 + i)
    assert "id0" not in stones and "id1" not in stones and "id4" in stones
    stones.add("late", now=200)
    assert "id4" not in stones and "late" in stones
