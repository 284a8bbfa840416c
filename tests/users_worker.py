"""One worker process of the cross-process user-session tests (tests/test_users_processes.py).

Every signal is a line on a pipe, so nothing depends on timing:

``python -m tests.users_worker inflight CONFIG_JSON USER PLAN_JSON``: loads every session of
``PLAN_JSON["ids"]`` (requests in flight, each still logged in as USER), prints ``ready``,
waits for a line on stdin (the test ends the user's sessions meanwhile), then finishes
all those requests at once, session ``i`` as ``PLAN_JSON["plans"][i % len(plans)]`` says
(:data:`PLANS`). Prints one JSON line: per session its plan, final id, whether a write of
it landed, its state and user, and the handle of the fresh session a ``save-login`` made.

``python -m tests.users_worker logins CONFIG_JSON USER PLAN_JSON``: prints ``ready``, waits
for a line, then runs ``PLAN_JSON["tasks"]`` tasks, each logging new sessions in as USER in
a loop (and moving or saving some of them again from a second "request"); prints
``enough`` once ``PLAN_JSON["enough"]`` logins were saved, and stops at the next line on
stdin (or end of input). Prints one JSON line:
``{"logins": n, "sessions": {handle: last id known stored}, "failures": [...]}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, Final

from aiosessmgr import SessionManager, SessionStore, State

#: how a request in flight finishes, after the put and increment every one of them does
PLANS: Final = {
    "save": "save",
    "regenerate": "regenerate(), save",
    "login": "login(user), save: the end came first, so a fresh session",
    "save-login": "save, then login(user), save: a login after the end (a fresh session)",
    "save-regenerate": "save, then regenerate(), save",
}
#: seconds to wait for the test's next line before giving up (no test waits this long)
LINE_LIMIT: Final = 300
#: logins per task at most, should the stop line never come
MAX_ROUNDS: Final = 5000


async def next_line() -> str:
    """The test's next line on stdin ("" at end of input)."""
    async with asyncio.timeout(LINE_LIMIT):
        return await asyncio.to_thread(sys.stdin.readline)


async def finish(session: SessionStore, plan: str, user: str, number: int) -> None:
    """Finish one request in flight as *plan* says (see PLANS)."""
    session.put(f"late-{number}", True)
    session.increment("n")
    if plan == "regenerate":
        await session.regenerate()
    elif plan == "login":
        await session.login(user)
    await session.save()
    if plan == "save-login":
        await session.login(user)
        await session.save()
    elif plan == "save-regenerate":
        await session.regenerate()
        await session.save()


async def inflight(manager: SessionManager, user: str, ids: list[str],
                   plans: list[str]) -> dict[str, Any]:
    sessions = [await manager.load(sid) for sid in ids]
    failures = [f"session {n} did not load logged in" for n, s in enumerate(sessions)
                if s.new or s.user_id != user]
    print("ready", flush=True)
    await next_line()  # the go signal: the user's sessions have ended by now

    async def one(number: int, session: SessionStore) -> dict[str, Any]:
        plan = plans[number % len(plans)]
        try:
            await finish(session, plan, user, number)
        except Exception as exc:  # the test expects none
            failures.append(f"session {number} ({plan}): {type(exc).__name__}: {exc}")
        stored = session.state is State.STORED
        return {"plan": plan, "id": session.id, "written": session.written,
                "state": session.state.value, "user": session.user_id,
                "handle": session.handle if stored and session.user_id else None}

    results = await asyncio.gather(*(one(n, s) for n, s in enumerate(sessions)))
    return {"sessions": results, "failures": failures}


async def logins(manager: SessionManager, user: str, tasks: int,
                 enough: int) -> dict[str, Any]:
    print("ready", flush=True)
    await next_line()  # go
    stop = asyncio.Event()
    known: dict[str, str] = {}  # handle -> the id it was last stored under (as seen here)
    failures: list[str] = []
    count = 0

    async def watch() -> None:
        await next_line()
        stop.set()

    async def task(number: int) -> None:
        nonlocal count
        for round_ in range(MAX_ROUNDS):
            if stop.is_set():
                return
            try:
                session = await manager.driver()
                session.put("task", number)
                await session.login(user)
                await session.save()
                count += 1
                if count == enough:
                    print("enough", flush=True)
                if session.state is State.STORED:
                    known[session.handle] = session.id
                if round_ % 3 == 0:
                    continue
                # a second request on it, in flight while the test ends sessions
                again = await manager.load(session.id)
                if again.new:
                    continue  # ended already
                again.increment("n")
                if round_ % 3 == 1:
                    await again.regenerate()  # moving while being ended
                await again.save()
                if again.state is State.STORED:
                    known[again.handle] = again.id
            except Exception as exc:  # the test expects none
                failures.append(f"task {number} round {round_}: {type(exc).__name__}: {exc}")
                print("failed", flush=True)  # the test waits for "enough": show it this
                return

    watcher = asyncio.ensure_future(watch())
    await asyncio.gather(*(task(n) for n in range(tasks)))
    await watcher
    return {"logins": count, "sessions": known, "failures": failures}


async def main(mode: str, config: dict[str, Any], user: str, arg: str) -> dict[str, Any]:
    manager = SessionManager(config)
    try:
        if mode == "inflight":
            plan = json.loads(arg)
            return await inflight(manager, user, plan["ids"], plan["plans"])
        plan = json.loads(arg)
        return await logins(manager, user, plan["tasks"], plan["enough"])
    finally:
        await manager.close()


if __name__ == "__main__":
    mode, config, user, arg = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    print(json.dumps(asyncio.run(main(mode, config, user, arg))), flush=True)
