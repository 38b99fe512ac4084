"""RecBole's multi-process mode, made exact: evaluation over all ranks equal to one process.

In RecBole 1.2.1's multi-process mode every evaluation data loader reads through a
``DistributedSampler`` (``drop_last=False``: the last users are *repeated* to give every rank the
same count), each rank computes its metrics on its own users, and ``Trainer._map_reduce``
averages them weighted by ``num_sample``, which counts ``len(batched_data)`` -- the 4-tuple of a
full-sort batch, i.e. four times the number of *batches*, not users. The reported metrics are
therefore neither over each user once nor correctly weighted (they drift from the
single-process numbers by the padding and the batch-count weighting).

:class:`GlobalEvaluator` fixes this where the collected rows are one per sampled user (full-sort
evaluation, the plugin's default, and RecBole's per-user negative-sampled modes such as
``uni100``): before RecBole's ``Evaluator`` runs, every rank's per-user rows (``rec.topk``,
``rec.items``, ``rec.meanrank``, ...) are gathered and put back in dataset order, each user once,
so the metrics are computed by RecBole's own evaluator on exactly the rows a single process
would have (with sampled negatives, each rank draws its users' negatives itself). Other
evaluation modes keep RecBole's reduction (with a warning).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["ROW_KEYS", "GlobalEvaluator", "sampler_indices", "gather_rows", "broadcast_object"]

log = logging.getLogger(__name__)

#: ``DataStruct`` entries with one row per evaluated sample (what RecBole resets per evaluation).
ROW_KEYS = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label")


def sampler_indices(eval_data: Any) -> torch.Tensor | None:
    """The dataset indices this rank's ``eval_data`` visits, in order (padding included), or
    None when it has no ``DistributedSampler``."""
    sampler = getattr(eval_data, "sampler", None)
    if not isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
        return None
    return torch.as_tensor(list(iter(sampler)), dtype=torch.long)


def gather_rows(local: dict[str, torch.Tensor], indices: torch.Tensor, total: int,
                group: Any = None) -> dict[str, torch.Tensor]:
    """Every rank's rows, placed at their dataset index (a collective over ``group``).

    Args:
        local: ``{key: [n_local, ...]}`` rows of this rank (row ``j`` is dataset index
            ``indices[j]``).
        indices: ``[n_local]`` dataset indices of the rows (may repeat across ranks: padding).
        total: number of dataset indices (each in ``0..total-1`` must occur on some rank).

    Returns:
        ``{key: [total, ...]}`` with row ``i`` = the row of dataset index ``i``.

    Raises:
        RuntimeError: some index in ``0..total-1`` was visited by no rank.
    """
    parts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, (indices.cpu(), {k: v.cpu() for k, v in local.items()}),
                           group=group)
    seen = torch.zeros(total, dtype=torch.bool)
    out: dict[str, torch.Tensor] = {}
    for idx, rows in parts:
        seen[idx] = True
        for key, value in rows.items():
            if key not in out:
                out[key] = value.new_zeros((total, *value.shape[1:]))
            out[key][idx] = value
    if not bool(seen.all()):
        missing = (~seen).nonzero().flatten()[:5].tolist()
        raise RuntimeError(f"no rank evaluated dataset indices {missing} (of {total})")
    return out


def broadcast_object(obj: Any, src: int = 0, group: Any = None) -> Any:
    """``obj`` of rank ``src`` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


class GlobalEvaluator:
    """Wraps a RecBole ``Evaluator``: in multi-process mode, its input struct is first completed
    with every rank's rows (see the module docstring).

    Args:
        evaluator: RecBole's ``Evaluator`` of the trainer.

    Attributes:
        indices: set by the trainer before each evaluation (:func:`sampler_indices`).
        total: number of evaluated samples (users) of that evaluation.
        gathered: whether the last evaluation was gathered (then RecBole's ``_map_reduce`` must
            not reduce again).
    """

    def __init__(self, evaluator: Any) -> None:
        self.evaluator = evaluator
        self.indices: torch.Tensor | None = None
        self.total = 0
        self.gathered = False
        self._warned = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.evaluator, name)

    def evaluate(self, struct: Any) -> Any:
        """RecBole's ``Evaluator.evaluate`` on the global struct (a collective)."""
        keys = [k for k in ROW_KEYS if k in struct]
        ok = self.indices is not None and all(
            struct.get(k).shape[0] == self.indices.numel() for k in keys)
        flags: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(flags, ok)
        self.gathered = all(flags)
        if self.gathered:
            rows = gather_rows({k: struct.get(k) for k in keys}, self.indices, self.total)
            for key, value in rows.items():
                struct.set(key, value)
        elif not self._warned:
            self._warned = True
            log.warning("multi-process evaluation with rows that are not one per sampled user "
                        "(not full-sort): using RecBole's approximate per-rank averaging")
        return self.evaluator.evaluate(struct)
