"""The file driver's file system work: what one thread hop does, as plain ``os`` calls.

Each public method of :class:`Directory` is one whole operation (open, check, read or
write, close) and runs in a thread of the driver's pool, called through
``aiofiles.os.wrap``. None of them waits for a lock: an operation that needs the id's
stripe lock tries it once and returns :data:`~.locking.BUSY` if another holder has it,
and the coroutine in the driver backs off and calls again. Errors of the store (the
directory is gone, the disk is full) leave as :class:`~aiosessmgr.DriverError` with the
``OSError`` as cause; a single unusable session file is logged and reads as absent.

Ids never leave whole (an ``OSError`` names its files, and a file name is an id): every
``OSError`` a DriverError or a log line carries goes through :meth:`Directory.redact`
first. :func:`prepare_directory` keeps the directory private (package docstring; the
checks are in :mod:`.permissions`).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import re
import secrets
import stat
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import suppress
from typing import Final

import aiofiles.os

from ...errors import ConfigError, DriverError
from ..base import VERSION_SIZE
from .locking import (
    BUSY,
    STRIPE_FLAGS,
    Busy,
    remove_abandoned,
    stripe_held,
    try_flock,
    try_session_lock,
    unlock_session,
)
from .permissions import check_path, check_private

__all__ = ["FILE_ERRNOS", "open_scan", "GC_BATCH", "GC_SKIP_ERRNOS", "LOCK_STRIPES", "READ_FLAGS",
           "TEMP_FLAGS", "TEMP_MAX_AGE", "Deferred", "Directory", "ReadRequest",
           "prepare_directory", "read_all", "replace_file", "stripe_of"]

logger = logging.getLogger("aiosessmgr")

#: number of lock files; a session id maps to one of them by hash
LOCK_STRIPES: Final = 64
#: seconds after which gc() removes a temporary file (a write takes milliseconds)
TEMP_MAX_AGE: Final = 300
#: directory entries examined per thread hop during gc()
GC_BATCH: Final = 2_000

READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
TEMP_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# errors that concern one session file, not the store: the record is treated as unreadable
FILE_ERRNOS: Final = frozenset({errno.EACCES, errno.EPERM, errno.ELOOP, errno.EISDIR,
                                errno.ENXIO})
# errors gc meets on one file it cannot remove (immutable, a mount point, a directory
# named like a temp file): logged and skipped, so one bad file never stops collection
GC_SKIP_ERRNOS: Final = FILE_ERRNOS | {errno.EBUSY}

#: a session gc() could not remove yet because its stripe lock was held: (path, id)
Deferred = tuple[str, str]
#: one read of a batch: (session id, ttl in seconds, touch)
ReadRequest = tuple[str, float, bool]


def short_id(session_id: str) -> str:
    """The abbreviated id that logs and error messages may show: ``abc123…``."""
    return session_id[:6] + "…"


def stripe_of(session_id: str) -> int:
    """The stripe lock (0 to LOCK_STRIPES - 1) an id's writers take."""
    return zlib.crc32(session_id.encode("ascii")) % LOCK_STRIPES


def read_all(fd: int, size: int) -> bytes:
    """Read the file open as *fd* to its end (*size*: what fstat said it holds)."""
    chunks: list[bytes] = []
    want = max(size, 0) + 1  # one byte more than fstat said, so growth is noticed
    while True:
        chunk = os.read(fd, want)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        want = 65536


