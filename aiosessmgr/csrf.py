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
buffered here. A token after file fields is looked for in the first
``aiosessmgr.body.MULTIPART_SEARCH_BYTES`` (1 MiB) only, or ``client_max_size`` if
smaller; past them the request gets 403 with a reason saying to send the token in the
``X-CSRF-Token`` header or before any file field. Only the first
``aiosessmgr.body.MAX_FIELDS`` (1,000) multipart parts or urlencoded fields are searched,
so a body of many tiny fields costs no more; past them: 403 with the same advice. A new
session (no cookie, or one that expired) holds no CSRF secret, so no token can match:
403 at once, the body left unread. A body that cannot be parsed, or that ends
before it is complete (the client went away), holds no token: 403 "CSRF token missing",
never a 500 or a traceback.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hmac
import itertools
import secrets
import types
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, TypeVar

from aiohttp import web
from aiohttp.abc import AbstractView
from aiohttp.typedefs import Handler, Middleware

from .body import MAX_FIELDS, NotFound, find_field, multipart_reach
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
#: the value csrf_exempt() stores: a truthy attribute of any other origin exempts nothing
_EXEMPT: Final = object()

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
    """Mark a handler (e.g. a webhook with its own authentication) as not CSRF-checked.

    Works on a handler function (or ``functools.partial``, or a callable object), on a
    class-based view (``web.View`` subclass: all its methods), and on one method of a view
    (``@csrf_exempt async def post(self)``: that HTTP method only). The mark is looked up
    on the object itself, never inherited: a subclass of an exempt view, or a view that
    inherits an exempt method without redefining it, is checked (mark it too). Raises
    ``TypeError`` for a bound method (decorate the function in the class body instead) or
    an object that cannot hold attributes.
    """
    if isinstance(handler, types.MethodType):
        raise TypeError("csrf_exempt: decorate the function in the class body, not the bound"
                        f" method {handler!r}")
    try:
        setattr(handler, _EXEMPT_ATTR, _EXEMPT)
    except (AttributeError, TypeError) as exc:
        raise TypeError(f"csrf_exempt: cannot mark {handler!r}: {exc}") from None
    return handler


def _marked(obj: object) -> bool:
    """Whether csrf_exempt() marked *obj* itself: its own ``__dict__``, never the class's,
    a base class's or a ``__getattr__``'s answer."""
    try:
        return vars(obj).get(_EXEMPT_ATTR) is _EXEMPT
    except (TypeError, AttributeError):  # no __dict__ (slots, builtins), or an odd one
        return False


def _handler_exempt(handler: object, method: str) -> bool:
    """Whether the route's handler, or the view method serving *method*, is marked."""
    if isinstance(handler, types.MethodType):  # obj.handler: the function is marked
        return _marked(handler.__func__)
    if _marked(handler):
        return True
    if isinstance(handler, type) and issubclass(handler, AbstractView):
        # web.View dispatches to getattr(view, method.lower()); only the class's own
        return _marked(vars(handler).get(method.lower()))
    return False


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


