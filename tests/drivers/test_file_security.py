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
is false. So is one others could replace: a directory on its path (up to /, symlinks
followed) that another user owns, or that group or others may write to without the
sticky bit, or a symlink on the way another user owns; the tester's parent-swap attack
is run for real as nobody (setpriv) against both kinds of parent.
"""

# These tests set up broken stores with blocking calls on purpose: nothing else runs.
# ruff: noqa: ASYNC240

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import resource
import secrets
import shutil
import stat
import subprocess
import tempfile
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


# -- nobody else can replace the session directory ------------------------------------------

#: the uid of the local attacker of these tests (nobody), and of "another user"
NOBODY = 65534
OTHER_UID = 4242
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="acting as another user takes root and setpriv (util-linux)")


@pytest.fixture
def reachable(tmp_path: Path) -> Iterator[Path]:
    """A directory (root's, 0755) other users can reach: tmp_path's parents are 0700."""
    base = Path(tempfile.mkdtemp(prefix="aiosessmgr-perm-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def as_user(uid: int, *command: str) -> tuple[int, str]:
    """Run *command* as *uid* (its own gid, no supplementary groups): (exit code, output)."""
    proc = await asyncio.create_subprocess_exec(
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


def refusal(path: Path, **options: Any) -> str:
    """The ConfigError message of both ways to make the driver (config dict, class)."""
    with pytest.raises(ConfigError) as info:
        SessionManager(file_config(path, **options))
    with pytest.raises(ConfigError):
        FileDriver(path, **options)
    return str(info.value)


# group or other write, no sticky bit; the same with the sticky bit is accepted
WRITABLE = [0o777, 0o775, 0o773, 0o757, 0o770, 0o730, 0o707, 0o702, 0o720, 0o722]


@pytest.mark.parametrize("open_mode", [pytest.param(m, id=f"{m:04o}") for m in WRITABLE])
def test_a_parent_others_can_write_is_refused_unless_sticky(tmp_path: Path,
                                                            open_mode: int) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    os.chmod(parent, open_mode)
    store = parent / "sessions"
    message = refusal(store)
    assert f"the directory {str(parent)!r} on its path has mode {open_mode:04o}" in message
    assert "owner uid 0" in message
    assert f"`chmod g-w,o-w {parent}`" in message and f"`chmod +t {parent}`" in message
    assert "move the session directory" in message
    assert '"check_permissions": false' in message
    assert os.listdir(store) == []  # created 0700, then refused: nothing written to it
    # with the sticky bit only an entry's owner (or root) may rename it: accepted
    os.chmod(parent, open_mode | stat.S_ISVTX)
    assert FileDriver(store).path == str(store)
    SessionManager(file_config(store))


def test_every_directory_up_to_the_root_is_checked(tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / "middle").mkdir(parents=True)
    os.chmod(top, 0o777)
    store = top / "middle" / "sessions"
    message = refusal(store)
    assert f"the directory {str(top)!r} on its path has mode 0777" in message
    # the walk reaches /: the message names the first directory on the way that fails
    os.chmod(top, 0o755)
    os.chmod(tmp_path, 0o777)
    try:
        assert f"the directory {str(tmp_path)!r} on its path has mode 0777" in refusal(store)
    finally:
        os.chmod(tmp_path, 0o700)
    FileDriver(store)


def test_a_parent_another_user_owns_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "theirs"
    parent.mkdir(mode=0o755)
    os.chown(parent, OTHER_UID, OTHER_UID)
    store = parent / "sessions"
    message = refusal(store)
    assert (f"the directory {str(parent)!r} on its path belongs to uid {OTHER_UID} "
            f"(mode 0755), neither root nor this process's user (uid 0)") in message
    assert f"`chown 0 {parent}`" in message and '"check_permissions": false' in message
    os.chown(parent, 0, 0)
    FileDriver(store)


def test_the_opt_out_uses_an_unsafe_path_as_it_is(tmp_path: Path) -> None:
    shared, theirs = tmp_path / "shared", tmp_path / "theirs"
    shared.mkdir()
    os.chmod(shared, 0o777)
    theirs.mkdir(mode=0o755)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    for store in (shared / "sessions", theirs / "sessions"):
        refusal(store)
        assert FileDriver(store, check_permissions=False).path == str(store)
        SessionManager(file_config(store, check_permissions=False))
    assert mode(shared) == 0o777 and theirs.stat().st_uid == OTHER_UID  # left as they are


def test_a_symlink_is_checked_where_it_lies_and_by_its_owner(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    # a link in a directory others can write: they could point it elsewhere
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    (shared / "link").symlink_to(private)
    message = refusal(shared / "link")
    assert f"(resolved: {str(private)!r})" in message
    assert f"the directory {str(shared)!r} on its path has mode 0777" in message
    # a link another user owns in a sticky directory: its owner may replace it
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    (sticky / "theirs").symlink_to(private)
    os.lchown(sticky / "theirs", OTHER_UID, OTHER_UID)
    message = refusal(sticky / "theirs")
    assert f"the symlink {str(sticky / 'theirs')!r} on its path belongs to uid {OTHER_UID}" \
        in message
    assert f"configure the resolved path {private} instead" in message
    # a relative link to a link, both ours, in the sticky directory: accepted
    (sticky / "mine").symlink_to(private)
    (sticky / "chained").symlink_to("mine")
    assert FileDriver(sticky / "chained").path == str(private)
    # a link to a directory on a path others can change is refused by that path
    (tmp_path / "to-shared").symlink_to(shared)
    (shared / "sessions").mkdir(mode=0o700)
    assert f"the directory {str(shared)!r} on its path" in refusal(tmp_path / "to-shared" /
                                                                 "sessions")


@needs_root
async def test_the_parent_swap_attack_is_stopped(reachable: Path) -> None:
    """The tester's attack (/tmp/attack13/d1_parent_swap.py), as nobody, for real."""
    shared = reachable / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    store = shared / "sessions"
    swap = f"mv {store} {store}.gone && mkdir {store} && chmod 777 {store}"

    # with the check on, the driver does not start on this path
    assert f"the directory {str(shared)!r} on its path has mode 0777" in refusal(store)

    # what the check prevents (and proof the attack below is real): turned off, the
    # attacker swaps the directory after startup and lists the next session's id
    manager = SessionManager(file_config(store, check_permissions=False))
    try:
        first = await manager.driver()
        first.put("u", 1)
        await first.save()
        assert await as_user(NOBODY, "sh", "-c", swap) == (0, "")
        victim = await manager.driver()
        victim.put("user", "alice")
        await victim.save()
        code, listing = await as_user(NOBODY, "ls", "-la", str(store))
        assert code == 0 and f"sess_{victim.id}" in listing
    finally:
        await manager.close()

    # a sticky parent is accepted, and there the attacker cannot move it away
    sticky = reachable / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    store = sticky / "sessions"
    manager = SessionManager(file_config(store))
    try:
        first = await manager.driver()
        first.put("u", 1)
        await first.save()
        code, out = await as_user(
            NOBODY, "sh", "-c", f"mv {store} {store}.gone && mkdir {store} && chmod 777 {store}")
        assert code != 0 and "Operation not permitted" in out
        victim = await manager.driver()
        victim.put("user", "alice")
        await victim.save()
        assert (store / f"sess_{victim.id}").stat().st_uid == 0
        assert store.stat().st_uid == 0 and mode(store) == 0o700
        code, listing = await as_user(NOBODY, "ls", "-la", str(store))
        assert code != 0 and victim.id not in listing
    finally:
        await manager.close()
