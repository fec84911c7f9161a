"""One registry type for everything chosen by name: students, loss terms, teacher sources, data decoders.

Register by decorator (the function's or class's name, or an explicit one), list the names, and look one up:
an unknown name raises KeyError listing the valid ones. Registering a name twice warns and keeps the newer entry
(timm does the same), so a plugin can override a built-in on purpose without it happening silently.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Generic, TypeVar

from .errors import KdsearchError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: `@REG.register()` keys the entry by its __name__, `@REG.register("kd")` by the name given."""
        def add(entry: T) -> T:
            key = name or entry.__name__
            if key in self._entries:
                warnings.warn(f"{self.kind} {key!r} registered twice; the later one replaces the earlier", stacklevel=2)
            self._entries[key] = entry
            return entry
        return add

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; valid: {', '.join(self._entries)}")
        return self._entries[name]


def import_object(spec: str, key: str) -> Any:
    """`package.module:Name` (the user's own class, beside a registry's names) imported; exit 2 naming `key`."""
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise KdsearchError(f"{key} {spec}: cannot import ({e}); make sure the module is on PYTHONPATH") from None
