"""Sessions encrypted at rest (AES-256-GCM), with the key from the environment and rotation.

Run it::

    export AIOSESSMGR_KEY="$(python -c 'import examples.encryption as e; print(e.new_key())')"
    python -m examples.encryption     # then open http://127.0.0.1:8087/

Without ``AIOSESSMGR_KEY`` the command makes up a throwaway key and prints it.
Sessions are files in ``AIOSESSMGR_SESSION_DIR`` (default: ``aiosessmgr-encryption``
in the temp dir), so they outlive a restart; look inside one: no plaintext.

Rotating the key, without logging anyone out:

1. Generate a new key; start the app with ``AIOSESSMGR_KEY=<new>`` and
   ``AIOSESSMGR_PREVIOUS_KEYS=<old>`` (comma-separated, newest first, if several).
2. Records under the old key still decrypt; each is re-encrypted under the new key on
   its session's next request (also a read-only one such as ``/peek``).
3. After one session lifetime every live record uses the new key (the old records are
   expired): drop the old key from ``AIOSESSMGR_PREVIOUS_KEYS``.
"""

from __future__ import annotations

import base64
import os
import secrets
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from aiosessmgr import ConfigError, SessionManager, get_session, setup

from . import _serve

KEY_VAR = "AIOSESSMGR_KEY"
PREVIOUS_KEYS_VAR = "AIOSESSMGR_PREVIOUS_KEYS"
DIR_VAR = "AIOSESSMGR_SESSION_DIR"
DEFAULT_DIR = Path(tempfile.gettempdir()) / "aiosessmgr-encryption"


def new_key() -> str:
    """A fresh 256-bit key, base64 (the form the variables hold)."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def encryption_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``encryption`` config section from the environment; no key is a ConfigError."""
    key = environ.get(KEY_VAR, "").strip()
    if not key:
        raise ConfigError(f"set {KEY_VAR} to a base64 key of 32 bytes; generate one with: "
                          "python -c \"import secrets, base64; "
                          "print(base64.b64encode(secrets.token_bytes(32)).decode())\"")
    previous = [k.strip() for k in environ.get(PREVIOUS_KEYS_VAR, "").split(",") if k.strip()]
    return {"enabled": True, "key": key, "previous_keys": previous}


def make_manager(environ: Mapping[str, str] | None = None,
                 path: str | os.PathLike[str] | None = None) -> SessionManager:
    """A file-driver manager encrypting with the keys from *environ* (default: os.environ)."""
    env = os.environ if environ is None else environ
    directory = path or env.get(DIR_VAR) or DEFAULT_DIR
    return SessionManager({
        "default": "file",
        "drivers": {"file": {"driver": "file", "path": str(directory), "lifetime": 120}},
        "cookie": {"name": "enc_session", "same_site": "lax"},
        "encryption": encryption_from_env(env),
    })


async def index(request: web.Request) -> web.Response:
    """Count visits; the first visit also stores when it happened."""
    session = await get_session(request)
    if "first_seen" not in session:
        session["first_seen"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    visits = session.increment("visits")
    return web.Response(text=f"Visits: {visits} since {session['first_seen']}\n")


async def peek(request: web.Request) -> web.Response:
    """Read without changing anything (a record under an old key is still re-encrypted)."""
    session = await get_session(request)
    return web.Response(text=f"Visits: {session.get('visits', 0)}\n")


def make_app(environ: Mapping[str, str] | None = None,
             path: str | os.PathLike[str] | None = None) -> web.Application:
    """Build the app; keys and session directory come from *environ* unless *path* is given."""
    manager = make_manager(environ, path)
    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/peek", peek)
    setup(app, manager)
    return app


if __name__ == "__main__":
    if not os.environ.get(KEY_VAR):
        os.environ[KEY_VAR] = new_key()
        print(f"{KEY_VAR} is not set; using a throwaway key (sessions die with it):\n"
              f"  export {KEY_VAR}={os.environ[KEY_VAR]}")
    _serve.main(make_app, "encryption", __doc__, port=8087)
