"""Configuration: the plain-dict shape users write, and the typed classes it becomes.

``SessionConfig.from_dict`` (called by ``SessionManager``) validates everything up front,
so a typo fails at startup with a :class:`ConfigError` that names the key and the valid
choices, never later inside a request.

Units: ``lifetime`` and ``absolute_lifetime`` are minutes (as in the system this mirrors);
everything named ``*_interval``, ``*_timeout`` or ``max_age`` is seconds.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, Morsel
from typing import Any, Literal, cast

from .codec import Secret
from .drivers.base import COMMON_KEYS, check_options
from .errors import ConfigError
from .keys import check_keys
from .serializers import Serializer

__all__ = [
    "BUILTIN_DRIVERS",
    "DEFAULT_MAX_RECORD_SIZE",
    "CookieConfig",
    "DriverConfig",
    "EncryptionConfig",
    "KEY_HELP",
    "Secret",
    "SessionConfig",
    "Serializer",
    "UsersConfig",
    "check_keys",
]

#: Driver types that ship with aiosessmgr; others are registered with ``manager.extend``.
BUILTIN_DRIVERS = ("cookie", "file", "memory", "redis")

#: The default ``max_record_size``, 1 MiB: hundreds of times what sessions usually hold
#: (a few KB), so no ordinary app meets it, while a record read on every request stays
#: bounded (Redis alone would accept 512 MB).
DEFAULT_MAX_RECORD_SIZE = 1 << 20
#: The smallest ``max_record_size`` accepted: an empty session's record fits easily.
MIN_MAX_RECORD_SIZE = 256

SameSite = Literal["lax", "strict", "none"]
_COOKIE_ATTRIBUTE = re.compile(r"[\x21-\x3a\x3c-\x7e]+")
_COOKIE_DOMAIN = re.compile(r"\.?[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_SAME_SITE = ("lax", "strict", "none")
#: how to make an encryption key, for error messages
KEY_HELP = (
    'generate one with: python -c "import secrets, base64; '
    'print(base64.b64encode(secrets.token_bytes(32)).decode())"'
)


def _number(where: str, value: Any, *, positive: bool = True, allow_none: bool = False,
            finite: bool = True) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number, got {type(value).__name__}")
    if value != value:  # nan compares false with everything: "positive" would pass it
        raise ConfigError(f"{where} must be a number, got nan")
    if finite and value in (math.inf, -math.inf):
        raise ConfigError(f"{where} must be finite, got {value!r}"
                          + (" (None turns it off)" if allow_none else ""))
    if positive and value <= 0:
        raise ConfigError(f"{where} must be positive, got {value!r}")
    return value


def parse_key(where: str, key: Any) -> Secret:
    """Turn 32 raw bytes, or a base64/hex string of 32 bytes, into a Secret."""
    if isinstance(key, Secret):
        raw = key.reveal()
    elif isinstance(key, (bytes, bytearray)):
        raw = bytes(key)
    elif isinstance(key, str):
        raw = b""
        text = key.strip()
        if re.fullmatch(r"[0-9a-fA-F]{64}", text):
            raw = bytes.fromhex(text)
        else:
            try:
                raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_"
                                       if ("-" in text or "_" in text) else None, validate=True)
            except (binascii.Error, ValueError):
                raw = b""
    else:
        raise ConfigError(f"{where} must be 32 bytes or a base64/hex string; {KEY_HELP}")
    if len(raw) != 32:
        raise ConfigError(
            f"{where} must be 32 bytes for aes-256-gcm (got {len(raw)}); {KEY_HELP}"
        )
    return Secret(raw)


@dataclass(frozen=True, slots=True)
class CookieConfig:
    """How the session id travels: the cookie's name and attributes."""

    name: str = "aiosessmgr_session"
    secure: bool = False
    http_only: bool = True
    same_site: SameSite | None = "lax"
    path: str = "/"
    domain: str | None = None
    #: seconds the browser keeps the cookie; a response that used the session re-sends it
    #: once ``max_age // 10`` seconds (at least 1) have passed since it was last sent
    max_age: int | None = None
    #: with ``max_age`` None: True makes a browser-session cookie (the server still enforces
    #: ``lifetime``), False makes the cookie live as long as the driver's lifetime
    expire_on_close: bool = True
    #: CHIPS: the browser keys the cookie to the top-level site (needs ``secure``)
    partitioned: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+",
                                                               self.name):
            raise ConfigError(f"cookie.name must be a non-empty cookie token, got {self.name!r}")
        try:
            morsel: Morsel[str] = Morsel()
            morsel.set(self.name, "", "")  # names the stdlib cannot send ("path", ...)
        except CookieError as exc:
            raise ConfigError(
                f"cookie.name {self.name!r} cannot be sent as a Set-Cookie header: {exc}"
            ) from exc
        if self.same_site is not None and self.same_site not in _SAME_SITE:
            raise ConfigError(
                f"cookie.same_site must be one of 'lax', 'strict', 'none' (or None), "
                f"got {self.same_site!r}"
            )
        if self.same_site == "none" and not self.secure:
            raise ConfigError(
                "cookie.same_site='none' requires cookie.secure=True (browsers drop it otherwise)"
            )
        if self.name.startswith("__Host-") and (
            not self.secure or self.path != "/" or self.domain is not None
        ):
            raise ConfigError(
                "cookie.name with the '__Host-' prefix requires secure=True, path='/' "
                "and domain=None"
            )
        if self.name.startswith("__Secure-") and not self.secure:
            raise ConfigError("cookie.name with the '__Secure-' prefix requires secure=True")
        if self.partitioned and not self.secure:
            raise ConfigError("cookie.partitioned=True requires cookie.secure=True")
        if self.max_age is not None and (isinstance(self.max_age, bool)
                                         or not isinstance(self.max_age, int)
                                         or self.max_age <= 0):
            raise ConfigError(f"cookie.max_age must be a positive whole number of seconds or "
                              f"None, got {self.max_age!r}")
        for name in ("secure", "http_only", "expire_on_close", "partitioned"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"cookie.{name} must be true or false, got "
                                  f"{getattr(self, name)!r}")
        # RFC 6265 section 4.1.1: attribute values are printable ASCII without ';'
        # (anything else would end up in the Set-Cookie header as written)
        if not isinstance(self.path, str) or not _COOKIE_ATTRIBUTE.fullmatch(self.path) \
                or not self.path.startswith("/"):
            raise ConfigError(f"cookie.path must be an absolute path of printable ASCII without "
                              f"';', got {self.path!r}")
        if self.domain is not None and (not isinstance(self.domain, str)
                                        or not _COOKIE_DOMAIN.fullmatch(self.domain)):
            raise ConfigError(f"cookie.domain must be a host name (letters, digits, '-', '.') or "
                              f"None, got {self.domain!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CookieConfig:
        """Build from the ``cookie`` section of the config dict."""
        _mapping("cookie", data)
        check_keys("cookie.", data, cls.__dataclass_fields__)
        return cls(**data)


@dataclass(frozen=True, slots=True)
class EncryptionConfig:
    """AES-256-GCM at rest: ``key`` encrypts, ``previous_keys`` still decrypt (rotation)."""

    enabled: bool = False
    key: Secret | None = None
    algorithm: str = "aes-256-gcm"
    previous_keys: tuple[Secret, ...] = ()

    def __post_init__(self) -> None:
        if self.algorithm != "aes-256-gcm":
            raise ConfigError(
                f"encryption.algorithm must be 'aes-256-gcm', got {self.algorithm!r}"
            )
        if self.enabled and self.key is None:
            raise ConfigError(f"encryption.key is required when encryption is enabled; {KEY_HELP}")
        if self.key is not None and not isinstance(self.key, Secret):
            object.__setattr__(self, "key", parse_key("encryption.key", self.key))
        object.__setattr__(
            self,
            "previous_keys",
            tuple(
                parse_key(f"encryption.previous_keys[{i}]", k)
                for i, k in enumerate(self.previous_keys)
            ),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncryptionConfig:
        """Build from the ``encryption`` section of the config dict."""
        _mapping("encryption", data)
        check_keys("encryption.", data, cls.__dataclass_fields__)
        values = dict(data)
        if values.get("key") is not None:
            values["key"] = parse_key("encryption.key", values["key"])
        prev = values.get("previous_keys", ())
        if isinstance(prev, (str, bytes)) or not isinstance(prev, Iterable):
            raise ConfigError("encryption.previous_keys must be a list of keys")
        values["previous_keys"] = tuple(prev)
        return cls(**values)




@dataclass(frozen=True, slots=True)
class UsersConfig:
    """The sessions of a user (``session.login``, ``manager.user_sessions``).

    IP addresses are personal data (GDPR art. 4), so ``record_ip`` is off by default; when
    on, the address is ``request.remote`` as aiohttp reports it (behind a proxy: whatever
    the app configured, e.g. aiohttp-remotes' ``XForwardedRelaxed``).
    """

    #: the most sessions one user may have; a login beyond it ends the least recently
    #: active others. None: no cap
    max_sessions: int | None = None
    #: keep the User-Agent header of the login request in the record (shown per device)
    record_user_agent: bool = True
    #: keep the client's IP address of the login request in the record
    record_ip: bool = False
    #: seconds: a logged-in session's ``last_seen`` (and its index entry) is refreshed at
    #: most this often; 0: on every request (each one then writes the record)
    touch_interval: float = 60

    def __post_init__(self) -> None:
        cap = self.max_sessions
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ConfigError(f"users.max_sessions must be a whole number >= 1 or None, "
                              f"got {cap!r}")
        for name in ("record_user_agent", "record_ip"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"users.{name} must be true or false, got "
                                  f"{getattr(self, name)!r}")
        _number("users.touch_interval", self.touch_interval, positive=False)
        if self.touch_interval < 0:
            raise ConfigError(f"users.touch_interval must be 0 or more seconds, got "
                              f"{self.touch_interval!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsersConfig:
        """Build from the ``users`` section of the config dict."""
        _mapping("users", data)
        check_keys("users.", data, cls.__dataclass_fields__)
        return cls(**data)


@dataclass(frozen=True, slots=True)
class DriverConfig:
    """One named driver: its type, idle ``lifetime`` in minutes, and driver options."""

    driver: str
    #: minutes of inactivity after which the session expires
    lifetime: float = 120
    #: driver-specific keys (``path``, ``url``, ``prefix``, ...), validated by the driver
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.driver, str) or not self.driver:
            raise ConfigError(f"driver must be a non-empty string, got {self.driver!r}")
        _number(f"lifetime of driver {self.driver!r}", self.lifetime)

    @property
    def ttl(self) -> int:
        """The lifetime in whole seconds (at least 1), the unit drivers work in."""
        return max(1, round(self.lifetime * 60))

    def check_options(self, valid: Iterable[str]) -> None:
        """Raise ConfigError for an option this driver does not know (called by drivers)."""
        check_options(self, tuple(valid))

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any], lifetime: float) -> DriverConfig:
        """Build from one entry of the ``drivers`` section."""
        _mapping(f"drivers.{name}", data)
        if "driver" not in data:
            raise ConfigError(
                f"drivers.{name} needs a 'driver' key naming its type "
                f"(built-in: {', '.join(BUILTIN_DRIVERS)})"
            )
        kind = data["driver"]
        if isinstance(kind, str) and kind not in BUILTIN_DRIVERS:
            close = difflib.get_close_matches(kind, BUILTIN_DRIVERS, n=1, cutoff=0.7)
            if close:
                raise ConfigError(
                    f"unknown driver {kind!r} in drivers.{name} (did you mean {close[0]!r}?); "
                    f"built-in drivers: {', '.join(BUILTIN_DRIVERS)}"
                )
        options = {k: v for k, v in data.items() if k not in COMMON_KEYS}
        return cls(driver=kind, lifetime=data.get("lifetime", lifetime), options=options)


