"""Checking the keys of a config mapping: one ConfigError that names the valid keys.

Shared by the config sections and by drivers validating their own options (drivers
import nothing from config). Imports only errors.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from .errors import ConfigError

__all__ = ["check_keys"]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def check_keys(where: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """Raise ConfigError for the first key of *given* not in *valid*, with a helpful hint."""
    valid = sorted(valid)
    for key in given:
        if key in valid:
            continue
        hint = ""
        snake = _snake(str(key))
        if snake != key and snake in valid:
            hint = f" (did you mean {snake!r}? keys are snake_case)"
        else:
            close = difflib.get_close_matches(str(key), valid, n=1)
            if close:
                hint = f" (did you mean {close[0]!r}?)"
        raise ConfigError(f"unknown key {where}{key!r}{hint}; valid keys: {', '.join(valid)}")
