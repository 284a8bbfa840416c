"""Writing a session's record: group commit, compare-and-set with delta replay.

Saves of one id in one process form a line. The first save of an idle line writes at
once; saves that arrive while it is in flight wait, and the next write takes all of them
together (group commit): each one's delta is replayed in order on the record the line
wrote last, and the result goes out as one compare-and-set. The process remembers the
last record it wrote for an id (:class:`CommitQueue`), so a save that loaded an older
version needs no re-read. A conflict with another process re-reads the record, replays
the deltas of the whole batch on it and tries again, backing off before each re-read,
until :data:`SAVE_DEADLINE`. A driver without compare-and-set writes last-writer-wins,
but never over an id this process destroyed meanwhile (``DriverRuntime.tombstones``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from .drivers.base import VERSION_SIZE
from .errors import SessionSaveTimeout
from .log import logger

if TYPE_CHECKING:
    from .runtime import DriverRuntime

__all__ = ["REMEMBER_BYTES", "REMEMBER_IDS", "SAVE_BACKOFF_MAX", "SAVE_BACKOFF_MIN",
           "SAVE_DEADLINE", "SAVE_TURN_WAIT", "CommitQueue", "Save", "write"]

#: seconds a save keeps re-reading and replaying its delta while other processes keep
#: winning the compare-and-set (saves of one id within a process are grouped instead)
SAVE_DEADLINE: Final = 10.0
#: seconds: the first and the longest jittered pause before a re-read after a conflict
SAVE_BACKOFF_MIN: Final = 0.0005
SAVE_BACKOFF_MAX: Final = 0.05
#: seconds a save waits in line behind a write of the same id in this process
SAVE_TURN_WAIT: Final = 10.0
#: the last written record is remembered for this many ids, if at most REMEMBER_BYTES long
REMEMBER_IDS: Final = 256
REMEMBER_BYTES: Final = 64 * 1024

#: () -> (version, record): encode the session's current state under a new version
Encode = Callable[[], tuple[bytes, bytes]]
#: (a record another wrote, or None) -> anything: replay the delta on that record
Rebase = Callable[[bytes | None], object]
#: (the record a group commit wrote) -> None: take it as the session's state
Adopt = Callable[[bytes], None]


class Save:
    """One session's pending save: the version it loaded and how to encode and replay it.

    *expected* is the version loaded (None: no record yet, a create-only write);
    *loaded_at* is ``time.monotonic()`` when the store answered that load.
    """

    __slots__ = ("adopt", "base", "encode", "expected", "future", "loaded_at", "owner",
                 "rebase")

    def __init__(self, expected: bytes | None, loaded_at: float, encode: Encode,
                 rebase: Rebase, adopt: Adopt, owner: object = None) -> None:
        #: the session saving: its saves never overlap (see CommitQueue.settled)
        self.owner = owner
        self.expected = expected
        self.loaded_at = loaded_at
        self.encode = encode
        self.rebase = rebase
        self.adopt = adopt
        # the version the session's state is relative to (its load, then each replay)
        self.base = expected
        self.future: asyncio.Future[bytes | None] | None = None


class _Line:
    __slots__ = ("queue", "task")

    def __init__(self) -> None:
        self.queue: list[Save] = []
        self.task: asyncio.Task[None] | None = None


class CommitQueue:
    """The save lines of one driver in this process, and the last record written per id.

    The memory is bounded: the last record of at most :data:`REMEMBER_IDS` ids, each at
    most :data:`REMEMBER_BYTES` long, the least recently written forgotten first.
    """

    def __init__(self, ids: int = REMEMBER_IDS, size: int = REMEMBER_BYTES) -> None:
        self._lines: dict[str, _Line] = {}
        # id() of a session with a save in progress -> the saves waiting for it to end
        self._saving: dict[int, list[asyncio.Future[None]] | None] = {}
        # id -> (version, record, time.monotonic() when the write was acknowledged)
        self._last: OrderedDict[str, tuple[bytes, bytes, float]] = OrderedDict()
        self._ids = ids
        self._size = size

    def remember(self, session_id: str, version: bytes, payload: bytes) -> None:
        """Note the record this process just wrote for *session_id*."""
        last = self._last
        if len(payload) > self._size:
            last.pop(session_id, None)
            return
        last[session_id] = (version, payload, time.monotonic())
        last.move_to_end(session_id)
        if len(last) > self._ids:
            last.popitem(last=False)

    async def settled(self, owner: object) -> None:
        """Wait until *owner* (a session) has no save in progress.

        A session's saves never overlap: replaying one session's delta twice in one batch
        would apply its increments twice, and a session that moves (regenerate,
        invalidate) while its save waits would write its new id's state under the old.
        """
        key = id(owner)
        while key in self._saving:
            waiters = self._saving[key]
            if waiters is None:
                waiters = self._saving[key] = []
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiters.append(done)
            await done

    def forget(self, session_id: str) -> None:
        """Forget the last record of *session_id* (destroyed, or the store's answer lost)."""
        self._last.pop(session_id, None)

    def base(self, session_id: str, first: Save) -> tuple[bytes | None, bytes | None]:
        """Where a batch starting with *first* is written: (expected version, the record to
        replay the batch on; None: on the first save's own load)."""
        last = None if first.expected is None else self._last.get(session_id)
        if last is not None and last[0] != first.expected and first.loaded_at <= last[2]:
            # that save loaded before this process's last write was acknowledged: the
            # record is at least that write, so replay on it instead of a certain conflict
            return last[0], last[1]
        return first.expected, None


async def write(rt: DriverRuntime, session_id: str, save: Save) -> bytes | None:
    """Write one session's save; return the version written, or None if its record ended.

    Raises SessionSaveTimeout (waited too long in line, or other processes kept winning
    until the deadline), DriverError (the store failed) and what the session's own
    encoding raises (SerializationError, SessionTooLarge).
    """
    if save.owner is None:
        return await _write(rt, session_id, save)
    queue = rt.commits
    key = id(save.owner)
    if key in queue._saving:
        await queue.settled(save.owner)
    queue._saving[key] = None
    try:
        return await _write(rt, session_id, save)
    finally:
        for done in queue._saving.pop(key, None) or ():
            if not done.done():
                done.set_result(None)


async def _write(rt: DriverRuntime, session_id: str, save: Save) -> bytes | None:
    if not rt.can_cas:
        if save.expected is not None and session_id in rt.tombstones:
            return None  # destroyed while this request ran: last-writer-wins would revive it
        version, payload = save.encode()
        await rt.driver.write(session_id, payload, rt.ttl)
        return version
    queue = rt.commits
    if save.expected is None:
        # a create-only write of a new id: nothing to group with
        return await _write_alone(rt, session_id, save)
    line = queue._lines.get(session_id)
    if line is None:
        # nobody writes this id in this process: write at once, in this task
        line = queue._lines[session_id] = _Line()
        try:
            return await _write_alone(rt, session_id, save)
        finally:
            if line.queue:
                line.task = asyncio.get_running_loop().create_task(
                    _drain(rt, session_id, line))
            else:
                del queue._lines[session_id]
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bytes | None] = loop.create_future()
    save.future = future
    line.queue.append(save)
    timer = loop.call_later(SAVE_TURN_WAIT, _waited_too_long, line, save)
    try:
        return await future
    finally:
        timer.cancel()
        if save in line.queue:  # cancelled while waiting: never written
            line.queue.remove(save)


