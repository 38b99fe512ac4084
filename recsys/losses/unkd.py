r"""UnKD: unbiased knowledge distillation (Chen et al., WSDM 2023; chengang95/UnKD).

Items are split into popularity groups of equal interaction mass
(``recsys.samplers.popularity_groups``). Per group and user, pairs ``(i, j)`` are drawn from the
teacher's ranking *within that group* with :math:`p(r) \propto e^{-(r+1)/20}`, ordered so that
the teacher ranks ``i`` above ``j`` (``recsys.samplers.pair_sample``); the student learns the
within-group order:

.. math:: L = \sum_u \frac{1}{P_u}\sum_{(i,j)} -\log\sigma(\hat s_{u,i} - \hat s_{u,j})

(mean over a user's pairs, sum over users, as in the reference; ``logsigmoid`` instead of its
``log(sigmoid + 1e-10)``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from graphkd._checks import check_nonempty, check_same_shape, full_precision
from graphkd.ops import row_sum
from recsys.losses._base import RankingLoss, check_lists, list_graph, reduce_rows, register

__all__ = ["unkd_loss", "UnKD"]


@full_precision
def unkd_loss(scores_i: Tensor, scores_j: Tensor, *, valid: Tensor | None = None,
              reduction: str = "sum") -> Tensor:
    """Pairwise within-group loss (see module docstring).

    Args:
        scores_i: ``[U, P]`` student scores of the teacher-preferred item of each pair.
        scores_j: ``[U, P]`` student scores of the other item.
        valid: optional ``[U, P]`` bool mask of real pairs (a user's mean runs over them; a
            user without valid pairs contributes 0).
        reduction: over users.
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
    return reduce_rows(per_row, reduction)


@register("unkd")
class UnKD(RankingLoss):
    """UnKD module: ``forward(scores_i [U,P], scores_j [U,P], valid=None)``."""

    inputs = "scores_i [U,P] (teacher-preferred), scores_j [U,P], valid [U,P] (optional)"

    def __init__(self, num_groups: int = 4, n_distill: int = 10, temperature: float = 20.0,
                 reduction: str = "sum") -> None:
        super().__init__()
        self.num_groups, self.n_distill, self.temperature = num_groups, n_distill, temperature
        self.reduction = reduction

    def forward(self, scores_i: Tensor, scores_j: Tensor,
                valid: Tensor | None = None) -> Tensor:
        return unkd_loss(scores_i, scores_j, valid=valid, reduction=self.reduction)



