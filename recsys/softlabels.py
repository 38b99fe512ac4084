r"""Teacher top-K soft labels: chunked, masked, deterministic, cached.

A trained recommender's top-K unobserved items per user are the *soft labels* of ranking
distillation. :func:`teacher_topk` streams users through the teacher's scoring function in
chunks, masks each user's training history and the padding item, and keeps only the top-K of each
chunk, so peak memory is ``O(chunk_size * num_items)`` whatever the number of users:

.. math::
    \mathrm{TopK}_u = \operatorname{argsort}^{\downarrow}_{i \notin H_u \cup \{0\}} s_T(u, i)[:K]

Ties are broken deterministically: equal scores are ordered by increasing item index (exactly
``torch.sort(masked, descending=True, stable=True)[:, :K]``), so results do not depend on the
chunk size or on ``torch.topk``'s unspecified tie order.

The result is a :class:`TopK` (``indices [U, K]`` int64 and ``scores [U, K]``), which converts to
a graphkd :class:`~graphkd.graphs.EdgeSet` with ``degree=K`` (``topk.to_edgeset()``): a bipartite
user -> item relation graph on which every recsys loss runs.

History (the ``exclude`` argument) is a user x item CSR: a graphkd ``EdgeSet`` (rows = users,
columns = items), a ``scipy.sparse`` matrix, or a ``(ptr, col)`` pair of tensors; build one from
interaction pairs with :func:`history_from_interactions`. A user with no history is valid
(nothing is masked for them).

:func:`cached_teacher_topk` stores the result on disk as plain tensors (``torch.save`` of a
``dict[str, Tensor]``, loadable with ``torch.load(path, weights_only=True)``), keyed by a SHA-256
fingerprint (:func:`topk_fingerprint`) of everything that defines the scores: the teacher's
weights, the score function's identity (:func:`score_fn_key`, or the caller's ``score_key``),
``K``, the users, the item count, the padding item, the exclusion set and the stored score dtype.
A stale file (another fingerprint) or a corrupt one (unreadable, missing keys, checksum mismatch)
is detected, logged and rebuilt, never silently used.

Concurrency: every file is written with :mod:`graphkd.fileio` (a temporary file unique to the
writer, then an atomic rename), and shared caches are filled under an inter-process lock
(:func:`graphkd.fileio.file_lock`: "first writer wins, the others wait, then read"), so N
processes asking for the same soft labels at once compute them once and all get the same result.

Example:
    >>> U, V = torch.randn(100, 8), torch.randn(50, 8)
    >>> hist = history_from_interactions(torch.tensor([0, 0, 1]), torch.tensor([3, 4, 7]),
    ...                                  num_users=100, num_items=50)
    >>> top = teacher_topk(lambda u: U[u] @ V.T, 100, 50, k=10, exclude=hist, chunk_size=32)
    >>> top.indices.shape, top.to_edgeset().degree
    (torch.Size([100, 10]), 10)
"""

from __future__ import annotations

import contextlib
import dis
import functools
import hashlib
import inspect
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from graphkd.fileio import atomic_torch_save, atomic_write_json, file_lock
from graphkd.graphs import EdgeSet

__all__ = [
    "TopK",
    "HistoryLike",
    "history_from_interactions",
    "as_history",
    "teacher_topk",
    "topk_fingerprint",
    "score_fn_key",
    "save_topk",
    "load_topk",
    "cached_teacher_topk",
    "CacheError",
    "IncompleteTopKError",
    "CorruptTopKError",
    "rank_user_range",
    "teacher_topk_to_disk",
    "load_topk_mmap",
    "shared_teacher_topk",
]

log = logging.getLogger(__name__)

#: Accepted forms of a user x item history: EdgeSet, scipy.sparse matrix, or ``(ptr, col)``.
HistoryLike = Any  # EdgeSet | tuple[Tensor, Tensor] | scipy.sparse matrix

_CACHE_VERSION = 1  # the .pt file format
_KEY_VERSION = 2  # what the fingerprint covers (2: + score function identity, scores dtype)


# ============================================================================ TopK
@dataclass(frozen=True, eq=False)
class TopK:
    """Top-K soft labels of a teacher: row ``r`` holds user ``users[r]``'s best items.

    Attributes:
        indices: ``[U, K]`` int64 item ids, best first.
        scores: ``[U, K]`` teacher scores of those items (non-increasing along each row).
        num_items: total number of items (the column count of the relation graph).
        users: ``[U]`` int64 user id of each row.

    Example:
        >>> top = TopK(torch.tensor([[2, 0]]), torch.tensor([[0.9, 0.1]]), 3, torch.tensor([5]))
        >>> top.to_edgeset().col.tolist()
        [2, 0]
    """

    indices: Tensor
    scores: Tensor
    num_items: int
    users: Tensor

    @property
    def k(self) -> int:
        """``K``, the number of items per user."""
        return self.indices.shape[1]

    @property
    def num_users(self) -> int:
        """``U``, the number of rows."""
        return self.indices.shape[0]

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def to(self, device: torch.device | str) -> TopK:
        """Return a copy on ``device``."""
        return TopK(self.indices.to(device), self.scores.to(device), self.num_items,
                    self.users.to(device))

    def to_edgeset(self) -> EdgeSet:
        """The bipartite user -> item relation graph (``U x num_items``, ``degree=K``).

        Row ``r`` is user ``users[r]``; its edges are ``indices[r]`` in rank order, so a per-edge
        value ``v[E]`` views as ``v.view(U, K)`` with column ``j`` = rank ``j`` (0-based).
        """
        return EdgeSet.from_topk(self.indices, self.num_items)

    def state_dict(self) -> dict[str, Tensor]:
        """Plain tensors (for ``torch.save`` / ``torch.load(weights_only=True)``)."""
        return {
            "indices": self.indices,
            "scores": self.scores,
            "users": self.users,
            "num_items": torch.tensor(self.num_items, dtype=torch.long),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor]) -> TopK:
        """Inverse of :meth:`state_dict` (validates shapes)."""
        missing = {"indices", "scores", "users", "num_items"} - set(state)
        if missing:
            raise KeyError(f"TopK state is missing {sorted(missing)}.")
        ind, sc, us = state["indices"], state["scores"], state["users"]
        if ind.dim() != 2 or sc.shape != ind.shape or us.shape != (ind.shape[0],):
            raise ValueError(
                f"inconsistent TopK state: indices {tuple(ind.shape)}, scores "
                f"{tuple(sc.shape)}, users {tuple(us.shape)}."
            )
        return cls(ind.long(), sc, int(state["num_items"]), us.long())


