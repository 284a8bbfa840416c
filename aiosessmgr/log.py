"""The ``aiosessmgr`` logger, which never shows a whole session id.

A session id is a bearer credential (OWASP Session Management Cheat Sheet: ids must
not reach logs): whoever reads it can use the session. Our own messages name a session
by its first six characters (``abc123…``, :func:`abbreviate`). Text we do not write
ourselves can still carry one (an ``OSError`` naming a file, a redis-py error naming a
key, a custom driver's exception), so :class:`RedactSessionIds`, installed on the
logger here, shortens every id-shaped run of characters in the message, the formatted
traceback and the stack of each record before any handler sees it. ``setup(app,
manager)`` installs it on ``aiohttp.server`` and ``aiohttp.web`` too, where aiohttp logs
the traceback of an exception that escapes a handler (a custom driver raising something
other than DriverError, say).

The bottom of the package: nothing here imports anything of ours but ``ids``.
"""

from __future__ import annotations

import logging
import re
from typing import Final

from .ids import SESSION_ID_LENGTH

__all__ = ["RedactSessionIds", "RedactedTraceback", "abbreviate", "install", "logger",
           "redact"]

#: a run of URL-safe base64 characters long enough to hold a whole id, with upper and
#: lower case letters in it (a random id has both but for a chance of about 1e-10; a long
#: snake_case name in a traceback has no capitals and is left alone)
_ID_RUN: Final = re.compile(
    rf"(?=[A-Za-z0-9_-]*[A-Z])(?=[A-Za-z0-9_-]*[a-z])[A-Za-z0-9_-]{{{SESSION_ID_LENGTH},}}"
)
_FORMATTER: Final = logging.Formatter()


def abbreviate(session_id: str) -> str:
    """The form of an id that logs and error messages show: its first 6 characters and …."""
    return session_id[:6] + "…"


def redact(text: str) -> str:
    """*text* with every run of characters that could be a whole session id abbreviated."""
    return _ID_RUN.sub(_shorten, text)


def _shorten(match: re.Match[str]) -> str:
    return abbreviate(match.group())


class RedactedTraceback(Exception):
    """Stands in for a logged exception whose traceback named a session id.

    Its message is that traceback, redacted, so a formatter that formats ``exc_info``
    itself shows it instead of the original (whose text keeps the whole id).
    """


def install(target: logging.Logger) -> None:
    """Add the redacting filter to *target* once (``setup()`` adds it to aiohttp's)."""
    if not any(type(f).__name__ == "RedactSessionIds" for f in target.filters):
        target.addFilter(RedactSessionIds())


class RedactSessionIds(logging.Filter):
    """A logging filter that abbreviates session ids in a record's text; drops nothing.

    The message is rendered and redacted (``args`` are merged into it); a traceback is
    formatted once, redacted, and kept as ``exc_text``, which ``logging.Formatter`` uses
    instead of formatting ``exc_info`` again.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the message: show both, never raise
            message = f"{record.msg} {record.args!r}"
        redacted = redact(message)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            text = redact(record.exc_text)
            if text != record.exc_text:
                record.exc_text = text
                if record.exc_info:
                    # for formatters that format exc_info themselves (JSON ones do)
                    record.exc_info = (RedactedTraceback, RedactedTraceback(text), None)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


logger: Final = logging.getLogger("aiosessmgr")
install(logger)
