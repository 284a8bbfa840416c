"""Session: the data API, change tracking, flash data, regenerate/invalidate, merging saves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

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
    assert s["d"] == 4
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


async def test_flash_data_lives_until_a_request_reads_it(manager: SessionManager) -> None:
    s = await manager.driver()
    s.flash("status", "saved")
    s.now("only_now", 1)
    assert s.get("status") == "saved" and s.get("only_now") == 1
    await s.save()
    poll = await manager.load(s.id)  # never reads it: a background poll
    assert "only_now" not in poll
    poll.increment("polls")
    await poll.save()
    page = await manager.load(s.id)
    assert page.get("status") == "saved"  # the redirect target reads it ...
    await page.save()
    after = await manager.load(s.id)
    assert "status" not in after and after.get("polls") == 1  # ... and it is gone after


async def test_reflash_and_keep(manager: SessionManager) -> None:
    s = await manager.driver()
    s.flash("a", 1)
    s.flash("b", 2)
    await s.save()
    r2 = await manager.load(s.id)
    assert r2.all() == {"a": 1, "b": 2}  # reads (and so consumes) both
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
    all_loaded = asyncio.Barrier(50)

    async def bump() -> None:
        s = await manager.load(base.id)
        async with asyncio.timeout(10):
            await all_loaded.wait()  # all load the same record before any saves: all conflict
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
    assert not manager.runtime().can_cas
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


# -- merges keep everything, metadata included -----------------------------------------------


async def test_a_flash_survives_a_concurrent_request_that_consumes_older_flash_data(
        manager: SessionManager) -> None:
    s = await manager.driver()
    s.flash("old", "Welcome back")
    await s.save()
    post = await manager.load(s.id)  # the form POST that will flash "Saved!"
    page = await manager.load(s.id)  # a page loaded before the POST saved: shows old flash
    post.flash("status", "Saved!")
    await post.save()
    assert page.get("old") == "Welcome back"
    await page.save()  # conflicts with the POST: replays its delta on the POST's record
    redirect = await manager.load(s.id)
    assert redirect.get("status") == "Saved!" and "old" not in redirect
    await redirect.save()
    assert "status" not in await manager.load(s.id)  # a flash, not a permanent key


async def test_a_newer_flash_of_the_same_key_is_not_consumed(manager: SessionManager) -> None:
    s = await manager.driver()
    s.flash("status", "first")
    await s.save()
    reader = await manager.load(s.id)
    assert reader.get("status") == "first"
    again = await manager.load(s.id)
    again.flash("status", "second")
    await again.save()
    await reader.save()  # consumes the flash it read, not the one flashed after it
    assert (await manager.load(s.id)).get("status") == "second"


async def test_the_first_stored_csrf_token_wins(manager: SessionManager) -> None:
    s = await stored(manager, x=1)
    first_page = await manager.load(s.id)
    second_page = await manager.load(s.id)
    token = first_page.token
    await first_page.save()
    assert second_page.token != token  # made lazily, before the first page was stored
    await second_page.save()
    assert (await manager.load(s.id)).token == token  # the first page's form still works


async def test_a_rotated_csrf_token_wins_over_the_stored_one(manager: SessionManager) -> None:
    s = await stored(manager, x=1)
    old = s.token
    await s.save()
    rotating = await manager.load(s.id)
    other = await manager.load(s.id)
    new = rotating.regenerate_token()
    other["y"] = 2
    await other.save()
    await rotating.save()
    final = await manager.load(s.id)
    assert final.token == new != old and final.get("y") == 2


async def test_records_with_old_flash_metadata_still_load(manager: SessionManager) -> None:
    sid = new_session_id()
    record = manager.codec.encode(sid, {"d": {"a": 1, "b": 2},
                                        "m": {"c": 1.0, "f": [["a"], ["b"]]}})
    await manager.get_driver().write(sid, b"version1" + record, 60)
    loaded = await manager.load(sid)
    assert not loaded.new and loaded.get("a") == 1 and loaded.get("b") == 2
    await loaded.save()
    assert "a" not in await manager.load(sid)  # read above, so consumed


# -- a stateful model: interleaved requests on one session vs. the same requests in order ---

from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from hypothesis import settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

KEYS = st.sampled_from(["a", "b", "c"])
VALUES = st.one_of(st.integers(-3, 3), st.sampled_from(["x", "y"]), st.lists(st.integers(0, 2),
                                                                            max_size=2))


@dataclass
class Request:
    """One request's session, and what it did, as the model replays it at its save."""

    session: Session
    # the flashes this request saw when it loaded (key -> instance), as the model knew them
    seen_flash: dict[str, int]
    ops: list[tuple[Any, ...]] = field(default_factory=list)
    consumed: dict[str, int] = field(default_factory=dict)
    flashed: dict[str, int] = field(default_factory=dict)
    now: set[str] = field(default_factory=set)
    token: tuple[str, str] | None = None  # ("created" | "rotated", value)
    loaded_token: str | None = None


