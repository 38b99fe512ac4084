"""Shared pieces of the ranking-distillation losses: list graphs, checks, the name registry.

Every method is a pure function (the maths, explicit score tensors in, scalar out) plus a thin
:class:`RankingLoss` module holding its hyperparameters (and trainable parts, e.g. DE's experts).
Modules register under a short name, so a config can say ``method: rrd``.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from graphkd._checks import (
    check_features,
    check_finite,
    check_loss_output,
    check_nonempty,
    check_same_rows,
    checked_call,
)
from graphkd.graphs import EdgeSet
from graphkd.registry import Registry

__all__ = [
    "RankingLoss",
    "RANKING_LOSSES",
    "register",
    "resolve",
    "get_ranking_loss",
    "ranking_loss_names",
    "list_graph",
    "check_lists",
    "check_embeddings",
    "check_output",
    "reduce_rows",
    "check_num_interactions",
    "ROW_REDUCTIONS",
]

#: name -> loss class; filled by :func:`register`.
RANKING_LOSSES: Registry[type[RankingLoss]] = Registry("ranking-distillation method")

#: reductions over users (rows) accepted by every ranking loss (see :func:`reduce_rows`).
ROW_REDUCTIONS = ("sum", "mean", "none", "per_interaction")


class RankingLoss(nn.Module):
    """Base of the ranking-distillation losses.

    ``inputs`` documents what ``forward`` takes (the trainer reads it), ``needs_dims`` says
    whether the constructor needs the embedding widths; :meth:`set_epoch` is
    called once per epoch by the trainer (no-op unless a method anneals or switches schedules).

    Calling a loss goes through the boundary shared with graphkd's losses
    (:func:`graphkd._checks.checked_call`): an empty batch (0 users / entities) raises
    ``ValueError("<name>: got an empty batch (0 samples); ...")``, float16 / bfloat16 inputs
    are computed in float32 (trainable experts/adapters in their float32 parameters) and the
    loss is returned in the inputs' dtype, and a non-finite loss from finite inputs raises
    ``FloatingPointError`` naming the method and the inputs' scale.
    """

    name: ClassVar[str] = ""
    inputs: ClassVar[str] = ""
    #: the constructor takes ``student_dim`` and ``teacher_dim`` (trainable experts/adapters;
    #: the same flag as graphkd's ``DistillLoss.needs_dims``)
    needs_dims: ClassVar[bool] = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return checked_call(self.name or type(self).__name__, super().__call__, args, kwargs,
                            module=self)

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        """Hook called at the start of every epoch (0-based ``epoch`` of ``num_epochs``)."""


register = RANKING_LOSSES.register
ranking_loss_names = RANKING_LOSSES.names


def resolve(registry: Registry[type[nn.Module]], method: str | nn.Module, /,
            **kwargs: Any) -> nn.Module:
    """``registry.get(method)(**kwargs)`` for a name, ``method`` itself for an instance.

    :meth:`graphkd.registry.Registry.build`, the one "name or instance" resolution shared with
    :func:`graphkd.losses.get_loss` (names case-insensitive, ``-``/``_`` ignored).

    Raises:
        ValueError: unknown name (the message lists the valid ones), or hyperparameters given
            with an instance.
    """
    return registry.build(method, instance_of=nn.Module, **kwargs)


def get_ranking_loss(method: str | RankingLoss, **kwargs) -> RankingLoss:
    """Resolve a ranking loss from a (case-insensitive) name plus hyperparameters, or pass an
    instance through (:func:`resolve` over :data:`RANKING_LOSSES`).

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    return resolve(RANKING_LOSSES, method, **kwargs)


def list_graph(num_rows: int, k: int, device: torch.device | str) -> EdgeSet:
    """Regular EdgeSet of ``num_rows`` ordered lists of length ``k`` (column = position).

    Per-edge values of this graph are ``scores.reshape(-1)`` of a ``[num_rows, k]`` score
    matrix. Built without validation or host syncs and cached per ``(num_rows, k, device)``
    (EdgeSets are immutable), so a training loop with a fixed batch shape builds it once.
    """
    return _list_graph(num_rows, k, torch.device(device))


@functools.lru_cache(maxsize=64)
def _list_graph(num_rows: int, k: int, device: torch.device) -> EdgeSet:
    ptr = torch.arange(0, num_rows * k + 1, max(k, 1), device=device)[: num_rows + 1]
    row = torch.arange(num_rows, device=device).repeat_interleave(k)
    col = torch.arange(k, device=device).repeat(num_rows)
    return EdgeSet(ptr, row, col, num_rows, max(k, 1), degree=k)


