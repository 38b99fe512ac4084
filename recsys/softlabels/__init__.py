r"""Teacher top-K soft labels: chunked, masked, deterministic, cached, shared.

A trained recommender's top-K unobserved items per user are the *soft labels* of ranking
distillation. :func:`teacher_topk` streams users through the teacher's scoring function in
chunks, masks each user's training history and the padding item, and keeps only the top-K of each
chunk, so peak memory is ``O(chunk_size * num_items)`` whatever the number of users. Ties are
ordered by increasing item index, so results do not depend on the chunk size. The result is a
:class:`TopK` (``indices [U, K]``, ``scores [U, K]``), which converts to a graphkd
:class:`~graphkd.graphs.EdgeSet` with ``degree=K`` (``top.to_edgeset()``).

What defines an extraction (``k``, the history ``exclude``, the padding item, the chunk size,
...) is one frozen :class:`ExtractionSettings`; :func:`teacher_topk`,
:func:`cached_teacher_topk`, :func:`teacher_topk_to_disk` and :func:`shared_teacher_topk` take
``settings=`` or the same fields as keywords.

Modules:

- :mod:`~recsys.softlabels.settings`: :class:`ExtractionSettings`;
- :mod:`~recsys.softlabels.history`: user x item histories (:func:`as_history`,
  :func:`history_from_interactions`, :func:`history_entries`);
- :mod:`~recsys.softlabels.topk`: :class:`TopK`, :func:`teacher_topk` and its chunk helpers
  (:func:`mask_chunk`, :func:`chunk_topk`);
- :mod:`~recsys.softlabels.fingerprint`: cache keys (:func:`topk_fingerprint`,
  :func:`score_fn_key`);
- :mod:`~recsys.softlabels.store`: the on-disk formats behind :func:`save_topk` /
  :func:`load_topk` (one :data:`FORMAT_VERSION`), the ``.pt`` format, the errors;
- :mod:`~recsys.softlabels.mapped`: the memory-mapped format (:func:`load_topk_mmap`);
- :mod:`~recsys.softlabels.shared`: computing once for many processes
  (:func:`cached_teacher_topk`, :func:`teacher_topk_to_disk`, :func:`shared_teacher_topk`).

Example:
    >>> import torch
    >>> U, V = torch.randn(100, 8), torch.randn(50, 8)
    >>> hist = history_from_interactions(torch.tensor([0, 0, 1]), torch.tensor([3, 4, 7]),
    ...                                  num_users=100, num_items=50)
    >>> top = teacher_topk(lambda u: U[u] @ V.T, 100, 50, k=10, exclude=hist, chunk_size=32)
    >>> top.indices.shape, top.to_edgeset().degree
    (torch.Size([100, 10]), 10)
    >>> s = ExtractionSettings(k=10, exclude=hist, chunk_size=32)
    >>> torch.equal(teacher_topk(lambda u: U[u] @ V.T, 100, 50, settings=s).indices, top.indices)
    True
"""

from __future__ import annotations

from recsys.softlabels.fingerprint import score_fn_key, topk_fingerprint
from recsys.softlabels.history import (
    HistoryLike,
    as_history,
    history_entries,
    history_from_interactions,
)
from recsys.softlabels.mapped import MappedTopKWriter, load_topk_mmap
from recsys.softlabels.settings import ExtractionSettings
from recsys.softlabels.shared import (
    cached_teacher_topk,
    rank_user_range,
    shared_teacher_topk,
    teacher_topk_to_disk,
)
from recsys.softlabels.store import (
    FORMAT_VERSION,
    CacheError,
    CorruptTopKError,
    IncompleteTopKError,
    load_topk,
    save_topk,
)
from recsys.softlabels.topk import TopK, chunk_topk, mask_chunk, teacher_topk

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
    # settings, chunk helpers, store interface
    "ExtractionSettings",
    "history_entries",
    "mask_chunk",
    "chunk_topk",
    "FORMAT_VERSION",
    "MappedTopKWriter",
]