def _apply_op(data: dict[str, Any], op: tuple[Any, ...]) -> None:
    kind, key, *arg = op
    if kind == "put":
        data[key] = arg[0]
    elif kind == "del":
        data.pop(key, None)
    elif kind == "incr":
        current = data.get(key)
        number = isinstance(current, (int, float)) and not isinstance(current, bool)
        data[key] = (current if number else 0) + arg[0]
    elif kind == "push":
        current = data.get(key)
        data[key] = [*current, arg[0]] if isinstance(current, list) else [arg[0]]
    elif kind == "flush":
        data.clear()


class InterleavedRequests(RuleBasedStateMachine):
    """Two or three requests load one session, change it, and save in any order.

    The stored result must equal the serial model: each request's operations applied by
    meaning, in the order the requests saved, to what was stored before (sets, deletes,
    increments, pushes, flushes; flashes made, flashes read and so consumed, ``now``
    keys; a lazily created CSRF token that yields to a stored one, a rotated one that wins).
    """

    requests = Bundle("requests")

    @initialize()
    def start(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.manager = SessionManager({"lottery": (0, 1)})
        first = self.run(self.manager.driver())
        first["seed"] = 0
        self.run(first.save())
        self.sid = first.id
        self.data: dict[str, Any] = {"seed": 0}
        self.pending: dict[str, int] = {}  # pending flash key -> instance
        self.token: str | None = None
        self.instances = 0
        self.open = 0

    def teardown(self) -> None:
        if hasattr(self, "loop"):
            self.run(self.manager.close())
            self.loop.close()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @precondition(lambda self: self.open < 3)
    @rule(target=requests)
    def begin(self) -> Request:
        session = self.run(self.manager.load(self.sid))
        assert isinstance(session, Session) and not session.new
        self.open += 1
        return Request(session, dict(self.pending), loaded_token=self.token)

    @rule(request=requests, key=KEYS, value=VALUES)
    def put(self, request: Request, key: str, value: Any) -> None:
        request.session[key] = value
        request.ops.append(("put", key, value))

    @rule(request=requests, key=KEYS)
    def forget(self, request: Request, key: str) -> None:
        present = key in request.session
        request.session.forget(key)
        if present:
            request.ops.append(("del", key))
            request.flashed.pop(key, None)
            self._consume(request, key)  # the key's pending flash goes with it
            # a key set with now() stays "this request only" (as in Laravel)

    @rule(request=requests, key=KEYS, by=st.integers(-2, 2))
    def increment(self, request: Request, key: str, by: int) -> None:
        try:
            request.session.increment(key, by)
        except SessionError:
            return  # refused locally (not a number): nothing to replay
        request.ops.append(("incr", key, by))

    @rule(request=requests, key=KEYS, value=st.integers(0, 2))
    def push(self, request: Request, key: str, value: int) -> None:
        try:
            request.session.push(key, value)
        except SessionError:
            return
        request.ops.append(("push", key, value))

    @rule(request=requests)
    def flush(self, request: Request) -> None:
        request.session.flush()
        request.ops.append(("flush", ""))
        request.consumed.clear()
        request.flashed.clear()
        request.now.clear()
        request.seen_flash.clear()

    @rule(request=requests, key=KEYS, value=VALUES)
    def flash(self, request: Request, key: str, value: Any) -> None:
        request.session.flash(key, value)
        request.ops.append(("put", key, value))
        self.instances += 1
        request.flashed[key] = self.instances
        request.consumed.pop(key, None)
        request.now.discard(key)

    @rule(request=requests, key=KEYS, value=VALUES)
    def now(self, request: Request, key: str, value: Any) -> None:
        request.session.now(key, value)
        request.ops.append(("put", key, value))
        request.flashed.pop(key, None)
        self._consume(request, key)  # a pending flash of the key is overridden
        request.now.add(key)

    @rule(request=requests, key=KEYS)
    def keep(self, request: Request, key: str) -> None:
        present = key in request.session
        request.session.keep(key)
        if not present:
            return  # forgotten here: nothing to keep (no pending flash without data)
        if key in request.now:
            # a now() value becomes a flash for a later request (now() had overridden a
            # flash this request saw: that one is no longer what is kept)
            request.now.discard(key)
            self.instances += 1
            request.flashed[key] = self.instances
            request.consumed.pop(key, None)
        elif key in request.consumed:
            del request.consumed[key]  # still pending, the same flash

    @rule(request=requests, key=KEYS)
    def read(self, request: Request, key: str) -> None:
        request.session.get(key)
        self._consume(request, key)

    @rule(request=requests)
    def use_token(self, request: Request) -> None:
        value = request.session.token
        if request.token is None and value != request.loaded_token:
            request.token = ("created", value)

    @rule(request=requests)
    def rotate_token(self, request: Request) -> None:
        request.token = ("rotated", request.session.regenerate_token())

    def _consume(self, request: Request, key: str) -> None:
        if key in request.seen_flash and key not in request.flashed:
            request.consumed.setdefault(key, request.seen_flash[key])

    @rule(request=consumes(requests))
    def save(self, request: Request) -> None:
        self.run(request.session.save())
        self.open -= 1
        # the serial model: this request's operations, by meaning, on what is stored now;
        # a flashed key it read goes at its end, with what it wrote to it
        for op in request.ops:
            if op[1] in request.consumed:
                continue
            _apply_op(self.data, op)
            if op[0] == "flush":
                self.pending.clear()
        for key, instance in request.consumed.items():
            if self.pending.get(key) == instance:
                del self.pending[key]
                self.data.pop(key, None)
        for key in request.now:
            self.data.pop(key, None)
        self.pending.update(request.flashed)
        if request.token is not None:
            kind, value = request.token
            if kind == "rotated" or self.token is None:
                self.token = value

    @invariant()
    def stored_equals_model(self) -> None:
        if not hasattr(self, "sid"):
            return
        raw = self.run(self.manager.get_driver().read(self.sid))
        assert raw is not None
        record, _ = self.manager.codec.decode(self.sid, raw[VERSION_SIZE:])
        assert record["d"] == self.data
        assert set(record["m"].get("f", {})) == set(self.pending)
        assert record["m"].get("k") == self.token


InterleavedRequests.TestCase.settings = settings(max_examples=1000, stateful_step_count=30,
                                                 deadline=None)
TestInterleavedRequests = InterleavedRequests.TestCase


# -- cross-process contention: every save finishes ------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "redis"])
async def test_heavy_cross_process_contention_loses_no_save(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """8 processes x 8 tasks save one 1,000-key session 1,600 times: all land, none fail."""
    import json
    import sys

    from .stores import ROOT, store_entry

    workers, tasks, rounds = 8, 8, 25
    config = {"default": "main", "drivers": {"main": store_entry(kind, request, tmp_path)},
              "lottery": [0, 1]}
    manager = SessionManager(config)
    seed = await manager.driver()
    seed.put({f"key{i}": i for i in range(1000)})
    await seed.save()
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.contention_worker", json.dumps(config), seed.id,
        str(worker), str(tasks), str(rounds), cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        for worker in range(workers)]
    for proc in procs:  # each has started and waits for the go signal
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 120) == b"ready\n"
    results = []
    outputs = await asyncio.wait_for(
        asyncio.gather(*(proc.communicate(b"go\n") for proc in procs)), 300)
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out))
    failures = [f for r in results for f in r["failures"]]
    assert failures == []
    assert sum(r["saves"] for r in results) == workers * tasks * rounds
    final = await manager.load(seed.id)
    assert final.get("n") == workers * tasks * rounds
    assert len(final) == 1000 + 1 + workers * tasks * rounds  # seed keys, n, one key a save
    await manager.close()


