"""File driver: one file per session in one directory, safe across worker processes.

The embedded default (the demo uses it) and what a single host with several worker
processes shares. Guarantees:

* **Only ids reach the file system.** A file name is ``prefix + id`` and is built only
  after the id matched ``[A-Za-z0-9_-]{43}``; the joined path is checked to lie directly
  in the session directory. ``read`` of any other string is ``None``; ``write``,
  ``compare_and_set`` and ``destroy`` raise ``ValueError``. Files are opened with
  ``O_NOFOLLOW``, so a planted symlink is never followed.
* **Atomic writes.** A record is written to a temporary file in the same directory
  (optionally ``fsync``-ed) and moved over the old one with ``os.replace``: a reader sees
  the old record or the new one, never a mix, and a crash leaves at most a temporary
  file. Temporary names start with a dot, so they never match a session name; ``gc``
  removes them once they are :data:`TEMP_MAX_AGE` seconds old.
* **Expiry by mtime.** A file whose mtime is more than ``ttl`` seconds ago is absent
  (and removed when read). ``read_touch`` extends expiry by bumping the mtime, at most
  once per ``touch_interval`` seconds, so read-heavy traffic does not turn into writes.
* **Cross-process compare-and-set.** ``write``, ``compare_and_set``, ``destroy`` and the
  removals done by ``gc`` and expired reads hold an exclusive ``flock`` on one of
  :data:`LOCK_STRIPES` lock files (chosen by a hash of the id). ``flock`` locks belong to
  an open file description, so they exclude threads of one process as well as other
  processes; the fixed stripe set means lock files never accumulate.
* **Session locks** (``acquire_lock`` / ``release_lock``, behind ``session.lock()``): an
  exclusive ``flock`` on a per-session file ``.<prefix>lock-<id>``, separate from the
  stripe locks (a lock holder saves under the stripe lock). Attempts never block: each
  is a non-blocking ``flock`` in a worker thread, repeated after short jittered sleeps
  until ``wait`` runs out; tasks of one process queue on an asyncio lock first, so only
  one of them polls. The lock dies with its holder's process (the kernel drops the
  ``flock``), so ``ttl`` is not needed and not applied: a holder that is alive keeps
  the lock until it releases it. Releasing unlinks the file while still holding it;
  whoever locks a file checks that it is still the one at that name, so an unlink never
  lets two holders in. ``gc`` removes lock files left by dead processes.

Each operation is one thread hop running plain ``os`` calls. Measured against aiofiles
(which takes one hop per call: open, stat, read, close) reading a 300-byte file on ext4,
2 CPUs: one ``run_in_executor`` hop 123 us/op at concurrency 1 and 64 us/op at 64;
aiofiles 481 and 141 us/op. So one hop, 2-4x faster. Reads go further: they run on a
batching reader thread (see :class:`_Reader`), 11 us of CPU per read at concurrency 16
against 28 us for ``run_in_executor``. Everything that takes a lock (writes, CAS,
destroy, gc) uses the loop's default executor, where a wait on another process's lock
holds up one pool thread, never the reads.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import logging
import os
import queue
import random
import re
import secrets
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, Final, TypeVar

from ..errors import ConfigError, DriverError
from ..ids import is_valid_session_id
from ..locks import LocalLocks
from .base import VERSION_SIZE, DriverSpec, SessionDriver, check_options

__all__ = ["LOCK_POLL_MAX", "LOCK_POLL_MIN", "LOCK_STRIPES", "TEMP_MAX_AGE", "FileDriver"]

logger = logging.getLogger("aiosessmgr")

_T = TypeVar("_T")

#: number of lock files; a session id maps to one of them by hash
LOCK_STRIPES: Final = 64
#: seconds after which gc() removes a temporary file (a write takes milliseconds)
TEMP_MAX_AGE: Final = 300
#: directory entries examined per thread hop during gc()
GC_BATCH: Final = 2_000
#: seconds between attempts to take a session lock held by another process: the first
#: sleep, and the longest (each sleep is jittered and grows between them)
LOCK_POLL_MIN: Final = 0.005
LOCK_POLL_MAX: Final = 0.05

_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9_-]{0,64}")
_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TEMP_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_LOCK_FLAGS: Final = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
# errors that concern one session file, not the store: the record is treated as unreadable
_FILE_ERRNOS: Final = frozenset({errno.EACCES, errno.EPERM, errno.ELOOP, errno.EISDIR,
                                 errno.ENXIO})


_valid_id = is_valid_session_id


def _read_all(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    want = max(size, 0) + 1  # one byte more than fstat said, so growth is noticed
    while True:
        chunk = os.read(fd, want)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        want = 65536


class FileDriver(SessionDriver):
    """Stores each session as ``<path>/<prefix><id>``; expiry by mtime; flock-based CAS.

    Usage (normally through the config dict, ``{"driver": "file", "path": ...}``)::

        import secrets, tempfile
        from aiosessmgr.drivers.file import FileDriver

        driver = FileDriver(tempfile.mkdtemp(), ttl=7200)  # e.g. /var/lib/myapp/sessions
        session_id = secrets.token_urlsafe(32)
        await driver.write(session_id, b"version1" + b"record", 7200)
        assert await driver.read(session_id) == b"version1record"

    *ttl* (seconds) is the expiry ``read`` applies; *touch_interval* (seconds, default
    ``ttl / 10``) is how stale the mtime must be before ``read_touch`` updates it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        ttl: int = 7200,
        prefix: str = "sess_",
        fsync: bool = False,
        touch_interval: float | None = None,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ConfigError(f"file driver: path must be a directory path, got {path!r}")
        if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
            raise ConfigError(
                f"file driver: prefix must be at most 64 of A-Z a-z 0-9 _ -, got {prefix!r}"
            )
        if not isinstance(fsync, bool):
            raise ConfigError(f"file driver: fsync must be true or false, got {fsync!r}")
        if touch_interval is None:
            touch_interval = ttl / 10
        if (isinstance(touch_interval, bool) or not isinstance(touch_interval, (int, float))
                or not 0 <= touch_interval < float("inf")):
            raise ConfigError(
                f"file driver: touch_interval must be seconds >= 0, got {touch_interval!r}"
            )
        self.path = _prepare_directory(os.path.expanduser(os.fspath(path)))
        self.prefix = prefix
        self.ttl = ttl
        self.fsync = fsync
        self.touch_interval = float(touch_interval)
        self._session_re = re.compile(re.escape(prefix) + r"([A-Za-z0-9_-]{43})")
        self._temp_re = re.compile(r"\." + re.escape(prefix) + r"[0-9a-f]{16}\.tmp")
        self._session_lock_re = re.compile(r"\." + re.escape(prefix) + r"lock-[A-Za-z0-9_-]{43}")
        # session locks: tasks of this process queue here before trying the flock
        self._local_locks = LocalLocks()
        # token -> (session id, descriptor holding the flock)
        self._held: dict[str, tuple[str, int]] = {}
        self._check_writable()

    @classmethod
    def from_config(cls, config: DriverSpec) -> FileDriver:
        """Build from a driver config: ``path`` (required), ``prefix``, ``fsync``,
        ``touch_interval``; the directory is created (mode 0700) or checked now."""
        check_options(config, ("path", "prefix", "fsync", "touch_interval"))
        options: dict[str, Any] = dict(config.options)
        if "path" not in options:
            raise ConfigError(
                f"the {config.driver!r} driver needs a 'path' option: the session directory"
            )
        return cls(options.pop("path"), ttl=config.ttl, **options)

    def __repr__(self) -> str:
        return f"FileDriver({self.path!r}, prefix={self.prefix!r}, ttl={self.ttl})"

    # -- names and locks --------------------------------------------------------------------

    def _file(self, session_id: str) -> str:
        """The path of a session file; only called with an id that passed _valid_id."""
        full = os.path.join(self.path, self.prefix + session_id)
        # belt and braces: the format check already excludes separators, dots and NULs
        if os.path.dirname(full) != self.path or "\x00" in full:
            raise ValueError("session id escapes the session directory")
        return full

    def _lock_file(self, stripe: int) -> str:
        return os.path.join(self.path, f".{self.prefix}lock-{stripe:02d}")

    def _session_lock_file(self, session_id: str) -> str:
        """The lock file of a session's lock (only called with an id that passed _valid_id)."""
        return os.path.join(self.path, f".{self.prefix}lock-{session_id}")

    @staticmethod
    def _stripe(session_id: str) -> int:
        return zlib.crc32(session_id.encode("ascii")) % LOCK_STRIPES

    @contextmanager
    def _locked(self, session_id: str) -> Iterator[None]:
        """Hold the id's stripe lock (an exclusive flock; blocks this worker thread)."""
        fd = os.open(self._lock_file(self._stripe(session_id)),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield  # closing the descriptor releases the lock
        finally:
            os.close(fd)

    async def _run(self, func: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(func, *args)
        )

    def _broken(self, action: str, exc: OSError) -> DriverError:
        return DriverError(f"file session store {self.path!r}: cannot {action}: {exc}")

    def _temp_name(self) -> str:
        # a leading dot: never matches prefix + id, whatever the prefix
        return os.path.join(self.path, f".{self.prefix}{secrets.token_hex(8)}.tmp")

    def _check_writable(self) -> None:
        try:
            temp = self._temp_name()
            os.close(os.open(temp, _TEMP_FLAGS, 0o600))
            os.unlink(temp)
        except OSError as exc:
            raise ConfigError(
                f"file driver: session directory {self.path!r} is not writable: {exc}"
            ) from exc

    # -- blocking parts (run in a worker thread) ----------------------------------------------

    def _replace(self, final: str, payload: bytes) -> None:
        """Write *payload* to a temp file and move it over *final* (atomic on POSIX)."""
        temp = self._temp_name()
        fd = os.open(temp, _TEMP_FLAGS, 0o600)
        try:
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, final)
        except BaseException:
            with suppress(OSError):
                os.unlink(temp)
            raise
        if self.fsync:
            # make the rename itself durable
            dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _open_record(self, path: str, ttl: float
                     ) -> tuple[int, os.stat_result] | os.stat_result | None:
        """Open a live session file: (descriptor, stat); None if absent; stat if expired.

        Raises OSError for a file that cannot be used (the callers sort out which kind).
        """
        try:
            fd = os.open(path, _READ_FLAGS)
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

    def _remove_expired(self, session_id: str, seen: os.stat_result, ttl: float) -> None:
        path = self._file(session_id)
        with self._locked(session_id), suppress(OSError):
            now = os.lstat(path)
            # unlink only the file we judged expired, not one a writer just replaced it with
            if now.st_ino == seen.st_ino and time.time() - now.st_mtime > ttl:
                os.unlink(path)

    def _read(self, session_id: str, ttl: float, touch: bool
              ) -> bytes | os.stat_result | None:
        """The record; None if absent or unusable; the file's stat if it expired.

        Runs on the reader thread, which never waits for a lock: removing an expired
        file (which locks) is left to the caller.
        """
        path = self._file(session_id)
        try:
            opened = self._open_record(path, ttl)
            if opened is None or isinstance(opened, os.stat_result):
                return opened
            fd, st = opened
            try:
                data = _read_all(fd, st.st_size)
                if touch and time.time() - st.st_mtime >= self.touch_interval:
                    # the descriptor, not the path: never touch a file we did not read
                    os.utime(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno not in _FILE_ERRNOS:
                raise self._broken("read a session", exc) from exc
            logger.warning("unreadable session file for %s… in %s: %s",
                           session_id[:6], self.path, exc.strerror or exc)
            return None
        if not data:
            logger.warning("empty session file for %s… in %s (interrupted write?); "
                           "ignoring it", session_id[:6], self.path)
            return None
        return data

    def _write(self, session_id: str, payload: bytes) -> None:
        path = self._file(session_id)
        try:
            with self._locked(session_id):
                self._replace(path, payload)
        except OSError as exc:
            raise self._broken("write a session", exc) from exc

    def _compare_and_set(self, session_id: str, payload: bytes, ttl: float,
                         expected: bytes | None) -> bool:
        path = self._file(session_id)
        try:
            with self._locked(session_id):
                current: bytes | None
                try:
                    opened = self._open_record(path, ttl)
                except OSError as exc:
                    if exc.errno not in _FILE_ERRNOS:
                        raise
                    current = b""  # unusable file: matches no version, not even "absent"
                else:
                    if opened is None or isinstance(opened, os.stat_result):
                        current = None  # absent or expired (then replaced or left to gc)
                    else:
                        fd, _ = opened
                        try:
                            current = os.read(fd, VERSION_SIZE)
                        finally:
                            os.close(fd)
                if current != expected:
                    return False
                self._replace(path, payload)
                return True
        except OSError as exc:
            raise self._broken("write a session", exc) from exc

    def _destroy(self, session_id: str) -> None:
        path = self._file(session_id)
        try:
            with self._locked(session_id):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    if not os.path.isdir(self.path):
                        raise
        except OSError as exc:
            raise self._broken("remove a session", exc) from exc

    def _try_lock(self, session_id: str) -> int | None:
        """One non-blocking attempt at the session lock: the descriptor holding it, or None.

        The flock only counts if the locked file is still the one named by the lock path:
        a releasing holder (or gc) unlinks it while holding it, and a file unlinked
        between our open and our flock is a lock nobody else will ever look at.
        """
        path = self._session_lock_file(session_id)
        for _ in range(8):  # each retry means another holder released meanwhile
            fd = os.open(path, _LOCK_FLAGS | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    return None
                if _same_file(fd, path):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        return None

    def _unlock(self, session_id: str, fd: int) -> None:
        """Remove the lock file while still holding it, then let go (closing unlocks)."""
        path = self._session_lock_file(session_id)
        try:
            if _same_file(fd, path):
                os.unlink(path)
        except OSError as exc:
            # the lock is released by the close all the same; gc removes the file later
            logger.warning("cannot remove session lock file %s: %s", path, exc)
        finally:
            os.close(fd)

    def _gc_lock_file(self, path: str) -> None:
        """Remove a session lock file nobody holds (its holder died); never waits."""
        try:
            fd = os.open(path, _LOCK_FLAGS)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, path):
                os.unlink(path)
        except OSError:
            pass  # held (BlockingIOError), or already gone: either way not ours to remove
        finally:
            os.close(fd)

    def _gc_batch(self, entries: Iterator[os.DirEntry[str]], max_lifetime: float,
                  lock_fds: dict[int, int]) -> tuple[int, bool]:
        """Examine up to GC_BATCH entries; return (sessions removed, more to come)."""
        removed = 0
        now = time.time()
        for _ in range(GC_BATCH):
            entry = next(entries, None)
            if entry is None:
                return removed, False
            name = entry.name
            match = self._session_re.fullmatch(name)
            try:
                if match is not None:
                    if now - entry.stat(follow_symlinks=False).st_mtime <= max_lifetime:
                        continue
                    removed += self._gc_remove(entry.path, match.group(1), max_lifetime,
                                               lock_fds)
                elif (self._temp_re.fullmatch(name)
                      and now - entry.stat(follow_symlinks=False).st_mtime > TEMP_MAX_AGE):
                    os.unlink(entry.path)
                elif self._session_lock_re.fullmatch(name):
                    self._gc_lock_file(entry.path)
            except FileNotFoundError:
                continue  # removed meanwhile (another worker's gc, a destroy)
        return removed, True

    def _gc_remove(self, path: str, session_id: str, max_lifetime: float,
                   lock_fds: dict[int, int]) -> int:
        stripe = self._stripe(session_id)
        fd = lock_fds.get(stripe)
        if fd is None:
            fd = lock_fds[stripe] = os.open(self._lock_file(stripe),
                                            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            # look again under the lock: a writer may have replaced it since the scan
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode) or time.time() - st.st_mtime <= max_lifetime:
                return 0
            os.unlink(path)
            return 1
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    # -- the driver contract ------------------------------------------------------------------

    async def _read_on_reader(self, session_id: str, ttl: float, touch: bool
                              ) -> bytes | None:
        result = await _READER.run(self._read, session_id, ttl, touch)
        if isinstance(result, os.stat_result):
            # expired: remove it (under the lock, so on the pool, not the reader thread)
            await self._run(self._remove_expired, session_id, result, ttl)
            return None
        return result

    async def read(self, session_id: str) -> bytes | None:
        """The record, or None if absent, expired (older than ``ttl``), or unreadable."""
        if not _valid_id(session_id):
            return None
        return await self._read_on_reader(session_id, self.ttl, False)

    async def read_touch(self, session_id: str, ttl: int) -> bytes | None:
        """Read, and extend expiry by bumping the mtime if it is ``touch_interval`` old."""
        if not _valid_id(session_id):
            return None
        return await self._read_on_reader(session_id, ttl, True)

    async def write(self, session_id: str, payload: bytes, ttl: int) -> None:
        """Replace the record atomically; it expires one lifetime after its mtime.

        The mtime is the only clock a file has, so *ttl* is not stored: ``read`` and
        ``gc`` apply the driver's lifetime (the same value the manager passes here).
        """
        if not _valid_id(session_id):
            raise ValueError("not a session id; refusing to name a file after it")
        await self._run(self._write, session_id, bytes(payload))

    async def compare_and_set(
        self, session_id: str, payload: bytes, ttl: int, expected: bytes | None
    ) -> bool:
        """Write only if the stored version is *expected* (None: only if absent or expired).

        The check and the write happen under the id's stripe lock, which every writer on
        this directory takes, in this process or another.
        """
        if not _valid_id(session_id):
            raise ValueError("not a session id; refusing to name a file after it")
        return await self._run(self._compare_and_set, session_id, bytes(payload), ttl,
                               expected)

    async def destroy(self, session_id: str) -> None:
        """Remove the session file (no error if there is none)."""
        if not _valid_id(session_id):
            raise ValueError("not a session id; refusing to name a file after it")
        await self._run(self._destroy, session_id)

    async def acquire_lock(self, session_id: str, ttl: float, wait: float) -> str | None:
        """Take the session's lock within *wait* seconds; a release token, or None.

        Excludes every other holder: tasks of this process and other processes on this
        directory. *ttl* is not applied: the lock is an ``flock``, which the kernel drops
        when the holding process dies, and a living holder keeps it until
        :meth:`release_lock`.
        """
        if not _valid_id(session_id):
            raise ValueError("not a session id; refusing to name a file after it")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(wait, 0.0)
        local = await self._local_locks.acquire_lock(session_id, ttl, max(wait, 0.0))
        if local is None:
            return None
        try:
            delay = LOCK_POLL_MIN
            while True:
                fd = await self._lock_attempt(session_id)
                if fd is not None:
                    token = secrets.token_hex(16)
                    self._held[token] = (session_id, fd)
                    return token
                remaining = deadline - loop.time()
                if remaining <= 0:
                    await self._local_locks.release_lock(session_id, local)
                    return None
                await asyncio.sleep(min(remaining, random.uniform(delay / 2, delay)))
                delay = min(delay * 2, LOCK_POLL_MAX)
        except BaseException:
            await self._local_locks.release_lock(session_id, local)
            raise

    async def _lock_attempt(self, session_id: str) -> int | None:
        attempt = asyncio.get_running_loop().run_in_executor(None, self._try_lock, session_id)
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            # the thread may take the lock after all: wait for it and let go, or the lock
            # would stay held (and the descriptor open) until this process exits
            await asyncio.wait({attempt})
            if not attempt.cancelled() and attempt.exception() is None:
                fd = attempt.result()
                if fd is not None:
                    asyncio.get_running_loop().run_in_executor(None, self._unlock,
                                                               session_id, fd)
            raise
        except OSError as exc:
            raise self._broken("lock a session", exc) from exc

    async def release_lock(self, session_id: str, token: str) -> None:
        """Release a lock taken with :meth:`acquire_lock`; an unknown token does nothing."""
        held = self._held.get(token)
        if held is None or held[0] != session_id:
            return
        del self._held[token]
        try:
            await asyncio.shield(self._run(self._unlock, session_id, held[1]))
        finally:
            await self._local_locks.release_lock(session_id, session_id)

    async def gc(self, max_lifetime: int) -> int:
        """Remove sessions idle for more than *max_lifetime* s and stale temp files.

        Scans in batches of GC_BATCH entries, each in a worker thread, so the event loop
        never waits on the disk and a cancelled run stops between batches. Returns the
        number of sessions removed. Session lock files that nobody holds any more (their
        holder died) are removed too, without waiting for any lock.
        """
        try:
            scan = await self._run(os.scandir, self.path)
        except OSError as exc:
            raise self._broken("list the session directory", exc) from exc
        lock_fds: dict[int, int] = {}
        removed = 0
        loop = asyncio.get_running_loop()
        try:
            more = True
            while more:
                batch = loop.run_in_executor(None, self._gc_batch, scan, max_lifetime,
                                             lock_fds)
                try:
                    count, more = await asyncio.shield(batch)
                except asyncio.CancelledError:
                    # the thread still uses the scan and the lock descriptors: let it finish
                    # its batch before the finally below closes them
                    await asyncio.wait({batch})
                    raise
                removed += count
        except OSError as exc:
            raise self._broken("collect expired sessions", exc) from exc
        finally:
            scan.close()
            for fd in lock_fds.values():
                os.close(fd)
        return removed


class _Reader:
    """One thread per process that runs reads, answering each batch with one loop wakeup.

    Under load, reads queue up while the thread works; it then runs them all and wakes
    each waiting event loop once per batch instead of once per read. Measured on 2 CPUs
    (cached 200-byte files): 11 us of CPU per read at concurrency 16, against 28 us via
    ``run_in_executor``, and about twice the reads per second. Only reads run here: they
    never wait for a lock, so one slow writer cannot hold them up.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._pid = 0
        self._start_lock = threading.Lock()

    def run(self, func: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """Queue ``func(*args)``; the future completes on the calling loop."""
        if self._pid != os.getpid():
            self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._queue.put((loop, future, func, args))
        return future

    def _start(self) -> None:
        with self._start_lock:
            # after fork() the thread (and anything queued for it) exists only in the parent
            if self._pid != os.getpid():
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._serve, args=(self._queue,), daemon=True,
                                 name="aiosessmgr-file-reader").start()
                self._pid = os.getpid()

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            batch = [jobs.get()]
            with suppress(queue.Empty):
                while True:
                    batch.append(jobs.get_nowait())
            answers: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
            for loop, future, func, args in batch:
                try:
                    answer: _Answer = (future, True, func(*args))
                except BaseException as exc:
                    answer = (future, False, exc)
                answers.setdefault(loop, []).append(answer)
            for loop, done in answers.items():
                with suppress(RuntimeError):  # that loop is closed: nobody is waiting
                    loop.call_soon_threadsafe(_deliver, done)


_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]
_Answer = tuple["asyncio.Future[Any]", bool, Any]


def _deliver(answers: list[_Answer]) -> None:
    for future, ok, value in answers:
        if future.done():  # the reader was cancelled
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


_READER: Final = _Reader()


def _same_file(fd: int, path: str) -> bool:
    """True if *path* names the file open as *fd* (False if the name is gone)."""
    try:
        named = os.lstat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _prepare_directory(path: str) -> str:
    """Create the session directory (0700) if missing; return its resolved path."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except FileExistsError as exc:
        raise ConfigError(f"file driver: path {path!r} exists and is not a directory") \
            from exc
    except OSError as exc:
        raise ConfigError(f"file driver: cannot create session directory {path!r}: {exc}") \
            from exc
    if not os.path.isdir(path):
        raise ConfigError(f"file driver: path {path!r} is not a directory")
    return os.path.realpath(path)
