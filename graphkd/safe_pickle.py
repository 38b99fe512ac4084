"""Unpickling with an exact ``(module, name)`` allow-list: the only way graphkd reads a pickle.

``pickle.load`` executes whatever callables a file names (``os.system`` included). Every pickle
graphkd or its RecBole plugin reads goes through :class:`AllowListUnpickler`, which resolves a
global only when its ``(module, name)`` pair is *exactly* in the allow-list: no prefix matches,
no dotted names (pickle protocol 4 resolves ``"a.b"`` as an attribute chain, so ``torch.os.system``
inside an allowed module would reach any function), and everything else raises
``pickle.UnpicklingError`` before anything is called. The pairs are checked as the file spells
them, before Python 2 names are mapped (``__builtin__`` -> ``builtins``).

Users of the mechanism: :func:`graphkd.datasets.load_mnist` (the numpy arrays of
``mnist.pkl.gz``: :data:`NUMPY_ARRAY_GLOBALS`) and
:func:`recsys.recbole.compat.load_recbole_checkpoint` (a subclass that also rebuilds RecBole's
``Config`` without calling it).

Example:
    >>> import pickle
    >>> load_pickle(pickle.dumps([1, (2.0, "a")]), allowed=())
    [1, (2.0, 'a')]
    >>> import os
    >>> try:
    ...     load_pickle(pickle.dumps(os.system), allowed=NUMPY_ARRAY_GLOBALS)
    ... except pickle.UnpicklingError as err:
    ...     print(str(err).split(":")[0])
    refusing to load posix.system from the pickle
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable
from typing import IO, Any

__all__ = ["NUMPY_ARRAY_GLOBALS", "AllowListUnpickler", "load_pickle"]

#: What a numpy < 2 pickle of plain ``ndarray`` objects references (found with
#: ``pickletools.genops`` on ``mnist.pkl.gz``): the array reconstructor, the class it gets and the
#: dtype. ``_reconstruct(ndarray, (0,), b"b")`` builds an empty array, ``dtype(...)`` a dtype;
#: ``BUILD`` then calls their ``__setstate__`` with the shape and the raw bytes.
NUMPY_ARRAY_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
})


class AllowListUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only the exact ``(module, name)`` pairs allowed.

    Subclasses may set the class attribute :attr:`allowed`, override :meth:`refuse` (the error)
    and :meth:`resolve` (globals outside the allow-list that they can stand in for safely; the
    default refuses).

    Args:
        file: a binary file object.
        allowed: the exact ``(module, name)`` pairs to resolve (default: the class attribute).
        what: names the file in the error (e.g. its path).
        **kwargs: passed to ``pickle.Unpickler`` (``encoding="latin1"`` for Python 2 pickles).
    """

    allowed: frozenset[tuple[str, str]] = frozenset()

    def __init__(self, file: IO[bytes], *, allowed: Iterable[tuple[str, str]] | None = None,
                 what: str = "the pickle", **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        if allowed is not None:
            self.allowed = frozenset(allowed)
        self.what = what

    def refuse(self, what: str) -> pickle.UnpicklingError:
        """The error raised for a global outside the allow-list (``what`` names it)."""
        return pickle.UnpicklingError(
            f"refusing to load {what} from {self.what}: only {sorted(self.allowed)} are "
            "allowed. Never unpickle a file you do not trust.")

    def lookup(self, module: str, name: str) -> Any:
        """The unrestricted lookup of ``pickle.Unpickler`` (for subclasses' :meth:`resolve`)."""
        return super().find_class(module, name)

    def resolve(self, module: str, name: str) -> Any:
        """A global outside the allow-list: refused here; subclasses may return a stand-in."""
        raise self.refuse(f"{module}.{name}")

    def find_class(self, module: str, name: str) -> Any:
        """pickle's hook for every global: the exact allow-list, then :meth:`resolve`."""
        if "." in name:  # protocol 4 would resolve it as an attribute chain
            raise self.refuse(f"{module}.{name} (a dotted name)")
        if (module, name) in self.allowed:
            return self.lookup(module, name)
        return self.resolve(module, name)


def load_pickle(data: bytes | IO[bytes], allowed: Iterable[tuple[str, str]], *,
                what: str = "the pickle", encoding: str = "ASCII") -> Any:
    """Unpickle ``data`` resolving only the exact ``(module, name)`` pairs of ``allowed``.

    Args:
        data: the pickle's bytes, or a binary file object positioned at it.
        allowed: exact ``(module, name)`` pairs, e.g. :data:`NUMPY_ARRAY_GLOBALS`.
        what: names the source in the error message.
        encoding: how Python 2 ``str`` objects are decoded (``"latin1"`` for numpy arrays
            pickled by Python 2, as ``mnist.pkl.gz``).

    Raises:
        pickle.UnpicklingError: the data names a global outside ``allowed`` (nothing is called).
    """
    fh = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    return AllowListUnpickler(fh, allowed=allowed, what=what, encoding=encoding).load()
