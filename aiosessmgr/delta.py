"""A request's changes to one session, and their replay on a fresher record.

:class:`Delta` is the session's working copy (``data`` and ``meta``) plus what this
request changed: keys set or deleted, a flush, replayable operations (``incr``,
``push``), metadata written, the CSRF token created or rotated, and flash bookkeeping.
When another request saved first, :meth:`Delta.rebase` replays those changes on the
record it wrote, by meaning:

* data: keys set or deleted here win, operations replay on the fresh value;
* flash: a flash read here is dropped only if the stored one is still the flash that
  was read (a newer flash of the same key stays); flashes made here are added;
* CSRF token: one created here yields to one already stored (the page that showed it
  keeps working) unless this request rotated it;
* other metadata written here wins.

Flash lifetime follows Laravel's ``flash``/``now``/``reflash``/``keep``, except that a
flashed key lasts until a request *reads* it (not only the next request): a poll
between a POST and its redirect does not eat the message. ``keep`` of a key forgotten in
the same request keeps nothing (Laravel would keep a flash entry with no data).
"""

from __future__ import annotations

import secrets
from collections.abc import Set as AbstractSet
from typing import Any, Final

__all__ = ["DEL", "SET", "Delta", "apply"]

#: a key's final local value is written as is, or the key is deleted
SET: Final = "set"
DEL: Final = "del"
_Ops = list[tuple[str, Any]]


def apply(op: str, current: Any, arg: Any) -> Any:
    """Apply a replayable operation (``"incr"`` or ``"push"``) to a key's current value."""
    if op == "incr":
        base = current if isinstance(current, (int, float)) and not isinstance(current, bool) \
            else 0
        return base + arg
    # push: a list gains one item; anything that is not a list starts a new one
    return [*current, arg] if isinstance(current, list) else [arg]


class _FlashDelta:
    """One request's flash changes, made the first time a request touches flash data."""

    __slots__ = ("new", "now", "read", "replaced")

    def __init__(self) -> None:
        # flashes read, so consumed (key -> token of the flash read); flashes made here
        # (key -> new token); keys set with now(); pending flashes flashed over (key ->
        # their token)
        self.read: dict[str, str] = {}
        self.new: dict[str, str] = {}
        self.now: set[str] = set()
        self.replaced: dict[str, str] = {}


