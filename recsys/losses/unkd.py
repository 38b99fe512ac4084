r"""UnKD: unbiased knowledge distillation (Chen et al., WSDM 2023; chengang95/UnKD).

Items are split into ``num_groups=2`` popularity groups of equal interaction mass
(``recsys.samplers.popularity_groups``; the reference's ``split_group=2``). Per group and user,
the teacher ranks the user's unobserved items *of that group* (its top ``m=1000``,
``recsys.samplers.group_topk``), and pairs ``(i, j)`` are drawn from those ranks with
:math:`p(r) \propto e^{-(r+1)/20}`, ordered so that the teacher ranks ``i`` above ``j``
(``recsys.samplers.pair_sample``); the student learns the within-group order.

Pairs per user: ``n_distill=30`` in total (the reference's ``sample_num=30``), split over the
groups (``pair_split``):

* ``"equal"`` (default): the same count in every group (15 + 15), by largest-remainder
  rounding. This is what chengang95/UnKD's code does at its default ``lamda=0``
  (``group_ratio ** 0`` normalised, then ``round(ratio * sample_num)`` per group); it stores the
  user's per-group interaction counts (``user_group_ratio``) as ``item_tag`` but its loss never
  reads them. (The project's method notes described a per-user split; the reference code is
  followed here.)
* ``"user_share"``: in proportion to the user's training interactions in each group, by
  largest-remainder rounding so that the counts sum to exactly 30
  (``recsys.samplers.split_pair_counts``; shares (0.7, 0.3) give (21, 9); a user without
  interactions is split equally).

Loss, with :math:`\ell_u` the mean over user ``u``'s valid pairs:

.. math::
    \ell_u = \frac{1}{P_u}\sum_{(i,j)} -\log\sigma(\hat s_{u,i} - \hat s_{u,j}),\qquad
    L = \frac{\sum_{u \in \mathcal{U}_b} n_u\,\ell_u}{\sum_{u \in \mathcal{U}_b} n_u}
      = \frac{1}{B}\sum_{b=1}^{B} \ell_{u_b}

where :math:`n_u` is the number of the batch's ``B`` interactions made by user ``u`` (the
``weights`` argument): the mean over the batch's interaction rows, as the reference
(``torch.mean`` over ``batch_users``, one entry per interaction, after a mean over each row's
pairs). Without ``weights`` it is the plain mean over the given users. ``kd_weight=1.0``.
``logsigmoid`` replaces the reference's ``log(sigmoid + 1e-10)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from graphkd._checks import check_nonempty, check_same_shape, full_precision
from graphkd.ops import row_sum
from recsys.losses._base import RankingLoss, check_lists, list_graph, reduce_rows, register

__all__ = ["unkd_loss", "UnKD", "UNKD_PAIR_SPLITS"]

#: how the ``n_distill`` pairs of a user are split over the groups (see the module docstring).
UNKD_PAIR_SPLITS = ("user_share", "equal")


@full_precision
def unkd_loss(scores_i: Tensor, scores_j: Tensor, *, valid: Tensor | None = None,
              weights: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Pairwise within-group loss (see module docstring).

    Args:
        scores_i: ``[U, P]`` student scores of the teacher-preferred item of each pair.
        scores_j: ``[U, P]`` student scores of the other item.
        valid: optional ``[U, P]`` bool mask of real pairs (a user's mean runs over them; a
            user without valid pairs contributes 0).
        weights: optional ``[U]`` non-negative row weights: the users' interaction counts in
            the batch (``"mean"`` is then :math:`\\sum_u n_u \\ell_u / \\sum_u n_u`, the mean over
            the batch's interactions; ``"sum"`` is :math:`\\sum_u n_u \\ell_u`; ``"none"``
            returns the unweighted :math:`\\ell_u`).
        reduction: over users: ``"mean"`` (reference), ``"sum"`` or ``"none"``.

    Example:
        >>> s_i, s_j = torch.tensor([[1.0], [0.0]]), torch.zeros(2, 1)
        >>> unkd_loss(s_i, s_j, weights=torch.tensor([3.0, 1.0]))  # (3 l(1) + l(0)) / 4
        tensor(0.4082)
    """
    check_nonempty("unkd", scores_i, scores_j)
    check_lists(scores_i, "scores_i")
    check_lists(scores_j, "scores_j", rows=scores_i.shape[0])
    check_same_shape(scores_i, scores_j, "`scores_i`", "`scores_j`")
    u, p = scores_i.shape
    per_edge = -F.logsigmoid(scores_i - scores_j)
    edges = list_graph(u, p, scores_i.device)
    if valid is None:
        per_row = row_sum(per_edge.reshape(-1), edges) / max(p, 1)
    else:
        if valid.shape != scores_i.shape:
            raise ValueError(f"`valid` must have shape {tuple(scores_i.shape)}.")
        w = valid.to(per_edge.dtype)
        per_row = row_sum((per_edge * w).reshape(-1), edges) / row_sum(
            w.reshape(-1), edges).clamp_min(1.0)
    if weights is None or reduction == "none":
        return reduce_rows(per_row, reduction)
    if weights.shape != (u,):
        raise ValueError(f"`weights` must have shape ({u},), got {tuple(weights.shape)}.")
    wu = weights.to(device=per_row.device, dtype=per_row.dtype)
    if reduction == "sum":
        return (wu * per_row).sum()
    if reduction == "mean":
        return (wu * per_row).sum() / wu.sum().clamp_min(torch.finfo(wu.dtype).tiny)
    return reduce_rows(per_row, reduction)  # raises on an unknown reduction


@register("unkd")
class UnKD(RankingLoss):
    """UnKD module: ``forward(scores_i [U,P], scores_j [U,P], valid=None, weights=None)``.

    Hyperparameters the trainer reads for sampling (defaults = chengang95/UnKD's):
    ``num_groups=2`` (``split_group``), ``n_distill=30`` pairs per user in total
    (``sample_num``), ``m=1000`` (the teacher's top list per group), ``temperature=20``,
    ``pair_split`` (``"user_share"`` or ``"equal"``, see the module docstring).
    """

    inputs = ("scores_i [U,P] (teacher-preferred), scores_j [U,P], valid [U,P] (optional), "
              "weights [U] (optional: the users' interaction counts in the batch)")

    def __init__(self, num_groups: int = 2, n_distill: int = 30, m: int = 1000,
                 temperature: float = 20.0, pair_split: str = "equal",
                 reduction: str = "mean") -> None:
        super().__init__()
        if pair_split not in UNKD_PAIR_SPLITS:
            raise ValueError(f"unknown pair_split {pair_split!r}; valid: {UNKD_PAIR_SPLITS}.")
        self.num_groups, self.n_distill, self.temperature = num_groups, n_distill, temperature
        self.m, self.pair_split, self.reduction = m, pair_split, reduction

    def forward(self, scores_i: Tensor, scores_j: Tensor, valid: Tensor | None = None,
                weights: Tensor | None = None) -> Tensor:
        return unkd_loss(scores_i, scores_j, valid=valid, weights=weights,
                         reduction=self.reduction)
