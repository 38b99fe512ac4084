"""What defines one teacher top-K extraction, in one frozen object.

:class:`ExtractionSettings` holds the settings :func:`~recsys.softlabels.teacher_topk`,
:func:`~recsys.softlabels.cached_teacher_topk`, :func:`~recsys.softlabels.teacher_topk_to_disk`
and :func:`~recsys.softlabels.shared_teacher_topk` share (``k``, the history to mask, the padding
item, the chunk size, ...). Each of them takes ``settings=`` *or* its historical keywords
(``k``, ``exclude=``, ``chunk_size=``, ...); keywords given together with ``settings`` override
those fields (:func:`resolve_settings`).

Example:
    >>> s = ExtractionSettings(k=10, chunk_size=256)
    >>> resolve_settings(s, chunk_size=64).chunk_size, s.chunk_size
    (64, 256)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ExtractionSettings", "UNSET", "resolve_settings", "SCORE_DTYPES"]

#: Score dtypes a top-K may be stored with (also the memory-mapped format's).
SCORE_DTYPES: dict[torch.dtype, str] = {
    torch.float16: "float16", torch.float32: "float32", torch.float64: "float64",
}


class _Unset:
    """The default of the keyword arguments that :class:`ExtractionSettings` replaces."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<ExtractionSettings default>"

    def __reduce__(self) -> str:
        return "UNSET"


#: "Not given": the field comes from ``settings`` (or the dataclass default).
UNSET: Any = _Unset()


@dataclass(frozen=True, eq=False)
class ExtractionSettings:
    """Settings of a teacher top-K extraction (what the four extraction functions share).

    Attributes:
        k: items per user, ``1 <= k``.
        exclude: per-user training history to mask (a ``HistoryLike``: EdgeSet, scipy.sparse
            matrix or ``(ptr, col)``; see :func:`~recsys.softlabels.as_history`); ``None``
            masks nothing.
        padding_item: item id always masked (RecBole's padding item 0); ``None`` masks none.
        chunk_size: users scored per ``[chunk_size, num_items]`` block.
        shard_users: users per shard written to disk (memory-mapped extractions).
        scores_dtype: dtype of the returned / stored scores (float16, float32 or float64);
            ``None``: the score function's in memory and in ``.pt`` caches, float32 in
            memory-mapped ones.
        score_key: a string identifying what the score function computes (replaces the
            automatic :func:`~recsys.softlabels.score_fn_key` in cache keys).
        device: where to score (default: the device of the user ids, CPU for a count).
        progress: show a tqdm progress bar.

    Equality is identity (``eq=False``): ``exclude`` may hold tensors.

    Raises:
        ValueError: ``k``, ``chunk_size`` or ``shard_users`` below 1, or an unsupported
            ``scores_dtype``.
    """

    k: int
    exclude: Any = None
    padding_item: int | None = 0
    chunk_size: int = 1024
    shard_users: int = 65536
    scores_dtype: torch.dtype | None = None
    score_key: str | None = None
    device: torch.device | str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"`k` must be a positive int, got {self.k!r}.")
        if self.chunk_size < 1:
            raise ValueError(f"`chunk_size` must be >= 1, got {self.chunk_size}.")
        if self.shard_users < 1:
            raise ValueError(f"`shard_users` must be >= 1, got {self.shard_users}.")
        if self.scores_dtype is not None and self.scores_dtype not in SCORE_DTYPES:
            raise ValueError(
                f"`scores_dtype` must be one of {sorted(map(str, SCORE_DTYPES))}, got "
                f"{self.scores_dtype}."
            )

    def replace(self, **changes: Any) -> ExtractionSettings:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)


def resolve_settings(settings: ExtractionSettings | None = None, **keywords: Any
                     ) -> ExtractionSettings:
    """``settings`` with every keyword that is not :data:`UNSET` (nor a ``None`` ``k``) applied.

    Without ``settings`` the keywords build a new :class:`ExtractionSettings` (``k`` is then
    required).

    Raises:
        TypeError: ``settings`` is not an :class:`ExtractionSettings`, an unknown keyword, or no
            ``k`` at all.
    """
    given = {name: value for name, value in keywords.items()
             if value is not UNSET and not (name == "k" and value is None)}
    if settings is None:
        if "k" not in given:
            raise TypeError("missing `k`: pass k=<items per user> or "
                            "settings=ExtractionSettings(k=...).")
        return ExtractionSettings(**given)
    if not isinstance(settings, ExtractionSettings):
        raise TypeError(f"`settings` must be an ExtractionSettings, got "
                        f"{type(settings).__name__}.")
    return settings.replace(**given) if given else settings
