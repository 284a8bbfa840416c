"""File driver security: no whole session id in a log or an error; a private directory.

Ids in logs: every failure path of the driver is driven for real (a path the kernel finds
too long, a directory replaced by a file or gone, session and lock files that are
directories or immutable, no file descriptor left, a lock held past ``lock_timeout``, gc
over files it cannot remove, gc failing under the manager's logging), and every log
record of the ``aiosessmgr`` logger at DEBUG, formatted with its traceback as a handler
would, and every raised exception (``str``, ``repr``, args, file names and printed
traceback of its whole ``__cause__`` / ``__context__`` chain) is searched for the ids.

The directory: created 0700 with its parents whatever the umask; an existing one that
group or others may use, or another user owns, is refused unless ``check_permissions``
is false.
"""

# These tests set up broken stores with blocking calls on purpose: nothing else runs.
# ruff: noqa: ASYNC240

from __future__ import annotations

import fcntl
import logging
import os
import resource
import secrets
import shutil
import stat
import subprocess
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from aiosessmgr import ConfigError, DriverError, SessionManager
from aiosessmgr.drivers.base import VERSION_SIZE
from aiosessmgr.drivers.file import FileDriver
from aiosessmgr.drivers.file.fs import stripe_of

TTL = 600


def new_id() -> str:
    return secrets.token_urlsafe(32)


def short(session_id: str) -> str:
    return session_id[:6] + "…"


def record() -> bytes:
    return os.urandom(VERSION_SIZE) + b"payload"


def age(path: Path, seconds: float) -> None:
    then = os.stat(path, follow_symlinks=False).st_mtime - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def exception_texts(exc: BaseException) -> list[str]:
    """Everything *exc* can show: its printed traceback, and for each exception of its
    chain (causes and contexts) its str, repr, args and file names."""
    texts = ["".join(traceback.format_exception(exc))]
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        if isinstance(current, OSError):
            texts += [repr(current.filename), repr(current.filename2)]
        pending += [current.__cause__, current.__context__]
    return texts