# ============================================================================ history
def history_from_interactions(
    users: Tensor, items: Tensor, num_users: int, num_items: int,
) -> EdgeSet:
    """User x item history CSR from interaction pairs (duplicates removed, columns sorted).

    Args:
        users: ``[N]`` int user id of each interaction.
        items: ``[N]`` int item id of each interaction.
        num_users, num_items: matrix shape.

    Returns:
        an EdgeSet with ``num_users`` rows (users without interactions have empty rows).

    Example:
        >>> h = history_from_interactions(torch.tensor([1, 1, 0]), torch.tensor([2, 2, 5]), 3, 6)
        >>> h.ptr.tolist(), h.col.tolist()
        ([0, 1, 2, 2], [5, 2])
    """
    if users.shape != items.shape or users.dim() != 1:
        raise ValueError(
            f"`users` and `items` must be 1-D of equal length, got {tuple(users.shape)} and "
            f"{tuple(items.shape)}."
        )
    from graphkd._checks import check_index

    check_index(users, num_users, "users")
    check_index(items, num_items, "items")
    key = torch.unique(users.long() * num_items + items.long())
    return EdgeSet._from_sorted(key // num_items, key % num_items, num_users, num_items)


def as_history(exclude: HistoryLike, num_items: int) -> EdgeSet:
    """Normalise a history to a row-sorted user x item EdgeSet with ``num_items`` columns.

    Accepts an EdgeSet, a ``scipy.sparse`` matrix (any format; converted to CSR), or a
    ``(ptr, col)`` tuple of tensors (CSR row pointer ``[U + 1]`` and column ids).
    """
    if isinstance(exclude, EdgeSet):
        edges = exclude
    elif isinstance(exclude, tuple) and len(exclude) == 2:
        ptr, col = (torch.as_tensor(t) for t in exclude)
        if ptr.dim() != 1 or ptr.numel() < 1 or int(ptr[-1]) != col.numel():
            raise ValueError(
                "`exclude=(ptr, col)` must be a CSR pair: ptr [U + 1] with ptr[-1] == len(col)."
            )
        counts = ptr[1:] - ptr[:-1]
        if bool((counts < 0).any()):
            raise ValueError("`exclude` ptr must be non-decreasing.")
        row = torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=ptr.device), counts)
        edges = EdgeSet.from_rows(row, col.long(), ptr.numel() - 1, num_items)
    elif hasattr(exclude, "tocsr"):
        csr = exclude.tocsr()
        edges = as_history(
            (torch.from_numpy(csr.indptr.astype("int64")),
             torch.from_numpy(csr.indices.astype("int64"))), csr.shape[1])
    else:
        raise TypeError(
            "`exclude` must be a graphkd EdgeSet (users x items), a scipy.sparse matrix or a "
            f"(ptr, col) tuple; got {type(exclude).__name__}. Build one with "
            "history_from_interactions(users, items, num_users, num_items)."
        )
    if edges.num_cols != num_items:
        raise ValueError(
            f"`exclude` has {edges.num_cols} item columns but num_items={num_items}; pass the "
            "history of the same item set the teacher scores."
        )
    return edges


def _chunk_history(hist_ptr: Tensor, hist_col: Tensor, users: Tensor) -> tuple[Tensor, Tensor]:
    """``(local_row, col)`` of the history entries of ``users`` (vectorised CSR row gather)."""
    starts = hist_ptr[users]
    counts = hist_ptr[users + 1] - starts
    local = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), counts)
    offsets = torch.cumsum(counts, 0) - counts
    pos = torch.arange(local.numel(), device=users.device) - offsets[local] + starts[local]
    return local, hist_col[pos]


# ============================================================================ extraction
def _as_users(users: Tensor | int, device: torch.device | str | None) -> Tensor:
    """``users`` as int64 ids on ``device`` (default: the ids' own device, CPU for a count)."""
    if device is None:
        device = users.device if isinstance(users, Tensor) else torch.device("cpu")
    if isinstance(users, int):
        if users < 1:
            raise ValueError(f"`users` as a count must be >= 1, got {users}.")
        return torch.arange(users, device=device)
    if not isinstance(users, Tensor) or users.dim() != 1:
        raise ValueError("`users` must be an int (all users 0..n-1) or a 1-D tensor of ids.")
    if users.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"`users` must be an integer tensor, got dtype {users.dtype}.")
    if users.numel() == 0:
        raise ValueError("`users` is empty; pass at least one user id.")
    return users.to(device=device, dtype=torch.long)


