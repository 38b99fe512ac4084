"""The memory-mapped top-K format (``"mmap"``): a directory filled by row ranges, read zero-copy.

``path/`` holds

- ``indices.int64`` (``[U, K]`` int64), ``scores.bin`` (``[U, K]``, float16/32/64) and
  ``users.int64`` (``[U]``): raw C-order arrays, pre-allocated at their final size;
- ``layout.json`` (the manifest): format, :data:`~recsys.softlabels.FORMAT_VERSION`,
  ``num_users``, ``k``, ``num_items``, ``scores_dtype``, ``padding_item``, ``fingerprint`` and
  ``files`` (the byte size of each data file), written when the files are allocated;
- one completion marker ``done-<start>-<stop>.json`` per finished row range, holding the same
  header, the range, and ``blake2b``: ``{file name: hex digest}`` of the bytes of rows
  ``[start, stop)`` of each data file (hashed from the arrays as they are written).

:class:`MappedTopKWriter` fills one row range (several processes may fill disjoint ranges of
one directory); :func:`load_topk_mmap` checks sizes, coverage and digests and maps the files
copy-on-write. Registered as ``format="mmap"`` of :func:`~recsys.softlabels.save_topk` /
:func:`~recsys.softlabels.load_topk`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graphkd.fileio import atomic_write_json
from recsys.softlabels.settings import SCORE_DTYPES
from recsys.softlabels.store import (
    FORMAT_VERSION,
    CorruptTopKError,
    IncompleteTopKError,
    register_format,
)
from recsys.softlabels.topk import TopK

__all__ = ["LAYOUT_NAME", "MappedTopKWriter", "load_topk_mmap", "open_mapped", "clear_mapped"]

_MMAP_FORMAT = "graphkd-topk-mmap"
_HASH_BLOCK = 8 << 20  # bytes read at a time when verifying
#: The manifest's file name.
LAYOUT_NAME = "layout.json"
_FILES = {"indices": "indices.int64", "scores": "scores.bin", "users": "users.int64"}


def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    """Atomic JSON write (:func:`graphkd.fileio.atomic_write_json`)."""
    atomic_write_json(path, obj, sort_keys=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError) as exc:
        raise IncompleteTopKError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict):
        raise IncompleteTopKError(f"{path} is not a JSON object.")
    return obj


def _marker_name(start: int, stop: int) -> str:
    return f"done-{start:012d}-{stop:012d}.json"


def _file_bytes(layout: Mapping[str, Any]) -> dict[str, int]:
    n, k = int(layout["num_users"]), int(layout["k"])
    item = np.dtype(layout["scores_dtype"]).itemsize
    return {"indices": n * k * 8, "scores": n * k * item, "users": n * 8}


def _allocate(path: Path, name: str, nbytes: int, reset: bool, same: bool) -> None:
    """Create or extend ``path/name`` to ``nbytes`` without touching existing content.

    ``reset``: start from a new, empty file (the old one is unlinked, not truncated, so a process
    still mapping it keeps valid pages instead of getting SIGBUS). ``same``: the directory's
    ``layout.json`` already describes this extraction (a wrong size is then damage).
    """
    if reset:
        (path / name).unlink(missing_ok=True)
    fd = os.open(path / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size not in (0, nbytes):
            what = ("the file is damaged (truncated or overwritten)" if same else
                    "the directory holds another extraction (or a damaged file)")
            raise ValueError(
                f"{path / name} has {size} bytes but this extraction needs {nbytes}: {what}. "
                "Run once with user_range=None to rebuild the directory (shared_teacher_topk "
                "does this itself), or use a fresh directory (e.g. named by the fingerprint)."
            )
        if size != nbytes:
            os.ftruncate(fd, nbytes)  # sparse: no disk blocks until written
    finally:
        os.close(fd)


def _memmap(path: Path, layout: Mapping[str, Any], key: str, mode: str) -> np.memmap:
    n, k = int(layout["num_users"]), int(layout["k"])
    dtype = np.dtype(layout["scores_dtype"]) if key == "scores" else np.dtype(np.int64)
    shape = (n,) if key == "users" else (n, k)
    if n == 0 or k == 0:
        raise IncompleteTopKError(f"{path} describes an empty top-K ({n} users, k={k}).")
    return np.memmap(path / _FILES[key], dtype=dtype, mode=mode, shape=shape)



class MappedTopKWriter:
    """Writes rows ``[start, stop)`` of a memory-mapped top-K directory (format ``"mmap"``).

    Construction creates ``path``, checks or writes the manifest and allocates the data files
    at their final size (extended, never truncated, so several processes may fill disjoint
    ranges of one directory, each with the same shape, dtype, padding item and fingerprint);
    :meth:`write` copies consecutive row blocks into the maps, hashing the bytes written and
    flushing each block; :meth:`finish` writes the range's completion marker, last.

    Args:
        path: the directory (created if needed).
        num_users, k, num_items: the full top-K's shape.
        scores_dtype: stored score dtype (float16, float32 or float64).
        padding_item, fingerprint: recorded in the manifest (the fingerprint is checked by
            :func:`load_topk_mmap`).
        user_range: rows ``(start, stop)`` this writer fills; ``None``: all rows, after
            discarding whatever ``path`` held.

    Raises:
        ValueError: a bad ``user_range`` / ``scores_dtype``, a directory holding another
            extraction or a damaged data file (wrong size; ``user_range=None`` rebuilds).
    """

    def __init__(self, path: str | Path, *, num_users: int, k: int, num_items: int,
                 scores_dtype: torch.dtype = torch.float32, padding_item: int | None = 0,
                 fingerprint: str | None = None,
                 user_range: tuple[int, int] | None = None) -> None:
        n = num_users
        if scores_dtype not in SCORE_DTYPES:
            raise ValueError(
                f"`scores_dtype` must be one of {sorted(map(str, SCORE_DTYPES))}, got "
                f"{scores_dtype}."
            )
        start, stop = (0, n) if user_range is None else (int(user_range[0]), int(user_range[1]))
        if not 0 <= start <= stop <= n:
            raise ValueError(f"`user_range`={user_range} must satisfy 0 <= start <= stop <= {n}.")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        layout: dict[str, Any] = {
            "format": _MMAP_FORMAT, "version": FORMAT_VERSION, "num_users": n, "k": k,
            "num_items": num_items, "scores_dtype": SCORE_DTYPES[scores_dtype],
            "padding_item": padding_item, "fingerprint": fingerprint,
        }
        sizes = _file_bytes(layout)
        layout["files"] = {_FILES[key]: nbytes for key, nbytes in sizes.items()}
        reset = user_range is None
        same = False
        if reset:
            for marker in path.glob("done-*.json"):
                marker.unlink(missing_ok=True)
        elif (path / LAYOUT_NAME).exists():
            old = _read_json(path / LAYOUT_NAME)
            if old != layout:
                raise ValueError(
                    f"{path} holds another extraction ({old}); this one is {layout}. Use a "
                    "fresh directory or run once with user_range=None to overwrite it."
                )
            same = True
        (path / _marker_name(start, stop)).unlink(missing_ok=True)
        for key, nbytes in sizes.items():
            _allocate(path, _FILES[key], nbytes, reset, same)
        _write_json(path / LAYOUT_NAME, layout)

        self.path, self.start, self.stop = path, start, stop
        self.scores_dtype = scores_dtype
        self._layout = layout
        self._next = start
        self._maps = {key: _memmap(path, layout, key, "r+") for key in _FILES}
        self._digests = {key: hashlib.blake2b() for key in _FILES}

    def write(self, start: int, top: TopK) -> None:
        """Copy ``top``'s rows into rows ``[start, start + top.num_users)`` (consecutive calls
        must continue where the last one stopped; scores are cast to ``scores_dtype``)."""
        stop = start + top.num_users
        if start != self._next or stop > self.stop:
            raise ValueError(f"rows [{start}, {stop}) do not continue the written rows "
                             f"[{self.start}, {self._next}) within [{self.start}, {self.stop}).")
        rows = {"indices": top.indices.cpu().numpy(),
                "scores": top.scores.to("cpu", self.scores_dtype).numpy(),
                "users": top.users.cpu().numpy()}
        for key, arr in rows.items():
            arr = np.ascontiguousarray(arr, dtype=self._maps[key].dtype)
            self._maps[key][start:stop] = arr
            self._digests[key].update(arr)  # the exact bytes written, in row order
        del rows, arr
        for mm in self._maps.values():
            mm.flush()  # bound dirty pages to one block
        self._next = stop

    def finish(self) -> Path:
        """Flush the maps and write the range's completion marker; returns the directory."""
        if self._next != self.stop:
            raise ValueError(f"rows [{self._next}, {self.stop}) were never written.")
        for mm in self._maps.values():
            mm.flush()
        self._maps.clear()
        _write_json(self.path / _marker_name(self.start, self.stop), {
            **self._layout, "start": self.start, "stop": self.stop,
            "blake2b": {_FILES[key]: h.hexdigest() for key, h in self._digests.items()},
        })
        return self.path


