"""The file driver's user index beyond the contract: hostile user ids, atomicity within a
process and across processes, gc, what record gc leaves alone, permissions, read_many."""

# These tests inspect the real directory with blocking calls on purpose: the assertions
# are about what is on disk, and no other task runs while they look.
# ruff: noqa: ASYNC240

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import secrets
import shutil
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aiosessmgr import ConfigError, DriverError
from aiosessmgr.drivers.file import TEMP_MAX_AGE, FileDriver
from aiosessmgr.drivers.file.index import UserFiles, user_digest
from aiosessmgr.ids import new_handle, new_session_id

TTL = 600
#: seconds; only a guard against a hang, never what a test measures
HANG = 60

HOSTILE_USERS = [
    pytest.param("../x", id="dotdot-slash"),
    pytest.param("..", id="dotdot"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("a/../../b", id="traversal"),
    pytest.param("{}", id="braces"),
    pytest.param('"}, "e": {"x": "y', id="json-injection"),
    pytest.param("\x00", id="nul"),
    pytest.param("a\x00b", id="inner-nul"),
    pytest.param("\n\r\t", id="whitespace"),
    pytest.param("\ud800", id="lone-surrogate"),
    pytest.param("ü🙂", id="unicode"),
    pytest.param("x" * 256, id="long"),
    pytest.param("sess_" + "a" * 43, id="looks-like-a-session"),
    pytest.param(".sess_lock-01", id="looks-like-a-lock"),
    pytest.param("users", id="users"),
]


def record(body: bytes = b"payload") -> bytes:
    return os.urandom(8) + body


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def index_file(store: Path, user: str, prefix: str = "sess_") -> Path:
    return store / "users" / f"{prefix}{user_digest(user)}"


def age(path: Path, seconds: float) -> None:
    """Move a file's mtime *seconds* back (how these tests move time)."""
    st = os.stat(path)
    os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "sessions"


@pytest.fixture
async def driver(store: Path) -> AsyncIterator[FileDriver]:
    drv = FileDriver(store, ttl=TTL)
    yield drv
    await drv.close()


@contextmanager
def stripe_held(store: Path, user: str) -> Iterator[None]:
    """Hold the flock of *user*'s index stripe through a descriptor of our own (flock
    locks belong to open file descriptions: this excludes the driver as another process
    would)."""
    stripe = UserFiles.stripe_of(user_digest(user))
    fd = os.open(store / "users" / f".sess_lock-{stripe:02d}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- hostile user ids -------------------------------------------------------------------------


@pytest.mark.parametrize("user", HOSTILE_USERS)
async def test_a_hostile_user_id_never_reaches_a_path(tmp_path: Path, store: Path,
                                                      user: str) -> None:
    drv = FileDriver(store, ttl=TTL)
    try:
        handle, sid = new_handle(), new_session_id()
        await drv.index_user_session(user, handle, sid, TTL)
        await drv.index_user_session(user + "!", new_handle(), new_session_id(), TTL)
        assert await drv.user_session_index(user) == {handle: sid}
        # the only files are in users/, named after the digest; nothing left the store
        outside = sorted(p for p in tmp_path.rglob("*") if store not in (p, *p.parents))
        assert outside == []
        names = {p.name for p in (store / "users").iterdir() if not p.name.startswith(".")}
        assert names == {f"sess_{user_digest(user)}", f"sess_{user_digest(user + '!')}"}
        stored = json.loads(index_file(store, user).read_bytes())
        assert stored["u"] == user and stored["e"] == {handle: sid}
        assert await drv.unindex_user_sessions(user, {handle: sid}) == 1
        assert not index_file(store, user).exists()  # an empty index is removed
    finally:
        await drv.close()


async def test_an_index_file_of_another_user_is_not_read(
        driver: FileDriver, store: Path, caplog: pytest.LogCaptureFixture) -> None:
    handle, sid = new_handle(), new_session_id()
    await driver.index_user_session("alice", handle, sid, TTL)
    # a file planted under bob's name that holds alice's index
    shutil.copy(index_file(store, "alice"), index_file(store, "bob"))
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        assert await driver.user_session_index("bob") == {}
    assert "unusable user index file" in caplog.text
    assert sid not in caplog.text  # the log names the file, never an id it holds
    # a write replaces it with bob's own index; alice's is untouched
    other = new_session_id()
    await driver.index_user_session("bob", handle, other, TTL)
    assert await driver.user_session_index("bob") == {handle: other}
    assert await driver.user_session_index("alice") == {handle: sid}


@pytest.mark.parametrize("content", [
    pytest.param(b"", id="empty"),
    pytest.param(b"{not json", id="not-json"),
    pytest.param(b"[" * 100_000, id="deeply-nested"),
    pytest.param(b'{"v": 2, "u": "carol", "k": 60, "e": {}}', id="other-format"),
    pytest.param(b'{"v": 1, "u": "carol", "k": NaN, "e": {}}', id="nan-keep"),
    pytest.param(b'{"v": 1, "u": "carol", "k": Infinity, "e": {}}', id="endless"),
    pytest.param(b'{"v": 1, "u": "carol", "k": "60", "e": {}}', id="keep-a-string"),
    pytest.param(b'{"v": 1, "u": "carol", "k": 60, "e": []}', id="entries-a-list"),
    pytest.param(b"\xff\xfe", id="not-utf8"),
])
async def test_a_corrupt_index_file_reads_as_empty_and_is_replaced(
        driver: FileDriver, store: Path, content: bytes) -> None:
    await driver.index_user_session("carol", new_handle(), new_session_id(), TTL)
    index_file(store, "carol").write_bytes(content)
    assert await driver.user_session_index("carol") == {}
    assert await driver.unindex_user_sessions("carol", {new_handle(): new_session_id()}) == 0
    handle, sid = new_handle(), new_session_id()
    await driver.index_user_session("carol", handle, sid, TTL)
    assert await driver.user_session_index("carol") == {handle: sid}


async def test_entries_that_are_not_handles_and_ids_are_dropped_on_read(
        driver: FileDriver, store: Path) -> None:
    handle, sid = new_handle(), new_session_id()
    await driver.index_user_session("dave", handle, sid, TTL)
    path = index_file(store, "dave")
    doc = json.loads(path.read_bytes())
    doc["e"].update({"../../x": sid, new_handle(): "../../etc/passwd", new_handle(): 7})
    path.write_text(json.dumps(doc))
    assert await driver.user_session_index("dave") == {handle: sid}


@pytest.mark.parametrize(("user", "handle", "sid"), [
    pytest.param("", new_handle(), new_session_id(), id="empty-user"),
    pytest.param(None, new_handle(), new_session_id(), id="user-none"),
    pytest.param("u", "../" + "a" * 19, new_session_id(), id="bad-handle"),
    pytest.param("u", new_handle(), "../" + "a" * 40, id="bad-id"),
    pytest.param("u", new_handle(), "a" * 42 + "\u00e9", id="non-ascii-id"),
])
async def test_what_is_not_a_user_handle_or_id_is_refused(
        tmp_path: Path, store: Path, user: str, handle: str, sid: str) -> None:
    drv = FileDriver(store, ttl=TTL)
    before = sorted(tmp_path.rglob("*"))
    try:
        with pytest.raises(ValueError):
            await drv.index_user_session(user, handle, sid, TTL)
        assert await drv.user_session_index(user) == {}
        if user:  # a bad pair is simply not in the index
            assert await drv.unindex_user_sessions(user, {handle: sid}) == 0
        else:
            with pytest.raises(ValueError):
                await drv.unindex_user_sessions(user, {handle: sid})
    finally:
        await drv.close()
    assert sorted(tmp_path.rglob("*")) == before  # nothing was created for them


# -- atomicity ----------------------------------------------------------------------------------


async def test_concurrent_calls_of_one_user_lose_nothing(store: Path) -> None:
    drv = FileDriver(store, ttl=TTL, max_workers=8)
    try:
        old = {new_handle(): new_session_id() for _ in range(50)}
        for handle, sid in old.items():
            await drv.index_user_session("erin", handle, sid, TTL)
        new = {new_handle(): new_session_id() for _ in range(150)}
        dropped = dict(list(old.items())[:25])
        moved = {handle: new_session_id() for handle in list(old)[25:35]}
        results = await asyncio.wait_for(asyncio.gather(
            *(drv.index_user_session("erin", h, sid, TTL) for h, sid in new.items()),
            *(drv.unindex_user_sessions("erin", {h: sid}) for h, sid in dropped.items()),
            *(drv.index_user_session("erin", h, sid, TTL, old[h]) for h, sid in moved.items()),
            # conditional: these name the ids the moved handles had, which may be gone
            *(drv.unindex_user_sessions("erin", {h: old[h]}) for h in moved),
            *(drv.user_session_index("erin") for _ in range(20)),
        ), HANG)
        assert all(r is True for r in results[:len(new)])
        removals = [r for r in results if isinstance(r, int) and not isinstance(r, bool)]
        assert removals[:len(dropped)] == [1] * len(dropped)
        # a moved handle ends at its new id whichever of its two calls came first
        expected = {h: s for h, s in old.items() if h not in dropped} | new | moved
        assert await drv.user_session_index("erin") == expected
        # every read in between saw a whole file: never without an entry nobody touches
        untouched = {h: s for h, s in old.items() if h not in dropped and h not in moved}
        for snapshot in (r for r in results if isinstance(r, dict)):
            assert untouched.items() <= snapshot.items()
            assert set(snapshot) <= set(old) | set(new)
    finally:
        await drv.close()


# Indexes KEYS handles for one user, unindexing every third one it indexed, on "go".
WORKER = r"""
import asyncio, sys
from aiosessmgr.drivers.file import FileDriver

async def main() -> None:
    driver = FileDriver(sys.argv[1], ttl=600)
    tag, count = sys.argv[2], int(sys.argv[3])
    print("ready", flush=True)
    sys.stdin.readline()
    for n in range(count):
        handle, sid = f"{tag}{n:021d}", f"{tag}{n:042d}"
        await driver.index_user_session("shared user", handle, sid, 600)
        if n % 3 == 0:
            assert await driver.unindex_user_sessions("shared user", {handle: sid}) == 1
    await driver.close()
    print("done", flush=True)

asyncio.run(main())
"""


@pytest.mark.slow
async def test_two_processes_indexing_one_user_lose_nothing(store: Path) -> None:
    count = 300
    FileDriver(store)  # the directory, made before the workers race for users/
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER, str(store), tag, str(count),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        for tag in ("a", "b")
    ]
    for worker in workers:
        assert worker.stdout is not None
        assert await asyncio.wait_for(worker.stdout.readline(), HANG) == b"ready\n"
    for worker in workers:  # both at once, so their read-change-writes really interleave
        assert worker.stdin is not None
        worker.stdin.write(b"go\n")
        await worker.stdin.drain()
    results = await asyncio.wait_for(
        asyncio.gather(*(w.communicate() for w in workers)), 300)
    for worker, (out, err) in zip(workers, results, strict=True):
        assert worker.returncode == 0, err.decode()
        assert out == b"done\n"
    drv = FileDriver(store, ttl=TTL)
    try:
        assert await drv.user_session_index("shared user") == {
            f"{tag}{n:021d}": f"{tag}{n:042d}"
            for tag in ("a", "b") for n in range(count) if n % 3}
    finally:
        await drv.close()


async def test_a_held_stripe_times_out_and_holds_no_thread(store: Path) -> None:
    drv = FileDriver(store, ttl=TTL, lock_timeout=0.2, max_workers=1)
    try:
        handle, sid = new_handle(), new_session_id()
        await drv.index_user_session("frank", handle, sid, TTL)
        other = new_session_id()
        await drv.write(other, b"v" * 8 + b"other", TTL)
        stripe = UserFiles.stripe_of(user_digest("frank"))
        with stripe_held(store, "frank"):
            waiting = asyncio.ensure_future(drv.index_user_session("frank", new_handle(),
                                                                   new_session_id(), TTL))
            # the one pool thread is free meanwhile: reads go on, the index reads too
            assert await asyncio.wait_for(drv.read(other), HANG) == b"v" * 8 + b"other"
            assert await asyncio.wait_for(drv.user_session_index("frank"), HANG) == {
                handle: sid}
            with pytest.raises(DriverError, match=rf"timed out after 0\.2 s waiting for lock "
                                                  rf"file 'users/\.sess_lock-{stripe:02d}'"):
                await asyncio.wait_for(waiting, HANG)
            with pytest.raises(DriverError, match="timed out"):
                await asyncio.wait_for(drv.unindex_user_sessions("frank", {handle: sid}), HANG)
            # gc waits for no index lock: the entry of a gone session stays for now
            assert await asyncio.wait_for(drv.gc(TTL), HANG) == 0
            assert await drv.user_session_index("frank") == {handle: sid}
        await drv.gc(TTL)
        assert await drv.user_session_index("frank") == {}
    finally:
        await drv.close()


# -- gc --------------------------------------------------------------------------------------


async def test_gc_removes_entries_of_gone_sessions(driver: FileDriver, store: Path) -> None:
    live, destroyed, expired = new_session_id(), new_session_id(), new_session_id()
    for sid in (live, destroyed, expired):
        await driver.write(sid, record(), TTL)
    never = new_session_id()  # indexed, never written (a hint that was wrong)
    handles = {sid: new_handle() for sid in (live, destroyed, expired, never)}
    for sid, handle in handles.items():
        await driver.index_user_session("gina", handle, sid, TTL)
    await driver.index_user_session("hank", new_handle(), destroyed, TTL)
    await driver.destroy(destroyed)
    age(store / f"sess_{expired}", TTL + 60)
    assert await driver.gc(TTL) == 1  # sessions removed: the index is not counted
    assert await driver.user_session_index("gina") == {handles[live]: live}
    assert await driver.user_session_index("hank") == {}
    assert not index_file(store, "hank").exists()  # emptied: removed whole


async def test_gc_removes_indexes_past_their_deadline(driver: FileDriver, store: Path) -> None:
    sid = new_session_id()
    await driver.write(sid, record(), TTL)
    await driver.index_user_session("ivy", new_handle(), sid, 100)
    await driver.index_user_session("jack", new_handle(), sid, 100)
    await driver.index_user_session("jack", new_handle(), sid, 1000)  # the latest wins
    for user in ("ivy", "jack"):
        age(index_file(store, user), 101)
    await driver.gc(TTL)
    assert not index_file(store, "ivy").exists()
    assert index_file(store, "jack").exists()
    assert len(await driver.user_session_index("jack")) == 2
    age(index_file(store, "jack"), 900)
    await driver.gc(TTL)
    assert not index_file(store, "jack").exists()
    assert await driver.read(sid) is not None  # the session itself is not the index's


async def test_an_expired_index_is_removed_when_read(driver: FileDriver, store: Path) -> None:
    await driver.index_user_session("kim", new_handle(), new_session_id(), 100)
    age(index_file(store, "kim"), 100)
    assert await driver.user_session_index("kim") == {}
    assert not index_file(store, "kim").exists()
    # and a new entry starts a fresh index: nothing of the old one comes back
    handle, sid = new_handle(), new_session_id()
    await driver.index_user_session("kim", handle, sid, 100)
    assert await driver.user_session_index("kim") == {handle: sid}


async def test_gc_removes_old_temps_in_users_and_nothing_foreign(driver: FileDriver,
                                                                 store: Path) -> None:
    sid = new_session_id()
    await driver.write(sid, record(), TTL)
    await driver.index_user_session("leo", new_handle(), sid, TTL)
    users = store / "users"
    stale, fresh = users / f".sess_{'0' * 16}.tmp", users / f".sess_{'1' * 16}.tmp"
    foreign, digest_like = users / "notes.txt", users / f"other_{'a' * 64}"
    for path in (stale, fresh, foreign, digest_like):
        path.write_bytes(b"x")
    for path in (stale, foreign, digest_like):
        age(path, TEMP_MAX_AGE + 10 * TTL)
    await driver.gc(TTL)
    assert not stale.exists()
    assert fresh.exists() and foreign.exists() and digest_like.exists()
    assert index_file(store, "leo").exists()


async def test_record_gc_never_takes_index_files_for_sessions(store: Path) -> None:
    """A prefix of "" matches the most names; an old index (within its deadline) whose
    session lives stays whole through a gc that removes an expired session."""
    drv = FileDriver(store, ttl=TTL, prefix="")
    try:
        kept, old = new_session_id(), new_session_id()
        await drv.write(kept, record(), TTL)
        await drv.write(old, record(), TTL)
        handle = new_handle()
        await drv.index_user_session("a" * 43, handle, kept, TTL)  # a name shaped like an id
        age(store / old, TTL + 60)
        index = store / "users" / user_digest("a" * 43)
        age(index, TTL / 2)  # old, but within its deadline
        assert await drv.gc(TTL) == 1
        assert await drv.user_session_index("a" * 43) == {handle: kept}
        assert (store / "users").is_dir() and index.exists()
        assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == sorted(
            [kept, "users"])
    finally:
        await drv.close()


async def test_two_prefixes_share_one_directory_and_keep_their_indexes(store: Path) -> None:
    one, two = FileDriver(store, ttl=TTL, prefix=""), FileDriver(store, ttl=TTL, prefix="a")
    try:
        sid_one, sid_two = new_session_id(), new_session_id()
        await one.write(sid_one, record(), TTL)
        await two.write(sid_two, record(), TTL)
        handle = new_handle()
        await one.index_user_session("user", handle, sid_one, TTL)
        await two.index_user_session("user", handle, sid_two, TTL)
        # each gc judges only its own index files: neither sees the other's session files
        await one.gc(TTL)
        await two.gc(TTL)
        assert await one.user_session_index("user") == {handle: sid_one}
        assert await two.user_session_index("user") == {handle: sid_two}
    finally:
        await one.close()
        await two.close()


# -- permissions and the directory ---------------------------------------------------------------


@contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


async def test_users_is_made_on_first_use_private_whatever_the_umask(store: Path) -> None:
    with umask(0):
        drv = FileDriver(store, ttl=TTL)
        try:
            await drv.write(new_session_id(), record(), TTL)
            await drv.user_session_index("mia")
            assert not (store / "users").exists()  # reads and records make no users/
            await drv.index_user_session("mia", new_handle(), new_session_id(), TTL)
            await drv.index_user_session("mia", new_handle(), new_session_id(), TTL)
        finally:
            await drv.close()
    assert mode(store / "users") == 0o700
    assert {mode(p) for p in (store / "users").iterdir()} == {0o600}


@pytest.mark.parametrize("open_mode", [pytest.param(m, id=f"{m:04o}")
                                       for m in (0o755, 0o750, 0o701, 0o777)])
def test_a_users_directory_others_can_use_is_refused(store: Path, open_mode: int) -> None:
    (store / "users").mkdir(parents=True)
    os.chmod(store, 0o700)
    os.chmod(store / "users", open_mode)
    with pytest.raises(ConfigError, match=rf"mode {open_mode:04o}.*chmod 700 "):
        FileDriver(store)
    FileDriver(store, check_permissions=False)  # the opt-out uses it as it is


def test_a_users_directory_of_another_user_is_refused(store: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user takes root")
    (store / "users").mkdir(parents=True, mode=0o700)
    os.chmod(store, 0o700)
    os.chown(store / "users", 4242, 4242)
    with pytest.raises(ConfigError, match=r"uid 4242.*chown"):
        FileDriver(store)


@pytest.mark.parametrize("check_permissions", [True, False], ids=["checked", "opted-out"])
async def test_users_as_a_symlink_or_a_file_is_refused(tmp_path: Path, store: Path,
                                                       check_permissions: bool) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    store.mkdir(mode=0o700)
    (store / "users").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="not a directory"):
        FileDriver(store, check_permissions=check_permissions)
    (store / "users").unlink()
    (store / "users").write_bytes(b"")
    with pytest.raises(ConfigError, match="not a directory"):
        FileDriver(store, check_permissions=check_permissions)
    # planted after construction: the first index call refuses it, and writes nothing
    (store / "users").unlink()
    drv = FileDriver(store, check_permissions=check_permissions)
    try:
        (store / "users").symlink_to(elsewhere)
        with pytest.raises(DriverError):
            await drv.index_user_session("nina", new_handle(), new_session_id(), TTL)
        assert list(elsewhere.iterdir()) == []
    finally:
        await drv.close()


async def test_users_removed_under_a_running_driver_is_made_again(driver: FileDriver,
                                                                 store: Path) -> None:
    await driver.index_user_session("otto", new_handle(), new_session_id(), TTL)
    shutil.rmtree(store / "users")
    handle, sid = new_handle(), new_session_id()
    await driver.index_user_session("otto", handle, sid, TTL)
    assert await driver.user_session_index("otto") == {handle: sid}
    assert mode(store / "users") == 0o700


async def test_a_missing_session_directory_is_a_driver_error(driver: FileDriver,
                                                            store: Path) -> None:
    await driver.index_user_session("pia", new_handle(), new_session_id(), TTL)
    shutil.rmtree(store)
    with pytest.raises(DriverError):
        await driver.user_session_index("pia")
    with pytest.raises(DriverError):
        await driver.index_user_session("pia", new_handle(), new_session_id(), TTL)
    with pytest.raises(DriverError):
        await driver.read_many([new_session_id()])


# -- read_many ---------------------------------------------------------------------------------


async def test_read_many_answers_in_order_alongside_concurrent_reads(
        driver: FileDriver, store: Path) -> None:
    ids = [new_session_id() for _ in range(200)]
    records = {sid: record(sid.encode()) for sid in ids[::2]}
    for sid, rec in records.items():
        await driver.write(sid, rec, TTL)
    expired = ids[0]
    age(store / f"sess_{expired}", TTL + 60)
    asked = [*ids, "../" + "a" * 40, "", ids[2]]
    expected = [None if sid == expired else records.get(sid) for sid in asked]
    # reads in flight when read_many starts: its ids join their queue (one hop for all)
    reads = [driver.read(sid) for sid in ids[::3]]
    answers = await asyncio.wait_for(asyncio.gather(*reads, driver.read_many(asked)), HANG)
    assert answers[-1] == expected
    assert answers[:-1] == [None if sid == expired else records.get(sid) for sid in ids[::3]]
    assert not (store / f"sess_{expired}").exists()  # removed on sight, as by read()
    # and alone, in a hop of its own
    assert await driver.read_many(asked) == expected


async def test_read_many_needs_no_ids(driver: FileDriver) -> None:
    assert await driver.read_many([]) == []
    assert await driver.read_many(["not an id"]) == [None]


async def test_an_index_deadline_follows_the_files_mtime(driver: FileDriver,
                                                        store: Path) -> None:
    """The deadline is the mtime plus what was left at the write: moving the mtime moves
    the deadline (what the contract suite's ``advance`` does to age indexes)."""
    handle, sid = new_handle(), new_session_id()
    path = index_file(store, "quinn")
    await driver.index_user_session("quinn", handle, sid, 1000)
    assert json.loads(path.read_bytes())["k"] == 1000  # written at its own mtime
    assert abs(os.stat(path).st_mtime - time.time()) < 60
    age(path, 800)  # 200 s left
    assert await driver.user_session_index("quinn") == {handle: sid}
    await driver.index_user_session("quinn", new_handle(), sid, 10)  # keeps the later one
    left = json.loads(path.read_bytes())["k"]
    assert 100 < left <= 200
    age(path, left - 50)
    assert len(await driver.user_session_index("quinn")) == 2
    age(path, 51)
    assert await driver.user_session_index("quinn") == {}


async def test_a_refresh_that_changes_no_entry_only_moves_the_mtime(
        driver: FileDriver, store: Path) -> None:
    handle, sid = new_handle(), new_session_id()
    path = index_file(store, "rita")
    await driver.index_user_session("rita", handle, sid, 100)
    age(path, 90)
    before = os.stat(path)
    await driver.index_user_session("rita", handle, sid, 100)  # a refresh
    after = os.stat(path)
    assert after.st_ino == before.st_ino and after.st_mtime > before.st_mtime + 80
    age(path, 90)  # 90 s after the refresh: live, though 180 s after the first write
    assert await driver.user_session_index("rita") == {handle: sid}
    # a longer ttl than the file keeps is a write: k grows to it
    await driver.index_user_session("rita", handle, sid, 1000)
    assert os.stat(path).st_ino != before.st_ino
    assert json.loads(path.read_bytes())["k"] == 1000
    age(path, 999)
    assert await driver.user_session_index("rita") == {handle: sid}
    age(path, 2)
    assert await driver.user_session_index("rita") == {}


def test_the_stripe_of_a_user_is_fixed_by_its_digest() -> None:
    stripes = {UserFiles.stripe_of(user_digest(secrets.token_hex(8))) for _ in range(2_000)}
    assert stripes == set(range(64))  # all stripes are used, none beyond
