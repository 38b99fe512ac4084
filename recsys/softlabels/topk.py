r"""The top-K soft-label type and its chunked, masked, deterministic extraction.

A trained recommender's top-K unobserved items per user are the *soft labels* of ranking
distillation. :func:`teacher_topk` streams users through the teacher's scoring function in
chunks, masks each user's training history and the padding item (:func:`mask_chunk`), and keeps
only the top-K of each chunk (:func:`chunk_topk`), so peak memory is
``O(chunk_size * num_items)`` whatever the number of users:

.. math::
    \mathrm{TopK}_u = \operatorname{argsort}^{\downarrow}_{i \notin H_u \cup \{0\}} s_T(u, i)[:K]

Ties are broken deterministically: equal scores are ordered by increasing item index (exactly
``torch.sort(masked, descending=True, stable=True)[:, :K]``), so results do not depend on the
chunk size or on ``torch.topk``'s unspecified tie order.

The result is a :class:`TopK` (``indices [U, K]`` int64 and ``scores [U, K]``), which converts to
a graphkd :class:`~graphkd.graphs.EdgeSet` with ``degree=K`` (``topk.to_edgeset()``): a bipartite
user -> item relation graph on which every recsys loss runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from graphkd.graphs import EdgeSet
from recsys.softlabels.history import HistoryLike, as_history, history_entries
from recsys.softlabels.settings import UNSET, ExtractionSettings, resolve_settings

__all__ = ["TopK", "teacher_topk", "as_users", "mask_chunk", "chunk_topk", "stable_sort_prefix"]


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


# ============================================================================ chunk helpers
def as_users(users: Tensor | int, device: torch.device | str | None = None) -> Tensor:
    """``users`` as int64 ids on ``device`` (default: the ids' own device, CPU for a count).

    Args:
        users: a 1-D integer tensor of ids, or an int ``n`` for ``0..n-1``.
        device: target device.

    Raises:
        ValueError / TypeError: an empty, non-1-D or non-integer tensor, or a count below 1.
    """
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


def mask_chunk(scores: Tensor, users: Tensor, *, history: HistoryLike | None = None,
               padding_item: int | None = 0) -> Tensor:
    """Set the padding item and each user's history items to ``-inf``, in place.

    Args:
        scores: ``[c, num_items]`` scores of ``users`` (modified in place: pass a copy to keep
            the original).
        users: ``[c]`` int64 user ids (rows of ``history``), on ``scores``' device.
        history: the users' training history (see :func:`~recsys.softlabels.as_history`);
            ``None`` masks no history.
        padding_item: item id masked for every user; ``None`` masks none.

    Returns:
        ``scores`` itself.

    Example:
        >>> from recsys.softlabels import history_from_interactions
        >>> h = history_from_interactions(torch.tensor([1]), torch.tensor([2]), 2, 3)
        >>> mask_chunk(torch.zeros(2, 3), torch.tensor([0, 1]), history=h).tolist()
        [[-inf, 0.0, 0.0], [-inf, 0.0, -inf]]
    """
    if padding_item is not None:
        scores[:, padding_item] = -torch.inf
    if history is not None:
        r, c = history_entries(as_history(history, scores.shape[1]), users)
        scores[r, c] = -torch.inf
    return scores


def _canonical_order(values: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row by (value desc, index asc): a deterministic order for ties."""
    index, perm = index.sort(dim=1)
    values = values.gather(1, perm)
    values, perm = values.sort(dim=1, descending=True, stable=True)
    return values, index.gather(1, perm)


#: ``k >= FULL_SORT_FRACTION * num_items``: :func:`chunk_topk` sorts whole rows
#: (:func:`stable_sort_prefix`), which beats ``topk(k + 1)`` plus the canonical reordering there
#: (ml-100k, 944 x 1683 float32, one CPU thread: k=1000 141 ms vs 43 ms, k=400 59 ms vs 43 ms,
#: k=200 35 ms vs 43 ms)
FULL_SORT_FRACTION = 0.25


def stable_sort_prefix(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``sort(scores, dim=1, descending=True, stable=True)`` cut to its first ``k`` columns.

    On CPU (float32/float64, no autograd) NumPy's vectorised ``argsort`` orders the rows
    (AVX-512 quicksort where available, ~1.7x faster than a stable ``torch.sort``); it is not
    stable, so rows where two of the first ``k + 1`` values are equal (ties, signed zeros,
    ``-inf`` padding inside the prefix) or that hold a NaN are redone with ``torch.sort``.
    Elsewhere the first ``k + 1`` values are strictly decreasing, which leaves one possible
    order: the result equals the stable sort's.

    Example:
        >>> v, i = stable_sort_prefix(torch.tensor([[1.0, 3.0, 3.0, 2.0]]), 3)
        >>> v.tolist(), i.tolist()
        ([[3.0, 3.0, 2.0]], [[1, 2, 3]])
    """
    fast = (scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64)
            and not scores.requires_grad and scores.shape[1] > 0)
    if not fast:
        values, index = scores.sort(dim=1, descending=True, stable=True)
        return values[:, :k].contiguous(), index[:, :k].contiguous()
    kk = min(k + 1, scores.shape[1])
    index = torch.from_numpy(np.argsort(np.negative(scores.numpy()), axis=1)[:, :kk])
    values = scores.gather(1, index)
    redo = torch.isnan(scores).any(1) | (values[:, 1:] == values[:, :-1]).any(1)
    values, index = values[:, :k].contiguous(), index[:, :k].contiguous()
    rows = redo.nonzero().squeeze(1)
    if rows.numel():
        sv, si = scores.index_select(0, rows).sort(dim=1, descending=True, stable=True)
        values = values.index_copy(0, rows, sv[:, :k])
        index = index.index_copy(0, rows, si[:, :k])
    return values, index


def chunk_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` ``(values, columns)`` of each row, equal to
    ``sort(scores, descending=True, stable=True)[:, :k]`` (ties by increasing column).

    ``torch.topk`` with ``k + 1`` picks the set and detects ties across the boundary (the
    ``k``-th and ``k+1``-th values are equal); those rows (rare for real-valued scores) are
    redone with a stable full sort. For ``k >= FULL_SORT_FRACTION * num_items`` (e.g. CD's
    top-3000 on a small catalogue) every row is sorted stably at once (the same result). NaN
    sorts above every number, so a row holding a NaN has NaN in its first returned value.

    Example:
        >>> v, i = chunk_topk(torch.tensor([[1.0, 3.0, 3.0, 2.0]]), 2)
        >>> v.tolist(), i.tolist()
        ([[3.0, 3.0]], [[1, 2]])
    """
    n_cols = scores.shape[1]
    if k >= FULL_SORT_FRACTION * n_cols:
        return stable_sort_prefix(scores, k)
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


# ============================================================================ extraction
def teacher_topk(
    score_fn: Callable[[Tensor], Tensor],
    users: Tensor | int,
    num_items: int,
    k: int | None = None,
    *,
    settings: ExtractionSettings | None = None,
    exclude: HistoryLike | None = UNSET,
    padding_item: int | None = UNSET,
    chunk_size: int = UNSET,
    device: torch.device | str | None = UNSET,
    progress: bool = UNSET,
    strict: bool = True,
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
        settings: an :class:`~recsys.softlabels.ExtractionSettings` (``k``, ``exclude``, ...);
            the keywords below, when given, override its fields.
        exclude: per-user training history to mask (see :func:`as_history`); ``None`` masks
            nothing (RD's original setting). A user with an empty history row is valid.
        padding_item: item id always masked (RecBole's padding item 0); ``None`` masks none.
        chunk_size: users per chunk (default 1024).
        device: where to score (default: the device of ``users``, or CPU for an int).
        progress: show a tqdm progress bar over chunks.
        strict: ``False`` accepts users with fewer than ``k`` allowed or finite-scored items:
            their rows end in ``-inf`` scores (e.g. a per-group ranking) instead of raising.

    Returns:
        a :class:`TopK` with ``indices [U, k]`` (int64), ``scores [U, k]`` (the dtype of
        ``score_fn``'s output, or ``settings.scores_dtype``) and ``users``; convert with
        ``.to_edgeset()``.

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
    s = resolve_settings(settings, k=k, exclude=exclude, padding_item=padding_item,
                         chunk_size=chunk_size, device=device, progress=progress)
    top = _extract(score_fn, users, num_items, s, strict=strict)
    if s.scores_dtype is not None and top.scores.dtype != s.scores_dtype:
        top = TopK(top.indices, top.scores.to(s.scores_dtype), top.num_items, top.users)
    return top


def _extract(score_fn: Callable[[Tensor], Tensor], users: Tensor | int, num_items: int,
             s: ExtractionSettings, *, strict: bool) -> TopK:
    """:func:`teacher_topk` on resolved settings (scores in ``score_fn``'s dtype)."""
    users_t = as_users(users, s.device)
    dev = users_t.device
    k, padding_item = s.k, s.padding_item
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

    hist = None
    if s.exclude is not None:
        hist = as_history(s.exclude, num_items)
        if int(users_t.max()) >= hist.num_rows:
            raise ValueError(
                f"`users` has ids up to {int(users_t.max())} but the history `exclude` has only "
                f"{hist.num_rows} user rows; pass a history covering every user (empty rows are "
                "fine for users without interactions)."
            )
        hist = hist.to(dev)  # once, not per chunk
        # per-user number of masked items (history without the padding item, if listed)
        keep = torch.ones_like(hist.col, dtype=torch.long)
        if padding_item is not None:
            keep = (hist.col != padding_item).long()
        masked = torch.zeros(hist.num_rows, dtype=torch.long, device=dev).index_add(
            0, hist.row, keep)
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
    chunk = s.chunk_size
    out_idx = torch.empty(n, k, dtype=torch.long, device=dev)
    out_val: Tensor | None = None
    nan_rows, inf_rows = [], []
    starts = range(0, n, chunk)
    if s.progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="teacher top-k", unit="chunk")
    with torch.no_grad():
        for start in starts:
            u = users_t[start:start + chunk]
            sc = score_fn(u)
            if not isinstance(sc, Tensor) or sc.shape != (u.numel(), num_items):
                shape = tuple(sc.shape) if isinstance(sc, Tensor) else type(sc).__name__
                raise ValueError(
                    f"`score_fn` must return scores of shape [{u.numel()}, {num_items}] "
                    f"(users x num_items) for a chunk of {u.numel()} users, got {shape}."
                )
            if not _owned(sc):
                sc = sc.clone()  # never modify a tensor the caller still holds
            mask_chunk(sc, u, history=hist, padding_item=padding_item)
            val, idx = chunk_topk(sc, k)
            del sc
            if out_val is None:
                out_val = torch.empty(n, k, dtype=val.dtype, device=dev)
            out_val[start:start + u.numel()] = val
            out_idx[start:start + u.numel()] = idx
            nan_rows.append(torch.isnan(val[:, 0]))  # NaN sorts first (see chunk_topk)
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