class Witness:
    """What the failures of a test showed: the log records and the raised exceptions."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.raised: list[BaseException] = []

    async def fails(self, operation: Callable[[], Awaitable[object]]) -> DriverError:
        """Await ``operation()``, which must raise DriverError, and keep the error."""
        with pytest.raises(DriverError) as info:
            await operation()
        self.raised.append(info.value)
        return info.value

    def logged(self, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.caplog.records if r.levelno >= level]

    def texts(self) -> list[str]:
        formatter = logging.Formatter()
        texts: list[str] = []
        for rec in self.caplog.records:
            texts += [formatter.format(rec), rec.getMessage(), repr(rec.args)]
            if rec.exc_info and rec.exc_info[1] is not None:
                texts += exception_texts(rec.exc_info[1])
        for exc in self.raised:
            texts += exception_texts(exc)
        return texts

    def assert_no_whole_id(self, *session_ids: str) -> None:
        texts = self.texts()
        assert texts, "nothing failed, nothing was logged: the test checks nothing"
        for text in texts:
            for session_id in session_ids:
                assert session_id not in text, f"whole session id {session_id} in {text!r}"


@pytest.fixture
def witness(caplog: pytest.LogCaptureFixture) -> Witness:
    caplog.set_level(logging.DEBUG, logger="aiosessmgr")
    return Witness(caplog)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "sessions"


@pytest.fixture
async def driver(store: Path) -> AsyncIterator[FileDriver]:
    drv = FileDriver(store, ttl=TTL, touch_interval=60)
    yield drv
    await drv.close()


# -- no whole id in a log or an error ------------------------------------------------------


def long_directory(base: Path) -> Path:
    """A directory whose session and session lock file paths are longer than PATH_MAX,
    while its temporary and stripe lock file paths still fit: ENAMETOOLONG on every
    operation that names a file after an id."""
    limit = os.pathconf(base, "PC_PATH_MAX")  # 4096 on Linux, counting the NUL
    target = limit - 40  # + "/sess_" + 43 chars is too long; + "/.sess_<16>.tmp" fits
    path = str(base)
    while len(path) < target:
        left = target - len(path)
        path = os.path.join(path, "d" * (200 if left > 250 else left - 1))
    return Path(path)


async def test_a_path_too_long_shows_no_whole_id(tmp_path: Path, witness: Witness) -> None:
    store = long_directory(tmp_path)
    drv = FileDriver(store, ttl=TTL)
    sid, planted = new_id(), new_id()
    # a session file gc will meet: created relative to the directory, where its name fits
    dir_fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(os.open(f"sess_{planted}", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=dir_fd))
    finally:
        os.close(dir_fd)
    try:
        for operation in (lambda: drv.read(sid), lambda: drv.read_touch(sid, TTL),
                          lambda: drv.read(planted), lambda: drv.write(sid, record(), TTL),
                          lambda: drv.compare_and_set(sid, record(), TTL, None),
                          lambda: drv.destroy(sid), lambda: drv.acquire_lock(sid, 10, 1),
                          lambda: drv.gc(TTL)):
            error = await witness.fails(operation)
            assert "File name too long" in str(error)
    finally:
        await drv.close()
    # gc failing under the manager: logged at ERROR with its traceback
    manager = SessionManager({"drivers": {"f": {"driver": "file", "path": str(store)}},
                              "lottery": (0, 1)})
    assert manager.schedule_gc()
    await manager.wait_gc()
    await manager.close()
    assert any("garbage collection" in m for m in witness.logged(logging.ERROR))
    witness.assert_no_whole_id(sid, planted)
    # the errors still say which file: the directory and the abbreviated id
    assert short(sid) in str(witness.raised[0]) and short(planted) in str(witness.raised[-1])


@pytest.mark.parametrize("breakage", ["replaced-by-a-file", "removed"])
async def test_a_broken_directory_shows_no_whole_id(driver: FileDriver, store: Path,
                                                    witness: Witness, breakage: str) -> None:
    sid, locked = new_id(), new_id()
    await driver.write(sid, record(), TTL)
    token = await driver.acquire_lock(locked, 10, 1)
    assert token is not None
    shutil.rmtree(store)
    if breakage == "replaced-by-a-file":
        store.write_text("not a directory")
    for operation in (lambda: driver.read(sid), lambda: driver.read_touch(sid, TTL),
                      lambda: driver.write(sid, record(), TTL),
                      lambda: driver.compare_and_set(sid, record(), TTL, None),
                      lambda: driver.destroy(sid), lambda: driver.acquire_lock(sid, 10, 1),
                      lambda: driver.gc(TTL)):
        await witness.fails(operation)
    # releasing a lock whose file cannot be removed any more: a warning, not an error
    await driver.release_lock(locked, token)
    witness.assert_no_whole_id(sid, locked)
    assert short(sid) in str(witness.raised[0])
    if breakage == "replaced-by-a-file":
        assert any("lock file of session " + short(locked) in m for m in witness.logged())


async def test_session_and_lock_files_that_are_directories_show_no_whole_id(
        driver: FileDriver, store: Path, witness: Witness) -> None:
    sid, empty = new_id(), new_id()
    (store / f"sess_{sid}").mkdir()
    (store / f".sess_lock-{sid}").mkdir()
    (store / f"sess_{empty}").write_bytes(b"")
    assert await driver.read(sid) is None  # a WARNING: unreadable
    assert await driver.read(empty) is None  # a WARNING: empty
    assert await driver.compare_and_set(sid, record(), TTL, None) is False
    for operation in (lambda: driver.write(sid, record(), TTL), lambda: driver.destroy(sid),
                      lambda: driver.acquire_lock(sid, 10, 1)):
        await witness.fails(operation)
    witness.assert_no_whole_id(sid, empty)
    assert len(witness.logged()) == 2
    assert all(short(sid) in str(error) for error in witness.raised)


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Files to make immutable (``chattr +i``: even root cannot change or remove them);
    made mutable again at teardown."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)


def make_immutable(paths: list[Path], path: Path) -> None:
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"no immutable files on this file system: {done.stderr.strip()}")
    paths.append(path)


async def test_files_that_cannot_be_changed_show_no_whole_id(
        driver: FileDriver, store: Path, witness: Witness, immutable: list[Path]) -> None:
    """Permission denied for root: immutable session and lock files (EPERM)."""
    fixed, locked, held, expired, stale = (new_id() for _ in range(5))
    for sid in (fixed, expired, stale):
        await driver.write(sid, record(), TTL)
    age(store / f"sess_{expired}", TTL + 60)
    age(store / f"sess_{stale}", TTL + 60)
    make_immutable(immutable, store / f"sess_{fixed}")
    make_immutable(immutable, store / f"sess_{expired}")
    (store / f".sess_lock-{locked}").write_bytes(b"")
    make_immutable(immutable, store / f".sess_lock-{locked}")
    token = await driver.acquire_lock(held, 10, 1)
    assert token is not None
    make_immutable(immutable, store / f".sess_lock-{held}")

    for operation in (lambda: driver.write(fixed, record(), TTL),
                      lambda: driver.destroy(fixed), lambda: driver.acquire_lock(locked, 10, 1)):
        error = await witness.fails(operation)
        assert "Operation not permitted" in str(error)
    await driver.release_lock(held, token)  # its lock file stays: a WARNING
    witness.assert_no_whole_id(fixed, locked, held)
    # gc removes what it can and says what it had to leave
    assert await driver.gc(TTL) == 1
    assert not (store / f"sess_{stale}").exists() and (store / f"sess_{expired}").exists()
    warnings = witness.logged()
    assert any("lock file of session " + short(held) in m for m in warnings), warnings
    assert any("1 files cannot be removed" in m and short(expired) in m for m in warnings), \
        warnings
    witness.assert_no_whole_id(fixed, locked, held, expired, stale)


@contextmanager
def no_file_descriptors_left() -> Iterator[None]:
    """Every descriptor this process may open is taken (RLIMIT_NOFILE lowered, the rest
    filled): the next open() fails with EMFILE. Restored on exit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    base = os.open(os.devnull, os.O_RDONLY)
    fillers: list[int] = []
    highest = max(int(name) for name in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(highest + 16, soft), hard))
    try:
        while True:
            try:
                fillers.append(os.dup(base))
            except OSError as exc:
                if exc.errno != 24:  # EMFILE
                    raise
                break
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        os.close(base)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_running_out_of_file_descriptors_shows_no_whole_id(
        driver: FileDriver, witness: Witness) -> None:
    sid = new_id()
    await driver.write(sid, record(), TTL)
    with no_file_descriptors_left():
        for operation in (lambda: driver.read(sid), lambda: driver.read_touch(sid, TTL),
                          lambda: driver.write(sid, record(), TTL),
                          lambda: driver.compare_and_set(sid, record(), TTL, None),
                          lambda: driver.destroy(sid), lambda: driver.acquire_lock(sid, 10, 1),
                          lambda: driver.gc(TTL)):
            error = await witness.fails(operation)
            assert "Too many open files" in str(error)
    assert await driver.read(sid) is not None  # all is well again
    witness.assert_no_whole_id(sid)
    assert short(sid) in str(witness.raised[0])


