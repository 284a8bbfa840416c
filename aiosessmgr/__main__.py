"""Command line: ``python -m aiosessmgr demo`` and ``python -m aiosessmgr gc``.

``demo`` serves a page-view counter (file driver in a temporary or given directory,
or ``--driver memory``). ``gc`` collects expired sessions once and prints how many
it removed: the cron alternative to the per-request lottery, e.g. every 10 minutes::

    */10 * * * *  python -m aiosessmgr gc --driver file --path /var/lib/app/sessions --lifetime 120

or ``python -m aiosessmgr gc --config myapp.sessions:manager`` to use the app's own
configuration. A driver whose store expires records by itself (redis, cookie) or whose
store lives in the serving process (memory) has nothing to collect, and ``gc`` says so
(for redis after a PING, so a store that is down still fails the run). ``gc`` exits with
(``GC_EXIT_CODES``, also in ``gc --help``)::

    0  done: every driver collected, or has nothing to collect
    1  a store failed or did not answer in time (nothing listening, no permission)
    2  bad arguments or configuration (the message names the flag)

``demo`` exits 0 when stopped (Ctrl+C, SIGTERM), 1 when it cannot listen on ``--host`` and
``--port`` (one line naming the flag), 2 for bad arguments; it removes the temporary
directory it made for the file driver when it stops, never a ``--path`` given. A driver
flag that means nothing where it is given (``--url`` with the file driver, any of them
with ``gc --config``) is refused, not ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from .config import SessionConfig
from .drivers.base import SessionDriver
from .errors import AiosessmgrError, DriverError
from .manager import SessionManager
from .web import get_session, setup

STORE_ERROR = 1
#: what ``demo`` (and every example) exits with when it cannot listen on --host/--port
LISTEN_ERROR = 1
USAGE_ERROR = 2
#: what ``gc`` exits with (also in ``gc --help``): cron mails the output of a failed run
GC_EXIT_CODES = f"""exit codes:
  0  done: every driver collected, or has nothing to collect
  {STORE_ERROR}  a store failed or did not answer in time (nothing listening, no permission)
  {USAGE_ERROR}  bad arguments or configuration (the message names the flag)"""


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


def _driver_config(args: argparse.Namespace, temporary: str | None = None) -> dict[str, Any]:
    """The manager config the flags describe; *temporary* is the file driver's directory
    when ``--path`` was not given."""
    driver = args.driver or "file"
    # a flag not given leaves the manager's own default (lifetime) or the driver's (url)
    entry: dict[str, Any] = {"driver": driver}
    if args.lifetime is not None:
        entry["lifetime"] = args.lifetime
    for flag in _flags_given(args, ("--driver", *_DRIVER_FLAGS[driver])):
        owners = " or ".join(f"--driver {name}" for name, flags in _DRIVER_FLAGS.items()
                             if flag in flags)
        raise AiosessmgrError(f"{flag} is only for {owners}")
    if driver == "file":
        entry["path"] = args.path or temporary
        if args.no_check_permissions:
            entry["check_permissions"] = False
    if args.url is not None:
        entry["url"] = args.url
    return {"default": driver, "drivers": {driver: entry}}


#: the flags that describe one driver; each command refuses those its driver does not take
_DRIVER_FLAGS: dict[str, tuple[str, ...]] = {
    "file": ("--path", "--no-check-permissions", "--lifetime"),
    "memory": ("--lifetime",),
    "redis": ("--url", "--lifetime"),
}


def _flags_given(args: argparse.Namespace, allowed: Sequence[str] = ()) -> list[str]:
    """The driver flags given on the command line, other than *allowed* (in flag order)."""
    given = {"--driver": args.driver, "--path": args.path, "--url": args.url,
             "--lifetime": args.lifetime, "--no-check-permissions": args.no_check_permissions}
    return [flag for flag, value in given.items() if value not in (None, False)
            and flag not in allowed]


def _explain(exc: AiosessmgrError) -> str:
    """*exc*'s message, with the command line's flag where it names the driver option."""
    text = str(exc)
    if "check_permissions" in text:
        text += " (on the command line: --no-check-permissions)"
    return text


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


def listen_flags(parser: argparse.ArgumentParser, port: int) -> None:
    """Add ``--host`` (default 127.0.0.1) and ``--port`` (default *port*) to *parser*."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=port, help=f"port (default {port})")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return port


def nothing_to_collect(driver: SessionDriver) -> str | None:
    """Why ``gc`` has nothing to collect on *driver*, or None when it may remove records.

    Decided by the driver's class attributes ``process_local`` (memory) and
    ``expires_itself`` (redis, cookie); both False for a custom driver unless it says so.
    """
    if driver.process_local:
        return ("nothing to collect: its sessions live in the memory of the process that "
                "serves them (whose lottery collects them); this process has an empty store")
    if driver.expires_itself:
        return "nothing to collect: the store expires sessions by itself"
    return None