def _waited_too_long(line: _Line, save: Save) -> None:
    if save in line.queue and save.future is not None and not save.future.done():
        line.queue.remove(save)
        save.future.set_exception(SessionSaveTimeout(
            f"session save waited {SAVE_TURN_WAIT:g} s in line behind other saves of "
            f"the same session"))


async def _write_alone(rt: DriverRuntime, session_id: str, save: Save) -> bytes | None:
    version, _, written, failed = await _commit(rt, session_id, [save])
    if failed:
        raise failed[0][1]
    return version if written else None


async def _drain(rt: DriverRuntime, session_id: str, line: _Line) -> None:
    """Write the saves waiting in *line*, a batch at a time, until none are left."""
    batch: list[Save] = []
    try:
        while line.queue:
            batch = [save for save in line.queue if not _done(save)]
            line.queue = []
            if not batch:
                continue
            try:
                version, _, written, failed = await _commit(rt, session_id, batch)
            except Exception as exc:
                failed, written, version = [(save, exc) for save in batch], [], b""
            for save, error in failed:
                _settle(save, error)
            landed = {id(save) for save in written}
            for save in batch:
                _settle(save, version if id(save) in landed else None)
    finally:
        for save in (*batch, *line.queue):  # cancelled (the loop is closing)
            if save.future is not None and not save.future.done():
                save.future.cancel()
        if rt.commits._lines.get(session_id) is line:
            del rt.commits._lines[session_id]


