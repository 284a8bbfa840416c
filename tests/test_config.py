"""Configuration validation: every mistake is a ConfigError that says what to do."""

from __future__ import annotations

from typing import Any

import pytest

from aiosessmgr import (
    ConfigError,
    CookieConfig,
    DriverConfig,
    EncryptionConfig,
    Secret,
    SessionConfig,
    SessionManager,
)

KEY_B64 = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # b"0123456789abcdef" * 2


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param({"lotery": (1, 2)}, "unknown key 'lotery' (did you mean 'lottery'?)",
                     id="typo-top-level"),
        pytest.param({"gcInterval": 5}, "did you mean 'gc_interval'? keys are snake_case",
                     id="camel-case"),
        pytest.param({"cookie": {"sameSite": "lax"}}, "did you mean 'same_site'?",
                     id="camel-case-cookie"),
        pytest.param({"cookie": {"colour": "red"}},
                     "valid keys: domain, expire_on_close, http_only",
                     id="unknown-cookie-key-lists-valid"),
        pytest.param({"drivers": {"m": {"driver": "memory", "lifetime": 0}}},
                     "lifetime of driver 'memory' must be positive", id="zero-lifetime"),
        pytest.param({"drivers": {"m": {"driver": "memory", "lifetime": -5}}},
                     "must be positive", id="negative-lifetime"),
        pytest.param({"drivers": {"m": {"driver": "memory", "lifetime": "10"}}},
                     "must be a number", id="string-lifetime"),
        pytest.param({"drivers": {"m": {"driver": "redsi"}}},
                     "unknown driver 'redsi' in drivers.m (did you mean 'redis'?)",
                     id="driver-typo"),
        pytest.param({"drivers": {"m": {"lifetime": 5}}}, "needs a 'driver' key",
                     id="driver-missing"),
        pytest.param({"default": "nope", "drivers": {"m": {"driver": "memory"}}},
                     "default='nope' is not one of the configured drivers: m",
                     id="default-unknown"),
        pytest.param({"drivers": {}}, "at least one driver", id="no-drivers"),
        pytest.param({"cookie": {"same_site": "sometimes"}},
                     "same_site must be one of 'lax', 'strict', 'none'", id="bad-same-site"),
        pytest.param({"cookie": {"same_site": "none"}}, "requires cookie.secure=True",
                     id="same-site-none-insecure"),
        pytest.param({"cookie": {"name": "__Host-s", "secure": True, "domain": "a.test"}},
                     "'__Host-' prefix requires", id="host-prefix-domain"),
        pytest.param({"cookie": {"name": "bad name"}}, "cookie token", id="bad-cookie-name"),
        pytest.param({"cookie": {"name": "path"}}, "cannot be sent as a Set-Cookie header",
                     id="reserved-cookie-name"),
        pytest.param({"cookie": {"path": "/a;b"}}, "cookie.path must be an absolute path",
                     id="cookie-path-semicolon"),
        pytest.param({"cookie": {"domain": "a.test; Secure"}}, "cookie.domain must be a host",
                     id="cookie-domain-injection"),
        pytest.param({"cookie": {"max_age": 0.5}}, "cookie.max_age must be a positive whole",
                     id="cookie-max-age-fraction"),
        pytest.param({"cookie": {"secure": "yes"}}, "cookie.secure must be true or false",
                     id="cookie-secure-string"),
        pytest.param({"save_on_server_error": 1}, "save_on_server_error must be true or false",
                     id="save-on-server-error-type"),
        pytest.param({"lottery": (5, 2)}, "lottery must be (chances, out_of)", id="lottery"),
        pytest.param({"lottery": "often"}, "lottery must be", id="lottery-type"),
        pytest.param({"serializer": "pickle"}, "serializer must be 'msgpack', 'json'",
                     id="serializer-name"),
        pytest.param({"serializer": object()}, "serialize(dict) -> bytes",
                     id="serializer-object"),
        pytest.param({"encryption": {"enabled": True}}, "encryption.key is required",
                     id="encryption-no-key"),
        pytest.param({"encryption": {"enabled": True, "key": "short"}},
                     "must be 32 bytes for aes-256-gcm", id="short-key"),
        pytest.param({"encryption": {"enabled": True, "key": KEY_B64, "algorithm": "des"}},
                     "algorithm must be 'aes-256-gcm'", id="algorithm"),
        pytest.param({"drivers": {"m": {"driver": "memory", "path": "/tmp"}}},
                     "unknown key drivers option of 'memory' driver: 'path'",
                     id="memory-driver-option"),
        pytest.param({"gc_interval": 0}, "gc_interval must be positive", id="gc-interval"),
        pytest.param("memory", "config must be a mapping", id="not-a-mapping"),
    ],
)
def test_config_errors_name_the_key(config: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        SessionManager(config)
    assert expected in str(info.value)


def test_bad_key_message_says_how_to_generate_one() -> None:
    with pytest.raises(ConfigError, match=r"python -c .*secrets"):
        EncryptionConfig.from_dict({"enabled": True, "key": b"x" * 31})


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(b"0123456789abcdef" * 2, id="raw-bytes"),
        pytest.param(KEY_B64, id="base64"),
        pytest.param(KEY_B64.replace("=", ""), id="base64-unpadded"),
        pytest.param((b"0123456789abcdef" * 2).hex(), id="hex"),
    ],
)
def test_key_forms(key: Any) -> None:
    config = EncryptionConfig.from_dict({"enabled": True, "key": key})
    assert config.key == Secret(b"0123456789abcdef" * 2)
    assert "0123" not in repr(config)


