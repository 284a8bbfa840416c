"""Crash safety: a writer killed with SIGKILL mid-write never leaves a torn session file."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import secrets
import signal
import sys
import time
from pathlib import Path

import pytest

from aiosessmgr.drivers.file import TEMP_MAX_AGE, FileDriver

KILLS = 20
IDS = 8

# Saves records that carry their own checksum, as fast as it can, alternating plain
# writes and compare-and-set, until it is killed. Records are big so that a kill often
# lands inside a write.
WRITER = r"""
import asyncio, hashlib, os, random, sys
from aiosessmgr.drivers.file import FileDriver

async def main() -> None:
    driver = FileDriver(sys.argv[1], ttl=3600, fsync=sys.argv[2] == "fsync")
    ids = sys.argv[3:]
    versions = {sid: None for sid in ids}
    first = True
    while True:
        sid = random.choice(ids)
        body = os.urandom(random.randint(1, 256 * 1024))
        version = os.urandom(8)
        record = version + hashlib.sha256(body).digest() + body
        if random.random() < 0.5:
            await driver.write(sid, record, 3600)
        else:
            current = await driver.read(sid)
            await driver.compare_and_set(sid, record, 3600, None if current is None
                                         else current[:8])
        if first:
            print("ready", flush=True)
            first = False

asyncio.run(main())
"""


def check(record: bytes) -> bool:
    digest, body = record[8:40], record[40:]
    return len(record) > 40 and hashlib.sha256(body).digest() == digest


@pytest.mark.slow
@pytest.mark.parametrize("fsync", ["fsync", "no-fsync"])
async def test_sigkilled_writer_never_leaves_a_torn_session(tmp_path: Path, fsync: str) -> None:
    store = tmp_path / "sessions"
    driver = FileDriver(store, ttl=3600)
    ids = [secrets.token_urlsafe(32) for _ in range(IDS)]
    rng = random.Random()
    for _ in range(KILLS):
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WRITER, str(store), fsync, *ids,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None
        assert await asyncio.wait_for(child.stdout.readline(), 60) == b"ready\n"
        await asyncio.sleep(rng.uniform(0.01, 0.15))
        child.send_signal(signal.SIGKILL)
        assert await child.wait() == -signal.SIGKILL

    names = await asyncio.to_thread(os.listdir, store)
    sessions = [n for n in names if n.startswith("sess_")]
    temps = [n for n in names if n.endswith(".tmp")]
    # every file that looks like a session is one of the ids written, and whole
    assert sorted(n.removeprefix("sess_") for n in sessions) == sorted(ids)
    for sid in ids:
        stored = await driver.read(sid)
        assert stored is not None and check(stored), f"torn record for {sid}"
    assert all(re.fullmatch(r"\.sess_[0-9a-f]{16}\.tmp", n) for n in temps)
    print(f"{fsync}: {len(temps)} temp files left behind by {KILLS} kills")

    # leftover temps are collected once old; sessions are not touched
    then = time.time() - TEMP_MAX_AGE - 1
    for name in temps:
        os.utime(store / name, (then, then))
    assert await driver.gc(3600) == 0
    left = await asyncio.to_thread(os.listdir, store)
    assert not [n for n in left if n.endswith(".tmp")]
    for sid in ids:
        stored = await driver.read(sid)
        assert stored is not None and check(stored)
