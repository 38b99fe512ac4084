"""A name -> class registry, the one mechanism behind every "method by name" lookup.

Used by the graph distillation losses (:mod:`graphkd.losses`), the ranking losses
(:mod:`recsys.losses`), the RecBole plugin's method adapters, the metrics
(:mod:`graphkd.metrics`), the model presets (:mod:`graphkd.models.presets`) and the experiment
pipeline's datasets and models (:mod:`graphkd.pipeline`), so that all of them resolve names the
same way (case-insensitive, ``-``/``_`` ignored) and fail the same way (an error that lists the
valid names). Classes register with the :meth:`Registry.register` decorator (which also sets
``cls.name``); any other object (a function, a metric, someone else's class) with
:meth:`Registry.add`, which leaves it untouched.

Example:
    >>> KINDS = Registry("widget")
    >>> @KINDS.register("round-one")
    ... class Round: ...
    >>> KINDS.get("Round_One") is Round
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


def _key(name: str) -> str:
    return str(name).lower().replace("-", "").replace("_", "")


class Registry(Mapping[str, T], Generic[T]):
    """Read-only mapping of registered names to entries, filled by :meth:`register`/:meth:`add`.

    Args:
        kind: what is registered, for error messages (``"distillation method"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: register ``cls`` under ``name`` and set ``cls.name = name``."""

        def deco(cls: T) -> T:
            self.add(name, cls)
            cls.name = name
            return cls

        return deco

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name`` as it is (no attribute set); returns ``obj``.

        Raises:
            ValueError: another entry is registered under ``name`` (or a spelling of it).
        """
        clash = self.find(name)
        if clash is not None and self._items[clash] is not obj:
            other = self._items[clash]
            raise ValueError(f"a {self.kind} named {name!r} is already registered "
                             f"({getattr(other, '__qualname__', repr(other))}).")
        self._items[clash or name] = obj
        return obj

    def find(self, name: str) -> str | None:
        """The registered spelling of ``name`` (case-insensitive, ``-``/``_`` ignored), or
        ``None`` when nothing is registered under it."""
        key = _key(name)
        return next((n for n in self._items if _key(n) == key), None)

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._items)

    def get(self, name: str, default: T | None = None) -> T:  # type: ignore[override]
        """The entry registered under ``name`` (case-insensitive, ``-``/``_`` ignored).

        Raises:
            ValueError: unknown name; the message lists the valid ones (unless a ``default``
                is given, which is then returned).
        """
        found = self.find(name) if name is not None else None
        if found is None:
            if default is not None:
                return default
            raise ValueError(f"unknown {self.kind} {name!r}; valid names: {self.names()}.")
        return self._items[found]

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
