"""No lost updates across two OS processes sharing one store (file directory, Redis)."""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
COOKIE = "aiosessmgr_session"


@pytest.fixture(params=["file", "redis"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "file":
        entry: dict[str, Any] = {"driver": "file", "path": str(tmp_path / "shared")}
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        entry = {"driver": "redis", "url": server.url, "prefix": f"p{uuid.uuid4().hex[:8]}:"}
    return {"default": "main", "drivers": {"main": {**entry, "lifetime": 5}},
            "lottery": [0, 1]}


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"server exited: {err}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


@pytest.fixture
def servers(config: dict[str, Any]) -> Iterator[list[str]]:
    """Two server processes on one store; yields their base URLs."""
    procs, urls = [], []
    try:
        for _ in range(2):
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.concurrency_app", str(port), json.dumps(config)],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            procs.append(proc)
            wait_for_port(port, proc)
            urls.append(f"http://127.0.0.1:{port}")
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
            if proc.stderr:
                proc.stderr.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def start_session(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/set?key=first") as response:
        assert response.status == 200
        return response.cookies[COOKIE].value


async def fan_out(http: aiohttp.ClientSession, urls: list[str], sid: str,
                  paths: list[str]) -> None:
    async def one(i: int, path: str) -> int:
        async with http.get(f"{urls[i % 2]}{path}", cookies={COOKIE: sid}) as response:
            return response.status

    statuses = await asyncio.gather(*(one(i, p) for i, p in enumerate(paths)))
    assert statuses == [200] * len(paths)


async def dump(http: aiohttp.ClientSession, url: str, sid: str) -> dict[str, Any]:
    async with http.get(f"{url}/dump", cookies={COOKIE: sid}) as response:
        data: dict[str, Any] = ast.literal_eval(await response.text())
        return data


async def test_two_processes_lose_nothing(servers: list[str],
                                          http: aiohttp.ClientSession) -> None:
    sid = await start_session(http, servers[0])
    await fan_out(http, servers, sid, [f"/set?key=k{i}" for i in range(100)])
    await fan_out(http, servers, sid, ["/incr"] * 100)
    await fan_out(http, servers, sid, [f"/push?i={i}" for i in range(50)])
    data = await dump(http, servers[1], sid)
    assert all(data[f"k{i}"] for i in range(100))
    assert data["n"] == 100
    assert sorted(data["items"]) == list(range(50))
    assert len(data) == 103  # first, k0..k99, n, items