# -- regenerate(): the old record's current state moves; an ended one never comes back ------


@pytest.fixture(params=["memory", "file", "redis"])
async def any_manager(request: pytest.FixtureRequest,
                      tmp_path: Path) -> AsyncIterator[SessionManager]:
    """A manager on each built-in driver (redis: the run's own server)."""
    from .stores import store_entry

    manager = SessionManager({"drivers": {"main": store_entry(request.param, request,
                                                               tmp_path)},
                              "lottery": (0, 1)})
    yield manager
    await manager.close()


@pytest.mark.parametrize("destroy", [True, False])
@pytest.mark.parametrize("how", ["logout", "admin"])
async def test_regenerate_of_a_session_ended_meanwhile_revives_nothing(
        any_manager: SessionManager, destroy: bool, how: str) -> None:
    manager = any_manager
    s = await stored(manager, user="alice")
    old_id = s.id
    await s.regenerate(destroy=destroy)  # a slow request rotates the id ...
    if how == "logout":  # ... while the user logs out in another tab
        await (await manager.load(old_id)).invalidate()
    else:  # ... or an admin ends the session
        await manager.destroy(old_id)
    await s.save()
    assert s.ended and not s.stored
    assert await manager.get_driver().read(s.id) is None  # no new record carries the user
    assert (await manager.load(old_id)).new


