"""Reading our cookie exactly as aiohttp does, and the Set-Cookie headers we write."""

from __future__ import annotations

import email.utils
import string
import sys
from http.cookies import SimpleCookie

import pytest
from aiohttp._cookie_helpers import parse_cookie_header
from hypothesis import given, settings
from hypothesis import strategies as st

from aiosessmgr import ConfigError, CookieConfig, new_session_id
from aiosessmgr.cookies import CookieWriter, cookie_values

NAME = "sid"
TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
# what a cookie value may hold in a header a browser sends (RFC 6265 cookie-octet)
VALUE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '";\\,')
# everything that makes parsing interesting: quotes, escapes, whitespace, separators,
# dates with commas, non-ASCII, control characters
HOSTILE_CHARS = VALUE_CHARS + '";\\, \t=' + "é\x00\x7f\u2028"


def aiohttp_values(header: str, name: str = NAME) -> list[str]:
    """What aiohttp's own parser (behind request.cookies) finds for *name*."""
    return [morsel.value for key, morsel in parse_cookie_header(header) if key == name]


names = st.one_of(st.just(NAME), st.just(NAME + "x"), st.just("x" + NAME),
                  st.text(TOKEN_CHARS, min_size=1, max_size=8))
values = st.one_of(st.text(VALUE_CHARS, max_size=12), st.just(new_session_id()),
                   st.builds(lambda v: f'"{v}"', st.text(VALUE_CHARS, max_size=12)))
browser_pairs = st.lists(st.tuples(names, values), max_size=8)
separators = st.sampled_from(["; ", ";", ";  ", " ; ", ";;", "; ;", " ", ",", ", "])


@settings(max_examples=600, deadline=None)
@given(browser_pairs, st.lists(separators, min_size=8, max_size=8), st.booleans())
def test_fast_path_finds_what_aiohttp_finds(pairs: list[tuple[str, str]],
                                            seps: list[str], bare: bool) -> None:
    parts = [f"{k}={v}" for k, v in pairs]
    if bare:
        parts.append(NAME)  # a name without '=': aiohttp reads an empty value
    header = "".join(part + sep for part, sep in zip(parts, seps + ["; "] * 2, strict=False))
    assert cookie_values(header, NAME) == aiohttp_values(header)


@settings(max_examples=600, deadline=None)
@given(st.text(HOSTILE_CHARS, max_size=60), st.text(HOSTILE_CHARS, max_size=20))
def test_hostile_headers_read_as_aiohttp_reads_them(noise: str, tail: str) -> None:
    for header in (noise, f"{noise}; {NAME}={tail}", f"{NAME}={tail}{noise}",
                   f"{noise}{NAME}={tail}"):
        assert cookie_values(header, NAME) == aiohttp_values(header)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("sid=a; sid=b", ["a", "b"], id="duplicates-in-order"),
        pytest.param('sid="abc"; x=1', ["abc"], id="quoted"),
        pytest.param('x="a; sid=b"; sid=c', ["c"], id="quoted-semicolon"),
        pytest.param("a=b sid=c", ["c"], id="space-separated"),
        pytest.param("sid = x", ["x"], id="spaces-around-equals"),
        pytest.param("x=Mon, 01 Jan 2020 10:00:00 GMT; sid=q", ["q"], id="date-value"),
        pytest.param("sidx=1; xsid=2; a=sid=3", [], id="look-alikes"),
        pytest.param("sid", [""], id="bare-name"),
        pytest.param("", [], id="empty"),
    ],
)
def test_known_headers(header: str, expected: list[str]) -> None:
    assert cookie_values(header, NAME) == expected == aiohttp_values(header)


def parsed(header: str, name: str = NAME) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(header)
    assert name in cookie
    return cookie


def test_partitioned_is_sent_on_every_python() -> None:
    writer = CookieWriter(CookieConfig(name=NAME, secure=True, partitioned=True), None)
    for header in (writer.set_header("v"), writer.delete_header()):
        attributes = [part.strip().lower() for part in header.split(";")]
        assert "partitioned" in attributes and "secure" in attributes, header
    if sys.version_info < (3, 14):  # Morsel learnt Partitioned in 3.14
        assert writer.set_header("v").endswith("; Partitioned")


def test_max_age_comes_with_expires() -> None:
    writer = CookieWriter(CookieConfig(name=NAME), 600, clock=lambda: 1_700_000_000.5)
    morsel = parsed(writer.set_header("v"))[NAME]
    assert morsel["max-age"] == "600"
    expires = email.utils.parsedate_to_datetime(morsel["expires"])
    assert expires.timestamp() == 1_700_000_600
    no_age = CookieWriter(CookieConfig(name=NAME), None)
    assert "expires" not in no_age.set_header("v").lower()
    assert "max-age" not in no_age.set_header("v").lower()


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(CookieConfig(name="__Host-sid", secure=True), id="host-prefix"),
        pytest.param(CookieConfig(name="__Secure-sid", secure=True, domain="example.test",
                                  path="/app", same_site="none"), id="secure-prefix"),
        pytest.param(CookieConfig(name="sid", secure=True, partitioned=True, same_site="none"),
                     id="partitioned"),
        pytest.param(CookieConfig(name="sid", http_only=False, same_site=None), id="plain"),
    ],
)
def test_a_deletion_carries_the_attributes_of_the_cookie_it_deletes(
        config: CookieConfig) -> None:
    writer = CookieWriter(config, 3600)
    set_attributes = attributes_of(writer.set_header(new_session_id()))
    delete_attributes = attributes_of(writer.delete_header())
    # browsers match a deletion to its cookie by these; Secure, SameSite and Partitioned
    # decide whether they accept it at all
    for name in ("path", "domain", "secure", "httponly", "samesite", "partitioned"):
        assert set_attributes.get(name) == delete_attributes.get(name), name
    assert delete_attributes["max-age"] == "0"
    assert email.utils.parsedate_to_datetime(delete_attributes["expires"]).timestamp() == 0


def attributes_of(header: str) -> dict[str, str]:
    _, *rest = header.split(";")
    out = {}
    for part in rest:
        key, _, value = part.strip().partition("=")
        out[key.lower()] = value or "1"
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"name": "path"}, id="reserved-name"),
        pytest.param({"path": "/a;b"}, id="semicolon-path"),
        pytest.param({"path": "relative"}, id="relative-path"),
        pytest.param({"domain": "ex ample.test"}, id="space-domain"),
        pytest.param({"domain": "example.test; Secure"}, id="injected-domain"),
        pytest.param({"max_age": 1.5}, id="fractional-max-age"),
    ],
)
def test_cookie_settings_that_cannot_be_sent_fail_at_construction(
        kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        CookieWriter(CookieConfig(**kwargs), None)  # type: ignore[arg-type]