def _matches(pattern: tuple[str, ...], segments: list[str], variables: bool = False) -> bool:
    """Whether *segments* match *pattern*, segment by segment (``**``: any number).

    *variables*: *segments* are a route's canonical path, where a segment holding a
    ``{name}`` matches only a ``*`` (or is passed over by a ``**``), never a literal or a
    partial glob such as ``pay*``: those say nothing of what the variable will hold.

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
            elif variables and "{" in segment:
                if glob == "*":
                    advanced.add(i + 1)
            elif glob == segment or (segment and fnmatch.fnmatchcase(segment, glob)):
                advanced.add(i + 1)  # a wildcard never matches an empty (trailing) segment
        if not advanced:
            return False
        positions = closure(advanced)
    return len(pattern) in positions


def _in_a_domain_app(apps: tuple[web.Application, ...]) -> bool:
    """Whether the route belongs to an ``add_domain()`` sub-app (at any depth)."""
    for parent, child in itertools.pairwise(apps):
        for resource in parent.router.resources():
            info = resource.get_info()
            if info.get("app") is child and "rule" in info:  # add_subapp's has "prefix"
                return True
    return False


def _pattern_exempt(request: web.Request, patterns: tuple[tuple[str, ...], ...]) -> bool:
    """Whether one pattern covers both the path as the router matched it and the route
    the router matched (its canonical path, sub-app prefixes included)."""
    segments = _path_segments(request.rel_url.path_safe)
    if segments is None:
        return False
    matching = [p for p in patterns if _matches(p, segments)]
    if not matching:
        return False
    match_info = request.match_info
    resource = match_info.route.resource
    if resource is None or _in_a_domain_app(match_info.apps):
        return False  # a 404, 405 or other system route; or an add_domain() sub-app
    canonical = resource.canonical
    if not canonical.startswith("/"):
        return False
    route_segments = canonical.split("/")[1:]
    return any(_matches(p, route_segments, variables=True) for p in matching)


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

    *exempt* holds path patterns. A request is exempt by a pattern only if the pattern
    matches both the path as aiohttp's router matched it and the route the router chose
    for it. The path is ``request.rel_url.path_safe`` (percent-decoded, except ``%2F`` and
    ``%25``); the route is its resource's canonical path (``/{lang}/account/email``, with
    the prefixes of ``add_subapp()`` sub-apps). Both are matched segment by segment and
    case-sensitively: ``*``, ``?`` and ``[...]`` match within one segment (``fnmatch``),
    and a ``**`` segment matches any number of whole segments. A route's ``{variable}``
    segment is matched only by a ``*`` segment or within a ``**``, never by a literal or a
    partial glob: with ``POST /{lang}/account/email`` routed, ``"/hooks/**"`` does not
    exempt ``POST /hooks/account/email`` (``lang="hooks"``), ``"/*/account/email"`` does.
    So ``"/hooks/*"`` exempts ``/hooks/payment`` (and ``/%68ooks/payment``, the same path
    to the router) when a route ``/hooks/payment`` or ``/hooks/{name}`` serves it, not
    ``/hooks/a/b``, ``/hooks/x/``, ``/hooksX`` or ``/HOOKS/x``; ``"/hooks/**"`` exempts
    the routes below ``/hooks``. A path with an encoded ``/`` or ``%`` (``%2F``,
    ``%25``), a backslash, an empty segment (``//``) or a ``.`` or ``..`` segment (``%2e``
    too) is never exempt, whatever the patterns: the router may read
    ``/hooks%2Fx/account/email`` as ``/{lang}/account/email``. Nor is a request that no
    route matched (404, 405), or one for a route of an ``add_domain()`` sub-app: a path
    pattern does not name a host, so it would exempt the same paths on every host.
    ``@csrf_exempt`` on the handler is the precise exemption, wherever the route lives.
    Raises ``ValueError`` for a pattern that does not start with ``/``.

    A new session (no cookie, or its record expired) holds no CSRF secret: its requests
    get 403 "CSRF token mismatch" before any of the body is read.
    """
    patterns = tuple(_exempt_pattern(p) for p in exempt)
    trusted = frozenset(_origin(o) for o in trusted_origins)

    def forbidden(reason: str) -> web.HTTPForbidden:
        return web.HTTPForbidden(text=f"403: {reason}")

    @web.middleware
    async def aiosessmgr_csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in _SAFE_METHODS:
            return await handler(request)
        if _handler_exempt(request.match_info.handler, request.method):
            return await handler(request)
        # the path the router matched, never request.path (which decodes %2F): both must
        # read the same request the same way; and the route it chose must be covered too
        if patterns and _pattern_exempt(request, patterns):
            return await handler(request)
        if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            raise forbidden("cross-site request refused")
        origin = request.headers.get("Origin")
        if origin is not None:
            own = _origin(f"{request.scheme}://{request.host}")
            if _origin(origin) != own and _origin(origin) not in trusted:
                raise forbidden("request origin is not allowed")
        session = await get_session(request, manager)
        if session.new:
            # no secret, so no token can match: answered before the body is read (an
            # unauthenticated upload costs nothing), and session.token is not touched,
            # which would make a secret
            raise forbidden("CSRF token mismatch: the session is new (no cookie, or it"
                            " expired) and holds no token")
        if not session.has_token:
            # a stored session no page of which asked for a token: none can match either
            raise forbidden("CSRF token mismatch: the session holds no token (no page "
                            "asked for one)")
        try:
            submitted = await _submitted_token(request)
        except ConnectionError:
            # the body ended early (the client went away, or sent less than its
            # Content-Length): no token arrived, and a 500's traceback would be one log
            # entry per such request for nobody
            raise forbidden("CSRF token missing") from None
        if submitted is NotFound.OUT_OF_REACH:
            raise forbidden(f"CSRF token not within the first {multipart_reach(request)}"
                            " bytes of the multipart body: send it in the X-CSRF-Token"
                            " header or as a form field before any file field")
        if submitted is NotFound.TOO_MANY_FIELDS:
            raise forbidden(f"CSRF token not among the first {MAX_FIELDS} fields: send it"
                            " in the X-CSRF-Token header or before other fields")
        if not isinstance(submitted, str) or not submitted:
            raise forbidden("CSRF token missing")
        if not verify_token(session.token, submitted):
            raise forbidden("CSRF token mismatch")
        return await handler(request)

    return aiosessmgr_csrf