def _mapping(where: str, data: Any) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """The whole configuration of a SessionManager (the typed form of the config dict)."""

    default: str = "memory"
    drivers: Mapping[str, DriverConfig] = field(
        default_factory=lambda: {"memory": DriverConfig("memory")}
    )
    cookie: CookieConfig = field(default_factory=CookieConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    #: ``"msgpack"``, ``"json"``, or an object with ``serialize``/``deserialize``
    serializer: str | Serializer = "msgpack"
    #: (chances, out_of): per-request probability that garbage collection runs
    lottery: tuple[int, int] = (2, 100)
    #: seconds between periodic GC runs started by ``setup()``; ``None`` disables it
    gc_interval: float | None = None
    #: seconds: a lottery hit starts no GC run of a driver sooner than this after the last
    #: GC run of that driver in this process ended; ``None``: the driver's lifetime / 100
    #: (72 s at 120 minutes); 0: no minimum. Periodic and explicit runs ignore it.
    lottery_interval: float | None = None
    #: default idle lifetime in minutes for drivers that do not set their own
    lifetime: float = 120
    #: minutes after creation (or the last ``login()``/``invalidate()``, which restart it)
    #: when a session ends however active it is; None: no cap
    absolute_lifetime: float | None = None
    #: save the changes of requests answered with a 5xx status (Django never does: a
    #: request that failed half-way would store half its work); False by default
    save_on_server_error: bool = False
    #: bytes: the largest record (encoded and encrypted) ``save()`` writes; a larger one
    #: raises SessionTooLarge and the stored record stays as it was. None: no limit.
    max_record_size: int | None = DEFAULT_MAX_RECORD_SIZE
    #: the sessions of a user: device info kept at login, the cap, last_seen refresh
    users: UsersConfig = field(default_factory=UsersConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.save_on_server_error, bool):
            raise ConfigError(f"save_on_server_error must be true or false, got "
                              f"{self.save_on_server_error!r}")
        if not self.drivers:
            raise ConfigError("drivers must name at least one driver")
        if self.default not in self.drivers:
            raise ConfigError(
                f"default={self.default!r} is not one of the configured drivers: "
                f"{', '.join(sorted(self.drivers))}"
            )
        # the typed form takes typed sections (the config dict takes mappings for them):
        # a mapping here would reach setup() unchecked and fail there as an AttributeError
        for key, kind in (("cookie", CookieConfig), ("encryption", EncryptionConfig),
                          ("users", UsersConfig)):
            value = getattr(self, key)
            if not isinstance(value, kind):
                raise ConfigError(f"SessionConfig({key}=...) must be {kind.__name__}(...), got "
                                  f"{type(value).__name__} (a mapping goes in the config "
                                  f"dict, SessionManager({{{key!r}: {{...}}}}))")
        for name, cfg in self.drivers.items():
            if not isinstance(cfg, DriverConfig):
                raise ConfigError(f"SessionConfig(drivers=...): drivers.{name} must be "
                                  f"DriverConfig(...), got {type(cfg).__name__} (a mapping goes "
                                  f"in the config dict)")
        if isinstance(self.serializer, str):
            if self.serializer not in ("msgpack", "json"):
                raise ConfigError(
                    f"serializer must be 'msgpack', 'json' or an object with serialize() and "
                    f"deserialize(), got {self.serializer!r}"
                )
        elif not isinstance(self.serializer, Serializer):
            raise ConfigError(
                "serializer must be 'msgpack', 'json' or an object with serialize(dict) -> "
                "bytes and deserialize(bytes) -> dict"
            )
        lottery = self.lottery
        if (
            not isinstance(lottery, (tuple, list))
            or len(lottery) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in lottery)
            or lottery[0] < 0
            or lottery[1] <= 0
            or lottery[0] > lottery[1]
        ):
            raise ConfigError(
                f"lottery must be (chances, out_of) with 0 <= chances <= out_of, e.g. (2, 100); "
                f"got {lottery!r}"
            )
        object.__setattr__(self, "lottery", (lottery[0], lottery[1]))
        _number("gc_interval", self.gc_interval, allow_none=True)
        interval = _number("lottery_interval", self.lottery_interval, positive=False,
                           allow_none=True, finite=False)  # inf: no lottery run after one
        if interval is not None and not interval >= 0:
            raise ConfigError(
                f"lottery_interval must be 0 (no minimum) or more seconds, or None for the "
                f"driver's lifetime / 100; got {interval!r}"
            )
        _number("lifetime", self.lifetime)
        _number("absolute_lifetime", self.absolute_lifetime, allow_none=True)
        size = self.max_record_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                                 or size < MIN_MAX_RECORD_SIZE):
            raise ConfigError(
                f"max_record_size must be a number of bytes of at least "
                f"{MIN_MAX_RECORD_SIZE} (default {DEFAULT_MAX_RECORD_SIZE}), or None for no "
                f"limit; got {size!r}"
            )

    def lottery_seconds(self, ttl: int) -> float:
        """Seconds a lottery hit waits after a driver's last GC run before starting one.

        ``lottery_interval`` if set, else *ttl* (the driver's lifetime, in seconds) / 100.
        """
        return ttl / 100 if self.lottery_interval is None else self.lottery_interval

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionConfig:
        """Validate the plain-dict configuration and build the typed form."""
        _mapping("config", data)
        check_keys("", data, cls.__dataclass_fields__)
        values: dict[str, Any] = dict(data)
        lifetime = _number("lifetime", values.get("lifetime", 120))
        drivers = values.get("drivers", {"memory": {"driver": "memory"}})
        _mapping("drivers", drivers)
        values["drivers"] = {
            str(name): DriverConfig.from_dict(str(name), cfg, lifetime)
            for name, cfg in cast(Mapping[str, Any], drivers).items()
        }
        if "default" not in values and len(values["drivers"]) == 1:
            values["default"] = next(iter(values["drivers"]))
        if "cookie" in values:
            values["cookie"] = CookieConfig.from_dict(values["cookie"])
        if "encryption" in values:
            values["encryption"] = EncryptionConfig.from_dict(values["encryption"])
        if "users" in values:
            values["users"] = UsersConfig.from_dict(values["users"])
        if "lottery" in values and isinstance(values["lottery"], list):
            values["lottery"] = tuple(values["lottery"])
        return cls(**values)

    @classmethod
    def coerce(cls, config: SessionConfig | Mapping[str, Any] | None) -> SessionConfig:
        """Accept a SessionConfig, a config dict, or None (all defaults)."""
        if config is None:
            return cls()
        if isinstance(config, SessionConfig):
            return config
        return cls.from_dict(config)
