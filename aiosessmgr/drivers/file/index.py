"""The file driver's user index (SupportsUserIndex): one small file per user id.

**Layout.** ``<path>/users/`` (mode 0700, made on first use like the session directory,
whatever the umask) holds one file per user, ``<prefix><sha256 of the user id, hex>``
(0600), so a user id, whatever it holds (``../x``, a NUL, a thousand dots), never
reaches a path; the file holds the user id, and a file whose user id is not the one
asked for (or does not hash to its name) is not that user's index. Beside them are
the stripe locks ``.<prefix>lock-NN`` (chosen by the digest) and temporary files
``.<prefix><16 hex>.tmp``. The session gc lists only the session directory itself, and
``users`` never has the shape of a session, temp or lock name there, so index files are
never taken for records; several prefixes may share one ``users/``.

**Format.** JSON, ``{"v": 1, "u": user id, "k": keep, "e": {handle: session id}}``. The
index's one deadline is the file's mtime plus ``k`` seconds: each write sets the mtime
to the time of the write and ``k`` to what is left of the deadline, the later of the one
it had and ``now + ttl``. A refresh that changes no entry (the usual call: a session
re-indexed under the id it has) only moves the mtime to now when ``k`` already covers
its ttl: a ``utime`` instead of a temp file and a rename. Like records, an index file
thus ages with its mtime (tests move time by moving mtimes back) and expires with the
wall clock.

**Atomicity.** Every change (index, unindex, gc's removals) reads, changes and replaces
the file (temp file and rename) under the digest's stripe ``flock``, tried without
waiting in one hop; the driver's async backoff waits between attempts, so no thread
ever waits for a lock. Reads take no lock: a rename hands them the old file or the new
one, whole. gc takes no lock it has to wait for: an index whose stripe is busy is left
for the next run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shlex
import stat
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Executor
from contextlib import suppress
from typing import Any, Final, NamedTuple, TypeVar

import aiofiles.os

from ...errors import ConfigError, DriverError
from ...ids import is_valid_handle, is_valid_session_id
from .fs import (
    FILE_ERRNOS,
    GC_BATCH,
    GC_SKIP_ERRNOS,
    LOCK_STRIPES,
    READ_FLAGS,
    TEMP_MAX_AGE,
    Directory,
    open_scan,
    read_all,
    replace_file,
)
from .locking import BUSY, Busy, stripe_held
from .permissions import SHARED_BITS

__all__ = ["FORMAT", "USERS_DIR", "UserFiles", "UserIndexes", "user_digest"]

logger = logging.getLogger("aiosessmgr")

#: the subdirectory of the session directory that holds the user indexes
USERS_DIR: Final = "users"
#: the format number an index file carries (``"v"``); a file of any other is not used
FORMAT: Final = 1

_T = TypeVar("_T")
#: ``locked(key, label, lock_name, hop, *args)``: the driver's runner of a locked hop
Locked = Callable[..., Awaitable[Any]]


def user_digest(user_id: str) -> str:
    """The hex SHA-256 of *user_id* (UTF-8, lone surrogates passed through): its file name."""
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()


class _Index(NamedTuple):
    """A user index as read from its file."""

    st: os.stat_result
    #: epoch seconds: the file's mtime plus what was left then
    deadline: float
    user_id: str
    entries: dict[str, str]


def _parse(data: bytes) -> tuple[str, float, dict[str, str]] | None:
    """(user id, keep, entries) of an index file's bytes; None if they are not one."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("v") != FORMAT:
        return None
    user_id, keep, entries = doc.get("u"), doc.get("k"), doc.get("e")
    if (not isinstance(user_id, str) or isinstance(keep, bool)
            or not isinstance(keep, (int, float)) or not math.isfinite(keep)
            or not isinstance(entries, dict)):
        return None
    return user_id, float(keep), {handle: sid for handle, sid in entries.items()
                                  if is_valid_handle(handle) and is_valid_session_id(sid)}


