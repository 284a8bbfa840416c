"""Command line: ``python -m aiosessmgr demo`` and ``python -m aiosessmgr gc``.

``demo`` serves a page-view counter (file driver in a temporary or given directory,
or ``--driver memory``). ``gc`` collects expired sessions once and prints how many
it removed: the cron alternative to the per-request lottery, e.g. every 10 minutes::

    */10 * * * *  python -m aiosessmgr gc --driver file --path /var/lib/app/sessions --lifetime 120

or ``python -m aiosessmgr gc --config myapp.sessions:manager`` to use the app's own
configuration. Exit codes: 0 done, 1 the store failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from .errors import AiosessmgrError, DriverError
from .manager import SessionManager
from .web import get_session, setup

STORE_ERROR = 1
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
        if args.no_check_permissions:
            entry["check_permissions"] = False
    elif args.path:
        raise AiosessmgrError("--path is only for --driver file")
    elif args.no_check_permissions:
        raise AiosessmgrError("--no-check-permissions is only for --driver file")
    if args.driver == "redis":
        entry["url"] = args.url
    return {"default": args.driver, "drivers": {args.driver: entry}}


def _load_manager(spec: str) -> SessionManager:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise AiosessmgrError(f"--config must look like module:attribute, got {spec!r}")
    try:
        value = getattr(importlib.import_module(module_name), attr)
        if callable(value) and not isinstance(value, SessionManager):
            value = value()
    except AiosessmgrError:
        raise
    except Exception as exc:
        # whatever importing user code raises, the answer is "bad --config"
        raise AiosessmgrError(
            f"cannot load --config {spec!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(value, SessionManager):
        raise AiosessmgrError(f"--config {spec!r} is not a SessionManager")
    return value


def _lifetime(text: str) -> float:
    try:
        minutes = float(text)
    except ValueError:
        minutes = math.nan
    if not (math.isfinite(minutes) and minutes > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes, got {text!r}")
    return minutes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m aiosessmgr")
    commands = parser.add_subparsers(dest="command", required=True)

    def driver_options(cmd: argparse.ArgumentParser, default: str) -> None:
        cmd.add_argument("--driver", choices=("file", "memory", "redis"), default=default)
        cmd.add_argument("--path", help="session directory of the file driver")
        cmd.add_argument("--no-check-permissions", action="store_true",
                         help="file driver: use a session directory that other users could "
                              "read or replace (the driver's check_permissions: false)")
        cmd.add_argument("--url", default="redis://127.0.0.1:6379/0", help="redis URL")
        cmd.add_argument("--lifetime", type=_lifetime, default=120,
                         help="idle lifetime in minutes (default 120)")

    demo = commands.add_parser("demo", help="serve a page-view counter")
    driver_options(demo, "file")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)

    gc = commands.add_parser(
        "gc", help="remove expired sessions once (for cron)",
        description="Remove expired sessions once and print how many: the cron alternative "
                    "to the per-request lottery (set lottery to (0, 1) in the app then).")
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
                if args.path:
                    parser.error("--config and --path do not go together: the config names "
                                 "the directory")
                manager = _load_manager(args.config)
            else:
                if args.driver == "file":
                    if not args.path:
                        parser.error("gc --driver file needs --path DIR")
                    if not os.path.isdir(args.path):
                        # gc never creates a directory: a typo must not look like "0 removed"
                        parser.error(f"--path {args.path!r} is not a directory")
                manager = SessionManager(_driver_config(args))
            try:
                removed = asyncio.run(_gc(manager))
            except DriverError as exc:
                print(f"python -m aiosessmgr gc: store error: {exc}", file=sys.stderr)
                return STORE_ERROR
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
