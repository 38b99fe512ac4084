"""Atomic, concurrency-safe file writes and confined output paths: the one place files are written.

Every file the library writes (checkpoints, soft-label caches, manifests, results) goes through
:func:`atomic_write`: the bytes are written to a temporary file **unique to this call** in the
target's directory, flushed and ``fsync``-ed, then moved into place with :func:`os.replace`
(atomic on POSIX and Windows). A reader therefore sees either the old file or the whole new one,
never half a file, and two processes writing the same path never trip over each other's
temporary file (the last ``os.replace`` wins; both results are complete).

Shared caches that several processes may fill at once use :func:`file_lock` ("first writer wins,
the others wait and then read"): an exclusive ``fcntl.flock`` on a side ``<name>.lock`` file.

:func:`safe_child` confines user-chosen names (run names, dataset names) to an output root.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = atomic_write_text(d / "a.json", "{}")
    >>> (d / "a.json").read_text()
    '{}'
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
    "atomic_torch_save", "file_lock", "check_name", "safe_child",
]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *,
                 fsync: bool = True) -> Path:
    """Write a file atomically: ``write(fh)`` into a unique temporary file, then ``os.replace``.

    Args:
        path: the destination; its parent directory is created if missing.
        write: called with a binary file handle open on the temporary file.
        fsync: flush the data to disk before the rename (and the directory after it, on POSIX),
            so a power loss cannot leave an empty file under the final name.

    Returns:
        The destination path.

    On any exception the temporary file is removed and the destination is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync and os.name == "posix":
        with contextlib.suppress(OSError):
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, **kwargs: Any) -> Path:
    """:func:`atomic_write` of a ``bytes`` object."""
    return atomic_write(path, lambda fh: fh.write(data), **kwargs)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8",
                      **kwargs: Any) -> Path:
    """:func:`atomic_write` of a string."""
    return atomic_write_bytes(path, text.encode(encoding), **kwargs)


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> Path:
    """:func:`atomic_write` of ``json.dumps(obj, **dumps_kwargs)`` plus a final newline."""
    return atomic_write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` made atomic (see :func:`atomic_write`)."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive inter-process lock tied to ``path`` (on the side file ``<path>.lock``).

    Blocks until the lock is free. Use it around "check the cache, build it if missing" so that
    the first process builds and the others, once they get the lock, find the finished file.
    On platforms without ``fcntl`` the lock degrades to a no-op (writes stay atomic).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a plain file-name component, else raise ``ValueError``.

    Refused: empty names, ``.``/``..``, absolute paths, and anything with a path separator.
    """
    text = str(name)
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if (not text or text in {".", ".."} or any(s in text for s in seps)
            or os.path.isabs(text) or "\x00" in text):
        raise ValueError(
            f"{what} {name!r} is not a plain name: it must not be empty, absolute, '.'/'..', "
            f"or contain a path separator (outputs stay under the directory you chose).")
    return text


def safe_child(root: str | os.PathLike, *parts: str, what: str = "name") -> Path:
    """``root / part / ...`` after checking every part with :func:`check_name`.

    The result is verified to resolve inside ``root`` (symlinks included).
    """
    root_path = Path(root)
    out = root_path.joinpath(*(check_name(p, what) for p in parts))
    base = root_path.resolve()
    if base not in (out.resolve(), *out.resolve().parents):
        raise ValueError(f"{what} {'/'.join(parts)!r} resolves outside {str(root_path)!r}.")
    return out