class Directory:
    """One session directory: file names, and the blocking halves of every operation.

    Only ids that passed :func:`aiosessmgr.ids.is_valid_session_id` are given to it; a
    file name is ``prefix + id``, checked once more to lie directly in *path*.
    """

    def __init__(self, path: str, prefix: str, fsync: bool, touch_interval: float) -> None:
        self.path = path
        self.prefix = prefix
        self.fsync = fsync
        self.touch_interval = touch_interval
        self._session_re = re.compile(re.escape(prefix) + r"([A-Za-z0-9_-]{43})")
        self._temp_re = re.compile(r"\." + re.escape(prefix) + r"[0-9a-f]{16}\.tmp")
        self._session_lock_re = re.compile(r"\." + re.escape(prefix) + r"lock-[A-Za-z0-9_-]{43}")
        # a name carrying an id: a session file, a session lock file
        self._named_re = re.compile(r"(\.?" + re.escape(prefix) + r"(?:lock-)?)([A-Za-z0-9_-]{43})")

    # -- names ------------------------------------------------------------------------------

    def file(self, session_id: str) -> str:
        """The path of a session file."""
        full = os.path.join(self.path, self.prefix + session_id)
        # belt and braces: the format check already excludes separators, dots and NULs
        if os.path.dirname(full) != self.path or "\x00" in full:
            raise ValueError("session id escapes the session directory")
        return full

    def stripe_file(self, stripe: int) -> str:
        """The lock file of one stripe: ``.<prefix>lock-NN``."""
        return os.path.join(self.path, f".{self.prefix}lock-{stripe:02d}")

    def session_lock_file(self, session_id: str) -> str:
        """The lock file of a session's lock: ``.<prefix>lock-<id>``."""
        return os.path.join(self.path, f".{self.prefix}lock-{session_id}")

    def _temp_name(self) -> str:
        # a leading dot: never matches prefix + id, whatever the prefix
        return os.path.join(self.path, f".{self.prefix}{secrets.token_hex(8)}.tmp")

    def shown(self, path: object) -> object:
        """*path* as a log or an error may show it: the id in its file name abbreviated.

        Anything that is not a path naming a session or session lock file is returned
        unchanged.
        """
        if not isinstance(path, (str, bytes, os.PathLike)):
            return path
        text = os.fsdecode(path)
        head, name = os.path.split(text)
        match = self._named_re.fullmatch(name)
        if match is None:
            return path
        return os.path.join(head, match.group(1) + short_id(match.group(2)))

    def redact(self, exc: BaseException) -> BaseException:
        """Abbreviate the ids in the file names of *exc* and its whole chain; return *exc*.

        Changes the exceptions in place (``OSError.filename`` and ``filename2``), so
        ``str()``, ``repr()`` and a printed traceback, causes and contexts included, never
        carry a whole id.
        """
        pending: list[BaseException | None] = [exc]
        seen: set[int] = set()
        while pending:
            current = pending.pop()
            if current is None or id(current) in seen:
                continue
            seen.add(id(current))
            if isinstance(current, OSError):
                current.filename = self.shown(current.filename)
                current.filename2 = self.shown(current.filename2)
            pending += (current.__cause__, current.__context__)
        return exc

    def broken(self, action: str, exc: OSError) -> DriverError:
        """The DriverError for an OSError of the store (raise it ``from exc``).

        *exc* is redacted first (:meth:`redact`): its message names the file with the id
        abbreviated.
        """
        self.redact(exc)
        return DriverError(f"file session store {self.path!r}: cannot {action}: {exc}")

    def check_writable(self) -> None:
        """Raise ConfigError unless a file can be created in the directory (at startup)."""
        try:
            temp = self._temp_name()
            os.close(os.open(temp, TEMP_FLAGS, 0o600))
            os.unlink(temp)
        except OSError as exc:
            raise ConfigError(
                f"file driver: session directory {self.path!r} is not writable: {exc}"
            ) from exc

    # -- building blocks --------------------------------------------------------------------

    def _replace(self, final: str, payload: bytes) -> None:
        """Write *payload* to a temp file and move it over *final* (atomic on POSIX)."""
        replace_file(final, self._temp_name(), payload, self.fsync)

    def _open_record(self, path: str, ttl: float
                     ) -> tuple[int, os.stat_result] | os.stat_result | None:
        """Open a live session file: (descriptor, stat); None if absent; stat if expired.

        Raises OSError for a file that cannot be used (the callers sort out which kind).
        """
        try:
            fd = os.open(path, READ_FLAGS)
        except FileNotFoundError:
            if not os.path.isdir(self.path):
                raise
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a regular file", path)
        except BaseException:
            os.close(fd)
            raise
        if time.time() - st.st_mtime > ttl:
            os.close(fd)
            return st
        return fd, st

    def _remove_expired(self, session_id: str, path: str, seen: os.stat_result,
                        ttl: float) -> None:
        """Unlink an expired file if its stripe lock is free; else leave it to gc."""
        with suppress(OSError), stripe_held(self.stripe_file(stripe_of(session_id))) as held:
            if not held:
                return  # a writer of this stripe is at work: it may be replacing this file
            now = os.lstat(path)
            # unlink only the file we judged expired, not one a writer replaced it with
            if now.st_ino == seen.st_ino and time.time() - now.st_mtime > ttl:
                os.unlink(path)

    # -- the operations (one thread hop each) ------------------------------------------------

    def read(self, session_id: str, ttl: float, touch: bool) -> bytes | None:
        """The record; None if absent, expired or unusable (logged). Never waits.

        An expired file is removed when its stripe lock is free; *touch* bumps the mtime
        of a record older than ``touch_interval`` (through the descriptor read, so never a
        file we did not read).
        """
        path = self.file(session_id)
        try:
            opened = self._open_record(path, ttl)
            if opened is None:
                return None
            if isinstance(opened, os.stat_result):
                self._remove_expired(session_id, path, opened, ttl)
                return None
            fd, st = opened
            try:
                data = read_all(fd, st.st_size)
                if touch and time.time() - st.st_mtime >= self.touch_interval:
                    os.utime(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno not in FILE_ERRNOS:
                raise self.broken("read a session", exc) from exc
            logger.warning("unreadable session file for %s in %s: %s",
                           short_id(session_id), self.path, exc.strerror or self.redact(exc))
            return None
        if not data:
            logger.warning("empty session file for %s in %s (interrupted write?); "
                           "ignoring it", short_id(session_id), self.path)
            return None
        return data

    def read_many(self, reads: list[ReadRequest]) -> list[bytes | Exception | None]:
        """:meth:`read` of each (id, ttl, touch) in turn: one hop for a loop turn's reads.

        Each answer is the record, None, or the exception that read raised (for its
        caller alone).
        """
        answers: list[bytes | Exception | None] = []
        for session_id, ttl, touch in reads:
            try:
                answers.append(self.read(session_id, ttl, touch))
            except Exception as exc:
                answers.append(exc)
        return answers

    def write(self, session_id: str, payload: bytes) -> Busy | None:
        """Replace the record under the stripe lock; BUSY if the lock is held."""
        path = self.file(session_id)
        try:
            with stripe_held(self.stripe_file(stripe_of(session_id))) as held:
                if not held:
                    return BUSY
                self._replace(path, payload)
        except OSError as exc:
            raise self.broken("write a session", exc) from exc
        return None

    def compare_and_set(self, session_id: str, payload: bytes, ttl: float,
                        expected: bytes | None) -> bool | Busy:
        """Under the stripe lock: write if the stored version is *expected*; BUSY if held.

        Lock, version check, temp write, rename and unlock are this one call.
        """
        path = self.file(session_id)
        try:
            with stripe_held(self.stripe_file(stripe_of(session_id))) as held:
                if not held:
                    return BUSY
                if self._version(path, ttl) != expected:
                    return False
                self._replace(path, payload)
                return True
        except OSError as exc:
            raise self.broken("write a session", exc) from exc

    def _version(self, path: str, ttl: float) -> bytes | None:
        """The stored version; None if absent or expired; b"" if the file is unusable."""
        try:
            opened = self._open_record(path, ttl)
        except OSError as exc:
            if exc.errno not in FILE_ERRNOS:
                raise
            return b""  # matches no version, not even "absent"
        if opened is None or isinstance(opened, os.stat_result):
            return None  # absent or expired (then replaced, or left to gc)
        fd, _ = opened
        try:
            return os.read(fd, VERSION_SIZE)
        finally:
            os.close(fd)

    def destroy(self, session_id: str) -> Busy | None:
        """Unlink the session file under the stripe lock; BUSY if the lock is held."""
        path = self.file(session_id)
        try:
            with stripe_held(self.stripe_file(stripe_of(session_id))) as held:
                if not held:
                    return BUSY
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    if not os.path.isdir(self.path):
                        raise
        except OSError as exc:
            raise self.broken("remove a session", exc) from exc
        return None

    # -- session locks ----------------------------------------------------------------------

    def try_session_lock(self, session_id: str) -> int | None:
        """One attempt at the session's lock: the descriptor holding it, or None."""
        try:
            return try_session_lock(self.session_lock_file(session_id))
        except OSError as exc:
            raise self.broken("lock a session", exc) from exc

    def unlock_session(self, session_id: str, fd: int) -> None:
        """Release a session lock taken by try_session_lock (removing its file).

        Never raises: a lock file that cannot be removed is logged (gc removes it later);
        the lock itself is released all the same.
        """
        try:
            unlock_session(self.session_lock_file(session_id), fd)
        except OSError as exc:
            logger.warning("cannot remove the lock file of session %s in %s: %s",
                           short_id(session_id), self.path, exc.strerror or self.redact(exc))

    # -- garbage collection -----------------------------------------------------------------

    def gc_batch(self, entries: Iterator[os.DirEntry[str]], max_lifetime: float,
                 deferred: list[Deferred]) -> tuple[int, bool]:
        """Examine up to GC_BATCH entries; return (sessions removed, more to come).

        An expired session whose stripe lock is held goes to *deferred* for a later call
        of :meth:`gc_retry`. Session lock files nobody holds are removed. A file that
        cannot be removed (EPERM, EACCES, EBUSY, EISDIR, ...) is left in place, and one
        WARNING per batch says how many and why; other errors raise DriverError.
        """
        skipped: list[OSError] = []
        try:
            removed = 0
            now = time.time()
            locks: dict[int, int] = {}  # stripe -> descriptor, for this batch
            try:
                for _ in range(GC_BATCH):
                    entry = next(entries, None)
                    if entry is None:
                        return removed, False
                    removed += self._gc_entry(entry, now, max_lifetime, locks, deferred,
                                              skipped)
            finally:
                for fd in locks.values():
                    os.close(fd)
                self._log_skipped(skipped)
            return removed, True
        except OSError as exc:
            raise self.broken("collect expired sessions", exc) from exc

    def _log_skipped(self, skipped: list[OSError]) -> None:
        """One WARNING for the files gc had to leave in place (ids abbreviated)."""
        if skipped:
            first = skipped[0]
            self.redact(first)
            name = os.path.basename(os.fsdecode(first.filename)) if first.filename else "?"
            logger.warning("session gc in %s: %d files cannot be removed and stay, e.g. %s: %s",
                           self.path, len(skipped), name, first.strerror or first)

    def _gc_entry(self, entry: os.DirEntry[str], now: float, max_lifetime: float,
                  locks: dict[int, int], deferred: list[Deferred],
                  skipped: list[OSError]) -> int:
        name = entry.name
        try:
            match = self._session_re.fullmatch(name)
            if match is not None:
                if now - entry.stat(follow_symlinks=False).st_mtime <= max_lifetime:
                    return 0
                session_id = match.group(1)
                removed = self._gc_remove(entry.path, session_id, max_lifetime, locks)
                if removed is BUSY:
                    deferred.append((entry.path, session_id))
                    return 0
                return removed
            if (self._temp_re.fullmatch(name)
                    and now - entry.stat(follow_symlinks=False).st_mtime > TEMP_MAX_AGE):
                os.unlink(entry.path)
            elif self._session_lock_re.fullmatch(name):
                remove_abandoned(entry.path)
        except FileNotFoundError:
            pass  # removed meanwhile (another worker's gc, a destroy)
        except OSError as exc:
            if exc.errno not in GC_SKIP_ERRNOS:
                raise
            skipped.append(exc)
        return 0

    def _gc_remove(self, path: str, session_id: str, max_lifetime: float,
                   locks: dict[int, int]) -> int | Busy:
        stripe = stripe_of(session_id)
        fd = locks.get(stripe)
        if fd is None:
            fd = locks[stripe] = os.open(self.stripe_file(stripe), STRIPE_FLAGS, 0o600)
        if not try_flock(fd):
            return BUSY
        try:
            # look again under the lock: a writer may have replaced it since the scan
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode) or time.time() - st.st_mtime <= max_lifetime:
                return 0
            os.unlink(path)
            return 1
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def gc_retry(self, deferred: list[Deferred], max_lifetime: float
                 ) -> tuple[int, list[Deferred]]:
        """Try the deferred sessions again: (sessions removed, those still locked)."""
        removed = 0
        still: list[Deferred] = []
        locks: dict[int, int] = {}
        skipped: list[OSError] = []
        try:
            try:
                for path, session_id in deferred:
                    try:
                        result = self._gc_remove(path, session_id, max_lifetime, locks)
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        if exc.errno not in GC_SKIP_ERRNOS:
                            raise
                        skipped.append(exc)
                        continue
                    if result is BUSY:
                        still.append((path, session_id))
                    else:
                        removed += result
            finally:
                for fd in locks.values():
                    os.close(fd)
                self._log_skipped(skipped)
        except OSError as exc:
            raise self.broken("collect expired sessions", exc) from exc
        return removed, still