async def test_locks_held_past_lock_timeout_show_no_whole_id(store: Path,
                                                             witness: Witness) -> None:
    """A guard: these messages name the stripe, never the id (they did before, too)."""
    drv = FileDriver(store, ttl=TTL, lock_timeout=0.1)
    other = FileDriver(store, ttl=TTL)
    sid, locked = new_id(), new_id()
    await drv.write(sid, record(), TTL)
    age(store / f"sess_{sid}", TTL + 60)
    fd = os.open(store / f".sess_lock-{stripe_of(sid):02d}", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        for operation in (lambda: drv.write(sid, record(), TTL),
                          lambda: drv.compare_and_set(sid, record(), TTL, None),
                          lambda: drv.destroy(sid), lambda: drv.gc(TTL)):
            assert "timed out" in str(await witness.fails(operation))
    finally:
        os.close(fd)
    token = await other.acquire_lock(locked, 10, 1)
    assert token is not None
    assert await drv.acquire_lock(locked, 10, 0.1) is None
    await other.release_lock(locked, token)
    await drv.close()
    await other.close()
    witness.assert_no_whole_id(sid, locked)


# -- a private session directory -------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def file_config(path: Path, **options: Any) -> dict[str, Any]:
    return {"default": "file", "lottery": (0, 1),
            "drivers": {"file": {"driver": "file", "path": str(path), **options}}}


@contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


async def test_created_directories_and_files_are_private_whatever_the_umask(
        tmp_path: Path) -> None:
    store = tmp_path / "a" / "b" / "sessions"
    sid = new_id()
    with umask(0):
        drv = FileDriver(store, ttl=TTL)
        try:
            await drv.write(sid, record(), TTL)
            token = await drv.acquire_lock(sid, 10, 1)
            assert token is not None
            assert mode(store / f".sess_lock-{sid}") == 0o600
            await drv.release_lock(sid, token)
        finally:
            await drv.close()
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", store)] == [0o700] * 3
    assert mode(store / f"sess_{sid}") == 0o600
    assert mode(store / f".sess_lock-{stripe_of(sid):02d}") == 0o600


OPEN_MODES = [0o777, 0o1777, 0o755, 0o750, 0o711, 0o705, 0o770, 0o720, 0o702, 0o740, 0o701]


@pytest.mark.parametrize("open_mode", [pytest.param(m, id=f"{m:04o}") for m in OPEN_MODES])
def test_a_directory_others_can_use_is_refused(store: Path, open_mode: int) -> None:
    store.mkdir()
    os.chmod(store, open_mode)
    with pytest.raises(ConfigError) as info:
        SessionManager(file_config(store))
    message = str(info.value)
    assert f"mode {open_mode:04o}" in message
    assert f"chmod 700 {store}" in message and '"check_permissions": false' in message
    assert os.listdir(store) == []  # refused before anything was written to it
    with pytest.raises(ConfigError, match="chmod 700"):
        FileDriver(store)
    # the explicit opt-out uses it as it is
    SessionManager(file_config(store, check_permissions=False))
    FileDriver(store, check_permissions=False)
    assert mode(store) == open_mode


def test_a_private_directory_is_accepted(store: Path) -> None:
    store.mkdir(mode=0o700)
    os.chmod(store, 0o700)
    FileDriver(store)


def test_a_directory_another_user_owns_is_refused(store: Path) -> None:
    store.mkdir(mode=0o700)
    os.chown(store, 4242, 4242)
    with pytest.raises(ConfigError) as info:
        FileDriver(store)
    assert "uid 4242" in str(info.value) and "chown" in str(info.value)
    assert '"check_permissions": false' in str(info.value)
    FileDriver(store, check_permissions=False)


def test_a_symlink_is_judged_by_the_directory_it_names(tmp_path: Path) -> None:
    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir()
    os.chmod(shared, 0o777)
    private.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(shared)
    with pytest.raises(ConfigError, match=f"chmod 700 {shared}"):
        FileDriver(link)
    link.unlink()
    link.symlink_to(private)
    assert FileDriver(link).path == str(private)
