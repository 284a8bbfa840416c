"""Old public names kept for one release: importing one works and warns.

A module lists its renamed names and gets a module ``__getattr__`` (PEP 562) that
returns the new object with a DeprecationWarning naming the replacement.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["renamed"]


def renamed(module: str, names: Mapping[str, tuple[str, Callable[[], Any]]]
            ) -> Callable[[str], Any]:
    """A module ``__getattr__`` for *names*: old name -> (new name, lazy getter)."""

    def __getattr__(name: str) -> Any:
        if name in names:
            new, get = names[name]
            warnings.warn(f"{module}.{name} is deprecated; use {new}",
                          DeprecationWarning, stacklevel=2)
            return get()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