def replace_file(final: str, temp: str, payload: bytes, fsync: bool,
                 mtime: float | None = None) -> None:
    """Write *payload* to the new file *temp* (0600) and move it over *final*, atomically.

    *temp* must be in the directory of *final* and match no name anyone reads; *fsync*
    makes the file and then the rename durable; *mtime* (epoch seconds) is set on the
    file before it takes the final name. A failure removes *temp* and raises OSError.
    """
    fd = os.open(temp, TEMP_FLAGS, 0o600)
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, final)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise
    if fsync:
        # make the rename itself durable
        dir_fd = os.open(os.path.dirname(final), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def prepare_directory(path: str, check_permissions: bool = True) -> str:
    """Create the session directory if missing; check it if not; return its resolved path.

    The directory and every parent created here get mode 0700 whatever the umask
    (``mkdir`` with 0700, which a umask can only narrow, then ``fchmod`` to exactly 0700
    through a descriptor opened without following symlinks). An existing directory
    (a symlink to one is followed) must belong to this process's user and grant group
    and others nothing (no bit of 0o077): file names are session ids, so a directory
    others can list hands out live sessions, and one others can write lets them plant
    files. And nobody else may be able to replace it while the app runs: every
    directory on its path must belong to root or this user and not be writable by group
    or others unless sticky, and every symlink on the way must belong to root or this
    user (:func:`.permissions.check_path`). Otherwise ConfigError, naming what is wrong
    and how to fix it; *check_permissions* False (the driver option
    ``check_permissions``) skips these checks.
    """
    try:
        _make_private(path)
    except OSError as exc:
        raise ConfigError(f"file driver: cannot create session directory {path!r}: {exc}") \
            from exc
    if not os.path.isdir(path):
        raise ConfigError(f"file driver: path {path!r} is not a directory")
    resolved = os.path.realpath(path)
    if check_permissions:  # a directory made here passes, unless it was swapped meanwhile
        check_private(resolved, path)
        check_path(path, resolved)
    return resolved


def _make_private(path: str) -> None:
    """Create *path* and its missing parents, each 0700 whatever the umask."""
    missing: list[str] = []
    head = os.path.abspath(path)
    while not os.path.lexists(head):
        missing.append(head)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: checked, not changed
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)


async def open_scan(path: str, executor: Executor) -> os._ScandirIterator[str]:
    """``os.scandir(path)`` in a hop on *executor* (aiofiles), closed again if the caller
    is cancelled meanwhile: the thread may open it after the await has gone (a GC run
    cancelled by ``manager.close()``), and an open scan holds a file descriptor."""
    opening = asyncio.ensure_future(aiofiles.os.scandir(path, executor=executor))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        await asyncio.wait({opening})
        if not opening.cancelled() and opening.exception() is None:
            opening.result().close()
        raise