@pytest.mark.parametrize("destroy", [True, False])
async def test_a_logout_while_regenerate_writes_the_new_record_revives_nothing(
        any_manager: SessionManager, destroy: bool) -> None:
    # the old record ends after regenerate's save re-read it and before the new record
    # is written: the new record must not outlive it
    manager = any_manager
    driver = manager.get_driver()
    s = await stored(manager, user="alice")
    old_id = s.id
    await s.regenerate(destroy=destroy)
    real_cas = driver.compare_and_set  # type: ignore[attr-defined]

    async def logout_first(sid: str, payload: bytes, ttl: int, expected: bytes | None) -> bool:
        if sid != old_id:
            await (await manager.load(old_id)).invalidate()  # another tab logs out now
        return bool(await real_cas(sid, payload, ttl, expected))

    driver.compare_and_set = logout_first  # type: ignore[attr-defined]
    try:
        await s.save()
    finally:
        driver.compare_and_set = real_cas  # type: ignore[attr-defined]
    assert s.ended and not s.stored
    assert await driver.read(s.id) is None
    assert await driver.read(old_id) is None


async def test_regenerate_without_destroy_keeps_both_records(
        any_manager: SessionManager) -> None:
    s = await stored(any_manager, user="alice")
    old_id = s.id
    await s.regenerate(destroy=False)
    await s.save()
    assert s.stored and s.id != old_id
    assert (await any_manager.load(old_id)).get("user") == "alice"
    assert (await any_manager.load(s.id)).get("user") == "alice"


async def test_regenerate_keeps_what_a_concurrent_request_saved(
        manager: SessionManager) -> None:
    s = await stored(manager, cart=["A-1"])
    login = await manager.load(s.id)
    other = await manager.load(s.id)
    await login.regenerate()
    login["user"] = "alice"
    other.push("cart", "B-2")  # saved while the login runs
    await other.save()
    await login.save()
    moved = await manager.load(login.id)
    assert moved.get("user") == "alice" and moved.get("cart") == ["A-1", "B-2"]
    assert (await manager.load(s.id)).new  # the old id is dead


@pytest.mark.parametrize("move", ["regenerate", "invalidate"])
async def test_a_save_that_fails_after_regenerate_keeps_the_old_session(
        manager: SessionManager, move: str) -> None:
    from aiosessmgr import SerializationError

    s = await stored(manager, cart=["A-1"])
    login = await manager.load(s.id)
    await getattr(login, move)()
    login["when"] = {1, 2}  # not serializable: the save fails
    with pytest.raises(SerializationError):
        await login.save()
    survivor = await manager.load(s.id)
    if move == "regenerate":
        assert survivor.get("cart") == ["A-1"]  # a failed login loses nothing
    else:
        assert survivor.new  # a logout took effect at once


