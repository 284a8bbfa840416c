"""Shared helpers for the benchmark scripts: setup facts, Markdown tables, JSON results."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
#: where ``--plot`` draws by default: git-ignored, unlike the charts in RESULTS that the README
#: and the docs show (only ``--update-readme-images`` rewrites those)
PLOTS = RESULTS / "plots"


def help_text(doc: str | None) -> str:
    """A module docstring as plain text for ``--help``: no reST literals, roles or ``::``."""
    text = re.sub(r":[a-z]+:`([^`]*)`", r"\1", doc or "")
    text = re.sub(r"``(.+?)``", r"\1", text, flags=re.S)
    text = re.sub(r"(?m)^\s*::\s*$\n?", "", text)  # a paragraph of its own: dropped
    text = re.sub(r"(?m)(\S)\s*::$", r"\1:", text)  # "Example::" -> "Example:"
    return text.strip() + "\n"


def cli_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose description is *doc* as plain text, its layout kept."""
    return argparse.ArgumentParser(prog=prog, description=help_text(doc),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_chart_arguments(parser: argparse.ArgumentParser) -> None:
    """--plot, --out DIR and --update-readme-images (see chart_path)."""
    parser.add_argument("--plot", action="store_true",
                        help=f"also draw PNG charts (matplotlib, from the bench extra), into "
                             f"--out (default {PLOTS.relative_to(RESULTS.parent.parent)}/, "
                             f"git-ignored)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR", type=Path,
                       help="directory for the --plot charts (made if missing)")
    where.add_argument("--update-readme-images", action="store_true",
                       help=f"draw the charts over the tracked images the README and the docs "
                            f"show, in {RESULTS.relative_to(RESULTS.parent.parent)}/ "
                            f"(implies --plot)")


def chart_path(name: str, args: argparse.Namespace) -> Path | None:
    """Where the chart *name* goes for the parsed *args*: None without --plot; the tracked
    ``RESULTS/<name>.png`` only with --update-readme-images; else ``<--out or PLOTS>/<name>.png``.
    """
    if args.update_readme_images:
        return RESULTS / f"{name}.png"
    if not args.plot:
        return None
    out: Path = args.out if args.out is not None else PLOTS
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{name}.png"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def setup_line(**facts: Any) -> str:
    """One line stating the benchmark's setup (sizes, concurrency, duration, CPUs)."""
    info = {**facts, "cpus": os.cpu_count(), "python": platform.python_version()}
    return "Setup: " + ", ".join(f"{k}={v}" for k, v in info.items())


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats get sensible precision."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` with the machine facts added."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def progress(message: str) -> None:
    """Show progress of a long run on stderr (tables go to stdout)."""
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Wait until *port* accepts connections; fail if *process* dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s; always reaped."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def pinned(command: Sequence[str], cpus: Sequence[int] | None) -> list[str]:
    """*command* run on *cpus* only (``taskset -c``, threads included); as is without cpus
    or without taskset on PATH."""
    taskset = shutil.which("taskset")
    if not cpus or taskset is None:
        return list(command)
    return [taskset, "-c", ",".join(map(str, cpus)), *command]


@dataclass(frozen=True)
class RedisProcess:
    """A running throwaway redis-server: its URL, version and process id."""

    url: str
    version: str
    pid: int


@contextlib.contextmanager
def redis_process(cpus: Sequence[int] | None = None) -> Iterator[RedisProcess]:
    """A throwaway redis-server on a free loopback port, on *cpus* if given (see pinned).

    Raises SystemExit if redis-server is not installed.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: apt-get install redis-server")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             check=True).stdout.split("v=")[1].split()[0]
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="aiosessmgr-bench-redis-")
    process = subprocess.Popen(
        pinned([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", workdir], cpus),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        yield RedisProcess(f"redis://127.0.0.1:{port}/0", version, process.pid)
    finally:
        stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, str]]:
    """A throwaway redis-server on a free loopback port: yields (url, version)."""
    with redis_process() as redis:
        yield redis.url, redis.version


def session_handlers() -> dict[str, Any]:
    """The handlers every aiosessmgr benchmark app serves, by path: ``/login`` (stores a
    user and a counter), ``/read`` (reads one value), ``/write`` (increments the counter)."""
    from aiohttp import web

    import aiosessmgr

    async def login(request: web.Request) -> web.Response:
        session = await aiosessmgr.get_session(request)
        session.put({"user": "ann", "n": 0})
        return web.Response(text="ok")

    async def read(request: web.Request) -> web.Response:
        session = await aiosessmgr.get_session(request)
        return web.Response(text=f"user={session.get('user')}")

    async def write(request: web.Request) -> web.Response:
        session = await aiosessmgr.get_session(request)
        return web.Response(text=f"n={session.increment('n')}")

    return {"/login": login, "/read": read, "/write": write}
