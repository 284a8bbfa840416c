"""Shared fixtures: managers on the memory driver, a real redis-server, a fake clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from aiosessmgr import MemoryDriver, SessionEvents, SessionManager

from .redis_server import RedisServer


class FakeClock:
    """A clock the test moves by hand, so expiry is tested without sleeping."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def eventually(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Poll *condition* until it holds; fail naming *what* after *seconds*.

    For something that happens in the background (a scheduled GC, a log line): waits only
    as long as needed, and the deadline is generous so a slow machine does not flake.
    """
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds:g} s")
        await asyncio.sleep(0.001)


def record_events(manager: SessionManager,
                  *kinds: SessionEvents) -> list[tuple[SessionEvents, str]]:
    """The (type, session id) of every event of *kinds* the manager emits, in order."""
    seen: list[tuple[SessionEvents, str]] = []
    for kind in kinds:
        manager.on(kind, lambda info: seen.append((info.type, info.session_id)))
    return seen


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def memory_config() -> dict[str, Any]:
    return {"default": "memory", "drivers": {"memory": {"driver": "memory", "lifetime": 1}},
            "lottery": (0, 100)}


@pytest.fixture
async def manager(memory_config: dict[str, Any]) -> AsyncIterator[SessionManager]:
    mgr = SessionManager(memory_config)
    yield mgr
    await mgr.close()


@pytest.fixture
async def clocked_manager(clock: FakeClock) -> AsyncIterator[SessionManager]:
    """A manager whose 'memory' driver runs on the fake clock (lifetime 1 minute)."""
    mgr = SessionManager({"default": "clocked",
                          "drivers": {"clocked": {"driver": "clocked", "lifetime": 1}},
                          "lottery": (0, 1)})
    mgr.extend("clocked", lambda cfg: MemoryDriver(clock=clock))
    yield mgr
    await mgr.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client for tests that talk to server processes."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole run, on a free port (never the machine's 6379)."""
    server = RedisServer().start()
    yield server
    server.cleanup()