def check_lists(x: Tensor, name: str, *, rows: int | None = None, finite: bool = True) -> None:
    """``x`` must be a floating ``[U, K]`` score matrix (with ``rows`` rows if given).

    ``finite=True`` also rejects NaN/inf (one pass over ``x`` and a host sync); losses that
    check their *output* with :func:`check_output` instead pass ``finite=False``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() != 2:
        raise ValueError(f"`{name}` must be a [users, items] matrix, got shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating tensor, got dtype {x.dtype}.")
    if finite:
        check_finite(x, name)
    if rows is not None and x.shape[0] != rows:
        raise ValueError(
            f"`{name}` has {x.shape[0]} rows but {rows} were expected: every score matrix of "
            "one call must list the same users in the same order."
        )


def check_embeddings(s: Tensor, t: Tensor, method: str,
                     names: tuple[str, str] = ("s", "t")) -> None:
    """The input checks of the embedding-level losses (DE, FTD, HTD, hint): a non-empty batch,
    two finite floating ``[N, d]`` matrices (``names``) describing the same ``N`` entities.
    """
    check_nonempty(method, s, t)
    check_features(s, names[0])
    check_features(t, names[1])
    check_same_rows(s, t, *names)


def check_output(out: Tensor, *, method: str = "loss", **inputs: Tensor) -> None:
    """Raise if a loss's (small) output is not finite, naming the non-finite input.

    Cheaper than scanning every input: one reduction over ``out`` (and one host sync); the
    inputs are only scanned to write the error message. Non-finite inputs that leave the
    result finite (``-inf`` scores of negatives, which carry no probability mass) pass.

    Raises:
        ValueError: an input is not finite (named).
        FloatingPointError: every input is finite (see
            :func:`graphkd._checks.check_loss_output`; the message names ``method``).
    """
    if bool(torch.isfinite(out).all()):
        return
    for name, x in inputs.items():
        check_finite(x, name)
    check_loss_output(out, method, list(inputs.values()))


def reduce_rows(per_row: Tensor, reduction: str, *,
                num_interactions: float | Tensor | None = None) -> Tensor:
    """Reduce per-user (per-entity) losses ``[U]``.

    * ``"sum"``: the references' choice (a sum over the batch's unique users / entities);
    * ``"mean"``: over the ``U`` rows;
    * ``"per_interaction"``: the sum divided by ``num_interactions``, the number of
      interactions (rows) of the training batch the users came from. With a base loss that is
      a batch *mean* (RecBole's BPR), ``L_base + lambda * L`` is then exactly the reference's
      ``(BPR_sum + lambda * sum_u L_u) / B``: the reference's ``lambda`` keeps its meaning
      (``"mean"`` would scale it by ``B / U``);
    * ``"none"``: the ``[U]`` values (graphkd's ``reduce`` semantics without its weighting,
      for the hot path).

    Raises:
        ValueError: unknown reduction, or ``"per_interaction"`` without a positive
            ``num_interactions``.
    """
    if reduction == "sum":
        return per_row.sum()
    if reduction == "per_interaction":
        return per_row.sum() / check_num_interactions(num_interactions)
    if reduction == "mean":
        return per_row.mean() if per_row.numel() else per_row.sum()
    if reduction == "none":
        return per_row
    raise ValueError(f"unknown reduction {reduction!r}; valid: {ROW_REDUCTIONS}.")


def check_num_interactions(num_interactions: float | Tensor | None) -> float | Tensor:
    """``num_interactions`` of the ``"per_interaction"`` reduction: a positive number (or a
    0-d tensor, used as is: no host sync)."""
    if isinstance(num_interactions, Tensor):
        if num_interactions.dim() != 0:
            raise ValueError("`num_interactions` must be a number or a 0-d tensor, got shape "
                             f"{tuple(num_interactions.shape)}.")
        return num_interactions
    if num_interactions is None or isinstance(num_interactions, bool) or not (
            isinstance(num_interactions, (int, float)) and num_interactions > 0):
        raise ValueError(
            "reduction='per_interaction' needs `num_interactions=`, the (positive) number of "
            f"interactions in the training batch, got {num_interactions!r}."
        )
    return num_interactions
