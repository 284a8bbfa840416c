"""Locks of the file driver: ``flock`` attempts that never wait, and async backoff.

Every function here except :func:`backoff` runs in a thread of the driver's pool and
returns at once: a lock is tried with ``LOCK_EX | LOCK_NB``, and a lock held by someone
else is reported (``None`` or :data:`BUSY`), never waited for. Waiting is the event
loop's job: :func:`backoff` (an :class:`aiosessmgr.locks.Backoff`) sleeps with
``asyncio.sleep`` between attempts, so a lock held by another process costs no thread
at all, in our pool or anyone's.

``flock`` locks belong to an open file description: two descriptors opened separately
exclude each other, whether they are in one process or two, and the kernel drops the
lock when its holder's process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import os
from collections.abc import Iterator
from typing import Final

from ...locks import Backoff

__all__ = ["BUSY", "LOCK_POLL_MAX", "LOCK_POLL_MIN", "Busy", "backoff", "remove_abandoned",
           "same_file", "stripe_held", "try_session_lock", "try_stripe", "unlock_session"]

#: seconds between attempts at a lock held by another process: the first sleep, and the
#: longest (each sleep is jittered and grows between them)
LOCK_POLL_MIN: Final = 0.005
LOCK_POLL_MAX: Final = 0.05

# lock files: never follow a planted symlink, never leak into a child process
STRIPE_FLAGS: Final = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
_LOCK_FLAGS: Final = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


class Busy(enum.Enum):
    """The answer of a function that found its lock held by someone else."""

    BUSY = "busy"


#: returned by a locked operation whose lock is held elsewhere: back off and call again
BUSY: Final = Busy.BUSY


def try_flock(fd: int) -> bool:
    """One non-blocking attempt at an exclusive flock on *fd*; False if it is held."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # EWOULDBLOCK: another open file description holds it
        return False
    return True


def try_stripe(path: str) -> int | None:
    """The descriptor of stripe lock file *path*, locked; None if it is held elsewhere.

    Closing the descriptor releases the lock. Raises OSError if the file cannot be opened
    (the session directory is gone, say).
    """
    return _open_locked(path, STRIPE_FLAGS)


def _open_locked(path: str, flags: int) -> int | None:
    """Open *path* and take its flock without waiting: the descriptor, or None if held."""
    fd = os.open(path, flags, 0o600)
    try:
        if try_flock(fd):
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


@contextlib.contextmanager
def stripe_held(path: str) -> Iterator[bool]:
    """Hold stripe lock file *path* for the block if it is free: yields False if it is held
    elsewhere (the block should answer BUSY), and releases the lock when the block ends."""
    fd = try_stripe(path)
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        os.close(fd)  # releases the lock


def same_file(fd: int, path: str) -> bool:
    """True if *path* names the file open as *fd* (False if the name is gone)."""
    try:
        named = os.lstat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def try_session_lock(path: str) -> int | None:
    """One non-blocking attempt at a session lock file: the descriptor holding it, or None.

    The flock only counts if the locked file is still the one named by *path*: a
    releasing holder (or gc) unlinks it while holding it, and a file unlinked between our
    open and our flock is a lock nobody else will ever look at.
    """
    for _ in range(8):  # each retry means another holder released meanwhile
        fd = _open_locked(path, _LOCK_FLAGS | os.O_CREAT)
        if fd is None:
            return None
        try:
            if same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    return None


def unlock_session(path: str, fd: int) -> None:
    """Remove a session lock file while still holding it, then let go (closing unlocks).

    Raises OSError if the file cannot be removed; the lock is released all the same (the
    caller logs it, with the id in the name abbreviated, and gc removes the file later).
    """
    try:
        if same_file(fd, path):
            os.unlink(path)
    finally:
        os.close(fd)


def remove_abandoned(path: str) -> None:
    """Remove a session lock file nobody holds (its holder died); never waits."""
    try:
        fd = os.open(path, _LOCK_FLAGS)
    except OSError:
        return
    try:
        if try_flock(fd) and same_file(fd, path):
            os.unlink(path)
    except OSError:
        pass  # already gone: not ours to remove
    finally:
        os.close(fd)


def backoff(timeout: float) -> Backoff:
    """The waits of one lock attempt loop: *timeout* seconds from now, on the loop's clock."""
    deadline = asyncio.get_running_loop().time() + max(timeout, 0.0)
    return Backoff(deadline, LOCK_POLL_MIN, LOCK_POLL_MAX)
