"""The file driver against real directories: contract, expiry, touch, names, errors, gc."""

# These tests inspect the real directory with blocking calls on purpose: the assertions
# are about what is on disk, and no other task runs while they look.
# ruff: noqa: ASYNC240

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from aiosessmgr import ConfigError, DriverError, SessionManager, get_session, setup
from aiosessmgr.drivers.base import VERSION_SIZE, SupportsCompareAndSet, SupportsTouch
from aiosessmgr.drivers.file import TEMP_MAX_AGE, FileDriver

TTL = 600


def new_id() -> str:
    return secrets.token_urlsafe(32)


def record(body: bytes = b"payload") -> bytes:
    return os.urandom(VERSION_SIZE) + body


def age(path: Path, seconds: float) -> None:
    """Move a file's mtime *seconds* into the past (how tests control the clock here)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "sessions"


@pytest.fixture
async def driver(store: Path) -> AsyncIterator[FileDriver]:
    drv = FileDriver(store, ttl=TTL, touch_interval=60)
    yield drv
    await drv.close()


def session_files(store: Path, prefix: str = "sess_") -> list[str]:
    return sorted(p.name for p in store.iterdir() if p.name.startswith(prefix))


# -- contract --------------------------------------------------------------------------------


async def test_round_trip(driver: FileDriver, store: Path) -> None:
    sid, rec = new_id(), record(b"x" * 100_000)
    assert isinstance(driver, SupportsTouch) and isinstance(driver, SupportsCompareAndSet)
    assert await driver.read(sid) is None
    await driver.write(sid, rec, TTL)
    assert await driver.read(sid) == rec
    assert await driver.read_touch(sid, TTL) == rec
    path = store / f"sess_{sid}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    assert session_files(store) == [path.name]
    await driver.write(sid, b"second", TTL)
    assert await driver.read(sid) == b"second"
    await driver.destroy(sid)
    await driver.destroy(sid)  # absent is fine
    assert await driver.read(sid) is None
    assert session_files(store) == []


async def test_prefix_names_the_files(store: Path) -> None:
    drv = FileDriver(store, prefix="app1-")
    sid = new_id()
    await drv.write(sid, record(), TTL)
    assert session_files(store, "app1-") == [f"app1-{sid}"]


# -- expiry and touch --------------------------------------------------------------------------


async def test_expired_file_is_absent_and_removed(driver: FileDriver, store: Path) -> None:
    live, dead = new_id(), new_id()
    await driver.write(live, record(), TTL)
    await driver.write(dead, record(), TTL)
    age(store / f"sess_{live}", TTL - 30)
    age(store / f"sess_{dead}", TTL + 1)
    assert await driver.read(live) is not None
    assert await driver.read(dead) is None
    assert session_files(store) == [f"sess_{live}"]
    assert await driver.read_touch(dead, TTL) is None


async def test_read_touch_extends_expiry(driver: FileDriver, store: Path) -> None:
    sid, rec = new_id(), record()
    path = store / f"sess_{sid}"
    await driver.write(sid, rec, TTL)
    age(path, TTL - 10)
    assert await driver.read_touch(sid, TTL) == rec
    assert time.time() - path.stat().st_mtime < 60
    # a plain read never extends expiry
    age(path, TTL - 10)
    before = path.stat().st_mtime
    assert await driver.read(sid) == rec
    assert path.stat().st_mtime == before


async def test_touch_is_throttled_to_touch_interval(driver: FileDriver, store: Path) -> None:
    sid = new_id()
    path = store / f"sess_{sid}"
    await driver.write(sid, record(), TTL)
    mtimes = []
    age(path, 30)  # younger than touch_interval=60: reads must not write
    for _ in range(50):
        await driver.read_touch(sid, TTL)
        mtimes.append(path.stat().st_mtime_ns)
    assert len(set(mtimes)) == 1
    age(path, 61)
    stale = path.stat().st_mtime_ns
    for _ in range(50):
        await driver.read_touch(sid, TTL)
        mtimes.append(path.stat().st_mtime_ns)
    # exactly one touch for 50 reads once the interval had passed
    assert len(set(mtimes[50:])) == 1
    assert mtimes[50] > stale


async def test_default_touch_interval_is_a_tenth_of_the_lifetime(store: Path) -> None:
    manager = SessionManager({"drivers": {"f": {"driver": "file", "path": str(store),
                                                "lifetime": 10}}})
    drv = manager.get_driver()
    assert isinstance(drv, FileDriver)
    assert (drv.ttl, drv.touch_interval) == (600, 60.0)
    await manager.close()


# -- names: only ids reach the file system -----------------------------------------------------

HOSTILE = [
    pytest.param("../" + "a" * 40, id="dotdot"),
    pytest.param("../../../../../../../../../../../../../tmp/x", id="dotdot-43"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("/" + "a" * 42, id="absolute-43"),
    pytest.param("a" * 42 + "\x00", id="nul"),
    pytest.param("a" * 20 + "\x00/../../" + "a" * 15, id="nul-traversal"),
    pytest.param("..\\" * 14 + "a", id="backslash"),
    pytest.param("a" * 21 + "\\" + "a" * 21, id="backslash-inside"),
    pytest.param("a" * 44, id="too-long"),
    pytest.param("a" * 100_000, id="very-long"),
    pytest.param("a" * 42, id="too-short"),
    pytest.param("", id="empty"),
    pytest.param("." * 43, id="dots"),
    pytest.param("a" * 40 + "%2f", id="encoded-slash"),
    pytest.param("a" * 42 + "\u00e9", id="non-ascii"),
    pytest.param("a" * 42 + "\n", id="newline"),
]


@pytest.mark.parametrize("bad_id", HOSTILE)
async def test_hostile_ids_never_touch_the_disk(tmp_path: Path, bad_id: str) -> None:
    store = tmp_path / "deep" / "sessions"
    drv = FileDriver(store, ttl=TTL)
    escape = Path("/tmp/x")  # where the dotdot-43 case would land
    before = (sorted(str(p) for p in tmp_path.rglob("*")), escape.exists())
    assert await drv.read(bad_id) is None
    assert await drv.read_touch(bad_id, TTL) is None
    for operation in (drv.write(bad_id, record(), TTL),
                      drv.compare_and_set(bad_id, record(), TTL, None),
                      drv.destroy(bad_id)):
        with pytest.raises(ValueError):
            await operation
    assert (sorted(str(p) for p in tmp_path.rglob("*")), escape.exists()) == before


async def test_non_string_ids_are_rejected(driver: FileDriver) -> None:
    assert await driver.read(None) is None  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await driver.write(b"a" * 43, record(), TTL)  # type: ignore[arg-type]


async def test_symlink_in_the_directory_is_not_followed(driver: FileDriver, store: Path,
                                                        tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not a session, outside the directory")
    sid = new_id()
    (store / f"sess_{sid}").symlink_to(secret)
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        assert await driver.read(sid) is None
    assert len(caplog.records) == 1
    # a write replaces the link itself, never the file it points to
    await driver.write(sid, record(), TTL)
    assert secret.read_bytes() == b"not a session, outside the directory"


# -- configuration ---------------------------------------------------------------------------


def file_config(path: Any, **options: Any) -> dict[str, Any]:
    return {"default": "file", "lottery": (0, 1),
            "drivers": {"file": {"driver": "file", "path": path, "lifetime": 1, **options}}}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"pth": "x"}, "valid keys: check_permissions, driver, fsync, lifetime, "
                                   "lock_timeout, max_workers, path, prefix, touch_interval",
                     id="unknown-key"),
        pytest.param({"touchInterval": 5}, "did you mean 'touch_interval'", id="camel-case"),
        pytest.param({"prefix": "../x"}, "prefix", id="prefix-traversal"),
        pytest.param({"prefix": "a/b"}, "prefix", id="prefix-slash"),
        pytest.param({"fsync": "yes"}, "fsync", id="fsync-not-bool"),
        pytest.param({"check_permissions": "no"}, "check_permissions",
                     id="check-permissions-not-bool"),
        pytest.param({"touch_interval": -1}, "touch_interval", id="negative-touch"),
        pytest.param({"max_workers": 0}, "max_workers", id="no-workers"),
        pytest.param({"max_workers": 2.5}, "max_workers", id="fractional-workers"),
        pytest.param({"max_workers": True}, "max_workers", id="bool-workers"),
        pytest.param({"lock_timeout": 0}, "lock_timeout", id="zero-lock-timeout"),
        pytest.param({"lock_timeout": float("inf")}, "lock_timeout", id="endless-lock-timeout"),
        pytest.param({"lock_timeout": "5"}, "lock_timeout", id="lock-timeout-string"),
    ],
)
def test_bad_options_fail_at_startup(store: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        SessionManager(file_config(str(store), **options))


def test_path_is_required() -> None:
    config = {"drivers": {"file": {"driver": "file"}}}
    with pytest.raises(ConfigError, match="needs a 'path' option"):
        SessionManager(config)


def test_path_that_is_a_file_fails_at_startup(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        SessionManager(file_config(str(tmp_path / "plain")))
    with pytest.raises(ConfigError, match="cannot create"):
        SessionManager(file_config(str(tmp_path / "plain" / "below")))


def test_unwritable_directory_fails_at_startup() -> None:
    # /proc refuses new files even to root, so this holds whoever runs the tests (it is
    # 0555: the permission check, test_file_security.py, is turned off to reach this one)
    with pytest.raises(ConfigError, match="not writable"):
        SessionManager(file_config("/proc", check_permissions=False))


async def test_missing_directory_is_created_0700(tmp_path: Path) -> None:
    manager = SessionManager(file_config(str(tmp_path / "a" / "b")))
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
    await manager.close()


# -- unreadable records: a fresh session and a 200 ---------------------------------------------


async def counter(request: web.Request) -> web.Response:
    session = await get_session(request)
    return web.Response(text=f"Visits: {session.increment('visits')}")


async def make_client(aiohttp_client: Any, store: Path) -> TestClient[Any, Any]:
    app = web.Application()
    app.router.add_get("/", counter)
    setup(app, SessionManager(file_config(str(store))))
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return client


def corrupt_garbage(path: Path, other: Path) -> None:
    path.write_bytes(b"\xff" * 3 + os.urandom(200))


def corrupt_empty(path: Path, other: Path) -> None:
    path.write_bytes(b"")


def corrupt_truncated(path: Path, other: Path) -> None:
    path.write_bytes(path.read_bytes()[: VERSION_SIZE + 3])


def corrupt_directory(path: Path, other: Path) -> None:
    path.unlink()
    path.mkdir()


def corrupt_foreign_symlink(path: Path, other: Path) -> None:
    path.unlink()
    path.symlink_to(other)


@pytest.mark.parametrize("corrupt", [
    pytest.param(corrupt_garbage, id="garbage"),
    pytest.param(corrupt_empty, id="zero-length"),
    pytest.param(corrupt_truncated, id="truncated"),
    pytest.param(corrupt_directory, id="directory"),
    pytest.param(corrupt_foreign_symlink, id="symlink-to-another-session"),
])
async def test_unreadable_file_gives_a_fresh_session(
    aiohttp_client: Any, store: Path, caplog: pytest.LogCaptureFixture, corrupt: Any
) -> None:
    client = await make_client(aiohttp_client, store)
    other = await make_client(aiohttp_client, store)
    for _ in range(3):
        assert await (await other.get("/")).text() != ""
    resp = await client.get("/")
    assert await resp.text() == "Visits: 1"
    sid = resp.cookies["aiosessmgr_session"].value
    other_sid = next(c.value for c in other.session.cookie_jar)
    corrupt(store / f"sess_{sid}", store / f"sess_{other_sid}")
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        resp = await client.get("/")
        assert resp.status == 200
        assert await resp.text() == "Visits: 1"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert resp.cookies["aiosessmgr_session"].value != sid
    assert await (await client.get("/")).text() == "Visits: 2"


_READ_AS_SCRIPT = """
import asyncio, logging, sys
from aiosessmgr.drivers.file import FileDriver
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
async def main():
    driver = FileDriver(sys.argv[1], ttl=int(sys.argv[3]))
    print("RESULT", await driver.read(sys.argv[2]))