def run_gc(manager: SessionManager) -> int:
    """Collect on every driver of *manager*, a line each; the exit code (GC_EXIT_CODES)."""

    async def collect() -> int:
        code = 0
        try:
            for name in manager.config.drivers:
                try:
                    removed = (await manager.gc(name))[name]
                    why = nothing_to_collect(manager.get_driver(name))
                except DriverError as exc:
                    print(f"python -m aiosessmgr gc: {name}: store error: {exc}",
                          file=sys.stderr)
                    code = STORE_ERROR
                    continue
                print(f"{name}: {why}" if why and not removed
                      else f"{name}: removed {removed} expired sessions")
        finally:
            await manager.close()
        return code

    return asyncio.run(collect())


def serve(app: web.Application, host: str, port: int, prog: str) -> int:
    """``web.run_app`` on *host*:*port*; a port in use (or an address that cannot be
    bound) is one line on stderr naming the flag, and LISTEN_ERROR (1), not a traceback.

    The "Serving on" line names the address aiohttp bound, so ``--port 0`` shows the port
    the system chose and an IPv6 host is in brackets (``http://[::1]:8080/``).
    """
    def announce(message: str) -> None:
        # aiohttp's own line: "======== Running on http://host:port, ... ========"
        found = re.search(r"Running on (.+?) =+", message)
        urls = found.group(1).split(", ") if found else [f"http://{_address(host, port)}"]
        print(f"Serving on {', '.join(url + '/' for url in urls)} (Ctrl+C to stop)",
              flush=True)

    try:
        web.run_app(app, host=host, port=port, print=announce)
    except OSError as exc:
        where = _address(host, port)
        if exc.errno == errno.EADDRINUSE:
            print(f"{prog}: error: {where} is in use (another server?); choose "
                  "another port with --port", file=sys.stderr)
        else:
            print(f"{prog}: error: cannot listen on {where} ({exc.strerror or exc}); "
                  "check --host and --port", file=sys.stderr)
        return LISTEN_ERROR
    return 0


def _address(host: str, port: int) -> str:
    """*host*:*port* as in a URL: an IPv6 address in brackets (RFC 3986, section 3.2.2)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m aiosessmgr")
    commands = parser.add_subparsers(dest="command", required=True)

    def driver_options(cmd: argparse.ArgumentParser, default: str) -> None:
        # no argparse defaults: a flag given where it means nothing is refused, not ignored
        cmd.add_argument("--driver", choices=tuple(_DRIVER_FLAGS),
                         help=f"session driver (default {default})")
        cmd.add_argument("--path", help="session directory of the file driver")
        cmd.add_argument("--no-check-permissions", action="store_true",
                         help="file driver: use a session directory that other users could "
                              "read or replace (the driver's check_permissions: false)")
        cmd.add_argument("--url", help="redis driver: its URL (default: the driver's, "
                                       "127.0.0.1:6379 db 0)")
        cmd.add_argument("--lifetime", type=_lifetime,
                         help=f"idle lifetime in minutes (default {SessionConfig().lifetime:g})")

    demo = commands.add_parser("demo", help="serve a page-view counter")
    driver_options(demo, "file")
    demo.set_defaults(command_parser=demo)
    listen_flags(demo, 8080)

    gc = commands.add_parser(
        "gc", help="remove expired sessions once (for cron)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=GC_EXIT_CODES,
        description="Remove expired sessions once and print how many: the cron alternative "
                    "to the per-request lottery (set lottery to (0, 1) in the app then). "
                    "memory, redis and cookie drivers have nothing to collect and say so.")
    driver_options(gc, "file")
    gc.set_defaults(command_parser=gc)
    gc.add_argument("--config", help="module:attribute naming a SessionManager (or factory)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see GC_EXIT_CODES; demo: 1 when it
    cannot listen, 2 for bad arguments)."""
    parser = _parser()
    args = parser.parse_args(argv)
    command: argparse.ArgumentParser = args.command_parser  # its errors print its usage
    if args.command == "gc":
        return _gc_command(args, command)
    temporary = None if args.path or args.driver not in (None, "file") else \
        tempfile.mkdtemp(prefix="aiosessmgr-demo-")
    try:
        try:
            manager = SessionManager(_driver_config(args, temporary))
        except AiosessmgrError as exc:
            command.error(_explain(exc))
        where = manager.config.drivers[manager.default].options.get("path")
        print(f"aiosessmgr demo on the {manager.default} driver"
              + (f", sessions in {where}" if where else ""), flush=True)
        return serve(demo_app(manager), args.host, args.port, "python -m aiosessmgr demo")
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)


def _gc_command(args: argparse.Namespace, gc: argparse.ArgumentParser) -> int:
    try:
        if args.config:
            for flag in _flags_given(args):
                gc.error(f"--config and {flag} do not go together: the config describes "
                         "the drivers")
            manager = _load_manager(args.config)
        else:
            if args.driver in (None, "file"):
                if not args.path:
                    gc.error("--driver file needs --path DIR")
                if not os.path.isdir(args.path):
                    # gc never creates a directory: a typo must not look like "0 removed"
                    gc.error(f"--path {args.path!r} is not a directory")
            manager = SessionManager(_driver_config(args))
    except AiosessmgrError as exc:
        gc.error(_explain(exc))
    return run_gc(manager)


if __name__ == "__main__":
    sys.exit(main())
