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

    def build(self, method: str | object, /, *, instance_of: type | tuple[type, ...] = object,
              student_dim: int | None = None, teacher_dim: int | None = None,
              **kwargs: object) -> object:
        """The one "name or instance" resolution: build a registered class, or pass through.

        Args:
            method: a registered name (case-insensitive, ``-``/``_`` ignored) or an object
                that is already an instance of ``instance_of`` (returned as it is).
            instance_of: what counts as an instance (e.g. ``nn.Module``).
            student_dim, teacher_dim: feature widths, passed to classes whose ``needs_dims``
                is true (they build trainable heads), and required for them.
            **kwargs: the class's constructor arguments.

        Raises:
            ValueError: unknown name (the message lists the valid ones), hyperparameters given
                with an instance, or a ``needs_dims`` class without widths.
            TypeError: ``method`` is neither a name nor an instance.
        """
        if not isinstance(method, str):
            if isinstance(method, instance_of) and not isinstance(method, type):
                if kwargs:
                    raise ValueError("hyperparameters go to the constructor when passing an "
                                     "instance.")
                return method
            raise TypeError(f"a {self.kind} must be a name or an instance, got "
                            f"{type(method).__name__}.")
        cls = self.get(method)
        if getattr(cls, "needs_dims", False):
            if student_dim is None or teacher_dim is None:
                raise ValueError(
                    f"{getattr(cls, 'name', method)!r} has trainable heads: pass student_dim= "
                    "and teacher_dim= (the Distiller does this after its first batch).")
            kwargs = {"student_dim": student_dim, "teacher_dim": teacher_dim, **kwargs}
        return cls(**kwargs)  # type: ignore[operator]

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
