"""Shared helpers for tests that run one scenario on every store: driver entries for the
built-in drivers, and two server processes sharing one store."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent


def store_entry(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """A driver config entry for *kind*; redis uses the run's own server, a fresh prefix."""
    if kind == "memory":
        return {"driver": "memory", "lifetime": 5}
    if kind == "file":
        return {"driver": "file", "lifetime": 5, "path": str(tmp_path / "sessions")}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"driver": "redis", "lifetime": 5, "url": server.url,
            "prefix": f"t{uuid.uuid4().hex[:8]}:"}


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Wait until *port* accepts connections; fail if *process* exits first."""
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


@contextlib.contextmanager
def two_servers(entry: dict[str, Any], **config: Any) -> Iterator[list[str]]:
    """Two ``tests.concurrency_app`` server processes on one store; their base URLs.

    *config*: more keys of the manager config (``cookie=...``), the same in both.
    """
    config = {"default": "main", "drivers": {"main": entry}, "lottery": [0, 1], **config}
    procs: list[subprocess.Popen[bytes]] = []
    urls = []
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