class UserFiles:
    """The blocking half of the user index: what one thread hop does, plain ``os`` calls.

    Like :class:`~.fs.Directory`, no method waits for a lock: one that changes an index
    answers :data:`~.locking.BUSY` when the stripe is held elsewhere.
    """

    def __init__(self, records: Directory, check_permissions: bool) -> None:
        self.records = records
        self.path = os.path.join(records.path, USERS_DIR)
        self.prefix = records.prefix
        self.check_permissions = check_permissions
        self._index_re = re.compile(re.escape(self.prefix) + r"([0-9a-f]{64})")
        self._temp_re = re.compile(r"\." + re.escape(self.prefix) + r"[0-9a-f]{16}\.tmp")
        self._ready = False  # the directory exists and was checked, in this process

    # -- names and the directory ------------------------------------------------------------

    def file(self, digest: str) -> str:
        """The index file of the user whose :func:`user_digest` is *digest*."""
        return os.path.join(self.path, self.prefix + digest)

    @staticmethod
    def stripe_of(digest: str) -> int:
        """The stripe lock (0 to LOCK_STRIPES - 1) of a user's index."""
        return int(digest[:8], 16) % LOCK_STRIPES

    def stripe_file(self, stripe: int) -> str:
        """The lock file of one stripe of the user indexes: ``users/.<prefix>lock-NN``."""
        return os.path.join(self.path, f".{self.prefix}lock-{stripe:02d}")

    def _problem(self, st: os.stat_result) -> str | None:
        """What is wrong with ``users/`` as *st* (an lstat or fstat) shows it, if anything."""
        if not stat.S_ISDIR(st.st_mode):
            return "is not a directory (a symlink is not followed)"
        mode, uid, quoted = stat.S_IMODE(st.st_mode), os.geteuid(), shlex.quote(self.path)
        if self.check_permissions and st.st_uid != uid:
            return (f"belongs to uid {st.st_uid}, not to this process's user (uid {uid}): "
                    f"fix it with `chown {uid} {quoted} && chmod 700 {quoted}`")
        if self.check_permissions and mode & SHARED_BITS:
            return (f"has mode {mode:04o}: group or others may read the session ids in it; "
                    f"fix it with `chmod 700 {quoted}`")
        return None

    def check_existing(self) -> None:
        """At construction: ConfigError if ``users/`` exists and is not a private
        directory of this user (the owner and mode checks follow *check_permissions*)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return  # made on first use
        except OSError as exc:
            raise ConfigError(f"file driver: cannot check {self.path!r}: {exc}") from exc
        problem = self._problem(st)
        if problem is not None:
            raise ConfigError(f"file driver: user index directory {self.path!r} {problem}")

    def _prepare(self) -> None:
        """Make ``users/`` (0700 whatever the umask) or check it, once per process."""
        if self._ready:
            return
        try:
            os.mkdir(self.path, 0o700)
            made = True
        except FileExistsError:
            made = False
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if made:
                os.fchmod(fd, 0o700)
            else:
                problem = self._problem(os.fstat(fd))
                if problem is not None:
                    raise DriverError(f"file session store {self.records.path!r}: user "
                                      f"index directory {self.path!r} {problem}")
        finally:
            os.close(fd)
        self._ready = True

    # -- building blocks --------------------------------------------------------------------

    def _load(self, path: str, digest: str, user_id: str | None, quiet: bool = False
              ) -> _Index | None:
        """The index in *path*; None if absent or not an index of *user_id* (None: of
        whichever user hashes to *digest*), which is logged unless *quiet*."""
        try:
            fd = os.open(path, READ_FLAGS)
        except FileNotFoundError:
            if not os.path.isdir(self.records.path):
                raise
            return None
        except OSError as exc:
            if exc.errno not in FILE_ERRNOS:
                raise
            problem = exc.strerror or "cannot be opened"
        else:
            try:
                st = os.fstat(fd)
                data = read_all(fd, st.st_size) if stat.S_ISREG(st.st_mode) else None
            finally:
                os.close(fd)
            parsed = None if data is None else _parse(data)
            if data is None:
                problem = "not a regular file"
            elif parsed is None or user_digest(parsed[0]) != digest:
                problem = "not a user index"
            elif user_id is not None and parsed[0] != user_id:
                problem = "the index of another user id"
            else:
                return _Index(st, st.st_mtime + parsed[1], parsed[0], parsed[2])
        if not quiet:
            logger.warning("unusable user index file %s (%s); taken as empty", path, problem)
        return None

    def _store(self, path: str, user_id: str, entries: dict[str, str], deadline: float,
               now: float) -> None:
        """Replace the index file atomically: mtime *now*, kept until *deadline*."""
        payload = json.dumps({"v": FORMAT, "u": user_id, "k": deadline - now, "e": entries},
                             separators=(",", ":")).encode("ascii")
        temp = os.path.join(self.path, f".{self.prefix}{secrets.token_hex(8)}.tmp")
        replace_file(path, temp, payload, self.records.fsync, mtime=now)

    def _locked(self, digest: str, action: str, hop: Callable[..., _T], *args: Any
                ) -> _T | Busy:
        """Run *hop* holding the digest's stripe lock; BUSY if it is held elsewhere."""
        try:
            try:
                return self._locked_once(digest, hop, *args)
            except FileNotFoundError:
                if os.path.isdir(self.path):
                    raise
                self._ready = False  # users/ was removed under us: make it again
                return self._locked_once(digest, hop, *args)
        except OSError as exc:
            raise self.records.broken(action, exc) from exc

    def _locked_once(self, digest: str, hop: Callable[..., _T], *args: Any) -> _T | Busy:
        self._prepare()
        with stripe_held(self.stripe_file(self.stripe_of(digest))) as held:
            return hop(*args) if held else BUSY

    # -- the operations (one thread hop each) -----------------------------------------------

    def read(self, user_id: str, digest: str) -> dict[str, str]:
        """The user's entries; ``{}`` if none, expired or unusable (logged). Never waits.

        An expired index file is removed here if its stripe lock is free (else by gc).
        """
        path = self.file(digest)
        try:
            index = self._load(path, digest, user_id)
        except OSError as exc:
            raise self.records.broken("read a user index", exc) from exc
        if index is None:
            return {}
        if index.deadline <= time.time():
            with suppress(OSError), stripe_held(self.stripe_file(self.stripe_of(digest))) \
                    as held:
                if held:
                    self._remove_if_unchanged(path, index.st)
            return {}
        return index.entries

    def _remove_if_unchanged(self, path: str, seen: os.stat_result) -> None:
        """Unlink *path* if it is still the file *seen* (under its stripe lock)."""
        try:
            now = os.lstat(path)
        except FileNotFoundError:
            return
        if (now.st_ino, now.st_mtime_ns) == (seen.st_ino, seen.st_mtime_ns):
            os.unlink(path)

    def index(self, user_id: str, digest: str, handle: str, session_id: str,
              ttl: float, expected: str | None = None) -> bool | Busy:
        """Under the stripe lock: point *handle* at *session_id* if it names nothing,
        that id or *expected*, and keep the index *ttl* s; False if it names another."""
        return self._locked(digest, "index a session of a user", self._index, user_id,
                            digest, handle, session_id, ttl, expected)

    def _index(self, user_id: str, digest: str, handle: str, session_id: str,
               ttl: float, expected: str | None) -> bool:
        path = self.file(digest)
        now = time.time()
        deadline = now + ttl
        entries: dict[str, str] = {}
        index = self._load(path, digest, user_id)
        if index is not None and index.deadline > now:
            if index.entries.get(handle, session_id) not in (session_id, expected):
                return False  # another request moved the session first: its entry stays
            if index.entries.get(handle) == session_id:
                if index.deadline >= deadline:
                    return True  # nothing would change
                if index.deadline - index.st.st_mtime >= ttl:
                    # a refresh (the usual call): only the deadline moves, and moving the
                    # mtime to now moves it far enough, at the cost of a utime instead of
                    # a temp file and a rename (under the lock: it is the file just read)
                    os.utime(path, (now, now), follow_symlinks=False)
                    return True
            entries, deadline = index.entries, max(deadline, index.deadline)
        entries[handle] = session_id
        self._store(path, user_id, entries, deadline, now)
        return True

    def unindex(self, user_id: str, digest: str, entries: dict[str, str]) -> int | Busy:
        """Under the stripe lock: remove the *entries* that still name their id; how many.

        An index left empty is removed whole.
        """
        return self._locked(digest, "unindex sessions of a user", self._unindex, user_id,
                            digest, entries)

    def _unindex(self, user_id: str | None, digest: str, entries: dict[str, str]) -> int:
        path = self.file(digest)
        index = self._load(path, digest, user_id, quiet=user_id is None)
        if index is None:
            return 0
        now = time.time()
        if index.deadline <= now:
            self._remove_if_unchanged(path, index.st)
            return 0
        stored = index.entries
        gone = [handle for handle, sid in entries.items() if stored.get(handle) == sid]
        if not gone:
            return 0
        for handle in gone:
            del stored[handle]
        if stored:
            self._store(path, index.user_id, stored, index.deadline, now)
        else:
            os.unlink(path)
        return len(gone)

    # -- garbage collection -----------------------------------------------------------------

    def gc_batch(self, scan: Iterator[os.DirEntry[str]]) -> bool:
        """Collect in ``users/`` for about GC_BATCH units of work; True if more is left.

        A unit is a directory entry or an index entry checked. An index past its
        deadline is removed; entries naming a session whose file is gone are removed
        (conditionally, as :meth:`unindex` does); temp files older than TEMP_MAX_AGE go.
        An index whose stripe lock is held is left for the next run. Files that cannot
        be removed stay (one WARNING per batch); other errors raise DriverError.
        """
        skipped: list[OSError] = []
        work = 0
        try:
            try:
                while work < GC_BATCH:
                    entry = next(scan, None)
                    if entry is None:
                        return False
                    work += 1 + self._gc_entry(entry, skipped)
            finally:
                if skipped:
                    first = self.records.redact(skipped[0])
                    logger.warning("user index gc in %s: %d files cannot be removed and "
                                   "stay, e.g. %s", self.path, len(skipped), first)
        except OSError as exc:
            raise self.records.broken("collect stale user index entries", exc) from exc
        return True

    def _gc_entry(self, entry: os.DirEntry[str], skipped: list[OSError]) -> int:
        """Collect one entry of ``users/``; return how many index entries it checked."""
        try:
            match = self._index_re.fullmatch(entry.name)
            if match is None:
                if (self._temp_re.fullmatch(entry.name) and time.time()
                        - entry.stat(follow_symlinks=False).st_mtime > TEMP_MAX_AGE):
                    os.unlink(entry.path)
                return 0
            digest = match.group(1)
            index = self._load(entry.path, digest, None, quiet=True)
            if index is None:
                return 0  # not an index (it stays: not ours to judge) or gone meanwhile
            if index.deadline <= time.time():
                self._gc_locked(digest, self._remove_if_unchanged, entry.path, index.st)
                return 0
            gone = {handle: sid for handle, sid in index.entries.items()
                    if not self._record_exists(sid)}
            if gone:
                self._gc_locked(digest, self._unindex, None, digest, gone)
            return len(index.entries)
        except FileNotFoundError:
            return 0  # removed meanwhile
        except OSError as exc:
            if exc.errno not in GC_SKIP_ERRNOS:
                raise
            skipped.append(exc)
            return 0

    def _gc_locked(self, digest: str, hop: Callable[..., object], *args: Any) -> None:
        with stripe_held(self.stripe_file(self.stripe_of(digest))) as held:
            if held:
                hop(*args)

    def _record_exists(self, session_id: str) -> bool:
        try:
            os.lstat(self.records.file(session_id))
        except FileNotFoundError:
            return False
        except OSError:
            return True  # cannot tell: the entry stays
        return True