async def test_a_stored_value_that_cannot_be_saved_again_is_dropped(
        manager: SessionManager, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    deep: list[object] = []
    for _ in range(150):  # loads (both decoders read ~1,000 levels), saves refuse > 100
        deep = [deep]
    import msgpack

    sid = new_session_id()  # written by something else (an older version, another writer)
    body = b"\x00" + msgpack.packb({"d": {"deep": deep, "n": 1}, "m": {"c": 1.0}})
    await manager.get_driver().write(sid, b"version1" + body, 60)
    loaded = await manager.load(sid)
    assert not loaded.new and loaded.get("n") == 1
    loaded.increment("n")
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        await loaded.save()  # not a SerializationError on every request from now on
    assert any("'deep'" in r.getMessage() for r in caplog.records)
    again = await manager.load(sid)
    assert again.get("n") == 2 and "deep" not in again


async def test_metadata_that_could_not_be_saved_again_makes_the_record_unreadable(
        manager: SessionManager) -> None:
    import msgpack

    for meta in ({"c": 1.0, "x": [[1]]}, {"c": float("inf")}, {"c": 1.0, "s": float("nan")}):
        sid = new_session_id()
        body = b"\x00" + msgpack.packb({"d": {"n": 1}, "m": meta})
        await manager.get_driver().write(sid, b"version1" + body, 60)
        assert (await manager.load(sid)).new, meta  # a foreign record: a fresh session


# -- the size of a record is bounded ---------------------------------------------------------


async def test_a_record_over_max_record_size_is_refused_and_the_stored_one_kept(
        any_manager: SessionManager) -> None:
    from aiosessmgr import SerializationError, SessionTooLarge
    from aiosessmgr.config import DEFAULT_MAX_RECORD_SIZE

    assert DEFAULT_MAX_RECORD_SIZE == 1024 * 1024
    s = await stored(any_manager, user="alice")
    before = await any_manager.get_driver().read(s.id)
    loaded = await any_manager.load(s.id)
    loaded["blob"] = "x" * (2 * 1024 * 1024)  # 2 MiB: a handler storing an upload
    with pytest.raises(SessionTooLarge) as caught:
        await loaded.save()
    assert isinstance(caught.value, SerializationError)
    assert caught.value.limit == DEFAULT_MAX_RECORD_SIZE
    assert caught.value.size > 2 * 1024 * 1024
    assert f"{caught.value.size:,} bytes" in str(caught.value)
    assert "max_record_size (1,048,576 bytes)" in str(caught.value)
    assert await any_manager.get_driver().read(s.id) == before  # untouched
    fresh = await any_manager.driver()
    fresh["blob"] = "x" * (2 * 1024 * 1024)
    with pytest.raises(SessionTooLarge):
        await fresh.save()
    assert await any_manager.get_driver().read(fresh.id) is None


@pytest.mark.parametrize("encrypted", [False, True])
async def test_max_record_size_counts_the_stored_bytes(encrypted: bool) -> None:
    import base64

    from aiosessmgr import SessionTooLarge

    config: dict[str, object] = {"max_record_size": 1000}
    if encrypted:
        config["encryption"] = {"enabled": True, "key": base64.b64encode(b"k" * 32).decode()}
    manager = SessionManager(config)
    s = await manager.driver()
    s["v"] = "x" * 900
    await s.save()
    size = len(await manager.get_driver().read(s.id) or b"")
    assert size <= 1000
    s["v"] = "x" * (900 + 1000 - size + 1)  # one byte over, encrypted or not
    with pytest.raises(SessionTooLarge) as caught:
        await s.save()
    assert caught.value.size == 1001
    assert SessionManager({"max_record_size": None}).config.max_record_size is None



@pytest.mark.parametrize("logout", [True, False])
async def test_a_move_whose_save_failed_stays_a_move(any_manager: SessionManager,
                                                     logout: bool) -> None:
    # a login handler's save fails (too large, unserializable, the store, a timeout) and
    # is retried: the retry still checks the old record, and still destroys it
    from aiosessmgr import SessionTooLarge

    manager = any_manager
    s = await stored(manager, user="anon")
    old_id = s.id
    await s.regenerate()
    s["upload"] = "x" * (2 * 1024 * 1024)
    with pytest.raises(SessionTooLarge):
        await s.save()
    del s["upload"]
    s["user"] = "alice"
    if logout:
        await (await manager.load(old_id)).invalidate()  # another tab logs out
    await s.save()
    driver = manager.get_driver()
    assert await driver.read(old_id) is None  # never left alive to be replayed
    if logout:
        assert s.ended and await driver.read(s.id) is None  # nor revived
    else:
        assert s.stored and (await manager.load(s.id)).get("user") == "alice"


# -- keep() of a key forgotten in the same request (two sequences the state machine found) --


async def _record(manager: SessionManager, sid: str) -> tuple[dict[str, Any], set[str]]:
    """The stored data and the keys with a pending flash, as the driver holds them."""
    raw = await manager.get_driver().read(sid)
    assert raw is not None
    record, _ = manager.codec.decode(sid, raw[VERSION_SIZE:])
    return record["d"], set(record["m"].get("f", {}))


async def _reflash_over_a_pending_flash(manager: SessionManager,
                                        contended: bool) -> tuple[str, Session]:
    first = await stored(manager, seed=0)
    first.flash("b", 0)
    await first.save()
    second = await manager.load(first.id)  # sees the pending flash of b
    assert isinstance(second, Session)
    second.flash("b", 0)  # flashes b over it
    if contended:  # another request saves meanwhile: the save below merges (rebase)
        other = await manager.load(first.id)
        other["x"] = 1
        await other.save()
    second.forget("b")
    second.keep("b")  # nothing to keep: b was forgotten here
    return first.id, second


@pytest.mark.parametrize("contended", [False, True])
async def test_keep_of_a_forgotten_flash_keeps_nothing(manager: SessionManager,
                                                       contended: bool) -> None:
    sid, second = await _reflash_over_a_pending_flash(manager, contended)
    await second.save()
    extra = {"x": 1} if contended else {}
    assert await _record(manager, sid) == ({"seed": 0, **extra}, set())


@pytest.mark.parametrize("contended", [False, True])
async def test_keep_after_now_of_a_forgotten_flash_flashes_the_now_value(
        manager: SessionManager, contended: bool) -> None:
    sid, second = await _reflash_over_a_pending_flash(manager, contended)
    second.now("b", 0)
    second.keep("b")  # the now() value becomes a flash for a later request
    await second.save()
    extra = {"x": 1} if contended else {}
    assert await _record(manager, sid) == ({"seed": 0, "b": 0, **extra}, {"b"})
    assert (await manager.load(sid)).get("b") == 0


@pytest.mark.parametrize("contended", [False, True])
async def test_keep_of_a_forgotten_flash_set_again_keeps_the_earlier_flash(
        manager: SessionManager, contended: bool) -> None:
    # forget() dropped this request's flash of b and consumed the one it had replaced;
    # b set again and kept: that earlier flash stays pending, with the new value, whether
    # the save merges or not
    sid, second = await _reflash_over_a_pending_flash(manager, contended)
    second["b"] = "y"
    second.keep("b")
    await second.save()
    extra = {"x": 1} if contended else {}
    assert await _record(manager, sid) == ({"seed": 0, "b": "y", **extra}, {"b"})


@pytest.mark.parametrize("how", ["now", "forget"])
async def test_keep_after_now_or_forget_of_a_loaded_flash(manager: SessionManager,
                                                          how: str) -> None:
    s = await stored(manager, seed=0)
    s.flash("b", "old")
    await s.save()
    later = await manager.load(s.id)
    if how == "now":
        later.now("b", "new")  # overrides the pending flash, for this request only
    else:
        later.forget("b")
    later.keep("b")  # now: "new" becomes the flash a later request reads; forget: nothing
    await later.save()
    expected = ({"seed": 0, "b": "new"}, {"b"}) if how == "now" else ({"seed": 0}, set())
    assert await _record(manager, s.id) == expected
