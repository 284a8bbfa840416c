"""Our cookie on the wire: reading it from a ``Cookie`` header, writing ``Set-Cookie``.

Reading finds exactly the values aiohttp's own cookie parser finds for our name (the
parser behind ``request.cookies``), including quoted values and every duplicate: a
browser sends two cookies of one name when an older or more specifically scoped one
exists (RFC 6265 section 5.4 puts longer paths, then older cookies, first), and
``request.cookies`` would keep only the last. Headers as browsers send them (``a=1; b=2``)
take a fast path of plain string operations; anything else (quotes, backslashes,
whitespace inside a pair, non-ASCII, control characters) goes to aiohttp's parser. A
property-based test pins the fast path to the parser over generated headers.

Writing: ``Set-Cookie`` headers are formatted once per setup by :class:`CookieWriter`
with the standard library's ``http.cookies.Morsel``, so a bad attribute fails at
startup, never inside a request. ``Partitioned`` (CHIPS) is added by hand where the
running Python's ``Morsel`` does not know it (before 3.14). With ``max_age`` the
header carries ``Expires`` as well, for clients that ignore ``Max-Age``. A deletion
carries every attribute of the cookie it deletes (Path, Domain, Secure, HttpOnly,
SameSite, Partitioned): browsers ignore a deletion of a ``Secure``, ``__Host-`` or
partitioned cookie that lacks them.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable
from http.cookies import CookieError, Morsel
from typing import Final

from .config import CookieConfig
from .errors import ConfigError

_Parser = Callable[[str], list[tuple[str, Morsel[str]]]]
_aiohttp_parse: _Parser | None
try:  # the parser behind aiohttp's request.cookies (aiohttp >= 3.12.13); no public name
    from aiohttp._cookie_helpers import parse_cookie_header as _aiohttp_parse
except ImportError:  # pragma: no cover - if aiohttp moves it: SimpleCookie, as it once used
    _aiohttp_parse = None

__all__ = ["CookieWriter", "cookie_names", "cookie_values"]

#: how an expired cookie is dated (with Max-Age=0) in a deletion
_EPOCH: Final = "Thu, 01 Jan 1970 00:00:00 GMT"


def _parse(header: str) -> list[tuple[str, str]]:
    """Every (name, value) pair aiohttp's cookie parser finds, in header order."""
    if _aiohttp_parse is not None:
        return [(name, morsel.value) for name, morsel in _aiohttp_parse(header)]
    from http.cookies import SimpleCookie  # pragma: no cover

    jar: SimpleCookie = SimpleCookie()  # pragma: no cover
    try:  # pragma: no cover
        jar.load(header)
    except CookieError:  # pragma: no cover
        return []
    return [(name, morsel.value) for name, morsel in jar.items()]  # pragma: no cover


#: a header as browsers send it: printable ASCII without quotes or backslashes, and every
#: space right after a ';' (pairs joined by "; ")
_BROWSER_SHAPED: Final = re.compile(r'[!#-\[\]-~]*(?:; [!#-\[\]-~]*)*')


def cookie_values(header: str, name: str) -> list[str]:
    """Every value the ``Cookie`` header gives cookie *name*, in header order.

    Exactly what aiohttp's parser finds for *name* (quoted values unquoted); duplicates
    are all kept. *name* must be a cookie token (``CookieConfig`` checks that).
    """
    if not header:
        return []
    # Fast path: only what a browser sends ("a=1; b=2"). There aiohttp's parser splits at
    # ';' and takes the value after the first '=' as is (no unquoting, no date special
    # cases: those need a quote, a comma followed by whitespace, or whitespace in a value).
    if _BROWSER_SHAPED.fullmatch(header) is not None:
        if name not in header:
            return []
        prefix, size = name + "=", len(name) + 1
        values = []
        for pair in header.split(";"):
            if pair[:1] == " ":
                pair = pair[1:]
            if pair.startswith(prefix):
                values.append(pair[size:])
            elif pair == name:
                values.append("")  # a bare name: aiohttp reads it as an empty value
        return values
    return [value for key, value in _parse(header) if key == name]


def cookie_names(header: str, prefix: str) -> list[str]:
    """The distinct cookie names in the ``Cookie`` header that start with *prefix*, in
    header order (as aiohttp's parser reads the names); the cookie driver's chunks."""
    if prefix not in header:
        return []
    if _BROWSER_SHAPED.fullmatch(header) is not None:
        pairs = (pair[1:] if pair[:1] == " " else pair for pair in header.split(";"))
        found = (pair.partition("=")[0] for pair in pairs)
    else:
        found = (key for key, _ in _parse(header))
    names = dict.fromkeys(name for name in found if name.startswith(prefix))  # ordered, distinct
    return list(names)


def _partitioned_in_morsel() -> bool:
    morsel: Morsel[str] = Morsel()
    try:
        morsel["partitioned"] = True
    except CookieError:
        return False
    return True


class CookieWriter:
    """``Set-Cookie`` header values for one cookie configuration, worked out once.

    *max_age* (seconds, or None for a browser-session cookie) is the lifetime the
    browser is told; *clock* returns epoch seconds, for ``Expires``.
    """

    def __init__(self, config: CookieConfig, max_age: int | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = config.name
        self.max_age = max_age
        self._clock = clock
        native_partitioned = _partitioned_in_morsel()
        morsel: Morsel[str] = Morsel()
        try:
            morsel.set(config.name, "", '""')
            morsel["path"] = config.path
            if config.domain is not None:
                morsel["domain"] = config.domain
            if config.secure:
                morsel["secure"] = True
            if config.http_only:
                morsel["httponly"] = True
            if config.same_site is not None:
                morsel["samesite"] = config.same_site.capitalize()
            if config.partitioned and native_partitioned:
                morsel["partitioned"] = True
        except CookieError as exc:
            raise ConfigError(f"cookie settings cannot be sent as a Set-Cookie header: {exc}") \
                from exc
        # "name=; Path=/; ..." -> "; Path=/; ...": the attributes every header of ours carries
        attributes = morsel.OutputString()[len(config.name) + 3:]
        if config.partitioned and not native_partitioned:
            attributes += "; Partitioned"
        self._attributes = attributes
        self._prefix = config.name + "="
        self._max_age_attribute = "" if max_age is None else f"; Max-Age={max_age}"
        self._deletion = f'{config.name}=""; expires={_EPOCH}; Max-Age=0{attributes}'
        self._expires_second = -1
        self._expires = ""

    def set_header(self, value: str) -> str:
        """The header that stores *value* (a session id: no quoting needed)."""
        if self.max_age is None:
            return f"{self._prefix}{value}{self._attributes}"
        return (f"{self._prefix}{value}; expires={self._expires_at()}"
                f"{self._max_age_attribute}{self._attributes}")

    def delete_header(self) -> str:
        """The header that makes the browser drop the cookie (Max-Age=0 and a past Expires)."""
        return self._deletion

    def _expires_at(self) -> str:
        # formatted once per second: the header's date has whole seconds anyway
        second = int(self._clock())
        if second != self._expires_second:
            assert self.max_age is not None
            self._expires = email.utils.formatdate(second + self.max_age, usegmt=True)
            self._expires_second = second
        return self._expires
