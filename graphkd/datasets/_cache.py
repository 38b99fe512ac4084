"""A cache of decoded numpy arrays under the data root, keyed on the source file's hash.

Loaders that decode or featurize a large file (the MNIST pickle, 41,127 HIV molecules) keep the
result as one ``.npz`` file (``np.savez``: numeric arrays only, read back with
``allow_pickle=False``, so a cache file cannot run code) at ``<data root>/<name>/.cache/``. The
file name carries the SHA-256 of the source file and a format tag, so a changed source or
featurizer never reads a stale cache. Writes are atomic (:func:`graphkd.fileio.atomic_write`)
under an inter-process lock: concurrent loaders build once. A cache that cannot be read is
rebuilt; a data root that cannot be written (read-only) only costs the rebuild, with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["cached_arrays", "file_sha256"]

log = logging.getLogger(__name__)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        log.warning("%s: unreadable cache (%s); rebuilding it.", path, err)
        return None


def cached_arrays(path: str | os.PathLike | None,
                  build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``build()``'s arrays, read from the ``.npz`` at ``path`` when it exists, else built and
    written there atomically.

    Args:
        path: the cache file (its name should carry the source's hash); ``None``: no cache.
        build: computes the arrays (numeric dtypes or fixed-width strings; no objects).

    Returns:
        name -> array, as ``build`` returns them.
    """
    if path is None:
        return build()
    path = Path(path)
    if path.is_file():
        arrays = _read(path)
        if arrays is not None:
            return arrays
    from graphkd.fileio import atomic_write, file_lock

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(path))
        except OSError as err:
            log.warning("cannot write the cache %s (%s); building without it.", path, err)
            return build()
        if path.is_file():  # another process built it while we waited for the lock
            arrays = _read(path)
            if arrays is not None:
                return arrays
        arrays = build()
        objects = [k for k, v in arrays.items() if v.dtype.hasobject]
        if objects:
            raise TypeError(f"cached_arrays: {objects} hold Python objects; only numeric and "
                            "fixed-width string arrays are cached (they are read without pickle).")
        try:
            atomic_write(path, lambda fh: np.savez(fh, **arrays))
        except OSError as err:
            log.warning("cannot write the cache %s (%s); continuing without it.", path, err)
        return arrays
