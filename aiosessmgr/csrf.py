"""CSRF protection: a per-session secret, masked tokens, and a checking middleware.

The secret lives in the session (``session.token``) and rotates on ``regenerate()``.
Pages embed ``await csrf_token(request)``: the secret XOR-masked with fresh random
bytes, so the page bytes differ on every response (BREACH) while every masked form
verifies. ``csrf_middleware`` checks every request whose method is not safe in the
sense of RFC 9110, section 9.2.1: all but GET, HEAD, OPTIONS and TRACE, so POST, PUT,
PATCH, DELETE and WebDAV's PROPFIND or MKCOL alike, and methods it has never heard of::

    setup(app, manager)
    app.middlewares.append(csrf_middleware(manager, exempt=["/webhooks/*"]))

A request passes when it is not cross-site (``Sec-Fetch-Site``), its ``Origin`` (if
sent) is its own or trusted, and it carries the token in the ``X-CSRF-Token`` header,
the ``_token`` form field, or the ``_token`` key of a JSON body. Otherwise it gets a
403 with a short reason.

The body is never consumed: the handler reads it as sent, however it reads it (see
``aiosessmgr.body``). A header token costs no body read at all. An urlencoded or JSON
body is read whole to find ``_token`` (above the app's ``client_max_size``: 413, as the
handler's own ``read()`` would answer). A multipart form is read only until its
``_token`` field is complete, so with the field before any file field (where a form's
hidden field usually is) uploads of any size stream to the handler without being
buffered here. A token after file fields is looked for in the first ``client_max_size``
bytes (1 MiB when unlimited) only; past them the request gets 403 with a reason saying
to send the token in the ``X-CSRF-Token`` header or before any file field. A body that
cannot be parsed, or that ends before it is complete (the client went away), holds no
token: 403 "CSRF token missing", never a 500 or a traceback.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hmac
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .body import NotFound, find_field
from .manager import SessionManager
from .web import get_session

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "csrf_exempt",
    "csrf_middleware",
    "csrf_token",
    "mask_token",
    "verify_token",
]

#: header checked first
CSRF_HEADER = "X-CSRF-Token"
#: form field / JSON key checked next
CSRF_FIELD = "_token"
#: the safe methods of RFC 9110, section 9.2.1; every other method needs the token
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_EXEMPT_ATTR = "__aiosessmgr_csrf_exempt__"

F = TypeVar("F", bound=Callable[..., Awaitable[web.StreamResponse]])


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def mask_token(secret: str) -> str:
    """A fresh masked form of *secret*: random pad + (pad XOR secret), URL-safe base64."""
    raw = _b64decode(secret) or secret.encode()
    pad = secrets.token_bytes(len(raw))
    masked = pad + bytes(a ^ b for a, b in zip(pad, raw, strict=True))
    return base64.urlsafe_b64encode(masked).rstrip(b"=").decode()


def verify_token(secret: str, candidate: str) -> bool:
    """True if *candidate* is *secret* itself or any masked form of it (constant time)."""
    if not candidate or not secret or not candidate.isascii():
        return False
    if hmac.compare_digest(candidate.encode(), secret.encode()):
        return True
    raw = _b64decode(secret) or secret.encode()
    masked = _b64decode(candidate)
    if masked is None or len(masked) != 2 * len(raw):
        return False
    pad, body = masked[: len(raw)], masked[len(raw):]
    return hmac.compare_digest(bytes(a ^ b for a, b in zip(pad, body, strict=True)), raw)


async def csrf_token(request: web.Request, manager: SessionManager | None = None) -> str:
    """A masked CSRF token for this response (different bytes every time, same secret)."""
    session = await get_session(request, manager)
    return mask_token(session.token)


def csrf_exempt(handler: F) -> F:
    """Mark a handler (e.g. a webhook with its own authentication) as not CSRF-checked."""
    setattr(handler, _EXEMPT_ATTR, True)
    return handler


def _origin(url: str) -> str:
    return url.rstrip("/").lower()


def _exempt_pattern(pattern: str) -> tuple[str, ...]:
    """The segments of an *exempt* pattern; ValueError unless it is an absolute path."""
    if not pattern.startswith("/"):
        raise ValueError(f"csrf_middleware: exempt pattern {pattern!r} must start with '/'")
    return tuple(pattern.split("/")[1:])


def _path_segments(path: str) -> list[str] | None:
    """The segments of *path* as the router matched it, or None if it may not be exempt.

    Refused: an encoded ``/`` or ``%`` (``%2F``, ``%25``: the only escapes left in the
    router's path), a backslash, an empty segment but the last (``//``), and a ``.`` or
    ``..`` segment (``%2e`` is already decoded here). Servers and proxies disagree on
    what such paths mean; an exemption must not depend on who is right.
    """
    if not path.startswith("/") or "%" in path or "\\" in path:
        return None
    segments = path.split("/")[1:]
    if "" in segments[:-1] or "." in segments or ".." in segments:
        return None
    return segments


def _matches(pattern: tuple[str, ...], segments: list[str]) -> bool:
    """Whether *segments* match *pattern*, segment by segment (``**``: any number).

    A set of pattern positions is carried along the path (an NFA), so the cost is
    len(pattern) * len(segments) whatever the pattern: no backtracking on long paths.
    """

    def closure(positions: set[int]) -> set[int]:
        out = set(positions)
        for i in sorted(positions):
            while i < len(pattern) and pattern[i] == "**":
                i += 1
                out.add(i)
        return out

    positions = closure({0})
    for segment in segments:
        advanced: set[int] = set()
        for i in positions:
            if i == len(pattern):
                continue
            glob = pattern[i]
            if glob == "**":
                advanced.add(i)
            elif glob == segment or (segment and fnmatch.fnmatchcase(segment, glob)):
                advanced.add(i + 1)  # a wildcard never matches an empty (trailing) segment
        if not advanced:
            return False
        positions = closure(advanced)
    return len(pattern) in positions


async def _submitted_token(request: web.Request) -> str | NotFound:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    return await find_field(request, CSRF_FIELD)


def csrf_middleware(
    manager: SessionManager | None = None,
    *,
    exempt: Iterable[str] = (),
    trusted_origins: Iterable[str] = (),
) -> Middleware:
    """Reject cross-site and token-less unsafe requests with 403.

    Every method but GET, HEAD, OPTIONS and TRACE (RFC 9110, section 9.2.1) is checked.
    *trusted_origins* holds origins besides the request's own that may post
    (``"https://app.example"``). Add it after ``setup(app, manager)`` so the session
    middleware runs first.

    *exempt* holds path patterns, matched against the path exactly as aiohttp's router
    matched it (``request.rel_url.path_safe``: percent-decoded, except ``%2F`` and
    ``%25``), segment by segment and case-sensitively: ``*``, ``?`` and ``[...]`` match
    within one segment (``fnmatch``), and a ``**`` segment matches any number of whole
    segments. So ``"/hooks/*"`` exempts ``/hooks/payment`` (and ``/%68ooks/payment``,
    the same path to the router), not ``/hooks/a/b``, ``/hooks/x/``, ``/hooksX`` or
    ``/HOOKS/x``; ``"/hooks/**"`` exempts everything below ``/hooks``. A path with an
    encoded ``/`` or ``%`` (``%2F``, ``%25``), a backslash, an empty segment (``//``) or
    a ``.`` or ``..`` segment (``%2e`` too) is never exempt, whatever the patterns: the
    router may read ``/hooks%2Fx/account/email`` as ``/{lang}/account/email``. Raises
    ``ValueError`` for a pattern that does not start with ``/``. ``@csrf_exempt`` on the
    handler is the exemption the router decides by itself.
    """
    patterns = tuple(_exempt_pattern(p) for p in exempt)
    trusted = frozenset(_origin(o) for o in trusted_origins)

    def forbidden(reason: str) -> web.HTTPForbidden:
        return web.HTTPForbidden(text=f"403: {reason}")

    @web.middleware
    async def aiosessmgr_csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in _SAFE_METHODS:
            return await handler(request)
        route_handler = request.match_info.handler
        if getattr(route_handler, _EXEMPT_ATTR, False):
            return await handler(request)
        # the path the router matched, never request.path (which decodes %2F): both must
        # read the same request the same way
        segments = _path_segments(request.rel_url.path_safe) if patterns else None
        if segments is not None and any(_matches(p, segments) for p in patterns):
            return await handler(request)
        if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            raise forbidden("cross-site request refused")
        origin = request.headers.get("Origin")
        if origin is not None:
            own = _origin(f"{request.scheme}://{request.host}")
            if _origin(origin) != own and _origin(origin) not in trusted:
                raise forbidden("request origin is not allowed")
        session = await get_session(request, manager)
        try:
            submitted = await _submitted_token(request)
        except ConnectionError:
            # the body ended early (the client went away, or sent less than its
            # Content-Length): no token arrived, and a 500's traceback would be one log
            # entry per such request for nobody
            raise forbidden("CSRF token missing") from None
        if submitted is NotFound.OUT_OF_REACH:
            raise forbidden("CSRF token not within the multipart body's size limit: send it"
                            " in the X-CSRF-Token header or as a form field before any file"
                            " field")
        if not isinstance(submitted, str) or not submitted:
            raise forbidden("CSRF token missing")
        if session.new or not verify_token(session.token, submitted):
            raise forbidden("CSRF token mismatch")
        return await handler(request)

    return aiosessmgr_csrf
