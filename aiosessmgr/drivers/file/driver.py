"""The :class:`FileDriver` itself: the async half (pool, locks, backoff, deadlines).

See the package docstring (:mod:`aiosessmgr.drivers.file`) for how I/O and locking
work; the blocking halves of the operations are in ``fs``, the lock primitives in
``locking``.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, ParamSpec, TypeVar

import aiofiles.os

from ...errors import ConfigError, DriverError
from ...ids import is_valid_handle, is_valid_session_id
from ...locks import LocalLocks
from ..base import DriverSpec, SessionDriver, check_options
from .fs import LOCK_STRIPES, Directory, ReadRequest, open_scan, prepare_directory, stripe_of
from .index import UserFiles, UserIndexes
from .locking import Busy, backoff

__all__ = ["DEFAULT_LOCK_TIMEOUT", "DEFAULT_MAX_WORKERS", "FileDriver"]

_T = TypeVar("_T")
_P = ParamSpec("_P")

#: threads in a driver's pool unless ``max_workers`` says otherwise
DEFAULT_MAX_WORKERS: Final = 4
#: read hops in the pool at once (reads arriving meanwhile go together in the next one);
#: one measured best for cached session files: 2 cost 20-25% more CPU per read at
#: concurrency 16 and 64, as threads then contend for the GIL
READ_HOPS: Final = 1
#: seconds a write, compare-and-set, destroy or gc waits for a stripe lock held by
#: another process (or queued behind this process's own holders) before DriverError
DEFAULT_LOCK_TIMEOUT: Final = 5.0

_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9_-]{0,64}")
_OPTIONS: Final = ("check_permissions", "fsync", "lock_timeout", "max_workers", "path",
                   "prefix", "touch_interval")
_NOT_AN_ID: Final = "not a session id; refusing to name a file after it"

_valid_id = is_valid_session_id


def _in_pool(func: Callable[..., _T]) -> Callable[..., Awaitable[_T]]:
    """*func* as a coroutine function that aiofiles runs in the ``executor=`` it is given."""
    wrapped: Callable[..., Awaitable[_T]] = aiofiles.os.wrap(func)
    return wrapped


class _Pool(ThreadPoolExecutor):
    """The driver's bounded thread pool; remembers what runs, so close() can await it."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers, thread_name_prefix="aiosessmgr-file")
        self.pending: set[Future[Any]] = set()

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
               ) -> Future[_T]:
        future = super().submit(fn, *args, **kwargs)
        self.pending.add(future)
        future.add_done_callback(self.pending.discard)
        return future


class _Reads:
    """Reads that arrive while the pool is busy with reads, sent on together in one hop.

    At most :data:`READ_HOPS` read hops are in the pool at once. A read that finds room
    goes in its caller's own hop; the reads that arrive meanwhile queue, and when a hop
    comes back the whole queue goes as one :meth:`Directory.read_many` hop: one thread
    wakeup and one loop wakeup for all of them, instead of one each, and fewer threads
    contending for the GIL. Writes are not held up by reads: they have the rest of the
    pool.
    """

    def __init__(self, read: Callable[..., Awaitable[bytes | None]],
                 read_many: Callable[..., Awaitable[list[bytes | Exception | None]]],
                 executor: Callable[[], _Pool], limit: int) -> None:
        self._read = read
        self._read_many = read_many
        self._executor = executor
        self._limit = limit
        self._in_flight = 0
        self._scheduled = False
        self._queued: list[tuple[ReadRequest, asyncio.Future[bytes | None]]] = []
        self._batches: set[asyncio.Task[None]] = set()

    async def read(self, session_id: str, ttl: float, touch: bool) -> bytes | None:
        """The answer of ``Directory.read(session_id, ttl, touch)``, run in the pool."""
        if self._in_flight < self._limit and not self._queued:
            self._in_flight += 1
            try:
                return await self._read(session_id, ttl, touch, executor=self._executor())
            finally:
                self._hop_done()
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._queued.append(((session_id, ttl, touch), future))
        self._schedule()
        return await future

    async def read_many(self, requests: list[ReadRequest]) -> list[bytes | None]:
        """The answers of ``Directory.read`` for each request: one hop for all of them.

        With room in the pool they go in a hop of their own; otherwise they join the
        queue, and go in its next hop. The first exception of any read is raised.
        """
        if self._in_flight < self._limit and not self._queued:
            self._in_flight += 1
            try:
                answers = await self._read_many(requests, executor=self._executor())
            finally:
                self._hop_done()
        else:
            loop = asyncio.get_running_loop()
            futures = [loop.create_future() for _ in requests]
            self._queued += zip(requests, futures, strict=True)
            self._schedule()
            answers = await asyncio.gather(*futures, return_exceptions=True)
        found: list[bytes | None] = []
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            found.append(answer)
        return found

    def _schedule(self) -> None:
        if self._queued and not self._scheduled and self._in_flight < self._limit:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _hop_done(self) -> None:
        self._in_flight -= 1
        self._schedule()

    def _flush(self) -> None:
        self._scheduled = False
        if not self._queued or self._in_flight >= self._limit:
            return  # a hop coming back schedules the queue again
        batch, self._queued = self._queued, []
        self._in_flight += 1
        task = asyncio.ensure_future(self._run(batch))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _run(self, batch: list[tuple[ReadRequest, asyncio.Future[bytes | None]]]
                   ) -> None:
        try:
            answers = await self._read_many([request for request, _ in batch],
                                            executor=self._executor())
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._hop_done()
        for (_, future), answer in zip(batch, answers, strict=True):
            if future.done():  # its reader was cancelled
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def wait(self) -> None:
        """Wait until every queued read has been answered."""
        while self._batches or self._queued:
            if self._batches:
                await asyncio.wait(set(self._batches))
            else:
                await asyncio.sleep(0)  # a flush is scheduled: let it start


