"""File driver: one file per session in one directory, safe across worker processes.

The embedded default (the demo uses it) and what a single host with several worker
processes shares. Modules: ``fs`` (names, and the blocking half of every operation),
``locking`` (``flock`` attempts and the async backoff between them), ``permissions``
(whether the session directory is private and nobody else can replace it), ``index``
(the user index, both halves), ``driver`` (:class:`FileDriver`: pool, queues, deadlines).

Capabilities (:mod:`aiosessmgr.drivers.base`): SupportsTouch, SupportsCompareAndSet,
SupportsLock (across processes), SupportsUserIndex (across processes too) and
SupportsReadMany (all the reads in one hop).

**I/O: aiofiles, on a pool the driver owns.** Every file operation runs in a thread of
the driver's own bounded ``ThreadPoolExecutor`` (``max_workers`` threads, default
:data:`DEFAULT_MAX_WORKERS`), reached through aiofiles' public API with
``executor=pool``: each operation is one plain-``os`` function run whole by
``aiofiles.os.wrap`` (open, ``fstat``, read, close: one hop, not one per call), and
``gc`` lists the directory with ``aiofiles.os.scandir``. Reads take one hop at a time
(``driver.READ_HOPS``): the reads that arrive meanwhile go together in the next hop,
answered with one thread and one loop wakeup for all of them, which keeps a read under
load at the CPU cost it had on the dedicated reader thread this replaces (measured with
``python -m benchmarks.fileio`` and ``benchmarks.drivers``), and reads never occupy
more than one of the pool's threads. Nothing runs in the event
loop's default executor, so however slow the disk, ``loop.getaddrinfo`` (aiohttp's
client resolver) and ``run_in_executor(None, ...)`` of the application never queue
behind session files; and the driver starts no thread of its own. ``close()`` lets
running operations finish and shuts the pool down (a forked child makes a fresh one).
``aiofiles.open`` is not used: it costs a hop per call, and its ``async with`` closes
the file in the default executor (aiofiles 25.1).

**Locks never hold a thread.** Writers of one id (``write``, ``compare_and_set``,
``destroy``, and the removals of ``gc`` and of expired reads) take an exclusive
``flock`` on one of :data:`LOCK_STRIPES` lock files ``.<prefix>lock-NN``, chosen by a
hash of the id (a fixed set: lock files never accumulate). ``flock`` locks belong to an
open file description, so they exclude threads of one process as well as other
processes. Each attempt is non-blocking (``LOCK_EX | LOCK_NB``) inside the operation's
hop: uncontended, lock, version check, temp write, rename and unlock of a
compare-and-set are one hop. When another process holds the lock the hop returns at
once, the coroutine sleeps (``asyncio.sleep``, jittered, from :data:`LOCK_POLL_MIN` up
to :data:`LOCK_POLL_MAX` seconds) and tries again, and after ``lock_timeout`` seconds
(default :data:`DEFAULT_LOCK_TIMEOUT`) raises DriverError saying what it waited for.
Tasks of one process queue first on an asyncio lock per stripe (``LocalLocks``), so only
one of them tries the ``flock``. Reads never wait: an expired file is removed by the
read only if its stripe is free at that moment (else ``gc`` removes it), and ``gc``
defers a session whose stripe is held and tries it again after its scan. Why: a
blocking ``flock`` in a shared executor once held ``loop.getaddrinfo`` up for 2.9 s
while another process held a stripe.

Guarantees:

* **Only ids reach the file system.** A file name is ``prefix + id`` and is built only
  after the id matched ``[A-Za-z0-9_-]{43}``; the joined path is checked to lie directly
  in the session directory. ``read`` of any other string is ``None``; ``write``,
  ``compare_and_set``, ``destroy`` and ``acquire_lock`` raise ``ValueError``. Session
  and lock files are opened with ``O_NOFOLLOW``, so a planted symlink is never followed.
* **Atomic writes.** A record is written to a temporary file in the same directory
  (optionally ``fsync``-ed, then the directory too) and moved over the old one with
  ``os.replace``: a reader sees the old record or the new one, never a mix, and a crash
  leaves at most a temporary file. Temporary names start with a dot, so they never match
  a session name; ``gc`` removes them once they are :data:`TEMP_MAX_AGE` seconds old.
* **Expiry by mtime.** A file whose mtime is more than ``ttl`` seconds ago is absent
  (and removed when read). ``read_touch`` extends expiry by bumping the mtime, at most
  once per ``touch_interval`` seconds, so read-heavy traffic does not turn into writes.
* **Fast gc.** ``gc`` scans in batches of ``GC_BATCH`` entries, one hop each, so the
  loop stays responsive over 100,000 files and a cancelled run stops between batches.
* **User index** (``index_user_session`` / ``user_session_index`` /
  ``unindex_user_sessions``): one file per user in the subdirectory ``users/`` (0700,
  made on first use; refused at construction if it exists and is not a private
  directory of ours), named after the SHA-256 of the user id, which never reaches a
  path; the file holds the user id, checked on every read. Changes are read, change,
  temp write and rename under one of :data:`LOCK_STRIPES` stripe locks of ``users/``,
  tried and waited for like the record stripes (so atomic across processes); reads
  take no lock. The index's deadline is its file's mtime plus what was left of it at
  the write, so it ages like a record. ``gc`` removes index files past their
  deadline and entries whose session file is gone (one ``lstat`` per entry, about
  what scanning the session files costs), taking no lock it would have to wait for.
  Details: :mod:`aiosessmgr.drivers.file.index`.
* **read_many** reads all the given records in one hop (the reads queued meanwhile go
  with them when the pool is busy with reads): 1,000 records of 200 bytes in about
  half the time of 1,000 concurrent ``read()`` calls.
* **Session locks** (``acquire_lock`` / ``release_lock``, behind ``session.lock()``): an
  exclusive ``flock`` on a per-session file ``.<prefix>lock-<id>``, separate from the
  stripe locks (a lock holder saves under the stripe lock), tried and waited for the
  same way until ``wait`` runs out (then ``None``). The lock dies with its holder's
  process (the kernel drops the ``flock``), so ``ttl`` is not needed and not applied.
  Releasing unlinks the file while still holding it; whoever locks a file checks that
  it is still the one at that name, so an unlink never lets two holders in. ``gc``
  removes lock files left by dead processes.
* **A private directory.** File names are session ids, so whoever can list the
  directory holds every live session. It is created mode 0700, and so is each parent
  the driver creates, whatever the umask (``mkdir`` 0700, then ``fchmod`` 0700 through
  a descriptor opened with ``O_NOFOLLOW``). An existing directory (a symlink to one is
  followed) that another user owns, or whose mode has any bit of 0o077 (group or others
  may read, that is list, write, or search it), is refused at construction with a
  ConfigError that names the fix (``chmod 700 <path>``) and the opt-out, the option
  ``check_permissions: false``. Session files, their temporary files and lock files are
  created 0600, which a umask can only narrow. Nobody else may be able to swap it out:
  every directory on its path (from ``/``, symlinks followed as the kernel does) must
  belong to root or this user and not be writable by group or others unless sticky, and
  every symlink on the way must belong to root or this user; otherwise a ConfigError
  names the directory, its mode and owner, and the fix (``chmod g-w,o-w`` /
  ``chmod +t``).
* **No whole id in a log or an error.** An ``OSError`` names its file, and the file name
  is the id: every ``OSError`` that leaves inside a DriverError, or that a log line
  shows, has the id in ``filename`` / ``filename2`` abbreviated to ``abc123…`` first,
  through its whole ``__cause__`` / ``__context__`` chain, so a traceback printed by
  the middleware or the gc task carries only the abbreviated form. ``gc`` leaves a file
  it cannot remove (immutable, a mount point, a directory with a temp file's name) in
  place with one WARNING per batch, instead of failing the whole run on it.

Construction is synchronous on purpose: it creates or checks the directory once, at
startup, where a bad path must be a ConfigError.
"""

from __future__ import annotations

from .driver import DEFAULT_LOCK_TIMEOUT, DEFAULT_MAX_WORKERS, FileDriver
from .fs import GC_BATCH as GC_BATCH
from .fs import LOCK_STRIPES, TEMP_MAX_AGE
from .locking import LOCK_POLL_MAX, LOCK_POLL_MIN

__all__ = ["DEFAULT_LOCK_TIMEOUT", "DEFAULT_MAX_WORKERS", "LOCK_POLL_MAX", "LOCK_POLL_MIN",
           "LOCK_STRIPES", "TEMP_MAX_AGE", "FileDriver"]