class Delta:
    """The working copy of one session in one request and the changes that made it."""

    __slots__ = ("changes", "data", "fd", "flushed", "meta", "meta_changed", "rewrite",
                 "token_at_flush", "token_change", "whole")

    def __init__(self, data: dict[str, Any] | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = {} if data is None else data
        self.meta: dict[str, Any] = {} if meta is None else meta
        self.changes: dict[str, str | _Ops] = {}
        self.flushed = False
        self.meta_changed: set[str] = set()
        # "created" (lazily, on first use) or "rotated" (regenerate_token, regenerate)
        self.token_change: str | None = None
        # the CSRF token when flush() last ran (a token made after it is a new one)
        self.token_at_flush: str | None = None
        # this request's flash changes; made the first time it touches flash data
        self.fd: _FlashDelta | None = None
        # the stored record is rewritten although nothing changed (stale key, touch)
        self.rewrite = False
        # the next write is of a new id, whole: nothing to merge with
        self.whole = False

    @property
    def pending(self) -> bool:
        """True if there are changes that a save would write."""
        fd = self.fd
        return bool(self.changes or self.flushed or self.meta_changed or self.rewrite
                    or self.token_change or (fd is not None and bool(fd.read or fd.now)))

    def clear(self) -> None:
        """Forget the changes (they were written, or must not be)."""
        self.changes = {}
        self.flushed = False
        self.meta_changed = set()
        self.rewrite = False
        self.token_change = None
        self.fd = None

    def write_whole(self) -> None:
        """The next save writes the whole state under a new id: nothing to merge with."""
        self.whole = True
        self.changes = {key: SET for key in self.data}
        self.flushed = True
        self.meta_changed = set(self.meta)

    # -- data ------------------------------------------------------------------------------

    def set(self, key: str, value: Any) -> None:
        """Set *key* to *value*."""
        self.data[key] = value
        self.changes[key] = SET

    def delete(self, key: str) -> None:
        """Delete *key* (KeyError if absent); its pending flash goes too."""
        del self.data[key]
        self.changes[key] = DEL
        if "f" in self.meta:
            self.unflash(key)

    def op(self, key: str, op: str, arg: Any) -> Any:
        """Apply a replayable operation to *key* and record it; return the new value."""
        value = apply(op, self.data.get(key), arg)
        self.data[key] = value
        change = self.changes.get(key)
        if isinstance(change, list):
            change.append((op, arg))
        elif change is None:
            self.changes[key] = [(op, arg)]
        else:
            # after a plain set or delete in this request the final value is absolute
            self.changes[key] = SET
        return value

    def flush(self) -> None:
        """Remove all data and pending flash data."""
        self.data.clear()
        self.changes.clear()
        self.flushed = True
        self.meta.pop("f", None)
        self.fd = None
        self.token_at_flush = self.meta.get("k")

    def drop_token(self, unless_new: bool = False) -> None:
        """Forget the CSRF token (a logout); *unless_new*: keep one made since flush()."""
        if unless_new and self.meta.get("k") not in (None, self.token_at_flush):
            return
        self.meta.pop("k", None)
        self.token_change = None

    def set_meta(self, name: str, value: Any) -> None:
        """Write one metadata entry (it wins over the stored one at a merge)."""
        self.meta[name] = value
        self.meta_changed.add(name)

    def unset_meta(self, name: str) -> None:
        """Remove one metadata entry (the removal wins over the stored one at a merge)."""
        self.meta.pop(name, None)
        self.meta_changed.add(name)

    def new_token(self, rotate: bool = True) -> str:
        """Make a CSRF token: created lazily (yields to a stored one) or rotated (wins)."""
        token = secrets.token_urlsafe(32)
        self.meta["k"] = token
        if rotate or self.token_change is None:
            self.token_change = "rotated" if rotate else "created"
        return token

    # -- flash -----------------------------------------------------------------------------

    def _flash_delta(self) -> _FlashDelta:
        if self.fd is None:
            self.fd = _FlashDelta()
        return self.fd

    def seen(self, key: str) -> None:
        """A read of *key*: if it holds a flash of an earlier request, this consumes it."""
        token = self.meta["f"].get(key)
        if token is not None:
            fd = self._flash_delta()
            if key not in fd.new and key not in fd.read:
                fd.read[key] = token

    def seen_all(self, skip: AbstractSet[str] = frozenset()) -> None:
        """A read of every flashed key but *skip*."""
        for key in list(self.meta["f"]):
            if key not in skip:
                self.seen(key)

    def unflash(self, key: str) -> None:
        """*key* is removed: its pending flash goes too (conditionally, by its token)."""
        flash, fd = self.meta["f"], self._flash_delta()
        if key in fd.new:
            del fd.new[key]
            flash.pop(key, None)
            if key in fd.replaced:  # the flash it had replaced goes as well
                fd.read.setdefault(key, fd.replaced.pop(key))
        elif key in flash:
            fd.read.setdefault(key, flash[key])

    def flash(self, key: str, value: Any) -> None:
        """Set *key* until a later request reads it."""
        self.set(key, value)
        token = secrets.token_hex(4)
        flash, fd = self.meta.setdefault("f", {}), self._flash_delta()
        if key in flash and key not in fd.new:
            fd.replaced[key] = flash[key]
        flash[key] = token
        fd.new[key] = token
        fd.read.pop(key, None)
        fd.now.discard(key)

    def now(self, key: str, value: Any) -> None:
        """Set *key* for this request only."""
        if "f" in self.meta:
            self.unflash(key)
        self.set(key, value)
        self._flash_delta().now.add(key)

    def keep(self, keys: tuple[str, ...] | None = None) -> None:
        """Keep the named flash keys read (or set with ``now``) here; None: all of them.

        A key set with ``now`` becomes a flash of its current value (so does one that was
        also a flash read here: ``now`` overrode that flash). A key no longer in the data
        (forgotten here) has nothing to keep: keep is a no-op for it, so no flash stays
        pending without its data.
        """
        fd = self.fd
        if fd is None:
            return
        if keys is None:
            keys = (*fd.read, *fd.now)
        data = self.data
        for key in keys:
            if key not in data:
                continue
            if key in fd.now:
                fd.now.discard(key)
                self.flash(key, data[key])
            elif key in fd.read:
                # still pending, with the flash's own token (restored locally where
                # unflash() removed it, so a save without a merge keeps it as well)
                self.meta.setdefault("f", {})[key] = fd.read.pop(key)

    def age_flash(self) -> None:
        """At save: drop the flashes this request read and the keys it set with ``now``.

        A flashed key this request read goes, with whatever this request wrote to it;
        whether the stored key goes too is decided at the merge, by the flash's token
        (another request may have flashed that key again meanwhile).
        """
        fd = self.fd
        if fd is None:
            return
        if fd.read:
            flash = self.meta.get("f") or {}
            for key, token in fd.read.items():
                if flash.get(key) == token:
                    del flash[key]
                self.data.pop(key, None)
                self.changes.pop(key, None)
            if not flash:
                self.meta.pop("f", None)
        for key in fd.now:
            self.data.pop(key, None)
            self.changes[key] = DEL

    # -- replay ----------------------------------------------------------------------------

    def replay(self, base: dict[str, Any]) -> dict[str, Any]:
        """*base* (changed in place and returned) with this request's data changes on it."""
        for key, change in self.changes.items():
            if isinstance(change, list):
                value = base.get(key)
                for op, arg in change:
                    value = apply(op, value, arg)
                base[key] = value
            elif change == SET:
                base[key] = self.data[key]
            else:
                base.pop(key, None)
        return base

    def own(self) -> dict[str, tuple[Any, bool]]:
        """This request's own data, replayed on nothing: key -> (value, flashed here);
        values set for this request only (``now``) are left out."""
        fd = self.fd
        flashed, now = (set(fd.new), fd.now) if fd is not None else (set(), set())
        return {key: (value, key in flashed)
                for key, value in self.replay({}).items() if key not in now}

    def rebase(self, fresh: dict[str, Any], fresh_meta: dict[str, Any]) -> None:
        """Replay these changes on the record another request just wrote (module doc)."""
        if self.whole:
            return  # a new id written whole: our state is the record
        merged = self.replay({} if self.flushed else fresh)
        for name in self.meta_changed:
            if name in self.meta:
                fresh_meta[name] = self.meta[name]
            else:
                fresh_meta.pop(name, None)
        token = self.meta.get("k")
        if token is not None and (self.token_change == "rotated" or (
                self.token_change == "created" and "k" not in fresh_meta)):
            fresh_meta["k"] = token
        flash: dict[str, str] = {} if self.flushed else dict(fresh_meta.get("f") or {})
        fd = self.fd
        if fd is not None:
            for key, read_token in fd.read.items():
                if flash.get(key) == read_token:
                    del flash[key]
                    merged.pop(key, None)
            flash.update(fd.new)
        if flash:
            fresh_meta["f"] = flash
        else:
            fresh_meta.pop("f", None)
        self.data, self.meta = merged, fresh_meta
