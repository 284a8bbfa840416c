"""Ending a user's sessions across OS processes sharing one store (a directory, one Redis).

The claims (README "Sessions of a user", "Ending is final"): ending a user's sessions
while other processes have requests in flight on them resurrects none of them (their
saves' compare-and-set finds no record), and logins racing ``end_user_sessions`` leave
the index agreeing with the records. The workers (``tests.users_worker``) are separate
processes; every step waits for an explicit signal on a pipe, never for time to pass.

What "agreeing" is checked against: a scan of the store itself (every record file read
through the driver; every session key of the prefix SCANned from Redis), each record
decoded with the manager's codec.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from aiosessmgr import SessionManager, record
from aiosessmgr.drivers.base import SupportsUserIndex
from aiosessmgr.drivers.file import FileDriver
from aiosessmgr.drivers.redis import RedisDriver
from aiosessmgr.ids import is_valid_session_id

from .stores import ROOT, store_entry

pytestmark = pytest.mark.slow

#: sessions of the user that the in-flight workers hold
SESSIONS = 20
#: seconds to wait for a worker's signal or its end (generous: never a timed assertion)
WAIT = 120
#: logins each login worker saves before the test stops ending sessions and stops it
LOGINS = 100
#: concurrent login tasks in each login worker
LOGIN_TASKS = 4


@pytest.fixture(params=["file", pytest.param("redis", marks=pytest.mark.redis)])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The config every process uses: one shared store, encrypted records."""
    entry = store_entry(request.param, request, tmp_path)
    if entry["driver"] == "file":
        entry["lock_timeout"] = WAIT  # three processes on one user's index file
    else:
        entry["socket_timeout"] = 30
    return {"default": "main", "drivers": {"main": entry}, "lottery": [0, 1],
            "encryption": {"enabled": True, "key": secrets.token_hex(32)}}


@pytest.fixture
async def manager_a(config: dict[str, Any]) -> AsyncIterator[SessionManager]:
    """Process A's manager (this one)."""
    mgr = SessionManager(config)
    yield mgr
    await mgr.close()


@pytest.fixture
def user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


# -- the store as it is --------------------------------------------------------------------


def _record_files(path: str, prefix: str) -> list[str]:
    """Ids of every session file in a file driver's directory."""
    with os.scandir(path) as entries:
        return [entry.name[len(prefix):] for entry in entries
                if entry.name.startswith(prefix) and entry.is_file()
                and is_valid_session_id(entry.name[len(prefix):])]


async def stored_records(manager: SessionManager, config: dict[str, Any]
                         ) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Every record in the store: id -> (data, meta), decoded with the manager's codec."""
    driver = manager.get_driver()
    raws: dict[str, bytes | None] = {}
    if isinstance(driver, FileDriver):
        for sid in await asyncio.to_thread(_record_files, driver.path, driver.prefix):
            raws[sid] = await driver.read(sid)
    else:
        assert isinstance(driver, RedisDriver)
        entry = config["drivers"]["main"]
        client = Redis.from_url(entry["url"], socket_timeout=30, socket_connect_timeout=30)
        try:
            keys = [key.decode() async for key in
                    client.scan_iter(match=f"{driver.prefix}{{*}}", count=1000)]
            for key in keys:
                sid = key[len(driver.prefix) + 1:-1]
                assert is_valid_session_id(sid) and driver.key(sid) == key, key
                raw = await client.get(key)
                assert raw is None or isinstance(raw, bytes)
                raws[sid] = raw
        finally:
            await client.aclose()
    decoded = {}
    for sid, raw in raws.items():
        if raw is not None:  # expired or removed between the listing and the read
            data, meta, _ = record.decode(manager.codec, sid, raw)
            decoded[sid] = (data, meta)
    return decoded


def bound(records: dict[str, tuple[dict[str, Any], dict[str, Any]]],
          user: str) -> dict[str, str]:
    """The records bound to *user*: handle -> id (a handle names one record at most)."""
    found: dict[str, str] = {}
    for sid, (_, meta) in records.items():
        if meta.get("u") == user:
            assert meta["h"] not in found, "two records of one handle"
            found[meta["h"]] = sid
    return found


