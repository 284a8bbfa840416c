"""One worker process of the save-contention test (tests/test_session.py).

``python -m tests.contention_worker CONFIG_JSON SESSION_ID WORKER TASKS ROUNDS``: prints
``ready`` and waits for a line on stdin (so that every worker starts together), then runs TASKS
concurrent tasks, each loading the session ROUNDS times, incrementing ``n``, adding a
key of its own and saving. Prints ``{"saves": ..., "failures": [...]}`` as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiosessmgr import SessionManager


async def main(config: dict[str, object], sid: str, worker: int, tasks: int,
               rounds: int) -> dict[str, object]:
    manager = SessionManager(config)
    failures: list[str] = []
    saves = 0

    async def task(number: int) -> None:
        nonlocal saves
        for round_ in range(rounds):
            session = await manager.load(sid)
            assert not session.new, "the session must exist"
            session.increment("n")
            session[f"w{worker}-t{number}-r{round_}"] = True
            try:
                await session.save()
            except Exception as exc:  # the test counts these: it expects none
                failures.append(f"{type(exc).__name__}: {exc}")
            else:
                saves += 1

    print("ready", flush=True)  # the test sends the go signal once every worker is ready
    await asyncio.to_thread(sys.stdin.readline)  # the go signal
    try:
        await asyncio.gather(*(task(i) for i in range(tasks)))
    finally:
        await manager.close()
    return {"saves": saves, "failures": failures}


if __name__ == "__main__":
    config, sid = json.loads(sys.argv[1]), sys.argv[2]
    worker, tasks, rounds = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    print(json.dumps(asyncio.run(main(config, sid, worker, tasks, rounds))))
