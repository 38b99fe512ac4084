"""Users' training histories as user x item CSR matrices, and their rows for a chunk of users.

A history (the ``exclude`` of an extraction) is a graphkd :class:`~graphkd.graphs.EdgeSet`
(rows = users, columns = items), a ``scipy.sparse`` matrix, or a ``(ptr, col)`` pair of
tensors (:data:`HistoryLike`); :func:`as_history` normalises any of them, and
:func:`history_from_interactions` builds one from interaction pairs. A user with no history is
valid (an empty row). :func:`history_entries` gathers the entries of a chunk of users (what a
score chunk masks, or a sampler forbids).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from graphkd.graphs import EdgeSet

__all__ = ["HistoryLike", "history_from_interactions", "as_history", "history_entries"]

#: Accepted forms of a user x item history: EdgeSet, scipy.sparse matrix, or ``(ptr, col)``.
HistoryLike = Any  # EdgeSet | tuple[Tensor, Tensor] | scipy.sparse matrix


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


def history_entries(history: EdgeSet, users: Tensor) -> tuple[Tensor, Tensor]:
    """``(local_row, item)`` of every history entry of ``users`` (a vectorised CSR row gather).

    Entry ``j`` belongs to ``users[local_row[j]]``, so ``scores[local_row, item]`` addresses
    the history items in a ``[len(users), num_items]`` chunk of scores. Runs on ``users``'
    device (``history``'s ``ptr``/``col`` are moved there if they are elsewhere).

    Args:
        history: a user x item EdgeSet (e.g. from :func:`as_history`); every id of ``users``
            must be one of its rows.
        users: ``[c]`` int64 user ids.

    Example:
        >>> h = history_from_interactions(torch.tensor([0, 2, 2]), torch.tensor([1, 0, 3]), 3, 4)
        >>> [t.tolist() for t in history_entries(h, torch.tensor([2, 1]))]
        [[0, 0], [0, 3]]
    """
    dev = users.device
    ptr, col = history.ptr.to(dev), history.col.to(dev)
    starts = ptr[users]
    counts = ptr[users + 1] - starts
    local = torch.repeat_interleave(torch.arange(users.numel(), device=dev), counts)
    offsets = torch.cumsum(counts, 0) - counts
    pos = torch.arange(local.numel(), device=dev) - offsets[local] + starts[local]
    return local, col[pos]
