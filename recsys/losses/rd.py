r"""RD: ranking distillation (Tang & Wang, KDD 2018).

The student is pushed to score the teacher's top-K items high, with a weight per rank:

.. math::
    L_{RD} = \sum_u \sum_{r=1}^{K} w_{u,r} \, (-\log \sigma(\hat s_{u,\pi_r}))

(the trainer adds the student's own base loss; the paper's total is
``L_base + alpha * L_RD`` with ``alpha = 1``). Weights (always detached):

* ``position``: :math:`w^a_r = e^{-r/\lambda} / \sum_{r'} e^{-r'/\lambda}`, ``r = 1..K``
  (``lam=1``, ``K=10``).
* ``discrepancy``: :math:`w^b_{u,r} = \max(\tanh(\mu(\hat r_{u,r} - r')), 0)`, ``mu=0.1``, with
  ``r' = r - 1`` the 0-based teacher rank (as both references compare against the column index)
  and :math:`\hat r` the student's rank of that item estimated from ``eps=100`` items sampled
  uniformly (with replacement) among the items the user has *not* interacted with, as in every
  reference (:func:`recsys.samplers.uniform_items` with the history and ``replacement=True``;
  :func:`estimate_student_rank`). Used from ``dynamic_start_epoch=10`` on.
* ``hybrid``: :math:`w = w^a \cdot w^b` (before ``dynamic_start_epoch``: ``w^a`` only).

Variants (``variant=``):

* ``"original"`` (graytowne/rank_distill): rank estimate ``floor(num_items * frac)``, hybrid
  weights used as is; its soft labels are the top-K without masking the history
  (``teacher_topk(..., exclude=None)``).
* ``"cf"`` (chengang95/UnKD, woriazzc/KDs): rank estimate ``floor((num_items - 1) * frac) + 1``,
  dynamic/hybrid weights L1-renormalised per user; soft labels mask all training positives.

``frac`` is the fraction of the ``eps`` sampled items the student scores strictly higher than the
top-K item.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from graphkd._checks import check_nonempty, full_precision
from graphkd.ops import row_sum
from recsys.losses._base import RankingLoss, check_lists, list_graph, reduce_rows, register

__all__ = [
    "RD_VARIANTS",
    "RD_SCHEMES",
    "rd_position_weights",
    "estimate_student_rank",
    "rd_discrepancy_weights",
    "rd_weights",
    "rd_loss",
    "RD",
]

RD_VARIANTS = ("original", "cf")
RD_SCHEMES = ("position", "discrepancy", "hybrid")


def _check_variant(variant: str) -> None:
    if variant not in RD_VARIANTS:
        raise ValueError(f"unknown RD variant {variant!r}; valid: {RD_VARIANTS}.")


def rd_position_weights(
    k: int, lam: float = 1.0, *, device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""``[K]`` position weights :math:`w_r = e^{-r/\lambda} / \sum_{r'=1}^K e^{-r'/\lambda}`.

    Example:
        >>> rd_position_weights(3, 1.0).sum()
        tensor(1.)
    """
    if k < 1 or lam <= 0:
        raise ValueError(f"need k >= 1 and lam > 0, got k={k}, lam={lam}.")
    r = torch.arange(1, k + 1, device=device, dtype=dtype)
    return torch.softmax(-r / lam, dim=0)


def estimate_student_rank(
    topk_scores: Tensor, sampled_scores: Tensor, num_items: int, *, variant: str = "cf",
) -> Tensor:
    r"""Student rank of each top-K item, estimated from scores of uniformly sampled items.

    .. math::
        f_{u,r} = \frac{|\{j : \hat s_{u,j} > \hat s_{u,\pi_r}\}|}{\varepsilon},\quad
        \hat r = \lfloor N f \rfloor \ (\text{original}),\quad
        \hat r = \lfloor (N-1) f \rfloor + 1 \ (\text{cf})

    Args:
        topk_scores: ``[U, K]`` student scores of the teacher's top-K items.
        sampled_scores: ``[U, eps]`` student scores of ``eps`` items per user, sampled
            uniformly outside the user's training history.
        num_items: ``N``.
        variant: ``"original"`` or ``"cf"``.

    Returns:
        ``[U, K]`` float ranks (no gradient).
    """
    _check_variant(variant)
    if sampled_scores.dim() != 2 or sampled_scores.shape[0] != topk_scores.shape[0]:
        raise ValueError(
            f"`sampled_scores` must be [{topk_scores.shape[0]}, eps] (one row per user), got "
            f"{tuple(sampled_scores.shape)}."
        )
    with torch.no_grad():
        # one [U, eps] comparison per column (K is small): a single [U, K, eps] comparison
        # is no faster and its reduction allocates an int64 copy of the whole block; sorting
        # the samples for a searchsorted is slower on CPU for eps ~ 100
        higher = topk_scores.new_empty(topk_scores.shape)
        for col in range(topk_scores.shape[1]):
            higher[:, col] = (sampled_scores > topk_scores[:, col:col + 1]).sum(1)
        frac = higher / sampled_scores.shape[1]
        if variant == "original":
            return torch.floor(num_items * frac)
        return torch.floor((num_items - 1) * frac) + 1


def rd_discrepancy_weights(student_rank: Tensor, mu: float = 0.1) -> Tensor:
    r"""``[U, K]`` ranking-discrepancy weights :math:`\max(\tanh(\mu(\hat r_{u,r} - r')), 0)`,
    ``r' = 0..K-1`` the teacher's (0-based) rank."""
    pos = torch.arange(student_rank.shape[1], device=student_rank.device,
                       dtype=student_rank.dtype)
    return torch.tanh(mu * (student_rank - pos)).clamp_min(0.0)


