"""Session ids and public handles: how they are made and the one shape we accept.

The bottom of the package: nothing here imports anything of ours. Drivers that name a
file or a key after an id check it with :func:`is_valid_session_id` first, so a
hostile cookie can never reach a path or a key.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from typing import Final

__all__ = ["HANDLE_LENGTH", "SESSION_ID_LENGTH", "handle_of", "is_valid_handle",
           "is_valid_session_id", "new_handle", "new_session_id"]

#: characters in an id: 32 random bytes as unpadded URL-safe base64
SESSION_ID_LENGTH: Final = 43
_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{43}")
#: characters in a handle: 16 random bytes as unpadded URL-safe base64
HANDLE_LENGTH: Final = 22
_HANDLE_RE: Final = re.compile(r"[A-Za-z0-9_-]{22}")


def new_session_id() -> str:
    """A fresh id: 256 bits from ``secrets`` (OWASP: at least 64), URL-safe base64."""
    return secrets.token_urlsafe(32)


def is_valid_session_id(value: object) -> bool:
    """True if *value* has the exact shape of an id we issue; nothing else is looked up."""
    return (isinstance(value, str) and len(value) == SESSION_ID_LENGTH
            and _ID_RE.fullmatch(value) is not None)


def new_handle() -> str:
    """A random handle (128 bits from ``secrets``, URL-safe), for tests and tools.

    Sessions get theirs from :func:`handle_of`, so that concurrent requests agree on it.
    """
    return secrets.token_urlsafe(16)


def handle_of(session_id: str, *context: str) -> str:
    """The public handle of the session whose record is *session_id* (made at a login).

    The first 128 bits of a SHA-256 of the id and *context* (the user, a purpose), as
    URL-safe base64: the id cannot be derived from it (a preimage of SHA-256), yet every
    request moving the same record computes the same handle, so two requests logging
    in one session at once contend for one index entry instead of making two. The
    handle then stays with the session when its id changes.
    """
    text = "\0".join(("aiosessmgr.handle", session_id, *context))
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def is_valid_handle(value: object) -> bool:
    """True if *value* has the exact shape of a handle we issue."""
    return (isinstance(value, str) and len(value) == HANDLE_LENGTH
            and _HANDLE_RE.fullmatch(value) is not None)