def _canonical_order(values: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row by (value desc, index asc): a deterministic order for ties."""
    index, perm = index.sort(dim=1)
    values = values.gather(1, perm)
    values, perm = values.sort(dim=1, descending=True, stable=True)
    return values, index.gather(1, perm)


def _topk_deterministic(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` of each row, equal to ``sort(scores, descending, stable)[:, :k]``.

    ``torch.topk`` with ``k + 1`` picks the set and detects ties across the boundary (the
    ``k``-th and ``k+1``-th values are equal); those rows (rare for real-valued scores) are
    redone with a stable full sort. NaN sorts above every number, so a row holding a NaN has
    NaN in its first returned value.
    """
    n_cols = scores.shape[1]
    values, index = scores.topk(min(k + 1, n_cols), dim=1, largest=True, sorted=True)
    if n_cols > k:
        boundary = values[:, k] == values[:, k - 1]
        values, index = values[:, :k], index[:, :k]
        rows = boundary.nonzero().squeeze(1)
        if rows.numel():  # one host sync per chunk; teacher_topk is not a per-batch hot path
            sv, si = scores[rows].sort(dim=1, descending=True, stable=True)
            values = values.index_copy(0, rows, sv[:, :k])
            index = index.index_copy(0, rows, si[:, :k])
    return _canonical_order(values, index)


def _owned(t: Tensor) -> bool:
    """Whether ``t`` is a fresh tensor only the caller's local variable refers to.

    Three references: the caller's variable, this function's parameter and
    ``getrefcount``'s argument. A tensor the score function also keeps (a cached matrix, a
    closure variable) or a view of one has more references or a ``_base``.
    """
    return t._base is None and sys.getrefcount(t) <= 3


def teacher_topk(
    score_fn: Callable[[Tensor], Tensor],
    users: Tensor | int,
    num_items: int,
    k: int,
    *,
    exclude: HistoryLike | None = None,
    padding_item: int | None = 0,
    chunk_size: int = 1024,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> TopK:
    r"""Each user's top-``k`` items under the teacher, excluding history and padding.

    Users are scored ``chunk_size`` at a time (under ``torch.no_grad()``); each chunk's
    ``[chunk, num_items]`` score block is masked (history and ``padding_item`` set to ``-inf``)
    and reduced to its top-``k`` before the next chunk, so peak memory is about
    ``chunk_size * num_items`` scores plus the ``[U, k]`` result, independent of ``U``. The
    block is masked in place when ``score_fn`` returns a fresh tensor nobody else holds (e.g.
    ``U[u] @ V.T``), and on a copy otherwise (the caller's tensors are never modified; the copy
    doubles the block's memory).

    Ties are ordered by increasing item index (the same result as a stable descending sort of
    the full masked matrix, whatever ``chunk_size``). As long as ``score_fn`` gives each user the
    same scores whatever chunk it is in, results are identical across chunk sizes.

    Args:
        score_fn: ``users [c] int64 -> scores [c, num_items]`` (e.g. ``lambda u: U[u] @ V.T``
            or a RecBole model's ``full_sort_predict``, reshaped). Called on ``device`` under
            ``torch.no_grad()``. A returned tensor the caller still references is not modified.
        users: user ids ``[U]`` (any order; rows follow it) or an int ``n`` for ``0..n-1``.
        num_items: number of items (score columns).
        k: items per user; ``1 <= k <= num_items - |history_u| - (padding masked)`` for every
            user.
        exclude: per-user training history to mask (see :func:`as_history`); ``None`` masks
            nothing (RD's original setting). A user with an empty history row is valid.
        padding_item: item id always masked (RecBole's padding item 0); ``None`` masks none.
        chunk_size: users per chunk.
        device: where to score (default: the device of ``users``, or CPU for an int).
        progress: show a tqdm progress bar over chunks.

    Returns:
        a :class:`TopK` with ``indices [U, k]`` (int64), ``scores [U, k]`` (the dtype of
        ``score_fn``'s output) and ``users``; convert with ``.to_edgeset()``.

    Raises:
        ValueError: ``k`` out of range (overall or for some user given their history), user
            ids negative or beyond the history's rows, ``chunk_size < 1``, a score block of the
            wrong shape, NaN scores (the offending users are named), or a user whose top-``k``
            would have to include ``-inf`` (masked) items.

    Example:
        >>> U, V = torch.randn(20, 4), torch.randn(30, 4)
        >>> teacher_topk(lambda u: U[u] @ V.T, 20, 30, k=5).indices.shape
        torch.Size([20, 5])
    """
    return _extract(score_fn, users, num_items, k, exclude=exclude, padding_item=padding_item,
                    chunk_size=chunk_size, device=device, progress=progress, strict=True)


def _extract(
    score_fn: Callable[[Tensor], Tensor], users: Tensor | int, num_items: int, k: int, *,
    exclude: HistoryLike | None, padding_item: int | None, chunk_size: int,
    device: torch.device | str | None, progress: bool = False, strict: bool = True,
) -> TopK:
    """:func:`teacher_topk`; ``strict=False`` allows rows whose tail is ``-inf`` (masked)."""
    users_t = _as_users(users, device)
    dev = users_t.device
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be a positive int, got {k!r}.")
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}.")
    if padding_item is not None and not 0 <= padding_item < num_items:
        raise ValueError(
            f"`padding_item`={padding_item} is not an item id in [0, {num_items}); pass None "
            "to mask no padding item."
        )
    n_pad = 0 if padding_item is None else 1
    if k > num_items - n_pad:
        raise ValueError(
            f"k={k} exceeds the {num_items - n_pad} recommendable items (num_items={num_items}"
            + (f", padding item {padding_item} masked" if n_pad else "") + "). Lower k."
        )
    if int(users_t.min()) < 0:
        raise ValueError(f"`users` contains negative ids (min {int(users_t.min())}).")

    hist_ptr = hist_col = None
    if exclude is not None:
        hist = as_history(exclude, num_items)
        if int(users_t.max()) >= hist.num_rows:
            raise ValueError(
                f"`users` has ids up to {int(users_t.max())} but the history `exclude` has only "
                f"{hist.num_rows} user rows; pass a history covering every user (empty rows are "
                "fine for users without interactions)."
            )
        hist_ptr, hist_col = hist.ptr.to(dev), hist.col.to(dev)
        # per-user number of masked items (history without the padding item, if listed)
        keep = torch.ones_like(hist_col, dtype=torch.long)
        if padding_item is not None:
            keep = (hist_col != padding_item).long()
        row = hist.row.to(dev)
        masked = torch.zeros(hist.num_rows, dtype=torch.long, device=dev).index_add(0, row, keep)
        avail = num_items - n_pad - masked[users_t]
        short = (avail < k).nonzero().squeeze(1)
        if strict and short.numel():
            bad = users_t[short[:5]].tolist()
            raise ValueError(
                f"k={k} exceeds the unobserved items of {short.numel()} user(s) (e.g. users "
                f"{bad} have only {avail[short[:5]].tolist()} items outside their history). "
                "Lower k or drop these users."
            )

    n = users_t.numel()
    out_idx = torch.empty(n, k, dtype=torch.long, device=dev)
    out_val: Tensor | None = None
    nan_rows, inf_rows = [], []
    starts = range(0, n, chunk_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="teacher top-k", unit="chunk")
    with torch.no_grad():
        for s in starts:
            u = users_t[s:s + chunk_size]
            sc = score_fn(u)
            if not isinstance(sc, Tensor) or sc.shape != (u.numel(), num_items):
                shape = tuple(sc.shape) if isinstance(sc, Tensor) else type(sc).__name__
                raise ValueError(
                    f"`score_fn` must return scores of shape [{u.numel()}, {num_items}] "
                    f"(users x num_items) for a chunk of {u.numel()} users, got {shape}."
                )
            if not _owned(sc):
                sc = sc.clone()  # never modify a tensor the caller still holds
            if padding_item is not None:
                sc[:, padding_item] = -torch.inf
            if hist_ptr is not None:
                r, c = _chunk_history(hist_ptr, hist_col, u)
                sc[r, c] = -torch.inf
            val, idx = _topk_deterministic(sc, k)
            del sc
            if out_val is None:
                out_val = torch.empty(n, k, dtype=val.dtype, device=dev)
            out_val[s:s + u.numel()] = val
            out_idx[s:s + u.numel()] = idx
            nan_rows.append(torch.isnan(val[:, 0]))  # NaN sorts first (see above)
            inf_rows.append(val[:, -1] == -torch.inf)
    nan = torch.cat(nan_rows)
    if bool(nan.any()):
        bad = users_t[nan].tolist()
        raise ValueError(
            f"the teacher's scores contain NaN for {len(bad)} user(s) (e.g. {bad[:5]}); check "
            "the teacher checkpoint and score_fn."
        )
    inf = torch.cat(inf_rows)
    if strict and bool(inf.any()):
        bad = users_t[inf].tolist()
        raise ValueError(
            f"fewer than k={k} items with a finite score for {len(bad)} user(s) (e.g. "
            f"{bad[:5]}): score_fn returns -inf for too many items. Lower k."
        )
    return TopK(out_idx, out_val, num_items, users_t)


# ============================================================================ cache
class CacheError(RuntimeError):
    """A cache file that cannot be used (unreadable, incomplete, stale or corrupt)."""


def _hash_tensor(h: Any, t: Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    t = t.reshape(-1)
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


_VALUE_TYPES = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


def _tensor_id(t: Tensor) -> tuple[Any, ...]:
    return (t.device, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))


def _source_digest(obj: Any) -> str:
    """blake2b of ``inspect.getsource(obj)``, or ``"-"`` where the source is unavailable."""
    try:
        src = inspect.getsource(obj)
    except (OSError, TypeError):
        return "-"
    return hashlib.blake2b(src.encode(), digest_size=16).hexdigest()


def _code_digest(h: Any, code: Any) -> None:
    """The bytecode, names and constants of ``code`` (nested code objects included)."""
    h.update(code.co_code + b"|" + "|".join(code.co_names).encode() + b"|")
    for const in code.co_consts:
        if inspect.iscode(const):
            _code_digest(h, const)
        else:
            h.update(f"{type(const).__name__}:{const!r}|".encode())


def _describe(h: Any, obj: Any, known: Mapping[tuple[Any, ...], str], depth: int = 0) -> None:
    """Feed a deterministic, process-independent description of ``obj`` to ``h``."""
    if depth > 6:
        h.update(b"<deep>|")
        return
    if isinstance(obj, _VALUE_TYPES):
        h.update(f"{type(obj).__name__}:{obj!r}|".encode())
    elif isinstance(obj, Tensor):
        name = known.get(_tensor_id(obj))
        if name is not None:  # a teacher weight: already in the fingerprint
            h.update(f"teacher-tensor:{name}|".encode())
        else:
            h.update(b"tensor|")
            _hash_tensor(h, obj)
    elif isinstance(obj, np.ndarray):
        h.update(b"ndarray|")
        _hash_tensor(h, torch.from_numpy(np.ascontiguousarray(obj)))
    elif isinstance(obj, tuple):
        h.update(f"tuple{len(obj)}(".encode())
        for item in obj:
            _describe(h, item, known, depth + 1)
        h.update(b")|")
    elif isinstance(obj, functools.partial):
        h.update(b"partial|")
        _describe(h, obj.func, known, depth + 1)
        _describe(h, tuple(obj.args), known, depth + 1)
        _describe(h, tuple(sorted(obj.keywords.items())), known, depth + 1)
    elif inspect.ismethod(obj):
        h.update(b"method|")
        _describe(h, type(obj.__self__), known, depth + 1)
        _describe(h, obj.__func__, known, depth + 1)
    elif inspect.isfunction(obj):
        code = obj.__code__
        h.update(f"function:{obj.__module__}.{obj.__qualname__}|src={_source_digest(obj)}|"
                 .encode())
        _code_digest(h, code)
        _describe(h, obj.__defaults__ or (), known, depth + 1)
        _describe(h, tuple(sorted((obj.__kwdefaults__ or {}).items())), known, depth + 1)
        # closure values, except variables the function rebinds itself (counters: state)
        rebound = {ins.argval for ins in dis.get_instructions(code)
                   if ins.opname == "STORE_DEREF"}
        for name, cell in zip(code.co_freevars, obj.__closure__ or ()):
            h.update(f"free:{name}=".encode())
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                value = None
            if name in rebound:
                h.update(b"<rebound>|")
            else:
                _describe(h, value, known, depth + 1)
    elif isinstance(obj, type):
        mro = ",".join(f"{c.__module__}.{c.__qualname__}" for c in obj.__mro__)
        h.update(f"class:{mro}|src={_source_digest(obj)}|".encode())
    elif inspect.isbuiltin(obj) or inspect.isroutine(obj):
        h.update(f"builtin:{getattr(obj, '__module__', None)}."
                 f"{getattr(obj, '__qualname__', repr(type(obj)))}|".encode())
    else:  # a module, a callable object, a list used as a counter, ...: its class only
        h.update(b"instance-of|")
        _describe(h, type(obj), known, depth + 1)


def score_fn_key(score_fn: Callable[..., Any],
                 teacher: nn.Module | Mapping[str, Tensor] | None = None) -> str:
    """A hex digest identifying what a score function computes, the same in every process.

    It covers, recursively through ``functools.partial`` objects and bound methods:

    - a Python function's module and qualified name, a hash of its source text
      (``inspect.getsource``, when available) and of its bytecode, names and constants (so two
      lambdas on one line differ), its default arguments, and the values it closes over:
      numbers, strings, tuples, tensors and arrays by content (a tensor that *is* one of
      ``teacher``'s weights by its name only: the weights are keyed anyway), functions
      recursively, anything else (a module, a list) by its class;
    - a bound method's class (qualified names of its MRO and the class source) and function;
    - any other callable object (e.g. an ``nn.Module``) by its class.

    Not covered: module-level globals the function reads, attributes of objects it reaches
    through (an ``nn.Module``'s weights: pass it as the teacher), and closure variables the
    function rebinds itself (``nonlocal`` counters). A score function whose output depends on
    such state must be given an explicit ``score_key`` by the caller.
    """
    known: dict[tuple[Any, ...], str] = {}
    if teacher is not None:
        state = teacher.state_dict() if isinstance(teacher, nn.Module) else teacher
        known = {_tensor_id(t): name for name, t in state.items() if isinstance(t, Tensor)}
    h = hashlib.sha256()
    _describe(h, score_fn, known)
    return h.hexdigest()


def topk_fingerprint(
    teacher: nn.Module | Mapping[str, Tensor],
    *,
    k: int,
    num_items: int,
    users: Tensor,
    exclude: HistoryLike | None = None,
    padding_item: int | None = 0,
    score_fn: Callable[[Tensor], Tensor] | None = None,
    score_key: str | None = None,
    scores_dtype: torch.dtype | None = None,
) -> str:
    """SHA-256 hex digest identifying a top-K extraction (the soft-label cache key).

    Covers everything that defines the stored top-K:

    - the teacher's weights: every tensor of its ``state_dict`` (names, dtypes, shapes, bytes);
    - the score function: ``score_key`` if given (a string the caller chooses, e.g. a model
      name + version), else :func:`score_fn_key` of ``score_fn`` (its qualified name, source
      and bytecode hash, closure values), else nothing (``"unspecified"``);
    - ``k``, ``num_items``, the user ids, the padding item, the exclusion CSR (``ptr`` and
      ``col``), and the stored score dtype (``scores_dtype``; ``None``: the score function's).
    """
    state = teacher.state_dict() if isinstance(teacher, nn.Module) else teacher
    h = hashlib.sha256()
    h.update(f"graphkd-topk-key-v{_KEY_VERSION}|k={k}|items={num_items}|pad={padding_item}|"
             f"dtype={scores_dtype}|".encode())
    if score_key is not None:
        h.update(f"score_key={score_key}|".encode())
    elif score_fn is not None:
        h.update(f"score_fn={score_fn_key(score_fn, state)}|".encode())
    else:
        h.update(b"score=unspecified|")
    for name in sorted(state):
        h.update(name.encode() + b"|")
        _hash_tensor(h, state[name])
    h.update(b"users|")
    _hash_tensor(h, users.long())
    if exclude is None:
        h.update(b"exclude=None")
    else:
        hist = as_history(exclude, num_items)
        h.update(b"exclude|")
        _hash_tensor(h, hist.ptr)
        _hash_tensor(h, hist.col)
    return h.hexdigest()


def _keyed_users(teacher: nn.Module | Mapping[str, Tensor], users: Tensor | int, num_items: int,
                 k: int, exclude: HistoryLike | None, padding_item: int | None,
                 device: torch.device | str | None, *,
                 score_fn: Callable[[Tensor], Tensor] | None = None,
                 score_key: str | None = None,
                 scores_dtype: torch.dtype | None = None) -> tuple[Tensor, str]:
    """``(user ids on device, topk_fingerprint)`` of an extraction (the cache key)."""
    users_t = _as_users(users, device)
    return users_t, topk_fingerprint(teacher, k=k, num_items=num_items, users=users_t,
                                     exclude=exclude, padding_item=padding_item,
                                     score_fn=score_fn, score_key=score_key,
                                     scores_dtype=scores_dtype)


def _content_checksum(state: Mapping[str, Tensor]) -> Tensor:
    h = hashlib.sha256()
    for name in ("indices", "scores", "users", "num_items"):
        _hash_tensor(h, state[name])
    return torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8).clone()


