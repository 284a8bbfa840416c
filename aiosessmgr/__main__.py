"""Command line: ``python -m aiosessmgr demo`` and ``python -m aiosessmgr gc``.

``demo`` serves a page-view counter (file driver in a temporary or given directory,
or ``--driver memory``). ``gc`` collects expired sessions once and prints how many
it removed: the cron alternative to the per-request lottery.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from .errors import AiosessmgrError
from .manager import SessionManager
from .web import get_session, setup

USAGE_ERROR = 2


def demo_app(manager: SessionManager) -> web.Application:
    """The demo: a page that counts your visits, kept in your session."""

    async def index(request: web.Request) -> web.Response:
        session = await get_session(request)
        visits = session.increment("visits")
        return web.Response(text=f"Visits: {visits}\nSession driver: {manager.default}\n")

    async def reset(request: web.Request) -> web.Response:
        session = await get_session(request)
        await session.invalidate()
        raise web.HTTPFound("/")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/reset", reset)
    setup(app, manager)
    return app


def _driver_config(args: argparse.Namespace) -> dict[str, Any]:
    entry: dict[str, Any] = {"driver": args.driver, "lifetime": args.lifetime}
    if args.driver == "file":
        entry["path"] = args.path or tempfile.mkdtemp(prefix="aiosessmgr-")
    elif args.path:
        raise AiosessmgrError("--path is only for --driver file")
    if args.driver == "redis":
        entry["url"] = args.url
    return {"default": args.driver, "drivers": {args.driver: entry}}


def _load_manager(spec: str) -> SessionManager:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise AiosessmgrError(f"--config must look like module:attribute, got {spec!r}")
    try:
        value = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise AiosessmgrError(f"cannot load --config {spec!r}: {exc}") from exc
    if callable(value) and not isinstance(value, SessionManager):
        value = value()
    if not isinstance(value, SessionManager):
        raise AiosessmgrError(f"--config {spec!r} is not a SessionManager")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m aiosessmgr")
    commands = parser.add_subparsers(dest="command", required=True)

    def driver_options(cmd: argparse.ArgumentParser, default: str) -> None:
        cmd.add_argument("--driver", choices=("file", "memory", "redis"), default=default)
        cmd.add_argument("--path", help="session directory of the file driver")
        cmd.add_argument("--url", default="redis://127.0.0.1:6379/0", help="redis URL")
        cmd.add_argument("--lifetime", type=float, default=120,
                         help="idle lifetime in minutes (default 120)")

    demo = commands.add_parser("demo", help="serve a page-view counter")
    driver_options(demo, "file")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)

    gc = commands.add_parser("gc", help="remove expired sessions once (for cron)")
    driver_options(gc, "file")
    gc.add_argument("--config", help="module:attribute naming a SessionManager (or factory)")
    return parser


async def _gc(manager: SessionManager) -> dict[str, int]:
    try:
        return await manager.gc()
    finally:
        await manager.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for bad arguments)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "gc":
            if args.config:
                manager = _load_manager(args.config)
            else:
                if args.driver == "file" and not args.path:
                    parser.error("gc --driver file needs --path DIR")
                manager = SessionManager(_driver_config(args))
            removed = asyncio.run(_gc(manager))
            for name, count in removed.items():
                print(f"{name}: removed {count} expired sessions")
            return 0
        manager = SessionManager(_driver_config(args))
    except AiosessmgrError as exc:
        print(f"python -m aiosessmgr {args.command}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    where = manager.config.drivers[manager.default].options.get("path")
    print(f"aiosessmgr demo on the {manager.default} driver"
          + (f", sessions in {where}" if where else ""), flush=True)
    web.run_app(demo_app(manager), host=args.host, port=args.port,
                print=lambda _: print(f"Serving on http://{args.host}:{args.port}/ "
                                      "(Ctrl+C to stop)", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