def _done(save: Save) -> bool:
    return save.future is None or save.future.done()


def _settle(save: Save, outcome: bytes | Exception | None) -> None:
    """Resolve a waiting save (its first outcome counts: an error before "ended")."""
    future = save.future
    if future is None or future.done():
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _replay(batch: list[Save], raw: bytes | None
            ) -> tuple[bytes, bytes, list[Save], list[tuple[Save, Exception]]]:
    """Replay each save's delta in order on *raw* (None: on the first save's own load).

    Returns the last version and record encoded, the saves it contains and the saves
    whose own state could not be encoded (with their errors).
    """
    version = payload = b""
    written: list[Save] = []
    failed: list[tuple[Save, Exception]] = []
    for save in batch:
        try:
            if raw is not None and raw[:VERSION_SIZE] != save.base:
                save.rebase(raw)
                save.base = raw[:VERSION_SIZE]
            version, payload = save.encode()
        except Exception as exc:  # this session's own value: its own error to see
            failed.append((save, exc))
            continue
        written.append(save)
        raw = payload
    return version, payload, written, failed


async def _commit(rt: DriverRuntime, session_id: str, batch: list[Save]
                  ) -> tuple[bytes, bytes, list[Save], list[tuple[Save, Exception]]]:
    """Write *batch* as one compare-and-set; return what was written and who failed.

    The saves written is empty if the record ended (or no save could be encoded).
    """
    queue = rt.commits
    expected, raw = queue.base(session_id, batch[0])
    version, payload, written, failed = _replay(batch, raw)
    if raw is None and written:
        expected = written[0].expected
    if not written:
        return version, payload, written, failed
    try:
        outcome = await _compare_and_set(rt, session_id, expected, version, payload,
                                         written, failed)
    except BaseException:
        queue.forget(session_id)  # whether the write landed is unknown
        raise
    if outcome is None:
        queue.forget(session_id)
        return version, payload, [], failed
    version, payload, written = outcome
    queue.remember(session_id, version, payload)
    for save in written[:-1]:
        save.adopt(payload)  # the last one's state is the record; the others take it
    if len(written) > 1:
        logger.debug("session %s…: %d saves written as one", session_id[:6], len(written))
    return version, payload, written, failed


async def _compare_and_set(rt: DriverRuntime, session_id: str, expected: bytes | None,
                           version: bytes, payload: bytes, written: list[Save],
                           failed: list[tuple[Save, Exception]]
                           ) -> tuple[bytes, bytes, list[Save]] | None:
    cas = rt.driver.compare_and_set  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    deadline = 0.0
    conflicts = 0
    while True:
        if await cas(session_id, payload, rt.ttl, expected):
            return version, payload, written
        conflicts += 1
        if conflicts == 1:
            # the first conflict re-reads at once: the winner has just written
            deadline = loop.time() + SAVE_DEADLINE
        else:
            # back off *before* re-reading, never between the re-read and the write:
            # the snapshot the deltas are replayed on is then as fresh as it can be
            delay = random.uniform(0, min(SAVE_BACKOFF_MAX,
                                          SAVE_BACKOFF_MIN * (1 << min(conflicts, 16))))
            if loop.time() + delay > deadline:
                raise SessionSaveTimeout(
                    f"could not save session {session_id[:6]}…: other writers kept saving "
                    f"it first for {SAVE_DEADLINE:g} s ({conflicts} attempts)"
                )
            await asyncio.sleep(delay)
        fresh = await rt.driver.read(session_id)
        if fresh is not None and fresh[:VERSION_SIZE] == version:
            # our write landed but its reply was lost (a client that retried):
            # replaying the deltas now would apply increments twice
            return version, payload, written
        if fresh is None and expected is not None:
            return None
        # (fresh is None only for a create-only write that raced a record which vanished
        # again: it writes its own state as before)
        expected = None if fresh is None else fresh[:VERSION_SIZE]
        version, payload, written, more = _replay(written, fresh)
        failed.extend(more)
        if not written:
            return None