class FileDriver(SessionDriver):
    """Stores each session as ``<path>/<prefix><id>``; expiry by mtime; flock-based CAS.

    Usage (normally through the config dict, ``{"driver": "file", "path": ...}``)::

        import secrets, tempfile
        from aiosessmgr.drivers.file import FileDriver

        driver = FileDriver(tempfile.mkdtemp(), ttl=7200)  # e.g. /var/lib/myapp/sessions
        session_id = secrets.token_urlsafe(32)
        await driver.write(session_id, b"version1" + b"record", 7200)
        assert await driver.read(session_id) == b"version1record"
        await driver.close()  # shuts the driver's thread pool down

    *ttl* (seconds) is the expiry ``read`` applies; *touch_interval* (seconds, default
    ``ttl / 10``) is how stale the mtime must be before ``read_touch`` updates it;
    *max_workers* bounds the driver's thread pool; *lock_timeout* (seconds) is how long
    a write waits for a stripe lock before :class:`~aiosessmgr.DriverError`.

    The directory is created at construction, mode 0700 with any missing parents whatever
    the umask, or checked: ConfigError if it is not a writable directory, and, unless
    *check_permissions* is False, if another user owns it or its mode grants group or
    others anything (file names are session ids: ``chmod 700`` it), or if someone else
    could replace it while the app runs: a directory on its path that is owned by
    neither root nor this user, or that group or others may write to without the sticky
    bit, or a symlink on the way another user owns (:mod:`.permissions`). Session and
    lock files are created 0600. No error message or log line names a whole id
    (``abc123…``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        ttl: int = 7200,
        prefix: str = "sess_",
        fsync: bool = False,
        touch_interval: float | None = None,
        max_workers: int = DEFAULT_MAX_WORKERS,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        check_permissions: bool = True,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ConfigError(f"file driver: path must be a directory path, got {path!r}")
        if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
            raise ConfigError(
                f"file driver: prefix must be at most 64 of A-Z a-z 0-9 _ -, got {prefix!r}"
            )
        if not isinstance(fsync, bool):
            raise ConfigError(f"file driver: fsync must be true or false, got {fsync!r}")
        if not isinstance(check_permissions, bool):
            raise ConfigError(f"file driver: check_permissions must be true or false, "
                              f"got {check_permissions!r}")
        if touch_interval is None:
            touch_interval = ttl / 10
        if not _is_seconds(touch_interval) or touch_interval < 0:
            raise ConfigError(
                f"file driver: touch_interval must be seconds >= 0, got {touch_interval!r}"
            )
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) \
                or not 1 <= max_workers <= 1024:
            raise ConfigError(
                f"file driver: max_workers must be a number of threads from 1 to 1024, "
                f"got {max_workers!r}"
            )
        if not _is_seconds(lock_timeout) or lock_timeout <= 0:
            raise ConfigError(
                f"file driver: lock_timeout must be seconds > 0, got {lock_timeout!r}"
            )
        self.path = prepare_directory(os.path.expanduser(os.fspath(path)), check_permissions)
        self.prefix = prefix
        self.ttl = ttl
        self.fsync = fsync
        self.touch_interval = float(touch_interval)
        self.max_workers = max_workers
        self.lock_timeout = float(lock_timeout)
        self._dir = Directory(self.path, prefix, fsync, self.touch_interval)
        self._dir.check_writable()
        users = UserFiles(self._dir, check_permissions)
        users.check_existing()
        self._users = UserIndexes(users, self._executor, self._locked)
        # the blocking halves, each run whole in one hop to the pool by aiofiles
        self._reads = _Reads(_in_pool(self._dir.read), _in_pool(self._dir.read_many),
                             self._executor, min(READ_HOPS, max_workers))
        self._write = _in_pool(self._dir.write)
        self._compare_and_set = _in_pool(self._dir.compare_and_set)
        self._destroy = _in_pool(self._dir.destroy)
        self._try_lock = _in_pool(self._dir.try_session_lock)
        self._unlock = _in_pool(self._dir.unlock_session)
        self._gc_batch = _in_pool(self._dir.gc_batch)
        self._gc_retry = _in_pool(self._dir.gc_retry)
        self._pool: _Pool | None = None  # made on first use, and again in a forked child
        self._pool_pid = 0
        self._closed = False
        # tasks of this process queue here (per stripe, per session lock), not on flock
        self._stripe_locks = LocalLocks()
        self._local_locks = LocalLocks()
        # token -> (session id, descriptor holding the flock, token of the local lock)
        self._held: dict[str, tuple[str, int, str]] = {}
        # unlocks of locks a cancelled attempt took after all, still running
        self._cleanup: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(cls, config: DriverSpec) -> FileDriver:
        """Build from a driver config: ``path`` (required), ``prefix``, ``fsync``,
        ``touch_interval``, ``max_workers``, ``lock_timeout``, ``check_permissions``; the
        directory is created (mode 0700) or checked now (ConfigError)."""
        check_options(config, _OPTIONS)
        options: dict[str, Any] = dict(config.options)
        if "path" not in options:
            raise ConfigError(
                f"the {config.driver!r} driver needs a 'path' option: the session directory"
            )
        return cls(options.pop("path"), ttl=config.ttl, **options)

    def __repr__(self) -> str:
        return f"FileDriver({self.path!r}, prefix={self.prefix!r}, ttl={self.ttl})"

    # -- the pool and the stripe locks -------------------------------------------------------

    def _executor(self) -> _Pool:
        """The driver's pool; DriverError once closed."""
        if self._closed:
            raise DriverError(f"file session store {self.path!r}: the driver is closed")
        pool = self._pool
        if pool is None or self._pool_pid != os.getpid():
            # after fork() the parent's threads do not exist here: a pool of our own
            pool = self._pool = _Pool(self.max_workers)
            self._pool_pid = os.getpid()
        return pool

    async def _under_stripe(self, session_id: str,
                            operation: Callable[..., Awaitable[_T | Busy]], *args: Any) -> _T:
        """Run *operation* (a locked hop) until it finds the id's stripe lock free."""
        stripe = stripe_of(session_id)
        return await self._locked(_STRIPE_KEYS[stripe], f"lock stripe {stripe}",
                                  os.path.basename(self._dir.stripe_file(stripe)),
                                  operation, *args)

    async def _locked(self, key: str, label: str, lock_file: str,
                      operation: Callable[..., Awaitable[_T | Busy]], *args: Any) -> _T:
        """Run *operation* (a hop that tries a flock) until it finds the lock free.

        Tasks of this process queue on an asyncio lock per *key*, so only one of them
        tries the flock; while another process holds it, the hop answers BUSY at once
        and this coroutine sleeps (jittered, growing) and tries again, until
        ``lock_timeout`` seconds have passed: then DriverError naming *label* (queued
        here) or *lock_file* (the lock file's name in the session directory).
        """
        waits = backoff(self.lock_timeout)
        token = await self._stripe_locks.acquire_lock(key, self.lock_timeout,
                                                      self.lock_timeout)
        if token is None:
            raise DriverError(
                f"file session store {self.path!r}: timed out after {self.lock_timeout:g} s "
                f"queued behind other tasks of this process for {label}"
            )
        try:
            while True:
                result = await operation(*args, executor=self._executor())
                if not isinstance(result, Busy):
                    return result
                if not await waits.sleep():
                    raise DriverError(
                        f"file session store {self.path!r}: timed out after "
                        f"{self.lock_timeout:g} s waiting for lock file "
                        f"{lock_file!r}, held by another process"
                    )
        finally:
            await self._stripe_locks.release_lock(key, token)

    # -- the driver contract ------------------------------------------------------------------

    async def read(self, session_id: str) -> bytes | None:
        """The record, or None if absent, expired (older than ``ttl``), or unreadable."""
        if not _valid_id(session_id):
            return None
        return await self._reads.read(session_id, self.ttl, False)

    async def read_touch(self, session_id: str, ttl: int) -> bytes | None:
        """Read, and extend expiry by bumping the mtime if it is ``touch_interval`` old."""
        if not _valid_id(session_id):
            return None
        return await self._reads.read(session_id, ttl, True)

    async def read_many(self, session_ids: Sequence[str]) -> list[bytes | None]:
        """``read()`` of each id, in order, all in one hop to the pool (None: absent,
        expired, unreadable, or not an id). DriverError if the store fails."""
        wanted = [(sid, float(self.ttl), False) for sid in session_ids if _valid_id(sid)]
        answers = iter(await self._reads.read_many(wanted) if wanted else ())
        return [next(answers) if _valid_id(sid) else None for sid in session_ids]

    async def write(self, session_id: str, payload: bytes, ttl: int) -> None:
        """Replace the record atomically; it expires one lifetime after its mtime.

        The mtime is the only clock a file has, so *ttl* is not stored: ``read`` and
        ``gc`` apply the driver's lifetime (the same value the manager passes here).
        DriverError if the store fails or the stripe lock stays held past ``lock_timeout``.
        """
        if not _valid_id(session_id):
            raise ValueError(_NOT_AN_ID)
        await self._under_stripe(session_id, self._write, session_id, bytes(payload))

    async def compare_and_set(
        self, session_id: str, payload: bytes, ttl: int, expected: bytes | None
    ) -> bool:
        """Write only if the stored version is *expected* (None: only if absent or expired).

        The check and the write happen under the id's stripe lock, which every writer on
        this directory takes, in this process or another; uncontended, lock, check,
        write and unlock are one thread hop. DriverError as for :meth:`write`.
        """
        if not _valid_id(session_id):
            raise ValueError(_NOT_AN_ID)
        return await self._under_stripe(session_id, self._compare_and_set, session_id,
                                        bytes(payload), ttl, expected)

    async def destroy(self, session_id: str) -> None:
        """Remove the session file (no error if there is none)."""
        if not _valid_id(session_id):
            raise ValueError(_NOT_AN_ID)
        await self._under_stripe(session_id, self._destroy, session_id)

    async def index_user_session(self, user_id: str, handle: str, session_id: str,
                                 ttl: int, expected: str | None = None) -> bool:
        """Point *handle* at *session_id* in *user_id*'s index, kept *ttl* s from now at
        least, if it names nothing, that id or *expected*; else False (nothing written).

        One locked hop (``users/``, see :mod:`.index`). ValueError if *user_id* is not a
        non-empty str, or *handle* or *session_id* has not the shape of one; DriverError
        as for :meth:`write`.
        """
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("user_id must be a non-empty str")
        if not is_valid_handle(handle) or not _valid_id(session_id):
            raise ValueError("not a session handle and id; refusing to index them")
        return await self._users.index(user_id, handle, session_id, ttl, expected)

    async def user_session_index(self, user_id: str) -> dict[str, str]:
        """*user_id*'s index, ``{handle: session id}``; ``{}`` if none or expired.

        One hop, no lock: the file is replaced whole, so a read sees it before a change
        or after. DriverError if the store fails.
        """
        if not isinstance(user_id, str) or not user_id:
            return {}
        return await self._users.entries(user_id)

    async def unindex_user_sessions(self, user_id: str, entries: Mapping[str, str]) -> int:
        """Remove each handle of *entries* that still names the id given for it; how many.

        One locked hop; an index left empty is removed. ValueError if *user_id* is not a
        non-empty str; DriverError as for :meth:`write`.
        """
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("user_id must be a non-empty str")
        return await self._users.unindex(user_id, entries)

    async def acquire_lock(self, session_id: str, ttl: float, wait: float) -> str | None:
        """Take the session's lock within *wait* seconds; a release token, or None.

        Excludes every other holder: tasks of this process and other processes on this
        directory. *ttl* is not applied: the lock is an ``flock``, which the kernel drops
        when the holding process dies, and a living holder keeps it until
        :meth:`release_lock`.
        """
        if not _valid_id(session_id):
            raise ValueError(_NOT_AN_ID)
        waits = backoff(wait)
        local = await self._local_locks.acquire_lock(session_id, ttl, max(wait, 0.0))
        if local is None:
            return None
        try:
            while True:
                fd = await self._lock_attempt(session_id)
                if fd is not None:
                    token = secrets.token_hex(16)
                    self._held[token] = (session_id, fd, local)
                    return token
                if not await waits.sleep():
                    await self._local_locks.release_lock(session_id, local)
                    return None
        except BaseException:
            await self._local_locks.release_lock(session_id, local)
            raise

    async def _lock_attempt(self, session_id: str) -> int | None:
        pool = self._executor()
        attempt = asyncio.ensure_future(self._try_lock(session_id, executor=pool))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            # the thread may take the lock after all: wait for it and let go, or the lock
            # would stay held (and the descriptor open) until this process exits
            await asyncio.wait({attempt})
            if not attempt.cancelled() and attempt.exception() is None:
                fd = attempt.result()
                if fd is not None:
                    task = asyncio.ensure_future(self._unlock(session_id, fd, executor=pool))
                    self._cleanup.add(task)
                    task.add_done_callback(self._cleanup.discard)
            raise

    async def release_lock(self, session_id: str, token: str) -> None:
        """Release a lock taken with :meth:`acquire_lock`; an unknown token does nothing."""
        held = self._held.get(token)
        if held is None or held[0] != session_id:
            return
        del self._held[token]
        try:
            await asyncio.shield(self._unlock(session_id, held[1], executor=self._executor()))
        finally:
            await self._local_locks.release_lock(session_id, held[2])

    async def gc(self, max_lifetime: int) -> int:
        """Remove sessions idle for more than *max_lifetime* s and stale temp files.

        Scans in batches of GC_BATCH entries, one thread hop each, so the event loop
        never waits on the disk and a cancelled run stops between batches. A session
        whose stripe lock is held is tried again after the scan, with backoff, until
        ``lock_timeout`` (then DriverError). Returns the number of sessions removed.
        Session lock files that nobody holds any more (their holder died) are removed
        too, without waiting for any lock. Then the user indexes: entries naming a
        session whose file is gone and indexes past their deadline are removed, in
        batches too (an index whose lock is held waits for the next run).
        """
        pool = self._executor()
        try:
            scan = await open_scan(self.path, pool)
        except OSError as exc:
            raise self._dir.broken("list the session directory", exc) from exc
        removed = 0
        deferred: list[tuple[str, str]] = []
        try:
            more = True
            while more:
                batch = asyncio.ensure_future(
                    self._gc_batch(scan, max_lifetime, deferred, executor=pool))
                try:
                    count, more = await asyncio.shield(batch)
                except asyncio.CancelledError:
                    # the thread still uses the scan: let it finish its batch before the
                    # finally below closes it
                    await asyncio.wait({batch})
                    raise
                removed += count
        finally:
            scan.close()
        waits = backoff(self.lock_timeout)
        while deferred:
            if not await waits.sleep():
                raise DriverError(
                    f"file session store {self.path!r}: timed out after "
                    f"{self.lock_timeout:g} s waiting for the lock files of "
                    f"{len(deferred)} expired sessions during gc ({removed} removed)"
                )
            count, deferred = await self._gc_retry(deferred, max_lifetime, executor=pool)
            removed += count
        await self._users.gc()
        return removed

    async def close(self) -> None:
        """Release the session locks still held, let running file operations finish, and
        shut the driver's thread pool down. Operations after this raise DriverError."""
        if self._closed:
            return
        pool = self._pool if self._pool_pid == os.getpid() else None
        held, self._held = self._held, {}
        for session_id, fd, local in held.values():
            if pool is not None:
                await self._unlock(session_id, fd, executor=pool)
            await self._local_locks.release_lock(session_id, local)
        await self._reads.wait()
        self._closed = True
        self._pool = None
        if self._cleanup:
            await asyncio.wait(set(self._cleanup))
        if pool is None:
            return
        pool.shutdown(wait=False)  # queued work still runs; nothing new is accepted
        running = set(pool.pending)
        if running:
            await asyncio.wait([asyncio.wrap_future(f) for f in running])
        pool.shutdown(wait=True)  # every thread is idle and told to stop: this joins them


_STRIPE_KEYS: Final = tuple(str(n) for n in range(LOCK_STRIPES))


def _is_seconds(value: object) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and value == value and value != float("inf"))