def test_defaults_and_typed_config_are_accepted() -> None:
    typed = SessionConfig(
        default="main",
        drivers={"main": DriverConfig("memory", lifetime=30)},
        cookie=CookieConfig(name="app_session", secure=True, same_site="strict"),
    )
    manager = SessionManager(typed)
    assert manager.config is typed
    assert manager.runtime().ttl == 30 * 60
    assert SessionManager().config.default == "memory"
    from_dict = SessionConfig.from_dict({"drivers": {"only": {"driver": "memory"}},
                                         "lifetime": 10})
    assert from_dict.default == "only"
    assert from_dict.drivers["only"].lifetime == 10


@pytest.mark.parametrize(("section", "value", "message"), [
    ("cookie", {"name": "x"}, "SessionConfig(cookie=...) must be CookieConfig(...), got dict"),
    ("encryption", {"enabled": False},
     "SessionConfig(encryption=...) must be EncryptionConfig(...), got dict"),
    ("users", {"max_sessions": 2}, "SessionConfig(users=...) must be UsersConfig(...), got dict"),
    ("drivers", {"memory": {"driver": "memory"}},
     "SessionConfig(drivers=...): drivers.memory must be DriverConfig(...), got dict"),
])
def test_typed_config_takes_typed_sections_only(section: str, value: Any, message: str) -> None:
    """A mapping in the typed form is refused at construction, saying where it goes; it
    used to pass and fail in setup() as an AttributeError (a 500 at the first request)."""
    with pytest.raises(ConfigError) as raised:
        SessionConfig(**{section: value})
    assert str(raised.value).startswith(message)
    # the same mapping in the config dict is the documented form, and works
    if section != "drivers":
        assert getattr(SessionManager({section: value}).config, section) != value


def test_custom_driver_type_is_checked_when_used() -> None:
    manager = SessionManager({"drivers": {"db": {"driver": "database"}}})
    with pytest.raises(ConfigError, match=r"'database' of 'db' is not registered.*extend"):
        manager.runtime("db")
    with pytest.raises(ConfigError, match="unknown driver 'other'; configured: db"):
        manager.runtime("other")


@pytest.mark.parametrize("bad", [0, 255, -1, 1.5, "1mb", True])
def test_max_record_size_must_be_a_sane_number_of_bytes(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_record_size must be a number of bytes"):
        SessionConfig.from_dict({"max_record_size": bad})


def test_max_record_size_defaults_to_one_mib_and_may_be_off() -> None:
    assert SessionConfig().max_record_size == 1024 * 1024
    assert SessionConfig.from_dict({"max_record_size": None}).max_record_size is None
    assert SessionConfig.from_dict({"max_record_size": 256}).max_record_size == 256


@pytest.mark.parametrize(("bad", "expected"), [
    pytest.param(-1, "lottery_interval must be 0 (no minimum) or more seconds", id="negative"),
    pytest.param(float("nan"), "lottery_interval must be a number, got nan", id="nan"),
    pytest.param("72", "lottery_interval must be a number", id="string"),
    pytest.param(True, "lottery_interval must be a number", id="bool"),
])
def test_lottery_interval_must_be_none_or_non_negative_seconds(bad: object,
                                                               expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        SessionConfig.from_dict({"lottery_interval": bad})
    assert expected in str(info.value)


def test_lottery_interval_defaults_to_a_hundredth_of_the_lifetime() -> None:
    assert SessionConfig().lottery_interval is None
    default = SessionManager()
    assert default.config.lottery_seconds(default.runtime().ttl) == 72.0  # 120 minutes
    short = SessionConfig.from_dict({"drivers": {"m": {"driver": "memory", "lifetime": 5}}})
    assert short.lottery_seconds(short.drivers["m"].ttl) == 3.0
    assert SessionConfig.from_dict({"lottery_interval": 0}).lottery_seconds(7200) == 0
    assert SessionConfig.from_dict({"lottery_interval": 2.5}).lottery_seconds(7200) == 2.5
    with pytest.raises(ConfigError, match="did you mean 'lottery_interval'"):
        SessionConfig.from_dict({"lotteryInterval": 5})


@pytest.mark.parametrize("key", ["lifetime", "gc_interval", "absolute_lifetime"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_numbers_that_are_not_finite_are_a_config_error(key: str, value: float) -> None:
    # nan passed "must be positive" (every comparison with it is false), and an infinite
    # lifetime crashed with OverflowError when turned into seconds
    with pytest.raises(ConfigError, match=key):
        SessionConfig.from_dict({key: value})