asyncio.run(main())
"""


async def test_permission_denied_reads_as_absent(driver: FileDriver, store: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    sid = new_id()
    await driver.write(sid, record(), TTL)
    os.chmod(store / f"sess_{sid}", 0)
    if os.geteuid() != 0:
        with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
            assert await driver.read(sid) is None
        assert len(caplog.records) == 1 and "Permission denied" in caplog.text
        return
    # root reads any file; in a fresh user namespace it keeps its uid but loses the
    # capability that overrides file modes, so the read really meets EACCES
    proc = await asyncio.create_subprocess_exec(
        "unshare", "--user", "--", sys.executable, "-c", _READ_AS_SCRIPT, str(store), sid,
        str(TTL), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "RESULT None"
    warnings = [line for line in err.decode().splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "Permission denied" in warnings[0], err.decode()


# -- a broken store is a DriverError -----------------------------------------------------------


async def test_vanished_directory_is_a_driver_error(driver: FileDriver, store: Path) -> None:
    sid = new_id()
    await driver.write(sid, record(), TTL)
    shutil.rmtree(store)
    operations = [driver.read(sid), driver.read_touch(sid, TTL), driver.write(sid, record(), TTL),
                  driver.compare_and_set(sid, record(), TTL, None), driver.destroy(sid),
                  driver.gc(TTL)]
    for operation in operations:
        with pytest.raises(DriverError) as info:
            await operation
        assert isinstance(info.value.__cause__, FileNotFoundError)


async def test_directory_replaced_by_a_file_is_a_driver_error(driver: FileDriver,
                                                              store: Path) -> None:
    shutil.rmtree(store)
    store.write_text("oops")
    with pytest.raises(DriverError) as info:
        await driver.read(new_id())
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOTDIR


async def test_vanished_directory_answers_503(aiohttp_client: Any, store: Path) -> None:
    client = await make_client(aiohttp_client, store)
    assert (await client.get("/")).status == 200
    shutil.rmtree(store)
    resp = await client.get("/")
    assert resp.status == 503


DISK_FULL = """
import asyncio, errno, os, secrets, sys
from aiosessmgr.drivers.file import FileDriver
from aiosessmgr.errors import DriverError