class UserIndexes:
    """The async half: each operation one hop to the driver's pool, locked ones through
    the driver's *locked* runner (queue per stripe in this process, backoff on BUSY)."""

    def __init__(self, files: UserFiles, executor: Callable[[], Executor],
                 locked: Locked) -> None:
        self.files = files
        self._executor = executor
        self._locked = locked
        self._read: Callable[..., Awaitable[dict[str, str]]] = aiofiles.os.wrap(files.read)
        self._index: Callable[..., Awaitable[bool | Busy]] = aiofiles.os.wrap(files.index)
        self._unindex: Callable[..., Awaitable[int | Busy]] = aiofiles.os.wrap(files.unindex)
        self._gc_batch: Callable[..., Awaitable[bool]] = aiofiles.os.wrap(files.gc_batch)

    async def _run_locked(self, digest: str, hop: Callable[..., Awaitable[_T | Busy]],
                          *args: Any) -> _T:
        stripe = self.files.stripe_of(digest)
        name = f"{USERS_DIR}/{os.path.basename(self.files.stripe_file(stripe))}"
        result: _T = await self._locked(f"u{stripe}", f"user index lock stripe {stripe}",
                                        name, hop, *args)
        return result

    async def index(self, user_id: str, handle: str, session_id: str, ttl: float,
                    expected: str | None = None) -> bool:
        """See :meth:`FileDriver.index_user_session`."""
        digest = user_digest(user_id)
        return await self._run_locked(digest, self._index, user_id, digest, handle,
                                      session_id, ttl, expected)

    async def entries(self, user_id: str) -> dict[str, str]:
        """See :meth:`FileDriver.user_session_index`."""
        return await self._read(user_id, user_digest(user_id), executor=self._executor())

    async def unindex(self, user_id: str, entries: Mapping[str, str]) -> int:
        """See :meth:`FileDriver.unindex_user_sessions`."""
        wanted = {handle: sid for handle, sid in entries.items()
                  if is_valid_handle(handle) and is_valid_session_id(sid)}
        if not wanted:
            return 0
        digest = user_digest(user_id)
        removed: int = await self._run_locked(digest, self._unindex, user_id, digest, wanted)
        return removed

    async def gc(self) -> None:
        """Collect stale entries and expired indexes in ``users/`` (if it exists), in
        batches of one hop each (see :meth:`UserFiles.gc_batch`)."""
        pool = self._executor()
        try:
            scan = await open_scan(self.files.path, pool)
        except FileNotFoundError:
            return  # no index was ever written here
        except OSError as exc:
            raise self.files.records.broken("list the user index directory", exc) from exc
        try:
            more = True
            while more:
                batch = asyncio.ensure_future(self._gc_batch(scan, executor=pool))
                try:
                    more = await asyncio.shield(batch)
                except asyncio.CancelledError:
                    await asyncio.wait({batch})  # the thread still uses the scan
                    raise
        finally:
            scan.close()