def raw_index(manager: SessionManager) -> SupportsUserIndex:
    driver = manager.get_driver()
    assert isinstance(driver, SupportsUserIndex)
    return driver


async def assert_index_agrees(manager: SessionManager, config: dict[str, Any],
                              user: str) -> dict[str, str]:
    """The index and a listing agree with the records; return the live ones (handle -> id).

    Before a listing, the raw index may hold stale entries (their record gone or no
    longer that session), never a wrong one; after it, exactly the live records.
    """
    index = raw_index(manager)
    before = await index.user_session_index(user)
    records = await stored_records(manager, config)
    live = bound(records, user)
    for handle, sid in before.items():
        if sid in records and records[sid][1].get("u") == user:
            assert records[sid][1].get("h") == handle, "an entry names another session"
    assert {h: s for h, s in before.items() if live.get(h) == s} == live, \
        "a live session is missing from the index"
    listed = await manager.user_sessions(user)
    assert sorted(info.handle for info in listed) == sorted(live)
    assert await index.user_session_index(user) == live
    return live


# -- the worker processes ------------------------------------------------------------------


async def spawn(mode: str, config: dict[str, Any], user: str,
                arg: str) -> asyncio.subprocess.Process:
    """A ``tests.users_worker`` process that has said ``ready``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.users_worker", mode, json.dumps(config), user, arg,
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    await expect(proc, b"ready\n")
    return proc


async def expect(proc: asyncio.subprocess.Process, line: bytes) -> None:
    """Wait for the worker's next line; fail with its stderr if it is another."""
    assert proc.stdout is not None
    got = await asyncio.wait_for(proc.stdout.readline(), WAIT)
    if got != line:
        proc.kill()
        _, err = await asyncio.wait_for(proc.communicate(), WAIT)
        pytest.fail(f"worker said {got!r}, not {line!r}: {err.decode()}")


async def signal(proc: asyncio.subprocess.Process, line: bytes) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line)
    await proc.stdin.drain()


async def results(procs: list[asyncio.subprocess.Process],
                  last: bytes = b"") -> list[dict[str, Any]]:
    """Send *last*, close stdin and read each worker's JSON report; it must exit 0."""
    outputs = await asyncio.wait_for(
        asyncio.gather(*(proc.communicate(last) for proc in procs)), 5 * WAIT)
    reports = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        report: dict[str, Any] = json.loads(out.decode().splitlines()[-1])
        assert report["failures"] == [], report["failures"]
        reports.append(report)
    return reports


async def stop_all(procs: list[asyncio.subprocess.Process]) -> None:
    """Kill workers a failed test left running."""
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- 1. requests in flight on the ended sessions, in two other processes -------------------


IN_FLIGHT = ["save", "regenerate", "login", "save-login"]
#: plans whose login, finding the record ended, starts a fresh (empty) logged-in session
FRESH = ("login", "save-login")