async def main() -> None:
    drv = FileDriver(sys.argv[1])
    try:
        for _ in range(10_000):
            await drv.write(secrets.token_urlsafe(32), os.urandom(4096), 60)
    except DriverError as exc:
        cause = exc.__cause__
        print("DriverError", errno.errorcode.get(getattr(cause, "errno", 0)))
        print("temps", sum(n.endswith(".tmp") for n in os.listdir(sys.argv[1])))
    else:
        print("no error")

asyncio.run(main())
"""


def test_disk_full_is_a_driver_error(tmp_path: Path) -> None:
    """ENOSPC from a real 64 KiB tmpfs (mounted in a private user+mount namespace)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    (tmp_path / "full.py").write_text(DISK_FULL)
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a mount namespace here: {probe.stderr!r}")
    shell = (f"mount -t tmpfs -o size=64k,mode=700 tmpfs {mount} && "
             f"{sys.executable} {tmp_path / 'full.py'} {mount}")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["DriverError", "ENOSPC", "temps", "0"]


# -- garbage collection ----------------------------------------------------------------------


async def test_gc_removes_only_expired_sessions_and_stale_temps(driver: FileDriver,
                                                                store: Path) -> None:
    live = [new_id() for _ in range(5)]
    dead = [new_id() for _ in range(7)]
    for sid in live + dead:
        await driver.write(sid, record(), TTL)
    for sid in live:
        age(store / f"sess_{sid}", TTL - 60)
    for sid in dead:
        age(store / f"sess_{sid}", TTL + 60)
    stale_temp = store / ".sess_0123456789abcdef.tmp"
    fresh_temp = store / ".sess_fedcba9876543210.tmp"
    stale_temp.write_bytes(b"half a rec")
    fresh_temp.write_bytes(b"being written")
    age(stale_temp, TEMP_MAX_AGE + 1)
    # not ours: another prefix, a foreign file, a directory with a session-like name
    other_prefix = store / f"othr_{new_id()}"
    foreign = store / "notes.txt"
    subdir = store / f"sess_{new_id()}"
    other_prefix.write_bytes(b"x")
    foreign.write_bytes(b"x")
    subdir.mkdir()
    for path in (other_prefix, foreign, subdir):
        age(path, TTL * 10)

    assert await driver.gc(TTL) == len(dead)
    names = {p.name for p in store.iterdir()}
    assert {f"sess_{sid}" for sid in live} <= names
    assert not {f"sess_{sid}" for sid in dead} & names
    assert stale_temp.name not in names
    assert {fresh_temp.name, other_prefix.name, foreign.name, subdir.name} <= names
    assert await driver.gc(TTL) == 0


async def test_gc_uses_max_lifetime(driver: FileDriver, store: Path) -> None:
    sid = new_id()
    await driver.write(sid, record(), TTL)
    age(store / f"sess_{sid}", 120)
    assert await driver.gc(300) == 0
    assert await driver.gc(60) == 1


async def test_manager_gc_on_the_file_driver(store: Path) -> None:
    manager = SessionManager(file_config(str(store)))
    session = await manager.driver()
    session.put("k", 1)
    await session.save()
    age(store / f"sess_{session.id}", 61)
    assert await manager.gc() == {"file": 1}
    assert (await manager.load(session.id)).new
    await manager.close()


async def test_empty_file_is_absent_with_one_warning(driver: FileDriver, store: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """What a crash between rename and writeback can leave behind without fsync."""
    sid = new_id()
    (store / f"sess_{sid}").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="aiosessmgr"):
        assert await driver.read_touch(sid, TTL) is None
    assert len(caplog.records) == 1 and "empty session file" in caplog.text
