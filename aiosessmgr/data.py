"""The data API handlers use: a mapping plus Laravel's session methods, written once.

:class:`SessionData` works on a :class:`~aiosessmgr.delta.Delta` (``self._d``): every
change is recorded there, so it can be replayed on a fresher record at save. A flashed
key lasts until a later request reads it (``get``, ``[]``, ``pull``, ``has``, ``all``,
``only``, ``except_``) and is removed when that request saves; ``in`` and ``exists``
do not consume it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Final

from .delta import Delta
from .errors import SessionError

__all__ = ["SessionData"]

_MISSING: Final = object()


class SessionData(MutableMapping[str, Any]):
    """Session values: ``session["k"]``, ``get``/``put``/``pull``/``forget``, flash data,
    the creation time and the CSRF token (all kept in the working copy, ``self._d``)."""

    __slots__ = ()
    _d: Delta

    @property
    def modified(self) -> bool:
        """True if there are changes that ``save()`` would write."""
        return self._d.pending

    @property
    def delta(self) -> Mapping[str, str | tuple[tuple[str, Any], ...]]:
        """This request's changes per key: ``"set"``, ``"del"``, or replayable operations."""
        return {k: v if isinstance(v, str) else tuple(v) for k, v in self._d.changes.items()}

    @property
    def flushed(self) -> bool:
        """True if this request flushed (or invalidated) the session."""
        return self._d.flushed

    @property
    def created_at(self) -> float:
        """When the session was first created (seconds since the epoch)."""
        return float(self._d.meta.get("c", 0.0))

    # -- CSRF token ------------------------------------------------------------------------

    @property
    def token(self) -> str:
        """The per-session CSRF secret, created on first use."""
        token = self._d.meta.get("k")
        return token if isinstance(token, str) else self._d.new_token(rotate=False)

    @property
    def has_token(self) -> bool:
        """True if the session holds a CSRF secret already (reading ``token`` makes one)."""
        return isinstance(self._d.meta.get("k"), str)

    def regenerate_token(self) -> str:
        """Replace the CSRF secret and return it (done automatically on ``regenerate()``)."""
        return self._d.new_token()

    # -- the mapping and Laravel's methods ---------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        d = self._d
        if "f" in d.meta:
            d.seen(key)
        return d.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._d.set(key, value)

    def __delitem__(self, key: str) -> None:
        self._d.delete(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._d.data)

    def __len__(self) -> int:
        return len(self._d.data)

    def __contains__(self, key: object) -> bool:
        return key in self._d.data

    def clear(self) -> None:
        """Same as :meth:`flush`."""
        self.flush()

    def get(self, key: str, default: Any = None) -> Any:
        """The value of *key*, or *default* (reading a flashed key consumes it)."""
        d = self._d
        if "f" in d.meta:
            d.seen(key)
        return d.data.get(key, default)

    def put(self, key: str | Mapping[str, Any], value: Any = None) -> None:
        """Set one key, or every key of a mapping."""
        items = key.items() if isinstance(key, Mapping) else ((key, value),)
        for k, v in items:
            self._d.set(k, v)

    def pull(self, key: str, default: Any = None) -> Any:
        """Remove *key* and return its value (or *default*)."""
        value = self._d.data.get(key, _MISSING)
        if value is _MISSING:
            return default
        self._d.delete(key)
        return value

    def has(self, *keys: str) -> bool:
        """True if every key is present and not None (reading a flashed key consumes it)."""
        d = self._d
        if "f" in d.meta:
            for key in keys:
                d.seen(key)
        return all(d.data.get(k) is not None for k in keys)

    def exists(self, *keys: str) -> bool:
        """True if every key is present, even with a None value (consumes no flash)."""
        return all(k in self._d.data for k in keys)

    def missing(self, *keys: str) -> bool:
        """True if no key is present."""
        return not any(k in self._d.data for k in keys)

    def forget(self, *keys: str) -> None:
        """Remove the keys that are present."""
        for key in keys:
            if key in self._d.data:
                self._d.delete(key)

    def flush(self) -> None:
        """Remove all data (and pending flash data); the id and CSRF token stay."""
        self._d.flush()

    def all(self) -> dict[str, Any]:
        """A shallow copy of all data (this reads, and so consumes, every flashed key)."""
        d = self._d
        if "f" in d.meta:
            d.seen_all()
        return dict(d.data)

    def only(self, *keys: str) -> dict[str, Any]:
        """The present keys among *keys*, with their values."""
        d = self._d
        if "f" in d.meta:
            for key in keys:
                d.seen(key)
        return {k: d.data[k] for k in keys if k in d.data}

    def except_(self, *keys: str) -> dict[str, Any]:
        """All data except *keys* (named with an underscore: ``except`` is a keyword)."""
        skip, d = set(keys), self._d
        if "f" in d.meta:
            d.seen_all(skip)
        return {k: v for k, v in d.data.items() if k not in skip}

    def increment(self, key: str, by: int | float = 1) -> int | float:
        """Add *by* to a number (missing counts as 0) and return it; merges with others.

        Raises SessionError if *key* holds something that is not a number.
        """
        current = self._d.data.get(key, 0)
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            raise SessionError(f"cannot increment {key!r}: it holds {type(current).__name__}")
        result: int | float = self._d.op(key, "incr", by)
        return result

    def decrement(self, key: str, by: int | float = 1) -> int | float:
        """Subtract *by* from a number and return it."""
        return self.increment(key, -by)

    def push(self, key: str, value: Any) -> None:
        """Append *value* to the list at *key* (created if missing); merges with others.

        Raises SessionError if *key* holds something that is not a list.
        """
        current = self._d.data.get(key, [])
        if not isinstance(current, list):
            raise SessionError(f"cannot push onto {key!r}: it holds {type(current).__name__}")
        self._d.op(key, "push", value)

    def flash(self, key: str, value: Any) -> None:
        """Set *key* until a later request reads it (the next page after a redirect)."""
        self._d.flash(key, value)

    def now(self, key: str, value: Any) -> None:
        """Set *key* for this request only."""
        self._d.now(key, value)

    def reflash(self) -> None:
        """Keep all flash data this request read (or set with ``now``) for a later request."""
        self._d.keep()

    def keep(self, *keys: str) -> None:
        """Keep the named flash keys that this request read (or set with ``now``) for later."""
        self._d.keep(keys)


