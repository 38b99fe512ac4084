"""On-disk top-K stores behind one interface: :func:`save_topk` / :func:`load_topk`.

Two formats, one :data:`FORMAT_VERSION`:

``"pt"``, one file (this module)
    ``torch.save`` of plain tensors (``indices``, ``scores``, ``users``, ``num_items``, the
    ``fingerprint``, a SHA-256 content ``checksum`` and the ``version``), loadable with
    ``torch.load(path, weights_only=True)``. For soft labels that fit in memory.
``"mmap"``, one directory (:mod:`recsys.softlabels.mapped`)
    raw arrays read zero-copy through memory maps, filled by row ranges (by shards, by ranks),
    with a manifest and per-range completion markers holding content digests.

A format is a pair of functions registered with :func:`register_format`. Every write is atomic
(:mod:`graphkd.fileio`: a temporary file unique to the writer, then a rename); a file that
cannot be used raises a :class:`CacheError` naming the reason: unreadable, incomplete
(:class:`IncompleteTopKError`: missing rows, another version, a stale fingerprint) or damaged
after it was written (:class:`CorruptTopKError`: wrong sizes or digests).

Example:
    >>> import tempfile, pathlib
    >>> top = TopK(torch.tensor([[2, 0]]), torch.tensor([[0.9, 0.1]]), 3, torch.tensor([5]))
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for fmt, name in (("pt", "t.pt"), ("mmap", "t")):
    ...     _ = save_topk(d / name, top, "ab" * 32, format=fmt)
    ...     print(load_topk(d / name, "ab" * 32).indices.tolist())
    [[2, 0]]
    [[2, 0]]
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from graphkd.fileio import atomic_torch_save
from recsys.softlabels.fingerprint import hash_tensor
from recsys.softlabels.topk import TopK

__all__ = ["FORMAT_VERSION", "CacheError", "IncompleteTopKError", "CorruptTopKError",
           "save_topk", "load_topk", "register_format"]

#: Version of every on-disk format (``"pt"``: the ``version`` entry, ``"mmap"``: the
#: manifest's). 2: memory-mapped completion markers record a blake2b digest of their rows.
FORMAT_VERSION = 2
_PT_READABLE = (1, FORMAT_VERSION)  # version 1 .pt files hold exactly the same entries


class CacheError(RuntimeError):
    """A cache file that cannot be used (unreadable, incomplete, stale or corrupt)."""


class IncompleteTopKError(CacheError):
    """An on-disk top-K (:func:`teacher_topk_to_disk`) that is missing rows or is inconsistent."""


class CorruptTopKError(IncompleteTopKError):
    """An on-disk top-K whose data files disagree with its manifest: a file of the wrong size,
    or bytes whose blake2b differs from the one recorded when they were written (truncated,
    overwritten or modified afterwards)."""


class _Format(NamedTuple):
    save: Callable[[Path, TopK, str | None], Path]
    load: Callable[[Path, str | None, bool], TopK]


_FORMATS: dict[str, _Format] = {}


def register_format(name: str, save: Callable[[Path, TopK, str | None], Path],
                    load: Callable[[Path, str | None, bool], TopK]) -> None:
    """Make format ``name`` available to :func:`save_topk` / :func:`load_topk`.

    Args:
        name: the ``format=`` value.
        save: ``(path, topk, fingerprint) -> path`` (atomic; raises on bad input).
        load: ``(path, fingerprint, verify) -> TopK`` (raises :class:`CacheError` for an
            unusable file).
    """
    _FORMATS[name] = _Format(save, load)


def _format(name: str) -> _Format:
    if name not in _FORMATS:
        raise ValueError(f"unknown top-K format {name!r}; use one of {sorted(_FORMATS)}.")
    return _FORMATS[name]


# ============================================================================ interface
def save_topk(path: str | Path, topk: TopK, fingerprint: str | None, *,
              format: str = "pt") -> Path:
    """Write ``topk`` with its fingerprint and content checksum(s), atomically.

    Args:
        path: the ``.pt`` file (``format="pt"``) or the directory (``format="mmap"``).
        topk: the soft labels (any device; written from CPU).
        fingerprint: e.g. :func:`~recsys.softlabels.topk_fingerprint`'s digest (required for
            ``"pt"``; ``None`` is stored as ``null`` in a ``"mmap"`` manifest).
        format: ``"pt"`` (one file of plain tensors) or ``"mmap"`` (a memory-mapped directory,
            scores kept in their float16/32/64 dtype).

    A crash never leaves a half-written file under the final name (``"pt"``: a temporary file
    unique to this call, then a rename; ``"mmap"``: the completion marker is written last).
    """
    return _format(format).save(Path(path), topk, fingerprint)


def load_topk(path: str | Path, fingerprint: str | None = None, *, format: str | None = None,
              verify: bool = True) -> TopK:
    """Load a top-K written by :func:`save_topk` or :func:`teacher_topk_to_disk`.

    Args:
        path: a ``.pt`` file or a memory-mapped directory.
        fingerprint: if given, must equal the stored one (else the file is stale).
        format: ``"pt"``, ``"mmap"`` or ``None`` (a directory is ``"mmap"``, a file ``"pt"``).
        verify: ``"mmap"``: also check the content digests (see :func:`load_topk_mmap`;
            ``"pt"`` files are always checked against their checksum).

    Returns:
        the :class:`TopK` as CPU tensors (``"pt"``: ``torch.load(weights_only=True)``).

    Raises:
        CacheError: the file is unreadable, misses entries, has another format version, its
            content checksum does not match (corrupt), or its fingerprint differs from
            ``fingerprint`` (stale: another teacher, K, user set or history); for a directory
            see :func:`load_topk_mmap`.
    """
    path = Path(path)
    if format is None:
        format = "mmap" if path.is_dir() else "pt"
    return _format(format).load(path, fingerprint, verify)


# ============================================================================ "pt"
def _content_checksum(state: Mapping[str, Tensor]) -> Tensor:
    h = hashlib.sha256()
    for name in ("indices", "scores", "users", "num_items"):
        hash_tensor(h, state[name])
    return torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8).clone()


def _digest_tensor(hexdigest: str) -> Tensor:
    return torch.frombuffer(bytearray(bytes.fromhex(hexdigest)), dtype=torch.uint8).clone()


def _save_pt(path: Path, topk: TopK, fingerprint: str | None) -> Path:
    if fingerprint is None:
        raise ValueError("a 'pt' top-K file needs a fingerprint (e.g. topk_fingerprint(...)).")
    state = {k: v.detach().cpu() for k, v in topk.state_dict().items()}
    state["fingerprint"] = _digest_tensor(fingerprint)
    state["checksum"] = _content_checksum(state)
    state["version"] = torch.tensor(FORMAT_VERSION)
    atomic_torch_save(state, path)
    return path


def _load_pt(path: Path, fingerprint: str | None, verify: bool = True) -> TopK:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means "unusable"
        raise CacheError(f"cannot read top-K cache {path}: {type(exc).__name__}: {exc}") from exc
    need = {"indices", "scores", "users", "num_items", "fingerprint", "checksum", "version"}
    if not isinstance(state, dict) or need - set(state):
        have = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CacheError(f"top-K cache {path} is incomplete (has {have}).")
    if int(state["version"]) not in _PT_READABLE:
        raise CacheError(f"top-K cache {path} has format version {int(state['version'])}.")
    if not torch.equal(state["checksum"], _content_checksum(state)):
        raise CacheError(f"top-K cache {path} is corrupt (content checksum mismatch).")
    if fingerprint is not None and not torch.equal(state["fingerprint"],
                                                   _digest_tensor(fingerprint)):
        raise CacheError(
            f"top-K cache {path} is stale: it was built for another teacher / k / users / "
            "history."
        )
    try:
        return TopK.from_state_dict(state)
    except (KeyError, ValueError) as exc:
        raise CacheError(f"top-K cache {path} is inconsistent: {exc}") from exc


register_format("pt", _save_pt, _load_pt)
