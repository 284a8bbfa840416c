"""Two worker processes saving one session through the file driver lose nothing."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import pytest

from aiosessmgr import SessionManager
from aiosessmgr.drivers.file import FileDriver

KEYS = 200

# One worker: waits for "go" on stdin, then does load / put / save KEYS times on one id.
WORKER = r"""
import asyncio, sys
from aiosessmgr import SessionManager

async def main() -> None:
    path, sid, n = sys.argv[1], sys.argv[2], sys.argv[3]
    manager = SessionManager({"default": "file", "lottery": (0, 1),
                              "drivers": {"file": {"driver": "file", "path": path}}})
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(int(sys.argv[4])):
        s = await manager.load(sid)
        assert s.id == sid, "the session vanished"
        s.put(f"p{n}-{i}", i)
        await s.save()
    await manager.close()
    print("done", flush=True)

asyncio.run(main())
"""


def config(path: Path) -> dict[str, object]:
    return {"default": "file", "lottery": (0, 1),
            "drivers": {"file": {"driver": "file", "path": str(path)}}}


@pytest.mark.slow
async def test_two_processes_saving_one_session_keep_every_key(tmp_path: Path) -> None:
    store = tmp_path / "sessions"
    manager = SessionManager(config(store))
    session = await manager.driver()
    session.put("owner", "test")
    await session.save()
    sid = session.id

    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER, str(store), sid, str(n), str(KEYS),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for n in (1, 2)
    ]
    for worker in workers:
        assert worker.stdout is not None
        assert await asyncio.wait_for(worker.stdout.readline(), 60) == b"ready\n"
    for worker in workers:  # start both at once, so their saves really interleave
        assert worker.stdin is not None
        worker.stdin.write(b"go\n")
        await worker.stdin.drain()
    results = await asyncio.wait_for(
        asyncio.gather(*(w.communicate() for w in workers)), 300)
    for worker, (out, err) in zip(workers, results, strict=True):
        assert worker.returncode == 0, err.decode()
        assert out == b"done\n"

    final = await manager.load(sid)
    assert final.id == sid
    expected = {"owner": "test"} | {f"p{n}-{i}": i for n in (1, 2) for i in range(KEYS)}
    assert final.all() == expected
    await manager.close()


# Increments a counter record with read + compare_and_set, retrying on conflict.
COUNTER = r"""
import asyncio, os, sys
from aiosessmgr.drivers.file import FileDriver

async def main() -> None:
    driver = FileDriver(sys.argv[1])
    sid, rounds = sys.argv[2], int(sys.argv[3])
    print("ready", flush=True)
    sys.stdin.readline()
    conflicts = 0
    for _ in range(rounds):
        while True:
            current = await driver.read(sid)
            assert current is not None
            count = int(current[8:])
            if await driver.compare_and_set(sid, os.urandom(8) + b"%d" % (count + 1), 60,
                                            current[:8]):
                break
            conflicts += 1
    print(conflicts, flush=True)

asyncio.run(main())
"""


@pytest.mark.slow
async def test_compare_and_set_is_atomic_across_processes(tmp_path: Path) -> None:
    """Three processes increment one counter; any lost update shows in the total."""
    store, sid, rounds = tmp_path / "sessions", secrets.token_urlsafe(32), 300
    driver = FileDriver(store)
    await driver.write(sid, b"v" * 8 + b"0", 60)
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", COUNTER, str(store), sid, str(rounds),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    for worker in workers:
        assert worker.stdout is not None
        assert await asyncio.wait_for(worker.stdout.readline(), 60) == b"ready\n"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write(b"go\n")
        await worker.stdin.drain()
    results = await asyncio.wait_for(
        asyncio.gather(*(w.communicate() for w in workers)), 300)
    for worker, (_, err) in zip(workers, results, strict=True):
        assert worker.returncode == 0, err.decode()
    final = await driver.read(sid)
    assert final is not None and int(final[8:]) == 3 * rounds
    conflicts = sum(int(out) for out, _ in results)
    print(f"{conflicts} conflicts retried")


def test_reads_work_in_a_forked_child(tmp_path: Path) -> None:
    """The pool's threads do not survive fork(); a child must start its own, not hang."""
    driver = FileDriver(tmp_path / "sessions")
    sid, record = secrets.token_urlsafe(32), b"v" * 8 + b"forked"

    async def write_and_read() -> bytes | None:
        await driver.write(sid, record, 60)
        return await driver.read(sid)

    assert asyncio.run(write_and_read()) == record  # the parent's pool threads now run
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        try:
            code = 0 if asyncio.run(asyncio.wait_for(driver.read(sid), 10)) == record else 1
        except BaseException:
            code = 2
        os._exit(code)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung reading a session")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(done[1]) == 0