def rd_weights(
    k: int, *, scheme: str = "hybrid", lam: float = 1.0, mu: float = 0.1,
    student_rank: Tensor | None = None, variant: str = "cf",
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
) -> Tensor:
    """RD weights for one batch: ``[K]`` (position only) or ``[U, K]`` (detached).

    Args:
        k: list length.
        scheme: ``"position"``, ``"discrepancy"`` or ``"hybrid"``.
        lam, mu: the position and discrepancy parameters.
        student_rank: ``[U, K]`` estimated student ranks (needed unless ``scheme="position"``).
        variant: ``"cf"`` L1-renormalises dynamic weights per user, ``"original"`` does not.
    """
    _check_variant(variant)
    if scheme not in RD_SCHEMES:
        raise ValueError(f"unknown RD weight scheme {scheme!r}; valid: {RD_SCHEMES}.")
    if student_rank is not None:
        device, dtype = student_rank.device, student_rank.dtype
    w_a = rd_position_weights(k, lam, device=device, dtype=dtype)
    if scheme == "position":
        return w_a
    if student_rank is None or student_rank.shape[1] != k:
        raise ValueError(
            f"scheme={scheme!r} needs `student_rank` [U, {k}] (see estimate_student_rank)."
        )
    w = rd_discrepancy_weights(student_rank.detach(), mu)
    if scheme == "hybrid":
        w = w * w_a
    if variant == "cf":
        w = F.normalize(w, p=1, dim=1)
    return w


@full_precision
def rd_loss(topk_scores: Tensor, weights: Tensor, *, reduction: str = "sum") -> Tensor:
    r"""Weighted soft-label loss :math:`\sum_u \sum_r w_{u,r} (-\log\sigma(\hat s_{u,\pi_r}))`.

    Args:
        topk_scores: ``[U, K]`` student scores of the teacher's top-K items (rank order).
        weights: ``[K]`` or ``[U, K]`` weights (treated as constants).
        reduction: over users, ``"sum"`` (reference), ``"mean"`` or ``"none"``.

    Example:
        >>> s = torch.randn(4, 10, requires_grad=True)
        >>> rd_loss(s, rd_position_weights(10)).backward()
    """
    check_nonempty("rd", topk_scores)
    check_lists(topk_scores, "topk_scores")
    u, k = topk_scores.shape
    if weights.shape not in ((k,), (u, k)):
        raise ValueError(
            f"`weights` must be [{k}] or [{u}, {k}], got {tuple(weights.shape)}."
        )
    edges = list_graph(u, k, topk_scores.device)
    per_edge = -F.logsigmoid(topk_scores) * weights.detach().expand(u, k)
    return reduce_rows(row_sum(per_edge.reshape(-1), edges), reduction)


@register("rd")
class RD(RankingLoss):
    """RD with its schedule: position weights, then hybrid from ``dynamic_start_epoch``.

    ``forward(topk_scores [U,K], sampled_scores [U,eps] | None)``; ``num_items`` is needed for
    the dynamic weights. See the module docstring for the formula and variants.
    """

    inputs = "topk_scores [U,K] (student on teacher top-K), sampled_scores [U,eps] (optional)"

    def __init__(self, k: int = 10, lam: float = 1.0, mu: float = 0.1,
                 num_dynamic_samples: int = 100, dynamic_start_epoch: int = 10,
                 scheme: str = "hybrid", variant: str = "cf", num_items: int | None = None,
                 reduction: str = "sum") -> None:
        super().__init__()
        _check_variant(variant)
        if scheme not in RD_SCHEMES:
            raise ValueError(f"unknown RD weight scheme {scheme!r}; valid: {RD_SCHEMES}.")
        self.k, self.lam, self.mu = k, lam, mu
        self.num_dynamic_samples = num_dynamic_samples
        self.dynamic_start_epoch = dynamic_start_epoch
        self.scheme, self.variant, self.num_items = scheme, variant, num_items
        self.reduction = reduction
        self.epoch = 0

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        self.epoch = epoch

    @property
    def dynamic(self) -> bool:
        """Whether this epoch uses discrepancy weights (trainer: sample ``eps`` items then)."""
        return self.scheme != "position" and self.epoch >= self.dynamic_start_epoch

    def forward(self, topk_scores: Tensor, sampled_scores: Tensor | None = None) -> Tensor:
        k = topk_scores.shape[1]
        if not self.dynamic:
            w = rd_position_weights(k, self.lam, device=topk_scores.device,
                                    dtype=topk_scores.dtype)
            return rd_loss(topk_scores, w, reduction=self.reduction)
        if sampled_scores is None or self.num_items is None:
            raise ValueError(
                "RD's dynamic weights need `sampled_scores` (student scores of "
                f"{self.num_dynamic_samples} items per user sampled uniformly outside the "
                "user's history) and "
                "`num_items` in the constructor."
            )
        rank = estimate_student_rank(topk_scores.detach(), sampled_scores.detach(),
                                     self.num_items, variant=self.variant)
        w = rd_weights(k, scheme=self.scheme, lam=self.lam, mu=self.mu, student_rank=rank,
                       variant=self.variant)
        return rd_loss(topk_scores, w, reduction=self.reduction)
