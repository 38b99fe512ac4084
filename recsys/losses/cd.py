r"""CD: collaborative distillation (Lee et al., ICDM 2019).

Soft labels from the teacher's scores of sampled unobserved items, and a BCE of the student:

.. math::
    y_{u,i} = \sigma\!\left(\frac{s^T_{u,i} + t_2}{t_1}\right),\qquad
    L_{CD} = \sum_u \sum_{i \in S_u} -\big[y_{u,i}\log\sigma(\hat s_{u,i})
             + (1 - y_{u,i})\log\sigma(-\hat s_{u,i})\big]

with ``S_u`` the ``n_distill=2`` items drawn per user and epoch by rank-aware tournament
sampling from the guide's top ``sample_num=3000`` unobserved items
(``recsys.samplers.tournament_sample``, ``p(r) ∝ exp(-r / (sample_num * T))``, ``T=20``: two
positions are drawn and the better-ranked one wins); ``t1=2``, ``t2=0``. Computed with
``logsigmoid`` (the reference uses ``log(sigmoid(x) + 1e-10)``, which saturates at ``|x| > 23``).

The guide (``guide``) ranks the candidates:

* ``"student"`` (default; the paper's and woriazzc/KDs' ``"student guide"``): the student's own
  top ``sample_num`` unobserved items, re-extracted at every epoch start from the current
  student (chunked over users, like the teacher's top-K, never cached), so the distilled items
  follow the student's mistakes as it trains;
* ``"teacher"``: the teacher's top ``sample_num`` (its soft labels, computed once).

Either way the labels ``y`` are the *teacher's* scores of the sampled items.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from graphkd._checks import check_nonempty, full_precision
from graphkd.ops import row_sum
from recsys.losses._base import RankingLoss, check_lists, list_graph, reduce_rows, register

__all__ = ["cd_soft_labels", "cd_loss", "CD", "CD_GUIDES"]

#: whose ranking the tournament samples from: the student's (the paper) or the teacher's.
CD_GUIDES = ("student", "teacher")


def cd_soft_labels(teacher_scores: Tensor, t1: float = 2.0, t2: float = 0.0) -> Tensor:
    r"""Soft labels :math:`\sigma((s^T + t_2) / t_1)` (no gradient)."""
    if t1 <= 0:
        raise ValueError(f"`t1` must be > 0, got {t1}.")
    return torch.sigmoid((teacher_scores.detach() + t2) / t1)


@full_precision
def cd_loss(student_scores: Tensor, teacher_scores: Tensor, *, t1: float = 2.0,
            t2: float = 0.0, reduction: str = "sum") -> Tensor:
    """Soft-label BCE of the student on the sampled items.

    Args:
        student_scores: ``[U, n]`` student logits of the sampled items.
        teacher_scores: ``[U, n]`` teacher scores of the same items.
        t1, t2: temperature and shift of the soft labels.
        reduction: over users: ``"sum"`` (reference), ``"mean"`` or ``"none"``.

    Example:
        >>> cd_loss(torch.zeros(2, 3), torch.zeros(2, 3))  # 6 * log 2
        tensor(4.1589)
    """
    check_nonempty("cd", student_scores, teacher_scores)
    check_lists(student_scores, "student_scores")
    check_lists(teacher_scores, "teacher_scores", rows=student_scores.shape[0])
    if teacher_scores.shape != student_scores.shape:
        raise ValueError(
            f"`student_scores` {tuple(student_scores.shape)} and `teacher_scores` "
            f"{tuple(teacher_scores.shape)} must score the same items."
        )
    y = cd_soft_labels(teacher_scores, t1, t2)
    per_edge = -(y * F.logsigmoid(student_scores) + (1 - y) * F.logsigmoid(-student_scores))
    u, n = student_scores.shape
    return reduce_rows(row_sum(per_edge.reshape(-1), list_graph(u, n, student_scores.device)),
                       reduction)


@register("cd")
class CD(RankingLoss):
    """CD loss module: ``forward(student_scores [U,n], teacher_scores [U,n])``.

    Hyperparameters the trainer reads for sampling: ``sample_num``, ``temperature``,
    ``n_distill`` and ``guide`` (``"student"``: the student's top ``sample_num`` resampled each
    epoch, the paper's default; ``"teacher"``: the teacher's).
    """

    inputs = "student_scores [U,n], teacher_scores [U,n] on tournament-sampled items"

    def __init__(self, t1: float = 2.0, t2: float = 0.0, sample_num: int = 3000,
                 temperature: float = 20.0, n_distill: int = 2, guide: str = "student",
                 reduction: str = "sum") -> None:
        super().__init__()
        if guide not in CD_GUIDES:
            raise ValueError(f"unknown CD guide {guide!r}; valid: {CD_GUIDES}.")
        self.guide = guide
        self.t1, self.t2, self.reduction = t1, t2, reduction
        self.sample_num, self.temperature, self.n_distill = sample_num, temperature, n_distill

    def forward(self, student_scores: Tensor, teacher_scores: Tensor) -> Tensor:
        return cd_loss(student_scores, teacher_scores, t1=self.t1, t2=self.t2,
                       reduction=self.reduction)