def _covered(ranges: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """Gaps ``[a, b)`` of ``0..n`` not covered by ``ranges``."""
    gaps, pos = [], 0
    for a, b in sorted(ranges):
        if a > pos:
            gaps.append((pos, a))
        pos = max(pos, b)
    if pos < n:
        gaps.append((pos, n))
    return gaps


def _range_digest(f: Path, offset: int, nbytes: int) -> str:
    """blake2b of ``nbytes`` bytes of ``f`` from ``offset`` (read in blocks, not mapped)."""
    h = hashlib.blake2b()
    buf = bytearray(min(nbytes, _HASH_BLOCK))
    view = memoryview(buf)
    with open(f, "rb", buffering=0) as fh:
        fh.seek(offset)
        left = nbytes
        while left:
            got = fh.readinto(view[:min(left, len(buf))])
            if not got:
                break  # a short file: its size is checked before
            h.update(view[:got])
            left -= got
    return h.hexdigest()


def open_mapped(path: Path, fingerprint: str | None, *, verify: bool,
                part: tuple[int, int] = (0, 1)) -> TopK:
    """:func:`load_topk_mmap`; ``part=(r, w)`` verifies only markers ``i`` with ``i % w == r``
    (the ranks of a group share the hashing, then agree)."""
    if not (path / LAYOUT_NAME).is_file():
        raise IncompleteTopKError(
            f"{path} has no {LAYOUT_NAME}: not a teacher_topk_to_disk output, or never started.")
    layout = _read_json(path / LAYOUT_NAME)
    if layout.get("format") != _MMAP_FORMAT or layout.get("version") != FORMAT_VERSION:
        raise IncompleteTopKError(
            f"{path / LAYOUT_NAME} has format {layout.get('format')!r} version "
            f"{layout.get('version')!r}; expected {_MMAP_FORMAT!r} version {FORMAT_VERSION}."
        )
    try:
        sizes = _file_bytes(layout)
        n, k = int(layout["num_users"]), int(layout["k"])
        row_bytes = {key: nbytes // n if n else 0 for key, nbytes in sizes.items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise IncompleteTopKError(f"{path / LAYOUT_NAME} is corrupt: {exc!r}") from exc
    if layout.get("files") != {_FILES[key]: nbytes for key, nbytes in sizes.items()}:
        raise IncompleteTopKError(
            f"{path / LAYOUT_NAME} is corrupt: its file sizes {layout.get('files')} do not "
            f"match its shape ({n} users, k={k}, {layout['scores_dtype']}).")
    markers = []
    for marker in sorted(path.glob("done-*.json")):
        info = _read_json(marker)
        if {key: info.get(key) for key in layout} != layout:
            raise IncompleteTopKError(
                f"completion marker {marker} belongs to another extraction than "
                f"{path / LAYOUT_NAME} (stale marker from an earlier run?). Recompute into a "
                "fresh directory."
            )
        try:
            a, b = int(info["start"]), int(info["stop"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IncompleteTopKError(f"completion marker {marker} is corrupt: {exc!r}") from exc
        markers.append((marker, info, a, b))
    gaps = _covered([(a, b) for _, _, a, b in markers], n)
    if gaps:
        raise IncompleteTopKError(
            f"top-K in {path} is incomplete: rows {gaps[:5]} (of {n}) have no completion marker "
            "(a rank has not finished, or crashed); rerun teacher_topk_to_disk for them."
        )
    if fingerprint is not None and layout["fingerprint"] != fingerprint:
        raise IncompleteTopKError(
            f"top-K in {path} is stale: it was built for another teacher / score function / k / "
            "users / history."
        )
    for key, nbytes in sizes.items():
        f = path / _FILES[key]
        size = f.stat().st_size if f.is_file() else None
        if size != nbytes:
            raise CorruptTopKError(
                f"{f} has {size} bytes, expected {nbytes} (recorded in {path / LAYOUT_NAME}): "
                "the file was truncated, extended or replaced after it was written.")
    if verify:
        rank, world = part
        for i, (marker, info, a, b) in enumerate(markers):
            if i % world != rank:
                continue
            recorded = info.get("blake2b")
            if not isinstance(recorded, dict):
                raise CorruptTopKError(f"completion marker {marker} records no blake2b digests.")
            for key in _FILES:
                f = path / _FILES[key]
                got = _range_digest(f, a * row_bytes[key], (b - a) * row_bytes[key])
                if recorded.get(_FILES[key]) != got:
                    raise CorruptTopKError(
                        f"{f}: the bytes of rows [{a}, {b}) have blake2b {got[:16]}..., but "
                        f"{marker.name} recorded {str(recorded.get(_FILES[key]))[:16]}... when "
                        "they were written: the file was overwritten or modified since.")
    ind, sc, us = (torch.from_numpy(_memmap(path, layout, key, "c")) for key in
                   ("indices", "scores", "users"))
    return TopK(ind, sc, int(layout["num_items"]), us)


def clear_mapped(path: Path) -> None:
    """Remove an extraction's markers, manifest and data files (unlinked: maps stay valid)."""
    for marker in path.glob("done-*.json"):
        marker.unlink(missing_ok=True)
    for name in (LAYOUT_NAME, *_FILES.values()):
        (path / name).unlink(missing_ok=True)


def load_topk_mmap(path: str | Path, fingerprint: str | None = None, *,
                   verify: bool = True) -> TopK:
    """Map a top-K written by :func:`teacher_topk_to_disk` (or ``save_topk(format="mmap")``).

    ``indices``, ``scores`` and ``users`` are CPU tensors viewing copy-on-write memory maps of
    the files (``numpy.memmap(mode="c")`` + ``torch.from_numpy``): nothing is read until a row
    is touched, only touched pages occupy memory, and in-place changes stay private to the
    process (the files are never modified). ``top.indices[batch_users]`` copies just those rows.

    Integrity: every file's size is always checked against the manifest (``layout.json``);
    with ``verify`` (the default) the bytes of every completed row range are also hashed
    (blake2b, about 1 GB/s) and compared with the digests its completion marker recorded.

    Raises:
        CorruptTopKError: a data file of the wrong size, or rows whose digest differs from the
            recorded one (the file and the row range are named).
        IncompleteTopKError: no/unreadable header, another format/version, markers that
            disagree with the header, rows no completion marker covers (a rank that has not
            finished or crashed: the missing ranges are named), or a fingerprint mismatch.
    """
    return open_mapped(Path(path), fingerprint, verify=verify)


def _save_mmap(path: Path, topk: TopK, fingerprint: str | None) -> Path:
    writer = MappedTopKWriter(path, num_users=topk.num_users, k=topk.k, num_items=topk.num_items,
                              scores_dtype=topk.scores.dtype, padding_item=None,
                              fingerprint=fingerprint)
    writer.write(0, topk)
    return writer.finish()


def _load_mmap(path: Path, fingerprint: str | None, verify: bool = True) -> TopK:
    return open_mapped(path, fingerprint, verify=verify)


register_format("mmap", _save_mmap, _load_mmap)