@pytest.mark.parametrize("plans", [
    pytest.param(IN_FLIGHT, id="in-flight"),
    # regenerate() after a save found the record ended: a new, empty session, never the
    # ended one back under a new id (its data, user and handle)
    pytest.param(["save-regenerate"], id="regenerate-after-ended-save"),
])
async def test_ending_a_users_sessions_with_requests_in_flight_resurrects_none(
        manager_a: SessionManager, config: dict[str, Any], user: str,
        plans: list[str]) -> None:
    manager = manager_a
    sessions = []
    for n in range(SESSIONS):
        session = await manager.driver()
        session.put("n", n)
        session.put("secret", f"of session {n}")
        await session.login(user)
        await session.save()
        sessions.append(session)
    ended_ids = [s.id for s in sessions]
    ended_handles = {s.handle for s in sessions}
    assert len(await manager.user_sessions(user)) == SESSIONS

    arg = json.dumps({"ids": ended_ids, "plans": plans})
    procs: list[asyncio.subprocess.Process] = []
    try:
        for _ in range(2):  # B and C: each has loaded all of them when it says ready
            procs.append(await spawn("inflight", config, user, arg))
        assert await manager.end_user_sessions(user) == SESSIONS
        reports = await results(procs, b"go\n")
    finally:
        await stop_all(procs)

    finished = [s for report in reports for s in report["sessions"]]
    assert len(finished) == 2 * SESSIONS
    # logins after the end start fresh sessions: allowed, and the only ones bound to the user
    # (of two processes logging in one loaded session, only the first to save stands)
    fresh = {s["handle"]: s["id"] for s in finished if s["plan"] in FRESH and s["handle"]}
    records = await stored_records(manager, config)
    # regenerate() after a save found the record ended starts a new, empty session
    anew = {s["id"] for s in finished if s["plan"] == "save-regenerate"}
    gone = set(ended_ids) | {s["id"] for s in finished
                             if s["plan"] not in (*FRESH, "save-regenerate")}
    revived = len(gone & records.keys())  # counts, not ids: ids are credentials
    assert revived == 0, "ended sessions were written back"
    assert all(records[sid][0] == {} and "u" not in records[sid][1]
               for sid in anew if sid in records), "an ended session came back"
    outlived = sum(fresh.get(h) != sid for h, sid in bound(records, user).items())
    assert outlived == 0, "sessions bound to the user outlived the end"
    # a fresh login holds at most what its own request wrote (the worker's put and
    # increment; a save-login's first save dropped them), nothing of the ended session
    assert all(records[sid][0].get("n") in (None, 1) and "secret" not in records[sid][0]
               for sid in fresh.values() if sid in records), \
        "a fresh login carries data of an ended session"
    assert await assert_index_agrees(manager, config, user) == fresh

    winners = [0] * SESSIONS
    for n, s in enumerate(finished):  # what the workers saw (B's sessions, then C's)
        if s["plan"] == "login" and s["state"] == "ended":
            assert not s["written"], "the second login of one session wrote"
        elif s["plan"] in FRESH:
            assert s["state"] == "stored" and s["written"] and s["user"] == user, s["state"]
            winners[n % SESSIONS] += 1
        elif s["plan"] == "save-regenerate":
            assert s["user"] is None, "regenerate() kept the ended session's user"
        else:  # every write of an ended session was refused
            assert not s["written"] and s["state"] == "ended", \
                f"{s['plan']}: written {s['written']}, {s['state']}"
    # "login": the two processes' logins of one loaded session contend, one stands;
    # "save-login": each save found the record ended first, so each login is a new visit
    assert winners == [{"login": 1, "save-login": 2}.get(plans[n % len(plans)], 0)
                       for n in range(SESSIONS)]
    assert len(fresh) == sum(winners)
    assert not fresh.keys() & ended_handles
    assert await manager.end_user_sessions(user) == len(fresh)
    assert bound(await stored_records(manager, config), user) == {}


# -- 2. logins in two processes racing end_user_sessions in a third ------------------------


async def test_logins_racing_end_user_sessions_leave_index_and_records_agreeing(
        manager_a: SessionManager, config: dict[str, Any], user: str) -> None:
    manager = manager_a
    procs: list[asyncio.subprocess.Process] = []
    ended = calls = 0
    arg = json.dumps({"tasks": LOGIN_TASKS, "enough": LOGINS})
    try:
        for _ in range(2):  # B and C
            procs.append(await spawn("logins", config, user, arg))
        enough = [asyncio.ensure_future(expect(proc, b"enough\n")) for proc in procs]
        for proc in procs:
            await signal(proc, b"go\n")
        while not all(e.done() for e in enough):  # ends all along B's and C's logins
            ended += await manager.end_user_sessions(user)
            calls += 1
            if calls % 3 == 0:  # a listing repairs the index while logins write it
                await manager.user_sessions(user)
        await asyncio.gather(*enough)
        reports = await results(procs, b"stop\n")
    finally:
        await stop_all(procs)

    logins = [report["logins"] for report in reports]
    assert ended > 0 and all(logins)
    live = await assert_index_agrees(manager, config, user)
    print(f"{ended} sessions ended by {calls} calls, racing {logins} logins; {len(live)} live")
    known = {sid for report in reports for sid in report["sessions"].values()}
    assert set(live.values()) <= known, "a bound record no worker wrote"
    # and what is listed is all there is: ending it leaves no record bound to the user
    assert await manager.end_user_sessions(user) == len(live)
    assert bound(await stored_records(manager, config), user) == {}
    assert await raw_index(manager).user_session_index(user) == {}