def _digest_tensor(hexdigest: str) -> Tensor:
    return torch.frombuffer(bytearray(bytes.fromhex(hexdigest)), dtype=torch.uint8).clone()


def save_topk(path: str | Path, topk: TopK, fingerprint: str) -> Path:
    """Write ``topk`` with its fingerprint and a content checksum (plain tensors only).

    The write is atomic (:func:`graphkd.fileio.atomic_torch_save`: a temporary file unique to
    this call, then a rename), so a crash never leaves a half-written cache under the final name
    and concurrent writers never collide.
    """
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in topk.state_dict().items()}
    state["fingerprint"] = _digest_tensor(fingerprint)
    state["checksum"] = _content_checksum(state)
    state["version"] = torch.tensor(_CACHE_VERSION)
    atomic_torch_save(state, path)
    return path


def load_topk(path: str | Path, fingerprint: str | None = None) -> TopK:
    """Load a cache written by :func:`save_topk` with ``torch.load(weights_only=True)``.

    Raises:
        CacheError: the file is unreadable, misses entries, has another format version, its
            content checksum does not match (corrupt), or its fingerprint differs from
            ``fingerprint`` (stale: another teacher, K, user set or history).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means "unusable"
        raise CacheError(f"cannot read top-K cache {path}: {type(exc).__name__}: {exc}") from exc
    need = {"indices", "scores", "users", "num_items", "fingerprint", "checksum", "version"}
    if not isinstance(state, dict) or need - set(state):
        have = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CacheError(f"top-K cache {path} is incomplete (has {have}).")
    if int(state["version"]) != _CACHE_VERSION:
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


def cached_teacher_topk(
    cache: str | Path,
    teacher: nn.Module | Mapping[str, Tensor],
    score_fn: Callable[[Tensor], Tensor],
    users: Tensor | int,
    num_items: int,
    k: int,
    *,
    exclude: HistoryLike | None = None,
    padding_item: int | None = 0,
    chunk_size: int = 1024,
    device: torch.device | str | None = None,
    progress: bool = False,
    score_key: str | None = None,
) -> TopK:
    """:func:`teacher_topk`, reusing a valid on-disk result and rebuilding a stale/corrupt one.

    The cache key (:func:`topk_fingerprint`) covers the teacher's weights, the score function
    (``score_key`` if given, else :func:`score_fn_key` of ``score_fn``: its qualified name,
    source/bytecode hash and closure values), ``k``, the users, ``num_items``, the padding item
    and the history ``exclude``. Same weights with another score function -> another key.

    Several processes may call this at once on the same cache: a valid file is read without
    locking; otherwise the caller takes the inter-process lock ``<file>.lock``
    (:func:`graphkd.fileio.file_lock`), checks the file again (another process may have just
    written it) and only then computes and atomically writes it. So the top-K is computed once
    and every process returns the same result.

    Args:
        cache: a directory (the file is ``topk-<fingerprint[:20]>-k<k>.pt`` inside it) or a
            ``.pt`` file path (reused only if its stored fingerprint matches).
        teacher: the teacher module (or its ``state_dict``) whose weights key the cache.
        score_fn, users, num_items, k, exclude, padding_item, chunk_size, device, progress:
            as in :func:`teacher_topk`.
        score_key: a string identifying what ``score_fn`` computes (replaces the automatic
            :func:`score_fn_key`); give one when the scores depend on state the automatic key
            cannot see (globals, objects reached through attributes).

    Returns:
        the :class:`TopK` on ``device`` (loaded or freshly computed and saved).
    """
    users_t, fp = _keyed_users(teacher, users, num_items, k, exclude, padding_item, device,
                               score_fn=score_fn, score_key=score_key)
    dev = users_t.device
    cache = Path(cache)
    path = cache if cache.suffix == ".pt" else cache / f"topk-{fp[:20]}-k{k}.pt"
    if path.exists():  # lock-free fast path: files are replaced atomically, never half-written
        try:
            top = load_topk(path, fp)
            log.info("loaded teacher top-%d from %s", k, path)
            return top.to(dev)
        except CacheError:
            pass  # re-checked under the lock (another process may be rewriting it)
    with file_lock(path):
        if path.exists():
            try:
                top = load_topk(path, fp)
                log.info("loaded teacher top-%d from %s (written by another process)", k, path)
                return top.to(dev)
            except CacheError as exc:
                log.warning("%s; recomputing.", exc)
        top = teacher_topk(score_fn, users_t, num_items, k, exclude=exclude,
                           padding_item=padding_item, chunk_size=chunk_size, device=dev,
                           progress=progress)
        save_topk(path, top, fp)
    log.info("saved teacher top-%d to %s", k, path)
    return top


# ============================================================================ sharded, on disk
class IncompleteTopKError(CacheError):
    """An on-disk top-K (:func:`teacher_topk_to_disk`) that is missing rows or is inconsistent."""


class CorruptTopKError(IncompleteTopKError):
    """An on-disk top-K whose data files disagree with its manifest: a file of the wrong size,
    or bytes whose blake2b differs from the one recorded when they were written (truncated,
    overwritten or modified afterwards)."""


_DISK_FORMAT = "graphkd-topk-mmap"
_DISK_VERSION = 2  # 2: completion markers record a blake2b per file of their rows
_HASH_BLOCK = 8 << 20  # bytes read at a time when verifying
_DISK_DTYPES: dict[torch.dtype, str] = {
    torch.float16: "float16", torch.float32: "float32", torch.float64: "float64",
}
_LAYOUT = "layout.json"
_FILES = {"indices": "indices.int64", "scores": "scores.bin", "users": "users.int64"}


def rank_user_range(num_users: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``num_users`` that rank ``rank`` of ``world_size`` computes.

    Contiguous, disjoint, covering ``0..num_users`` and balanced (sizes differ by at most one:
    the first ``num_users % world_size`` ranks get one more row). A rank may get an empty range
    when ``world_size > num_users``.

    Example:
        >>> [rank_user_range(10, r, 3) for r in range(3)]
        [(0, 4), (4, 7), (7, 10)]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
    if num_users < 0:
        raise ValueError(f"`num_users` must be >= 0, got {num_users}.")
    base, extra = divmod(num_users, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


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


def teacher_topk_to_disk(
    score_fn: Callable[[Tensor], Tensor],
    users: Tensor | int,
    num_items: int,
    k: int,
    path: str | Path,
    *,
    exclude: HistoryLike | None = None,
    padding_item: int | None = 0,
    chunk_size: int = 1024,
    shard_users: int = 65536,
    user_range: tuple[int, int] | None = None,
    scores_dtype: torch.dtype = torch.float32,
    fingerprint: str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Path:
    r""":func:`teacher_topk` written shard by shard into memory-mapped files under ``path``.

    For soft labels that do not fit in memory (``U * K * 12`` bytes for int64 ids and float32
    scores: 11 GiB for 9.4M users at K = 100). ``path`` is a directory holding

    - ``indices.int64`` (``[U, K]`` int64), ``scores.bin`` (``[U, K]`` ``scores_dtype``) and
      ``users.int64`` (``[U]``): raw C-order arrays, pre-allocated at their final size;
    - ``layout.json`` (the manifest): format, version, ``num_users``, ``k``, ``num_items``,
      ``scores_dtype``, ``padding_item``, ``fingerprint`` and ``files`` (the byte size of each
      data file), written when the files are allocated;
    - one completion marker ``done-<start>-<stop>.json`` per finished row range, holding the
      same header, the range, and ``blake2b``: ``{file name: hex digest}`` of the bytes of rows
      ``[start, stop)`` of each data file (hashed from the arrays as they are written, so no
      extra pass over the data). It is written last, after the range's rows are flushed
      (``msync``) to the files, so a crashed or unfinished writer leaves no marker and
      :func:`load_topk_mmap` reports the file as incomplete; a later change to the bytes
      (overwrite, truncation) is caught by the sizes and digests.

    Rows are computed ``shard_users`` at a time, each shard with :func:`teacher_topk`'s chunked
    extraction (``chunk_size`` users per score block) and copied into the map, so peak memory is
    one ``[chunk_size, num_items]`` score block plus one ``[shard_users, K]`` shard, whatever
    ``U``. Results equal ``teacher_topk(...)`` row for row (the same deterministic tie order);
    scores are cast to ``scores_dtype``.

    Several processes (ranks) fill one directory: every rank passes the same ``users``,
    ``num_items``, ``k``, ``exclude``, ``padding_item``, ``scores_dtype`` and ``fingerprint`` and
    its own rows, ``user_range=rank_user_range(num_users, rank, world_size)``. The files are only
    extended, never truncated, by a rank, so ranks may start in any order and write disjoint
    slices concurrently (a shared filesystem with coherent ``mmap`` writes is assumed); the
    reader checks that the union of the markers covers every row. No collective communication
    is needed: a rank may wait for the others with ``torch.distributed.barrier()`` before
    loading, or simply retry :func:`load_topk_mmap`.

    Args:
        score_fn, users, num_items, k, exclude, padding_item, chunk_size, device, progress: as
            in :func:`teacher_topk` (``progress`` shows a bar over shards).
        path: output directory (created if needed).
        shard_users: users per shard (rows held in memory before they are written).
        user_range: rows ``(start, stop)`` of ``users`` this call computes (``0 <= start <=
            stop <= U``); ``None``: all rows, after discarding whatever ``path`` held.
        scores_dtype: stored score dtype (float16, float32 or float64).
        fingerprint: e.g. :func:`topk_fingerprint`'s digest; stored in the header and checked
            by :func:`load_topk_mmap` (``None``: stored as ``null``).

    Returns:
        ``path`` (read it with :func:`load_topk_mmap` once every range is done).

    Raises:
        ValueError: bad ``user_range`` / ``shard_users`` / ``scores_dtype``, a directory holding
            another extraction (other shape, dtype, K or fingerprint) or a damaged data file
            (wrong size; only with ``user_range``: ``None`` rebuilds), or any error of
            :func:`teacher_topk` (raised before this range's marker is written).

    Example:
        >>> import tempfile
        >>> U, V = torch.randn(100, 8), torch.randn(50, 8)
        >>> d = tempfile.mkdtemp()
        >>> for r in range(2):  # two ranks, run one after the other here
        ...     _ = teacher_topk_to_disk(lambda u: U[u] @ V.T, 100, 50, 5, d,
        ...                              user_range=rank_user_range(100, r, 2))
        >>> load_topk_mmap(d).indices.shape
        torch.Size([100, 5])
    """
    users_t = _as_users(users, device)
    dev = users_t.device
    n = users_t.numel()
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be a positive int, got {k!r}.")
    if shard_users < 1:
        raise ValueError(f"`shard_users` must be >= 1, got {shard_users}.")
    if scores_dtype not in _DISK_DTYPES:
        raise ValueError(
            f"`scores_dtype` must be one of {sorted(map(str, _DISK_DTYPES))}, got {scores_dtype}."
        )
    start, stop = (0, n) if user_range is None else (int(user_range[0]), int(user_range[1]))
    if not 0 <= start <= stop <= n:
        raise ValueError(f"`user_range`={user_range} must satisfy 0 <= start <= stop <= {n}.")
    if exclude is not None:
        exclude = as_history(exclude, num_items)  # normalise once, not once per shard

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    layout: dict[str, Any] = {
        "format": _DISK_FORMAT, "version": _DISK_VERSION, "num_users": n, "k": k,
        "num_items": num_items, "scores_dtype": _DISK_DTYPES[scores_dtype],
        "padding_item": padding_item, "fingerprint": fingerprint,
    }
    sizes = _file_bytes(layout)
    layout["files"] = {_FILES[key]: nbytes for key, nbytes in sizes.items()}
    reset = user_range is None
    same = False
    if reset:
        for marker in path.glob("done-*.json"):
            marker.unlink(missing_ok=True)
    elif (path / _LAYOUT).exists():
        old = _read_json(path / _LAYOUT)
        if old != layout:
            raise ValueError(
                f"{path} holds another extraction ({old}); this one is {layout}. Use a fresh "
                "directory or run once with user_range=None to overwrite it."
            )
        same = True
    (path / _marker_name(start, stop)).unlink(missing_ok=True)
    for key, nbytes in sizes.items():
        _allocate(path, _FILES[key], nbytes, reset, same)
    _write_json(path / _LAYOUT, layout)

    maps = {key: _memmap(path, layout, key, "r+") for key in _FILES}
    digests = {key: hashlib.blake2b() for key in _FILES}
    shards = range(start, stop, shard_users)
    if progress:
        from tqdm.auto import tqdm

        shards = tqdm(shards, desc="teacher top-k (to disk)", unit="shard")
    for s in shards:
        e = min(s + shard_users, stop)
        top = _extract(score_fn, users_t[s:e], num_items, k, exclude=exclude,
                       padding_item=padding_item, chunk_size=chunk_size, device=dev)
        rows = {"indices": top.indices.cpu().numpy(),
                "scores": top.scores.to("cpu", scores_dtype).numpy(),
                "users": top.users.cpu().numpy()}
        del top
        for key, arr in rows.items():
            arr = np.ascontiguousarray(arr, dtype=maps[key].dtype)
            maps[key][s:e] = arr
            digests[key].update(arr)  # the exact bytes written, in row order
        del rows, arr
        for mm in maps.values():
            mm.flush()  # bound dirty pages to one shard
    for mm in maps.values():
        mm.flush()
    del maps
    _write_json(path / _marker_name(start, stop), {
        **layout, "start": start, "stop": stop,
        "blake2b": {_FILES[key]: h.hexdigest() for key, h in digests.items()},
    })
    return path


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


def load_topk_mmap(path: str | Path, fingerprint: str | None = None, *,
                   verify: bool = True) -> TopK:
    """Map a top-K written by :func:`teacher_topk_to_disk`, zero-copy.

    ``indices``, ``scores`` and ``users`` are CPU tensors viewing copy-on-write memory maps of
    the files (``numpy.memmap(mode="c")`` + ``torch.from_numpy``): nothing is read until a row
    is touched, only touched pages occupy memory (and the OS may evict them), and in-place
    changes to the tensors stay private to the process (the files are never modified). Index
    rows as usual (``top.indices[batch_users]`` copies just those rows), or move the whole
    thing with ``top.to(device)`` if it fits there.

    Integrity: every file's size is always checked against the manifest (``layout.json``);
    with ``verify`` (the default) the bytes of every completed row range are also hashed
    (blake2b) and compared with the digests its completion marker recorded when they were
    written. That reads the files once (about 1 GB/s, from the page cache when just written);
    pass ``verify=False`` to skip it.

    Args:
        path: the directory given to :func:`teacher_topk_to_disk`.
        fingerprint: if given, must equal the stored one (else the file is stale).
        verify: check the content digests (sizes are always checked).

    Returns:
        a :class:`TopK` over all ``U`` rows.

    Raises:
        CorruptTopKError: a data file of the wrong size, or rows whose digest differs from the
            recorded one (the file and the row range are named).
        IncompleteTopKError: no/unreadable header, another format/version, markers that
            disagree with the header, rows no completion marker covers (a rank that has not
            finished or crashed: the missing ranges are named), or a fingerprint mismatch.
    """
    return _open_mmap(Path(path), fingerprint, verify)


def _open_mmap(path: Path, fingerprint: str | None, verify: bool,
               part: tuple[int, int] = (0, 1)) -> TopK:
    """:func:`load_topk_mmap`; ``part=(r, w)`` verifies only markers ``i`` with ``i % w == r``
    (the ranks of a group share the hashing, then agree)."""
    if not (path / _LAYOUT).is_file():
        raise IncompleteTopKError(
            f"{path} has no {_LAYOUT}: not a teacher_topk_to_disk output, or never started.")
    layout = _read_json(path / _LAYOUT)
    if layout.get("format") != _DISK_FORMAT or layout.get("version") != _DISK_VERSION:
        raise IncompleteTopKError(
            f"{path / _LAYOUT} has format {layout.get('format')!r} version "
            f"{layout.get('version')!r}; expected {_DISK_FORMAT!r} version {_DISK_VERSION}."
        )
    try:
        sizes = _file_bytes(layout)
        n, k = int(layout["num_users"]), int(layout["k"])
        row_bytes = {key: nbytes // n if n else 0 for key, nbytes in sizes.items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise IncompleteTopKError(f"{path / _LAYOUT} is corrupt: {exc!r}") from exc
    if layout.get("files") != {_FILES[key]: nbytes for key, nbytes in sizes.items()}:
        raise IncompleteTopKError(
            f"{path / _LAYOUT} is corrupt: its file sizes {layout.get('files')} do not match "
            f"its shape ({n} users, k={k}, {layout['scores_dtype']}).")
    markers = []
    for marker in sorted(path.glob("done-*.json")):
        info = _read_json(marker)
        if {key: info.get(key) for key in layout} != layout:
            raise IncompleteTopKError(
                f"completion marker {marker} belongs to another extraction than {path / _LAYOUT}"
                " (stale marker from an earlier run?). Recompute into a fresh directory."
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
                f"{f} has {size} bytes, expected {nbytes} (recorded in {path / _LAYOUT}): the "
                "file was truncated, extended or replaced after it was written.")
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


def _reset_extraction(path: Path) -> None:
    """Remove an extraction's markers, manifest and data files (unlinked: maps stay valid)."""
    for marker in path.glob("done-*.json"):
        marker.unlink(missing_ok=True)
    for name in (_LAYOUT, *_FILES.values()):
        (path / name).unlink(missing_ok=True)


def _all_ranks_agree(flag: bool, group: Any) -> bool:
    """True on every rank iff ``flag`` is True on every rank of ``group`` (a collective)."""
    import torch.distributed as dist

    flags: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(flags, bool(flag), group=group)
    return all(flags)


def shared_teacher_topk(
    directory: str | Path,
    teacher: nn.Module | Mapping[str, Tensor],
    score_fn: Callable[[Tensor], Tensor],
    users: Tensor | int,
    num_items: int,
    k: int,
    *,
    exclude: HistoryLike | None = None,
    padding_item: int | None = 0,
    chunk_size: int = 1024,
    shard_users: int = 65536,
    device: torch.device | str | None = None,
    group: Any = None,
    progress: bool = False,
    score_key: str | None = None,
) -> TopK:
    """The teacher's top-K computed once over all processes and shared through memory maps.

    Every rank of ``group`` (the default process group when ``torch.distributed`` is
    initialised; a single process otherwise) calls this with the same arguments. The soft labels
    live in ``directory/topk-mmap-<fingerprint[:20]>-k<k>/`` (:func:`teacher_topk_to_disk`'s
    layout, named by :func:`topk_fingerprint` of the teacher's weights, the score function
    (``score_key`` or :func:`score_fn_key`), K, the users, ``num_items``, the padding item, the
    history and the float32 score dtype, so another teacher, score function, K, user set or
    history never reuses it):

    1. every rank tries to open the extraction, checking sizes and content digests (each rank
       hashes a share of the completed ranges); if it succeeds on all ranks it is reused;
    2. otherwise, if a rank found it damaged (a file truncated, overwritten or modified after it
       was written) that rank issues one ``RuntimeWarning`` naming the file and the mismatch;
       the directory is cleared (by rank 0, then a barrier), rank ``r`` of ``W`` scores only
       its users ``rank_user_range(U, r, W)`` and writes them into the shared files (each
       user's row is computed by exactly one rank);
    3. after a barrier, every rank maps the complete files read-only (zero-copy, copy-on-write:
       the pages are shared by the processes through the OS page cache).

    Without ``torch.distributed``, steps 1-3 run under the inter-process lock
    ``<extraction>/layout.json.lock`` (:func:`graphkd.fileio.file_lock`), so independent
    processes sharing ``directory`` compute the labels once: the first builds them, the others
    wait and then map them.

    ``directory`` must be on a filesystem every rank sees (one machine: any local directory).

    Args:
        directory: parent directory of the extraction.
        teacher: the teacher module (or its ``state_dict``), for the fingerprint.
        score_fn, users, num_items, k, exclude, padding_item, chunk_size, shard_users, device,
            progress: as in :func:`teacher_topk_to_disk`.
        group: the process group (``None``: the default group, if initialised).
        score_key: as in :func:`cached_teacher_topk`.

    Returns:
        the complete :class:`TopK` as CPU tensors over memory maps (row ``r`` = ``users[r]``);
        equal to :func:`teacher_topk` (float32 scores).

    Example:
        >>> import tempfile
        >>> U, V = torch.randn(20, 4), torch.randn(30, 4)
        >>> top = shared_teacher_topk(tempfile.mkdtemp(), {"U": U, "V": V},
        ...                           lambda u: U[u] @ V.T, 20, 30, 5)
        >>> torch.equal(top.indices, teacher_topk(lambda u: U[u] @ V.T, 20, 30, 5).indices)
        True
    """
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank(group) if distributed else 0
    world = dist.get_world_size(group) if distributed else 1
    users_t, fp = _keyed_users(teacher, users, num_items, k, exclude, padding_item, device,
                               score_fn=score_fn, score_key=score_key,
                               scores_dtype=torch.float32)
    dev = users_t.device
    path = Path(directory) / f"topk-mmap-{fp[:20]}-k{k}"
    lock = contextlib.nullcontext() if distributed else file_lock(path / _LAYOUT)
    with lock:
        top: TopK | None = None
        damage: CorruptTopKError | None = None
        try:
            top = _open_mmap(path, fp, verify=True, part=(rank, world))
        except CorruptTopKError as exc:
            damage = exc
        except IncompleteTopKError:
            pass
        reuse = _all_ranks_agree(top is not None, group) if distributed else top is not None
        if reuse:
            log.info("rank %d: mapped the teacher's top-%d from %s", rank, k, path)
            return top  # type: ignore[return-value]
        del top
        if damage is not None:
            warnings.warn(f"{damage} Rebuilding the soft labels in {path}.", RuntimeWarning,
                          stacklevel=2)
        start, stop = rank_user_range(users_t.numel(), rank, world)
        log.info("rank %d/%d: teacher top-%d of users [%d, %d) -> %s", rank, world, k, start,
                 stop, path)
        if distributed:  # start from an empty directory, then each rank fills its rows
            if rank == 0:
                _reset_extraction(path)
            dist.barrier(group=group)
        teacher_topk_to_disk(score_fn, users_t, num_items, k, path, exclude=exclude,
                             padding_item=padding_item, chunk_size=chunk_size,
                             shard_users=shard_users,
                             user_range=(start, stop) if distributed else None,
                             fingerprint=fp, device=dev, progress=progress and rank == 0)
        if distributed:
            dist.barrier(group=group)
        return _open_mmap(path, fp, verify=False)  # just written (and hashed) by this group
