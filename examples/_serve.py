"""How every example starts: ``--host``/``--port`` flags, then aiohttp's ``web.run_app``.

``python -m examples.NAME --help`` lists the flags. A port in use is one line naming the
port and ``--port`` (exit code 1), the same handling as ``python -m aiosessmgr demo``,
whose ``listen_flags`` and ``serve`` this reuses; a configuration the app refuses (a bad
key, an unsafe directory) is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from aiohttp import web

from aiosessmgr import AiosessmgrError
from aiosessmgr.__main__ import listen_flags, serve


def run(make_app: Callable[[argparse.Namespace], web.Application], *, module: str, doc: str | None,
        port: int, argv: Sequence[str] | None = None,
        arguments: Callable[[argparse.ArgumentParser], object] | None = None) -> int:
    """Parse ``--host``/``--port`` (and the example's own *arguments*), build the app from
    the parsed flags and serve it; returns the exit code."""
    prog = f"python -m examples.{module}"
    parser = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    listen_flags(parser, port)
    if arguments:
        arguments(parser)
    args = parser.parse_args(argv)
    try:
        app = make_app(args)
    except AiosessmgrError as exc:  # a bad key, directory or URL: one line and exit 2
        parser.error(str(exc))
    return serve(app, args.host, args.port, prog)


def main(make_app: Callable[[], web.Application], module: str, doc: str | None,
         port: int) -> None:
    """``run`` for an example whose app takes no flags of its own; exits with its code."""
    sys.exit(run(lambda _: make_app(), module=module, doc=doc, port=port))
